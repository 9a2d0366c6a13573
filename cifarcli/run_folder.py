"""A training run's folder: runs/train/<name>/, every file in it, and what resuming it needs.

    RunFolder.create(out, name)   a new folder, numbered atomically: exp, exp2, exp3, ...
    open_resumable(path)          an existing run, its config.json, last.pt and history read
                                  and checked once

This module alone spells the folder's file names. Every write is atomic and does nothing when
the folder belongs to another process (`writes` False: ranks other than 0 under torchrun).
"""

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cifarcli.checkpoint import atomic_write, check_readable_schema, load_checkpoint, save_checkpoint
from cifarcli.errors import CifarError
from cifarcli.recipes import upgrade_recipe_fields

LAST, BEST = "last.pt", "best.pt"
HISTORY, CURVES, CONFIG = "history.csv", "curves.png", "config.json"
CONFUSION = "confusion.png"  # the final weights' confusion matrix, drawn for the trackers (--log)
TRACKING = "tracking.json"  # what the trackers need to continue: the MLflow run's id
HELD_OUT = "held_out.txt"  # a class-folder source's test files, one path inside the source a line
EXCLUDED = "excluded.txt"  # the files `cifar train --exclude` left out, one path inside the source a line
# config.json's schema: 2, the recipe's crop stages (crops); 1 (no "schema" key): one small crop.
CONFIG_SCHEMA = 2
HISTORY_FIELDS = [
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "balanced_acc", "worst_class", "worst_recall",
    "test_images", "scored_in", "lr", "seconds", "images_per_s",
]  # fmt: skip


@dataclass(frozen=True)
class RunFolder:
    path: Path
    writes: bool = True  # False in processes that share the folder without owning it

    @classmethod
    def create(cls, out: Path, name: str) -> "RunFolder":
        """out/<name>, or <name>2, <name>3, ... when taken (as Ultralytics numbers runs). Each
        candidate is claimed by mkdir itself, so runs started at once take different folders."""
        if not name or Path(name).name != name or name in (".", ".."):
            raise CifarError(f"--name {name}: give a plain folder name; use --out to choose where runs go")
        try:
            out.mkdir(parents=True, exist_ok=True)
            number = 1
            while True:
                candidate = out / (name if number == 1 else f"{name}{number}")
                try:
                    candidate.mkdir()
                    return cls(candidate)
                except FileExistsError:
                    number += 1
        except OSError as error:
            raise CifarError(f"--out {out}: cannot create a run folder there ({error.strerror})") from None

    def file(self, name: str) -> Path:
        return self.path / name

    def written(self) -> list[str]:
        """The names of the files a run has written, in the order a user reads about them."""
        names = (BEST, LAST, HISTORY, CURVES, CONFIG, HELD_OUT, EXCLUDED, CONFUSION, TRACKING)
        return [name for name in names if self.file(name).exists()]

    def write_config(self, config: dict) -> None:
        self._write(CONFIG, (json.dumps({"schema": CONFIG_SCHEMA, **config}, indent=2) + "\n").encode())

    def read_config(self) -> dict:
        """config.json in today's schema, from any schema up to this one's (ValueError when
        unreadable, CifarError when its schema is malformed or newer than this cifarcli reads)."""
        config = json.loads(self.file(CONFIG).read_text())
        check_readable_schema(config, CONFIG_SCHEMA, str(self.file(CONFIG)))  # every older one upgrades alike
        return {**config, "schema": CONFIG_SCHEMA, "recipe": upgrade_recipe_fields(config["recipe"])}

    def write_history(self, rows: list[dict]) -> None:
        text = io.StringIO()
        # A row read from an older history.csv lacks the newer columns: they stay empty.
        writer = csv.DictWriter(text, HISTORY_FIELDS, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self._write(HISTORY, text.getvalue().encode())

    def write_held_out(self, names: list[str]) -> None:
        """The test files held out of a ROOT/<class>/* source, one a line; nothing when none."""
        if names:
            self._write(HELD_OUT, "".join(f"{name}\n" for name in names).encode())

    def write_excluded(self, names: list[str]) -> None:
        """The files --exclude left out, one a line; nothing when none."""
        if names:
            self._write(EXCLUDED, "".join(f"{name}\n" for name in sorted(names)).encode())

    def read_excluded(self) -> list[str]:
        file = self.file(EXCLUDED)
        return file.read_text().splitlines() if file.exists() else []

    def save_checkpoint(self, name: str, model, info, training_state: "dict | None" = None) -> None:
        if self.writes:
            save_checkpoint(self.file(name), model, info, training_state)

    def plot_curves(self, rows: list[dict]) -> None:
        """Accuracy and test accuracy against epoch (as the Keras tutorial plots them), and loss."""
        if not self.writes:
            return
        from cifarcli.plots import pyplot, save_figure

        epochs = [row["epoch"] for row in rows]
        figure, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
        left.plot(epochs, [row["train_acc"] for row in rows], marker="o", label="accuracy")
        left.plot(epochs, [row["test_acc"] for row in rows], marker="o", label="test accuracy")
        left.set(xlabel="Epoch", ylabel="Accuracy", title="Accuracy")
        right.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="loss")
        right.plot(epochs, [row["test_loss"] for row in rows], marker="o", label="test loss")
        right.set(xlabel="Epoch", ylabel="Loss", title="Loss")
        for axes in (left, right):
            axes.grid(alpha=0.3)
            axes.legend()
        save_figure(figure, self.file(CURVES))

    def read_tracking(self) -> dict:
        try:
            return json.loads(self.file(TRACKING).read_text())
        except (OSError, ValueError):
            return {}

    def write_tracking(self, values: dict) -> None:
        self._write(TRACKING, (json.dumps(values, indent=2) + "\n").encode())

    def read_history(self) -> list[dict]:
        parse = {"epoch": int, "test_images": int, "scored_in": str, "worst_class": str}
        with open(self.file(HISTORY), newline="") as file:
            rows = csv.DictReader(file)
            return [{key: parse.get(key, float)(value) for key, value in row.items() if value != ""} for row in rows]

    def _write(self, name: str, data: bytes) -> None:
        if self.writes:
            atomic_write(self.file(name), lambda file: file.write(data))


