"""`cifar serve` under load: concurrent clients sending single CIFAR JPEGs, against `cifar predict`.

    python benchmarks/serve.py [--clients 1 8 64] [--requests 10000] [--soak 10000]

Starts `cifar serve` (the bundled model it picks, its default batching) and, for each client
count, that many asyncio clients, each one keep-alive connection sending one test JPEG per
request (a raw image body) as fast as it is answered; the clients are a few lines over asyncio
streams, so that the client's own cost beside the server stays small on these 2 cores. Per
count: images/s, p50 and p99 latency, and the mean batch the server ran (from /metrics). Beside
it, `cifar predict` on the same files, whole command, on the same cores. Then the soak: --soak
requests from 64 clients of which 5% are not images: no 5xx, the right rows (an error row for
each bad file), and the server's RSS before and after. One row per run goes to
benchmarks/results/serve.jsonl. The machine must be otherwise idle.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, SHARED_DATA, append_result, code_version, free_port, unpack_test_split, whole_command

sys.path.insert(0, str(ROOT))
BAD = b"this is not an image\n"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def batch_totals(url: str) -> tuple[float, float]:
    values = dict(line.rsplit(" ", 1) for line in get(url + "/metrics").splitlines() if not line.startswith("#"))
    return float(values["cifar_batch_size_sum"]), float(values["cifar_batch_size_count"])


def rss_mb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) // 1024


async def client(port: int, bodies: list[bytes], latencies: list, answers: list) -> None:
    """One keep-alive connection: each body POSTed in turn, its latency and (status, rows) kept."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for body in bodies:
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
        )
        started = time.perf_counter()
        writer.write(head.encode() + b"\r\n" + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        answers.append((int(status_line.split()[1]), payload))
    writer.close()


async def load(port: int, bodies: list[bytes], clients: int) -> tuple[float, list, list]:
    """(seconds, latencies, answers) of the bodies shared out among the clients."""
    latencies, answers = [], []
    shares = [bodies[index::clients] for index in range(clients)]
    started = time.perf_counter()
    await asyncio.gather(*(client(port, share, latencies, answers) for share in shares))
    return time.perf_counter() - started, latencies, answers


def percentile(values: list, share: float) -> float:
    return sorted(values)[min(len(values) - 1, int(share * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--soak", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        test = unpack_test_split(args.data, Path(temp) / "data")
        files = sorted(test.rglob("*.jpg"))[: args.requests]
        folder = Path(temp) / "same"
        for file in files:
            (folder / file.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(file, folder / file.parent.name / file.name)
        bodies = [file.read_bytes() for file in files]
        command = [sys.executable, "-m", "cifarcli", "predict", str(folder), "-o", str(Path(temp) / "rows.csv")]
        predict_rate = len(files) / whole_command(command)[0]
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "cifarcli", "serve", "--port", str(port)],
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    get(url + "/healthz")
                    break
                except OSError:
                    time.sleep(0.2)
            model = json.loads(get(url + "/v1/model"))["file"]
            asyncio.run(load(port, bodies[:64], 8))  # warm-up: the model's first input shapes
            runs = {}
            for clients in args.clients:
                before = batch_totals(url)
                count = len(bodies) if clients > 1 else min(len(bodies), 500)
                seconds, latencies, answers = asyncio.run(load(port, bodies[:count], clients))
                after = batch_totals(url)
                runs[str(clients)] = {
                    "images_per_s": round(count / seconds),
                    "ratio_to_predict": round(count / seconds / predict_rate, 3),
                    "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
                    "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                    "mean_batch": round((after[0] - before[0]) / max(after[1] - before[1], 1), 2),
                    "non_200": sum(status != 200 for status, _ in answers),
                }  # fmt: skip
            rss_before = rss_mb(server.pid)
            soak = [BAD if index % 20 == 7 else bodies[index % len(bodies)] for index in range(args.soak)]
            seconds, _, answers = asyncio.run(load(port, soak, 64))
            rows = [json.loads(payload)["rows"][0] for status, payload in answers if status == 200]
            soak_figures = {
                "requests": args.soak, "seconds": round(seconds, 1), "status_5xx": sum(s >= 500 for s, _ in answers),
                "error_rows": sum(bool(row["error"]) for row in rows), "bad_sent": soak.count(BAD),
                "rss_mb_before": rss_before, "rss_mb_after": rss_mb(server.pid),
            }  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)
    figures = {"code": code_version(), "model": model, "files": len(files), "predict_images_per_s": round(predict_rate),
               "clients": runs, "soak": soak_figures}  # fmt: skip
    append_result("serve", "python benchmarks/serve.py " + " ".join(sys.argv[1:]), figures)


if __name__ == "__main__":
    main()
