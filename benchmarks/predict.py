"""`cifar predict`: whole commands on the 10,000 test JPEGs and 100,000 files, memory, startup.

    python benchmarks/predict.py [--model cifarcli/assets/default.onnx] [--threads 2]

Without --model, the bundled model that `cifar predict` picks on this CPU. Measured in one run,
with the same thread count, and appended as one row to benchmarks/results/predict.jsonl:
  decode / ORT  each stage alone on one thread, in predict's batches of 64 (images/s), and
                the cores' ceiling they allow when every worker both decodes and runs the
                model: threads / (1 / decode + 1 / ORT)
  10k           `cifar predict FOLDER -o rows.csv` in a subprocess: wall time (interpreter start
                included), peak RSS, and the rows' accuracy against the folder names beside
                `cifar evaluate`'s on the same files
  100k          the same on the test set linked ten times: images/s and peak RSS
  startup       the same on one image, median of five: interpreter, imports and model load
The package is byte-compiled first, as an installed copy is. The machine must be otherwise idle.

    python benchmarks/predict.py --scaling [--workers 1 2] [--copies 10]

How predict scales with cores, on the test JPEGs linked --copies times: for each count N, the
whole command on N threads, and on a Dask cluster of N single-thread worker processes (a real
scheduler and workers on this machine, which the client and scheduler share); one row per run,
with files/s per core, and whether the cluster's rows equal the local run's.
"""

import argparse
import contextlib
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    SHARED_DATA,
    append_result,
    code_version,
    compile_package,
    decode_images,
    free_port,
    inference_rate,
    shown,
    unpack_test_split,
    whole_command,
)

sys.path.insert(0, str(ROOT))
from cifarcli.batches import PREDICT_BATCH
from cifarcli.bundled import choose_bundled_model
from cifarcli.classifier import OnnxClassifier
from cifarcli.data import load_dataset
from cifarcli.evaluate import evaluate
from cifarcli.sources import discover_images


def run_predict(paths: list, model: Path, threads: int, rows: Path) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of one `cifar predict` subprocess."""
    command = [
        sys.executable,
        "-m",
        "cifarcli",
        "predict",
        *map(str, paths),
        "-m",
        str(model),
        "-o",
        str(rows),
        "--threads",
        str(threads),
    ]
    return whole_command(command)


def link_copies(files: list[str], folder: Path, copies: int) -> Path:
    """Hard links: `copies` distinct files per image, no extra disk."""
    for index in range(copies):
        for file in map(Path, files):
            target = folder / f"copy{index}" / file.parent.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(file, target)
    return folder


@contextlib.contextmanager
def dask_cluster(workers: int):
    """A scheduler and `workers` single-thread worker processes on this machine: its address."""
    from distributed import Client

    dask, port = str(Path(sys.executable).parent / "dask"), free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    address = f"tcp://127.0.0.1:{port}"
    processes = [subprocess.Popen([dask, "scheduler", "--port", str(port), "--no-dashboard"], **quiet)]
    processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard"], **quiet)
                  for _ in range(workers)]  # fmt: skip
    try:
        time.sleep(2)
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for process in processes:
            process.kill()
            process.wait()


def scaling_rows(args) -> None:
    """For each worker count, the whole command on threads, then on Dask worker processes."""
    with tempfile.TemporaryDirectory() as temp:
        test = unpack_test_split(args.data, Path(temp) / "data")
        copies = link_copies(discover_images([str(test)])[0], Path(temp) / "copies", args.copies)
        local_rows, command_shown = {}, f"python benchmarks/predict.py --scaling --copies {args.copies}"

        def record(mode: str, workers: int, rows: Path, seconds: float, peak_mb: "int | None") -> None:
            count = len(rows.read_text().splitlines()) - 1
            rate = count / seconds
            figures = {
                "kind": "scaling", "code": code_version(), "model": args.model.name, "mode": mode, "workers": workers,
                "files": count, "seconds": round(seconds, 2), "images_per_s": round(rate),
                "images_per_s_per_core": round(rate / workers), "peak_rss_mb": peak_mb,
                "same_rows_as_threads": rows.read_bytes() == local_rows[workers],
            }  # fmt: skip
            append_result("predict", command_shown, figures)

        for workers in args.workers:
            rows = Path(temp) / f"threads{workers}.csv"
            seconds, peak = run_predict([copies], args.model, workers, rows)
            local_rows[workers] = rows.read_bytes()
            record("threads", workers, rows, seconds, peak)
        for workers in args.workers:
            rows = Path(temp) / f"dask{workers}.csv"
            with dask_cluster(workers) as address:
                command = [sys.executable, "-m", "cifarcli", "predict", str(copies), "-m", str(args.model), "-o",
                           str(rows), "--cluster", address]  # fmt: skip
                started = time.perf_counter()
                subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                record("dask processes", workers, rows, time.perf_counter() - started, None)


def row_accuracy(rows: Path) -> tuple[float, int]:
    with open(rows, newline="") as file:
        table = list(csv.DictReader(file))
    correct = sum(row["label"] == Path(row["path"]).parent.name for row in table)
    return correct / len(table), len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=choose_bundled_model(None)[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--scaling", action="store_true", help="threads against Dask worker processes instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    compile_package()
    classifier = OnnxClassifier(args.model, threads=1)  # as cifar predict's workers share it
    if args.scaling:
        return scaling_rows(args)
    size = classifier.info.input_size

    with tempfile.TemporaryDirectory() as temp:
        test = unpack_test_split(args.data, Path(temp) / "data")
        files = discover_images([str(test)])[0]
        images, decode_rate = decode_images(files, size, threads=1, batch_size=PREDICT_BATCH)
        ort_rate = inference_rate(classifier, images, batch_size=PREDICT_BATCH, workers=1)
        ceiling = args.threads / (1 / decode_rate + 1 / ort_rate)

        seconds, peak_10k = run_predict([test], args.model, args.threads, Path(temp) / "rows.csv")
        rows_acc, count = row_accuracy(Path(temp) / "rows.csv")
        startup = statistics.median(
            run_predict(files[:1], args.model, args.threads, Path(temp) / "one.csv")[0] for _ in range(5)
        )
        copies = link_copies(files, Path(temp) / "x10", 10)
        seconds_100k, peak_100k = run_predict([copies], args.model, args.threads, Path(temp) / "rows100k.csv")
        _, count_100k = row_accuracy(Path(temp) / "rows100k.csv")

    evaluated = evaluate(classifier, load_dataset(args.data), "test").accuracy
    figures = {
        "kind": "speed",
        "code": code_version(),
        "model": args.model.name,
        "threads": args.threads,
        "decode_images_per_s": round(decode_rate),
        "ort_images_per_s": round(ort_rate),
        "ceiling_images_per_s": round(ceiling),
        "images_per_s_10k": round(count / seconds),
        "fraction_of_ceiling": round(count / seconds / ceiling, 3),
        "images_per_s_100k": round(count_100k / seconds_100k),
        "startup_s": round(startup, 3),
        "peak_rss_mb_10k": peak_10k,
        "peak_rss_mb_100k": peak_100k,
        "rows_test_acc": round(rows_acc, 4),
        "evaluate_test_acc": round(evaluated, 4),
    }
    command = f"python benchmarks/predict.py --model {shown(args.model)} --threads {args.threads}"
    append_result("predict", command, figures)


if __name__ == "__main__":
    main()
