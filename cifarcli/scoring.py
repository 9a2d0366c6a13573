"""How a training run scores its weights: an estimate after each epoch, exact figures at the end.

Each epoch's test figure is an estimate to watch: a fixed sample of EPOCH_TEST_IMAGES test images
scored in the training precision, a few per cent of an epoch's time. The result (the last epoch's
plain and TTA figures, and best.pt's) is exact: the whole test split in fp32, whatever the
training precision, so that `cifar evaluate` of a checkpoint and of its ONNX export reproduce it
to the digit. Each history row says which it is (test_images, scored_in); a checkpoint keeps an
estimate under names of its own (checkpoint.Metrics).
"""

import copy
import math

from cifarcli.checkpoint import ModelInfo, load_checkpoint
from cifarcli.classifier import EVAL_BATCH, TorchClassifier, predict_in_batches, predict_plain_and_tta_in_batches
from cifarcli.data import Split
from cifarcli.errors import CifarError
from cifarcli.evaluate import accuracy, confusion_matrix, cross_entropy, per_class_metrics, recall_summary
from cifarcli.run_folder import BEST

EPOCH_TEST_IMAGES = 2000


def figures(logits, labels, scored_in: str, classes: list[str]) -> dict:
    """A history row's test columns."""
    per_class = per_class_metrics(confusion_matrix(labels, logits.argmax(1), len(classes)), classes)
    return {
        "test_loss": round(cross_entropy(logits, labels), 5),
        "test_acc": round(accuracy(logits, labels), 5),
        **recall_summary(per_class),
        "test_images": len(labels),
        "scored_in": scored_in,
    }


def estimate(model, info: ModelInfo, sample: Split, context) -> dict:
    """The estimate's test columns: the sample in the run's training precision."""
    estimator = TorchClassifier(model, info, "training", context.device, context.autocast_dtype)
    logits = predict_in_batches(estimator, sample.images, EVAL_BATCH)
    return figures(logits, sample.labels, context.precision, info.classes)


def exact(model, info: ModelInfo, test: Split, device: str, tta: int) -> tuple[dict, float, list[list[int]]]:
    """(the exact test columns, the TTA accuracy, the plain confusion matrix): the whole split in
    fp32, plain and with TTA from the same pass (the plain view is TTA's first)."""
    scorer = TorchClassifier(model, info, "training", device)
    plain, with_tta = predict_plain_and_tta_in_batches(scorer, test.images, EVAL_BATCH, tta)
    confusion = confusion_matrix(test.labels, plain.argmax(1), len(info.classes)).tolist()
    return figures(plain, test.labels, "fp32", info.classes), accuracy(with_tta, test.labels), confusion


def finite_loss(loss: float, epoch: int, step: int) -> float:
    """The running training loss, or one line that stops the run: once the loss is not finite,
    neither are the weights, and no later epoch's checkpoint may replace the last finite one."""
    if math.isfinite(loss):
        return loss
    kept = f"last.pt keeps epoch {epoch}" if epoch else "no epoch completed"
    raise CifarError(
        f"epoch {epoch + 1}, step {step + 1}: the training loss is not finite ({loss}); {kept}; "
        "train again with a lower --lr",
        exit_code=1,
    )


def is_exact(row: dict, test_images: int) -> bool:
    """Whether a history row's test figure is one `cifar evaluate` reproduces."""
    return row["test_images"] == test_images and row["scored_in"] == "fp32"


def checkpoint_metrics(row: dict, test_images: int) -> dict:
    """What a checkpoint records of its history row's test figure: an estimate under its own names."""
    if not is_exact(row, test_images):
        estimated_on = f"{row['test_images']} test images in {row['scored_in']}"
        return {"estimated_test_acc": row["test_acc"], "estimated_on": estimated_on}
    return {"test_acc": row["test_acc"], "test_loss": row["test_loss"]}


def rescore_exactly(folder, model, info: ModelInfo, epoch: int, test: Split, device: str) -> None:
    """best.pt scored on the whole test split in fp32 (its weights loaded into a copy of the
    model) and saved again with those figures in place of its estimate."""
    best = copy.deepcopy(model)
    best.load_state_dict(load_checkpoint(folder.file(BEST))["model"])
    columns, _, _ = exact(best, info, test, device, tta=0)
    folder.save_checkpoint(BEST, best, info.measured(epoch, **checkpoint_metrics(columns, len(test))))
