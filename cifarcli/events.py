"""What a training run tells its listeners: as it goes, the methods of SilentEvents (train.py
calls them, report.py's display and tracking.py's trackers implement them), and at the end its
TrainResult."""

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class TrainResult:
    run_dir: Path
    model: str
    history: list[dict]
    test_acc: float  # final weights, no TTA, fp32
    test_acc_tta: float  # final weights, with the recipe's TTA, fp32
    tta: int
    train_seconds: float
    precision: str  # of the training steps
    written: list[str]  # the run folder's files
    classes: list[str]
    confusion: list[list[int]]  # final weights, no TTA, fp32; rows: true class, columns: predicted
    per_class: list[dict]  # from the confusion: name, precision, recall, f1, support
    balance: str  # as the run resolved it (balance.py)
    train_counts: list[int]  # training images per class
    balanced_acc: "float | None"  # from per_class: the mean recall (None: no class with test images)
    worst_class: "str | None"  # the class with the lowest recall, and that recall
    worst_recall: "float | None"

    def to_dict(self) -> dict:
        """What `cifar train --json` prints."""
        return {**asdict(self), "run_dir": str(self.run_dir), "train_seconds": round(self.train_seconds, 1)}


class SilentEvents:
    """Listens and does nothing."""

    def start(self, context, model_name, epochs, steps_per_epoch, balance_note): ...
    def epoch_start(self, epoch, steps): ...
    def step(self, step, loss, acc, images_per_s): ...
    def epoch_end(self, row): ...
