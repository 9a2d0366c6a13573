"""torchrun: two CPU processes with gloo take the steps one process takes on the same global
batch; all ranks end with identical weights (checked inside training, which fails otherwise) and
only rank 0 writes the run folder.

Without BatchNorm (tutorial) a step on two shards averages the same gradient as one step on the
whole batch, up to the order of the sums: the losses agree to a few thousandths. With BatchNorm
(airbench-cpu) each gloo rank normalises by its own shard, so the steps differ a little more."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def train_command(image_folder, out, name, model, extra=()):
    """The command line of a run with the recipe the in-process run below overrides alike."""
    return [
        sys.executable, "-m", "cifarcli", "train", "-m", model, "--precision", "fp32", "--data", str(image_folder),
        "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--out", str(out), "--name", name, "--json", *extra,
    ]  # fmt: skip


def run(command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout[completed.stdout.index("{") :])


@pytest.mark.parametrize(("model", "loss_tolerance"), [("tutorial", 0.005), ("airbench-cpu", 0.03)])
def test_two_gloo_processes_match_one_process(model, loss_tolerance, image_folder, dataset, tmp_path):
    from cifarcli.models import get_model_entry
    from cifarcli.run import prepare_run
    from cifarcli.train import train

    two = run(train_command(image_folder, tmp_path, "ddp", model, ["--nproc", "2"]))
    recipe = get_model_entry(model).recipe.override(epochs=2, batch_size=32, lr=0.05)
    one = train(dataset, model, recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "single"))
    assert two["run_dir"] == str(tmp_path / "ddp") and not (tmp_path / "ddp2").exists()
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["processes"] == 2 and config["recipe"]["batch_size"] == 32
    assert len(two["history"]) == 2 and (tmp_path / "ddp" / "last.pt").exists()
    losses = [[row["train_loss"] for row in history] for history in (two["history"], one.history)]
    assert losses[0] == pytest.approx(losses[1], abs=loss_tolerance)
    assert abs(two["test_acc"] - one.test_acc) <= 0.05  # 90 test images: a few of them
