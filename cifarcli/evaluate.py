"""Metrics a user can act on: accuracy, loss, per-class precision/recall/F1, confusion matrix.

Works on any Classifier (.pt through PyTorch, .onnx through ONNX Runtime without torch).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cifarcli.checkpoint import atomic_write
from cifarcli.classifier import EVAL_BATCH, Classifier, predict_in_batches
from cifarcli.data import Dataset
from cifarcli.errors import CifarError


@dataclass
class Evaluation:
    model: str
    data: str
    split: str
    tta: int
    images: int
    accuracy: float
    loss: float
    per_class: list[dict]  # name, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    most_confused: list[dict]  # true, predicted, count; the five largest off-diagonal cells
    classes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def check_compatible(classifier: Classifier, dataset: Dataset) -> None:
    model_classes, data_classes = classifier.info.classes, dataset.classes
    if len(model_classes) != len(data_classes):
        raise CifarError(
            f"{classifier.source}: the model has {len(model_classes)} classes but --data {dataset.source} "
            f"has {len(data_classes)}; evaluate on data with the model's classes"
        )
    if model_classes != data_classes:
        raise CifarError(f"{classifier.source}: class names differ from --data {dataset.source}'s ({data_classes})")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def per_class_metrics(confusion: np.ndarray, classes: list[str]) -> list[dict]:
    true_positive = np.diag(confusion).astype(float)
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return [
        {
            "name": name,
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def most_confused_pairs(confusion: np.ndarray, classes: list[str], count: int = 5) -> list[dict]:
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(off_diagonal, axis=None)[::-1][:count]
    pairs = [np.unravel_index(index, confusion.shape) for index in order]
    return [
        {"true": classes[t], "predicted": classes[p], "count": int(confusion[t, p])}
        for t, p in pairs
        if confusion[t, p]
    ]


def evaluate(
    classifier: Classifier,
    dataset: Dataset,
    split: str = "test",
    tta: int = 0,
    batch_size: int = EVAL_BATCH,
    on_progress=None,
) -> Evaluation:
    check_compatible(classifier, dataset)
    data = dataset.split(split)
    report_batch = (lambda done: on_progress("evaluating", done, len(data))) if on_progress else None
    logits = predict_in_batches(classifier, data.images, batch_size, tta, report_batch)
    predictions = logits.argmax(1)
    confusion = confusion_matrix(data.labels, predictions, len(dataset.classes))
    return Evaluation(
        model=classifier.source,
        data=dataset.source,
        split=split,
        tta=tta,
        images=len(data),
        accuracy=round(float((predictions == data.labels).mean()), 5),
        loss=round(cross_entropy(logits, data.labels), 5),
        per_class=per_class_metrics(confusion, dataset.classes),
        confusion=confusion.tolist(),
        most_confused=most_confused_pairs(confusion, dataset.classes),
        classes=dataset.classes,
    )


def write_outputs(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """metrics.json and confusion.png in out_dir, each written atomically."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CifarError(f"--out {out_dir}: cannot create the folder ({error.strerror})") from None
    metrics = out_dir / "metrics.json"
    atomic_write(metrics, lambda file: file.write((json.dumps(evaluation.to_dict(), indent=2) + "\n").encode()))
    picture = out_dir / "confusion.png"
    plot_confusion(picture, evaluation)
    return [metrics, picture]


def plot_confusion(path: Path, evaluation: Evaluation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.array(evaluation.confusion)
    classes = evaluation.classes
    size = max(5, 0.6 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="Predicted class",
        ylabel="True class",
        title=f"Confusion ({evaluation.split}, accuracy {evaluation.accuracy:.2%})",
    )
    axes.set_xticklabels(classes, rotation=45, ha="right")
    axes.set_yticklabels(classes)
    threshold = confusion.max() / 2
    for (row, column), count in np.ndenumerate(confusion):
        color = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)
