"""Metrics a user can act on: accuracy, loss, per-class precision/recall/F1, confusion matrix,
calibration (how far the softmax confidence is from the accuracy), and the most confident
mistakes; with `--out`, pictures of them.

Works on any Classifier (.pt through PyTorch, .onnx through ONNX Runtime without torch).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cifarcli.checkpoint import atomic_write
from cifarcli.classifier import EVAL_BATCH, Classifier, predict_in_batches, softmax
from cifarcli.data import Dataset
from cifarcli.errors import CifarError

CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
GALLERY_SIZE = 25  # most confident mistakes shown and listed


@dataclass
class Evaluation:
    model: str
    data: str
    split: str
    tta: int
    images: int
    accuracy: float
    loss: float
    per_class: list[dict]  # name, precision, recall (the class's accuracy), f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    most_confused: list[dict]  # true, predicted, count; the five largest off-diagonal cells
    classes: list[str]
    ece: float  # expected calibration error: images-weighted |accuracy - confidence| over the bins
    reliability: list[dict]  # per confidence bin: lower, upper, images, confidence, accuracy
    confident_mistakes: list[dict]  # index in the split, true, predicted, confidence; most confident first
    macro_precision: "float | None" = None  # the per-class means, over the classes with images in the split
    macro_recall: "float | None" = None
    macro_f1: "float | None" = None
    warnings: list[str] = field(default_factory=list)  # what the figures leave out, one line each

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits (N, classes) against labels (N,)."""
    return float((logits.argmax(1) == labels).mean())


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
    """Precision, recall (the class's accuracy), F1 and support per class. A class with no images
    in the split has no recall or F1 (None), and no precision if nothing was predicted as it."""
    true_positive = np.diag(confusion).astype(float)
    predicted, support = confusion.sum(0), confusion.sum(1)
    rows = []
    for name, hits, guessed, present in zip(classes, true_positive, predicted, support, strict=True):
        precision = hits / guessed if guessed else (None if not present else 0.0)
        recall = hits / present if present else None
        f1 = None if recall is None else (2 * precision * recall / (precision + recall) if hits else 0.0)
        shown = {key: None if value is None else round(float(value), 4)
                 for key, value in (("precision", precision), ("recall", recall), ("f1", f1))}  # fmt: skip
        rows.append({"name": name, **shown, "support": int(present)})
    return rows


def macro_averages(per_class: list[dict]) -> dict:
    """The mean precision, recall and F1 over the classes that have images in the split."""
    present = [row for row in per_class if row["support"]]
    return {f"macro_{key}": round(float(np.mean([row[key] or 0.0 for row in present])), 4) if present else None
            for key in ("precision", "recall", "f1")}  # fmt: skip


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the cross-entropy of softmax(logits / T) (Guo et al.
    2017), by a log-spaced search from 0.05 to 20 and a finer one around the best. Dividing by T
    changes no prediction, only how confident each one says it is."""
    logits = logits.astype(np.float64)

    def loss(temperature: float) -> float:
        return cross_entropy(logits / temperature, labels)

    best = min(np.geomspace(0.05, 20.0, 121), key=loss)  # neighbours 5% apart
    return round(float(min(np.geomspace(best / 1.06, best * 1.06, 41), key=loss)), 4)


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[float, list]:
    """(expected calibration error, one row per non-empty bin) of top-1 confidences."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, error = [], 0.0
    for index in range(bins):
        members = which == index
        if not members.any():
            continue
        mean_confidence, accuracy = float(confidence[members].mean()), float(correct[members].mean())
        error += members.mean() * abs(accuracy - mean_confidence)
        rows.append(
            {
                "lower": round(float(edges[index]), 4),
                "upper": round(float(edges[index + 1]), 4),
                "images": int(members.sum()),
                "confidence": round(mean_confidence, 5),
                "accuracy": round(accuracy, 5),
            }
        )
    return round(float(error), 5), rows


def most_confident_mistakes(probabilities, labels, classes, count: int = GALLERY_SIZE) -> list[dict]:
    predictions, confidence = probabilities.argmax(1), probabilities.max(1)
    wrong = np.flatnonzero(predictions != labels)
    ranked = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return [
        {
            "index": int(i),
            "true": classes[labels[i]],
            "predicted": classes[predictions[i]],
            "confidence": round(float(confidence[i]), 5),
        }
        for i in ranked
    ]


