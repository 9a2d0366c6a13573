"""Predict past one machine: shards that hold every file once, s3:// through fsspec against a local
S3 server, and a real Dask scheduler with worker processes, one of them killed mid-run."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


def cifar(*arguments, env=None, timeout=300):
    done = subprocess.run([sys.executable, "-m", "cifarcli", *map(str, arguments)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)  # fmt: skip
    return done


def rows_of(stdout: str) -> dict:
    return {row["path"]: (row["label"], row["confidence"]) for row in json.loads(stdout)["rows"]}


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def test_shards_hold_every_file_once_with_the_rows_of_one_run(image_folder, exported):
    whole = cifar("predict", image_folder, "--model", exported, "--json")
    assert whole.returncode == 0, whole.stderr
    shards = [rows_of(cifar("predict", image_folder, "--model", exported, "--shard", f"{i}/3", "--json").stdout)
              for i in range(3)]  # fmt: skip
    assert sum(len(shard) for shard in shards) == len(rows_of(whole.stdout))
    assert {path: row for shard in shards for path, row in shard.items()} == rows_of(whole.stdout)
    assert all(shards)  # each shard got some of the 270 files
    refused = cifar("predict", image_folder, "--model", exported, "--shard", "3/3")
    assert refused.returncode == 2 and "--shard 3/3: give I/N with 0 <= I < N" in refused.stderr


@pytest.fixture
def s3_server():
    """A local S3-compatible server (moto's), on a free port; it starts empty."""
    pytest.importorskip("moto")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(s3_server):
    """(a boto3 client of the local S3 server, the environment and --storage-options that reach it)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # fmt: skip
    return client, S3_CREDENTIALS, json.dumps({"endpoint_url": s3_server})


def test_s3_sources_give_the_rows_a_local_run_gives(s3, image_folder, exported):
    s3, credentials, options = s3
    s3.create_bucket(Bucket="images")
    local = image_folder / "test"
    for path in sorted(local.rglob("*.png")):
        s3.upload_file(str(path), "images", f"shapes/{path.relative_to(local)}")
    s3.put_object(Bucket="images", Key="shapes/.hidden/skipped.png", Body=b"hidden")
    remote = cifar("predict", "s3://images/shapes", "--storage-options", options, "--model", exported, "--json",
                   env=credentials)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    local_rows = rows_of(cifar("predict", local, "--model", exported, "--json").stdout)
    expected = {f"s3://images/shapes/{Path(path).relative_to(local)}": row for path, row in local_rows.items()}
    assert rows_of(remote.stdout) == expected
    missing = cifar("predict", "s3://images/nothing-here", "--storage-options", options, env=credentials)
    assert missing.returncode == 2 and "s3://images/nothing-here" in missing.stderr


def test_a_dask_cluster_gives_the_local_rows_and_loses_none_when_a_worker_dies(noise_pngs, exported, tmp_path):
    pytest.importorskip("distributed")
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    workers = [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
               for i in range(2)]  # fmt: skip
    try:
        wait_for_port(port)
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        local = tmp_path / "local.csv"
        assert cifar("predict", noise_pngs, "--model", exported, "-o", local).returncode == 0
        rows = tmp_path / "rows.csv"
        command = ["predict", noise_pngs, "--model", exported, "--cluster", address, "--batch-size", "8",
                   "-o", rows]  # fmt: skip
        run = subprocess.Popen(
            [sys.executable, "-m", "cifarcli", *map(str, command)], stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 120
        while time.time() < deadline and (not rows.exists() or len(rows.read_text().splitlines()) < 400):
            time.sleep(0.01)
        assert run.poll() is None  # still running: the kill lands mid-run
        workers[0].send_signal(signal.SIGKILL)
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
        with open(rows, newline="") as written, open(local, newline="") as expected:
            cluster_rows, local_rows = list(csv.reader(written)), list(csv.reader(expected))
        assert len({row[0] for row in cluster_rows[1:]}) == len(cluster_rows) - 1 == 3000  # every file once
        assert cluster_rows == local_rows  # the same rows, in the same order
    finally:
        for process in [*workers, scheduler]:
            process.kill()
            process.wait(timeout=30)


def test_check_reads_a_folder_on_s3_as_it_reads_a_local_one(s3, image_folder, tmp_path):
    s3, credentials, options = s3
    s3.create_bucket(Bucket="data")
    local = tmp_path / "shapes"
    for path in sorted(image_folder.rglob("*.png"))[::10]:
        target = local / path.relative_to(image_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    first = sorted((local / "train" / "disc").iterdir())[0]
    (local / "train" / "disc" / "copy.png").write_bytes(first.read_bytes())
    (local / "train" / "disc" / "notes.png").write_text("not an image")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "data", f"shapes/{path.relative_to(local).as_posix()}")
    remote = cifar("check", "s3://data/shapes", "--storage-options", options, "--json", env=credentials)
    assert remote.returncode == 0, remote.stderr
    found = {(f["problem"], f["path"]) for f in json.loads(remote.stdout)["findings"]}
    here = {(f["problem"], f["path"]) for f in json.loads(cifar("check", local, "--json").stdout)["findings"]}
    assert found == here and ("not an image", "train/disc/notes.png") in found
    assert ("exact duplicate", "train/disc/copy.png") in found or (
        "exact duplicate",
        first.relative_to(local).as_posix(),
    ) in found