# ---------------------------------------------------------------- resuming


@dataclass(frozen=True)
class ResumableRun:
    """What a run folder fixes about the run that continues it."""

    folder: RunFolder
    model: str
    recipe: dict
    data: str  # the resolved data source the run trained on
    val_fraction: float  # of a ROOT/<class>/* source, held out as its test split (0: none)
    precision: str
    checkpoint: dict = field(repr=False)  # last.pt, loaded
    history: list = field(repr=False)  # history.csv's rows up to last.pt's epoch
    excluded: list = field(default_factory=list)  # excluded.txt: the files the run leaves out

    @property
    def epoch(self) -> int:
        return self.checkpoint["info"].epoch

    @property
    def finished(self) -> bool:
        """Whether last.pt holds the run's last epoch (a fraction of an epoch counts as one)."""
        return (
            self.epoch >= math.ceil(self.recipe["epochs"]) and self.checkpoint["info"].metrics.test_acc_tta is not None
        )

    def recorded(self) -> dict:
        """The options of `cifar train` that the run folder fixes, by option name."""
        data = {"data": self.data, "val_fraction": self.val_fraction or None}
        return {"model": self.model, "precision": self.precision, **data, **self.recipe}

    def refuse_contradictions(self, given: dict) -> None:
        """Options given with --resume (by name, None when not given) must agree with the run
        folder; one line names the first that does not."""
        recorded = self.recorded()
        for name, value in given.items():
            if value is None or (name == "precision" and value == "auto"):
                continue
            if name in ("name", "out"):
                raise CifarError(f"--{name} {value}: --resume continues the run in its folder; drop --{name}")
            if name == "data":
                value = str(Path(value).expanduser().resolve())
            if name == "crops":
                value = [list(stage) for stage in value]
            if value != recorded.get(name):
                option = "--" + name.replace("_", "-")
                has = "no held-out split" if name == "val_fraction" and not self.val_fraction else recorded.get(name)
                raise CifarError(f"{option} {value}: the run being resumed has {has}; drop {option}")


def open_resumable(path: Path) -> ResumableRun:
    """Read a run folder (or its last.pt) once: config.json for how to continue, last.pt for
    the weights and training state, history.csv for the epochs done. Training checks the data
    against the checkpoint once the data is loaded (check_same_data)."""
    checkpoint_file = path / LAST if path.is_dir() else path
    folder = RunFolder(checkpoint_file.parent)
    if not checkpoint_file.is_file() and folder.file(CONFIG).is_file():
        raise CifarError(f"--resume {path}: the run stopped before its first epoch ended (no {LAST}); start a new run")
    if not checkpoint_file.is_file():
        raise CifarError(f"--resume {path}: no {LAST} there; give a run folder or its {LAST}")
    try:
        config = folder.read_config()
        recipe, data, precision = config["recipe"], config["data"], config["precision"]
        source, val_fraction = data["source"], float(data.get("val_fraction") or 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CifarError(
            f"--resume {path}: {folder.file(CONFIG)} is missing or unreadable; it records the data and recipe "
            "to resume with"
        ) from None
    checkpoint = load_checkpoint(checkpoint_file)
    if "training" not in checkpoint:
        raise CifarError(f"--resume {path}: this checkpoint has no training state; resume from {LAST}")
    epoch = checkpoint["info"].epoch
    try:
        history = folder.read_history()[:epoch]  # it may hold an epoch last.pt does not (a kill between writes)
    except (OSError, ValueError, KeyError, TypeError):
        history = []
    if len(history) < epoch:
        raise CifarError(f"--resume {path}: {folder.file(HISTORY)} lacks epochs that {LAST} has; start a new run")
    excluded = folder.read_excluded()
    return ResumableRun(folder, config["model"], recipe, source, val_fraction, precision, checkpoint, history, excluded)


def check_same_run(saved, info, path: Path) -> None:
    """The checkpoint being continued must describe the same model, recipe, precision and data
    as the run rebuilt from its folder."""
    if saved.model != info.model or saved.recipe != info.recipe:
        raise CifarError(f"--resume {path}: the model or recipe differs from the checkpoint's; drop the overrides")
    if saved.precision != info.precision:
        raise CifarError(f"--resume {path}: the run trained in {saved.precision}, not {info.precision}")
    if saved.classes != info.classes or saved.mean != info.mean or saved.std != info.std:
        raise CifarError(f"--resume {path}: the data differs from the checkpoint's; pass the same --data")