def most_confused_pairs(confusion: np.ndarray, classes: list[str], count: int = 5) -> list[dict]:
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(off_diagonal, axis=None)[::-1][:count]
    pairs = [np.unravel_index(index, confusion.shape) for index in order]
    return [
        {"true": classes[t], "predicted": classes[p], "count": int(confusion[t, p])}
        for t, p in pairs
        if off_diagonal[t, p]
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
    probabilities = softmax(logits.astype(np.float64) / classifier.info.temperature)
    predictions = logits.argmax(1)
    confusion = confusion_matrix(data.labels, predictions, len(dataset.classes))
    ece, reliability = calibration(probabilities.max(1), predictions == data.labels)
    per_class = per_class_metrics(confusion, dataset.classes)
    missing = [row["name"] for row in per_class if not row["support"]]
    warnings = [
        f"no {split} images of class '{name}' in --data {dataset.source}: it is left out of the per-class averages"
        for name in missing
    ]
    return Evaluation(
        model=classifier.source,
        data=dataset.source,
        split=split,
        tta=tta,
        images=len(data),
        accuracy=round(accuracy(logits, data.labels), 5),
        loss=round(cross_entropy(logits, data.labels), 5),
        per_class=per_class,
        confusion=confusion.tolist(),
        most_confused=most_confused_pairs(confusion, dataset.classes),
        classes=dataset.classes,
        ece=ece,
        reliability=reliability,
        confident_mistakes=most_confident_mistakes(probabilities, data.labels, dataset.classes),
        **macro_averages(per_class),
        warnings=warnings,
    )


def write_outputs(evaluation: Evaluation, out_dir: Path, images: np.ndarray) -> tuple[list[Path], list[str]]:
    """metrics.json and four pictures in out_dir, each written atomically: (the files written,
    the pictures skipped because matplotlib is not installed). images: the evaluated split's
    uint8 pixels, for the gallery of mistakes."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CifarError(f"--out {out_dir}: cannot create the folder ({error.strerror})") from None
    metrics = out_dir / "metrics.json"
    atomic_write(metrics, lambda file: file.write((json.dumps(evaluation.to_dict(), indent=2) + "\n").encode()))
    pictures = {
        "confusion.png": plot_confusion,
        "per_class_accuracy.png": plot_per_class_accuracy,
        "reliability.png": plot_reliability,
        "mistakes.png": lambda figure_path, e: plot_mistakes(figure_path, e, images),
    }
    try:
        pyplot()
    except ModuleNotFoundError:
        return [metrics], list(pictures)
    for name, plot in pictures.items():
        plot(out_dir / name, evaluation)
    return [metrics, *(out_dir / name for name in pictures)], []


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100))
    pyplot().close(figure)


def plot_per_class_accuracy(path: Path, evaluation: Evaluation) -> None:
    plt = pyplot()
    names = [row["name"] for row in evaluation.per_class]
    accuracy = [row["recall"] or 0.0 for row in evaluation.per_class]
    figure, axes = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 4))
    axes.bar(range(len(names)), accuracy, color="tab:blue")
    axes.axhline(evaluation.accuracy, color="black", linestyle="--", label=f"overall {evaluation.accuracy:.2%}")
    axes.set(ylim=(0, 1), ylabel="Accuracy (recall)", title=f"Accuracy per class ({evaluation.split})")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.legend(loc="lower right")
    save_figure(figure, path)


def plot_reliability(path: Path, evaluation: Evaluation) -> None:
    """Accuracy against confidence per bin: a calibrated model's bars touch the diagonal."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    bins = evaluation.reliability
    axes.bar(
        [row["lower"] for row in bins],
        [row["accuracy"] for row in bins],
        width=[row["upper"] - row["lower"] for row in bins],
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    axes.plot([0, 1], [0, 1], color="tab:red", linestyle="--", label="perfect calibration")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="Confidence (top-1 softmax)",
        ylabel="Accuracy",
        title=f"Reliability ({evaluation.split}), ECE {evaluation.ece:.2%}",
    )
    axes.legend(loc="upper left")
    save_figure(figure, path)


def plot_mistakes(path: Path, evaluation: Evaluation, images: np.ndarray) -> None:
    """The most confident mistakes: each image with its true and predicted class."""
    plt = pyplot()
    mistakes = evaluation.confident_mistakes
    columns = 5
    rows = max(1, -(-len(mistakes) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, mistake in zip(grid.flat, mistakes, strict=False):
        axes.imshow(images[mistake["index"]], interpolation="nearest")
        axes.set_title(f"true {mistake['true']}\npred {mistake['predicted']} {mistake['confidence']:.0%}", fontsize=8)
    figure.suptitle(f"Most confident mistakes ({evaluation.split})" if mistakes else "No mistakes")
    save_figure(figure, path)


def plot_confusion(path: Path, evaluation: Evaluation) -> None:
    plt = pyplot()
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
    save_figure(figure, path)
