"""Imbalanced classes: auto's choice, the balanced losses and draws, and a rare class that a
balanced run finds where a plain run misses it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarcli.augment import epoch_draws
from cifarcli.balance import AUTO_BALANCE, balanced_loss, class_weights, resolve_balance, sampling_weights
from cifarcli.checkpoint import load_checkpoint
from cifarcli.models import get_model_entry
from cifarcli.run import prepare_run
from cifarcli.run_folder import open_resumable
from cifarcli.train import train
from tests.conftest import draw

RARE = "vertical"


def test_auto_balances_only_an_imbalanced_split():
    assert resolve_balance("auto", [500, 480, 510])[0] == "none"
    assert resolve_balance("auto", [500, 500, 50])[0] == AUTO_BALANCE
    assert resolve_balance("reweight", [500, 500, 500])[0] == "reweight"  # a choice made is kept


def test_rarer_classes_weigh_more_and_the_weights_average_one():
    weights = class_weights([5000, 500, 50])
    assert weights[0] < weights[1] < weights[2]
    assert weights.mean() == pytest.approx(1.0)


def test_logit_adjustment_adds_the_log_prior_to_the_logits():
    logits, targets = torch.zeros(2, 2), torch.tensor([0, 1])
    loss = balanced_loss("logit-adjust", [90, 10], 0.0, "cpu")(logits, targets)
    # logits + log(0.9, 0.1): the common class is already likely, the rare one must earn it
    assert loss.item() == pytest.approx((-np.log(0.9) - np.log(0.1)) / 2, rel=1e-5)
    logits, targets = torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    smoothed = balanced_loss("logit-adjust", [50, 50, 50], 0.2, "cpu")(logits, targets)  # a uniform prior: plain
    assert smoothed.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.2))


def test_resampled_epochs_draw_every_class_about_equally_often():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    weights = sampling_weights("resample", labels, [900, 90, 10])
    padded, flip_base = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8), torch.zeros(1000, dtype=torch.bool)
    recipe = get_model_entry("tutorial").recipe
    order, flips, _ = epoch_draws(padded, flip_base, recipe, 0, 4, 1, 1000, torch.Generator().manual_seed(0), weights)
    drawn = np.bincount(labels[order.numpy()], minlength=3)
    assert drawn.sum() == 1000 and all(250 < count < 420 for count in drawn), drawn
    again = order == 995  # one image of the rarest class, drawn about 33 times: seen both ways
    assert again.sum() > 10 and 0 < flips[again].sum() < again.sum()
    assert sampling_weights("none", labels, [900, 90, 10]) is None


def planted_folder(root: Path, seed: int = 0) -> Path:
    """Shapes under heavy noise, the vertical stripes rare in training (8 of 208), every class
    alike in the test split: a plain run rarely predicts the rare class."""
    rng = np.random.default_rng(seed)
    train_counts = {"disc": 100, "horizontal": 100, RARE: 8}
    for split, counts in (("train", train_counts), ("test", dict.fromkeys(train_counts, 40))):
        for kind, count in counts.items():
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                noisy = draw(kind, rng) + rng.normal(0, 60, (32, 32, 3))
                Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / split / kind / f"{index:04d}.png")
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory, cache_dir):
    from cifarcli.data import load_dataset

    return load_dataset(planted_folder(tmp_path_factory.mktemp("planted") / "planted"), cache_dir=cache_dir)


def train_planted(dataset, balance: str, folder: Path):
    recipe = get_model_entry("tutorial").recipe.override(epochs=8, batch_size=32, lr=0.05, balance=balance, tta=0)
    folder.mkdir()
    return train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=folder))


@pytest.mark.slow
def test_balancing_raises_the_rare_classs_recall(planted, tmp_path):
    def rare_recall(result):
        return next(row["recall"] for row in result.per_class if row["name"] == RARE)

    plain = train_planted(planted, "none", tmp_path / "none")
    assert rare_recall(plain) <= 0.3
    assert plain.worst_class == RARE and plain.balanced_acc < plain.test_acc + 0.01  # the test split is balanced
    for balance in ("reweight", "resample", "logit-adjust"):
        balanced = train_planted(planted, balance, tmp_path / balance)
        assert rare_recall(balanced) >= rare_recall(plain) + 0.3, balance


@pytest.mark.slow
def test_auto_trains_balanced_data_exactly_as_none(dataset, tmp_path):
    runs = {}
    for balance in ("auto", "none"):
        recipe = get_model_entry("tutorial").recipe.override(epochs=2, batch_size=32, balance=balance)
        (tmp_path / balance).mkdir()
        train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / balance))
        runs[balance] = load_checkpoint(tmp_path / balance / "last.pt")
    assert runs["auto"]["info"].recipe["balance"] == "none"
    for name, weights in runs["none"]["model"].items():
        assert torch.equal(runs["auto"]["model"][name], weights), name


@pytest.mark.slow
def test_auto_is_resolved_once_and_recorded_for_resume(planted, tmp_path):
    result = train_planted(planted, "auto", tmp_path / "run")
    assert result.balance == AUTO_BALANCE and result.train_counts == [100, 100, 8]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["balance"] == AUTO_BALANCE  # --resume continues with it, whatever auto would say then
    assert open_resumable(tmp_path / "run").recipe["balance"] == AUTO_BALANCE
    info = load_checkpoint(tmp_path / "run" / "last.pt")["info"]
    assert info.train_counts == [100, 100, 8] and info.recipe["balance"] == AUTO_BALANCE


@pytest.mark.slow
def test_a_logit_adjusted_model_exports_as_it_is(planted, tmp_path):
    from cifarcli.classifier import OnnxClassifier
    from cifarcli.evaluate import evaluate
    from cifarcli.export import export_checkpoint

    result = train_planted(planted, "logit-adjust", tmp_path / "run")
    report = export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "m.onnx", dataset=planted)
    assert report.agreement == 1.0
    exported = evaluate(OnnxClassifier(tmp_path / "m.onnx"), planted)
    assert exported.accuracy == result.test_acc and exported.worst_recall == result.worst_recall


@pytest.mark.slow
def test_the_run_says_what_auto_chose_and_shows_the_rare_classs_figures(tmp_path, cache_dir):
    from typer.testing import CliRunner

    from cifarcli.cli import app

    folder = planted_folder(tmp_path / "planted")
    command = ["train", "--model", "tutorial", "--data", str(folder), "--epochs", "1", "--precision", "fp32"]
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "runs"), "--name", "run"])
    assert result.exit_code == 0, result.output
    assert f"balance {AUTO_BALANCE} (auto: largest class 12.5x the smallest)" in result.stderr
    assert "balanced_acc" in result.stderr and "balanced accuracy" in result.stdout and "8 to 100" in result.stdout
