"""`cifar predict --cluster ADDRESS`: the same rows, computed on a Dask distributed cluster.

The client (this process) lists the files and writes the rows; the workers read, decode and
classify batches of paths (never pixels), each worker process with one ONNX Runtime session for
the whole job: the model's bytes go to every worker once, and a process keeps the session it made
from them. A bounded window of tasks is in flight, so the client's memory stays flat at any
number of files, and rows are written in the order of the files, as a local run writes them.
A worker that dies loses nothing: the scheduler runs its tasks again elsewhere, and the client
takes each task's rows once. The workers need cifarcli installed (`pip install 'cifarcli[dask]'`)
and, for local paths, the same files at the same paths.
"""

import hashlib
import threading
import uuid
from collections.abc import Iterator

from cifarcli.errors import CifarError, first_line

# A task is several of the model's batches: the scheduler's and the client's work per task, which
# shares the cores with the workers on a small cluster, then weighs less per file.
BATCHES_PER_TASK = 8
TASKS_PER_WORKER_THREAD = 3  # in flight: enough to keep every worker busy while results travel
SESSIONS: dict = {}  # in a worker process: model hash -> OnnxClassifier, made once for the whole job
SESSIONS_LOCK = threading.Lock()


CONNECT_TIMEOUT = "10s"  # Dask retries a refused connection until this; a live scheduler answers in far less


def connect(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise CifarError("--cluster: needs Dask, which this install lacks; pip install 'cifarcli[dask]'") from None
    refuse_if_nothing_listens(address)
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as error:
        raise CifarError(f"--cluster {address}: no Dask scheduler answered ({first_line(error)})") from None


def refuse_if_nothing_listens(address: str) -> None:
    """A tcp:// or tls:// address where the connection is refused at once (no scheduler started,
    a wrong port) fails now, where Dask would retry until its timeout."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        raise CifarError(f"--cluster {address}: not a port; give the scheduler's, e.g. tcp://host:8786") from None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or not port:
        return
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except ConnectionRefusedError:
        raise CifarError(f"--cluster {address}: no Dask scheduler answered (connection refused)") from None
    except OSError:
        return  # unreachable or slow: Dask's own connection says why, within CONNECT_TIMEOUT


def cluster_rows(
    address: str, model_bytes: bytes, files: list[str], batch_size: "int | None", top_k: int, min_confidence: float,
    file_system,
) -> Iterator:  # fmt: skip
    """The rows of every file, in order, classified by the cluster's workers."""
    client = connect(address)  # first: it names the extra when Dask is missing
    from distributed import as_completed

    from cifarcli.batches import PREDICT_BATCH

    try:
        model = client.scatter(model_bytes, broadcast=True)
        model_hash, job = hashlib.sha256(model_bytes).hexdigest(), uuid.uuid4().hex[:8]
        batch_size = batch_size or PREDICT_BATCH
        per_task = batch_size * BATCHES_PER_TASK
        tasks = [files[start : start + per_task] for start in range(0, len(files), per_task)]
        window = max(1, TASKS_PER_WORKER_THREAD * sum(client.nthreads().values()))
        pending, finished, submitted, written = as_completed(), {}, 0, 0
        numbers = {}

        def submit(number: int) -> None:
            work = (model, model_hash, tasks[number], batch_size, top_k, min_confidence, file_system)
            future = client.submit(classify_on_worker, *work, key=f"cifar-predict-{job}-{number}", pure=False)
            numbers[future.key] = number
            pending.add(future)

        for number in range(min(window, len(tasks))):
            submit(number)
        submitted = min(window, len(tasks))
        for future in pending:
            finished[numbers.pop(future.key)] = future.result()
            future.release()
            while written in finished:
                yield from finished.pop(written)
                written += 1
            if submitted < len(tasks):
                submit(submitted)
                submitted += 1
    finally:
        client.close()


def classify_on_worker(model_bytes, model_hash, files, batch_size, top_k, min_confidence, file_system) -> list:
    """One task on a worker, batch_size files at a time: its process's ONNX Runtime session, made
    from the model's bytes the first time, one intra-op thread (the worker's threads are the
    parallelism)."""
    from cifarcli.batches import classify_batch
    from cifarcli.classifier import OnnxClassifier

    with SESSIONS_LOCK:
        if model_hash not in SESSIONS:
            SESSIONS[model_hash] = OnnxClassifier(model_bytes, threads=1, source=f"model {model_hash[:12]}")
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        rows += classify_batch(SESSIONS[model_hash], chunk, batch_size, top_k, min_confidence, file_system)
    return rows
