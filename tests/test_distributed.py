"""torchrun: two CPU processes with gloo train the same model as one process with the same
global batch; all ranks end with identical weights (checked inside training, which fails
otherwise) and only rank 0 writes the run folder."""

import json
import os
import subprocess
import sys

import pytest


def train_command(image_folder, out, name, model, extra=()):
    return [
        sys.executable, "-m", "cifarcli", "train", "-m", model, "--data", str(image_folder),
        "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--out", str(out), "--name", name, "--json", *extra,
    ]  # fmt: skip


def run(command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout[completed.stdout.index("{") :])


@pytest.mark.parametrize("model", ["tutorial", "airbench-cpu"])
def test_two_gloo_processes_match_one_process(model, image_folder, cache_dir, tmp_path):
    two = run(train_command(image_folder, tmp_path, "ddp", model, ["--nproc", "2"]))
    one = run(train_command(image_folder, tmp_path, "single", model))
    assert two["run_dir"] == str(tmp_path / "ddp") and not (tmp_path / "ddp2").exists()
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["processes"] == 2 and config["recipe"]["batch_size"] == 32
    assert len(two["history"]) == 3 and (tmp_path / "ddp" / "last.pt").exists()
    assert abs(two["test_acc"] - one["test_acc"]) <= 0.05
    # The same global batch means the same number of steps, and so the same images per epoch.
    assert [row["train_acc"] for row in two["history"]] == pytest.approx(
        [row["train_acc"] for row in one["history"]], abs=0.08
    )
