"""Out-of-sample probabilities for a training split, for `cifar check --folds K`: K models of a
registered recipe, each trained on all folds but one and scoring the one it never saw.

Needs torch (the `train` extra). Folds are stratified by class and the same for every run. The
time is estimated first from a short probe run of the recipe on this machine.
"""

import tempfile
from pathlib import Path

import numpy as np

from cifarcli.errors import CifarError
from cifarcli.events import SilentEvents

PROBE_EPOCHS = 0.05  # of the recipe, timed to estimate the whole


def fold_of(labels: np.ndarray, folds: int) -> np.ndarray:
    """Each image's fold, 0..folds-1, every class spread evenly (a fixed shuffle)."""
    assignment = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(0)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        assignment[rng.permutation(members)] = np.arange(len(members)) % folds
    return assignment


class FoldProgress(SilentEvents):
    """The training events of one fold as on_progress(description, step, steps)."""

    def __init__(self, description: str, on_progress):
        self.description, self.on_progress, self.done, self.total = description, on_progress, 0, 0

    def start(self, context, model_name, epochs, steps_per_epoch, balance_note):
        self.total = epochs * steps_per_epoch

    def step(self, step, loss, acc, images_per_s):
        self.done += 1
        self.on_progress(self.description, self.done, self.total)


def train_fold(images, labels, classes, train_mask, model_name, recipe, events, folder: Path):
    """A model of the recipe trained on images[train_mask]: its logits on the others."""
    from cifarcli.classifier import EVAL_BATCH, TorchClassifier, predict_in_batches
    from cifarcli.data import Dataset, Split
    from cifarcli.run import prepare_run
    from cifarcli.train import train

    held = ~train_mask
    dataset = Dataset(
        Split(images[train_mask], labels[train_mask]), Split(images[held], labels[held]), classes, "folds"
    )
    result = train(dataset, model_name, recipe, prepare_run(None, None, folder), events)
    model = TorchClassifier.from_checkpoint(result.run_dir / "last.pt")
    return predict_in_batches(model, images[held], EVAL_BATCH, 1), result.train_seconds


def out_of_fold_logits(images, labels, classes, folds: int, model_name: str, settings: dict, on_progress, on_note):
    """Logits (N, classes) of every image from the fold model that never saw it (TTA level 1)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CifarError("--folds trains models: install the train extra, pip install 'cifarcli[train]'") from None
    from cifarcli.models import get_model_entry

    if not 2 <= folds <= len(labels) // 2:
        raise CifarError(f"--folds {folds}: choose from 2 to {len(labels) // 2}")
    # The fold models see the given labels' own frequencies, as the label-issue rule expects, unless --set says.
    recipe = get_model_entry(model_name).recipe.override(**{"balance": "none", **settings})
    assignment, logits = fold_of(labels, folds), np.zeros((len(labels), len(classes)), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="cifar-folds-") as temp:
        probe_mask = assignment != 0
        probe = recipe.override(epochs=PROBE_EPOCHS * recipe.epochs)
        _, seconds = train_fold(
            images, labels, classes, probe_mask, model_name, probe, SilentEvents(), Path(temp) / "probe"
        )
        estimate = seconds / PROBE_EPOCHS * folds
        on_note(f"--folds {folds}: training {folds} models of {model_name} on {probe_mask.sum():,} images each, "
                f"about {estimate / 60:.0f} min here (from a short probe)")  # fmt: skip
        for fold in range(folds):
            events = FoldProgress(f"training fold {fold + 1}/{folds}", on_progress)
            held = assignment == fold
            fold_logits, _ = train_fold(
                images, labels, classes, ~held, model_name, recipe, events, Path(temp) / f"{fold}"
            )
            logits[held] = fold_logits
    return logits
