"""Metrics a user can act on: accuracy, loss, per-class precision/recall/F1, confusion matrix,
calibration (how far the softmax confidence is from the accuracy), and the most confident
mistakes; plots.py draws them.

Works on any Classifier (.pt through PyTorch, .onnx through ONNX Runtime without torch).
"""

from dataclasses import asdict, dataclass, field

import numpy as np

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
    balanced_acc: "float | None" = None  # macro_recall: the accuracy were every class equally common
    worst_class: "str | None" = None  # the class with the lowest recall, and that recall
    worst_recall: "float | None" = None
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


def recall_summary(per_class: list[dict]) -> dict:
    """What hides behind accuracy on imbalanced data: the balanced accuracy (the mean recall over
    the classes with images) and the class with the lowest recall."""
    present = [row for row in per_class if row["support"]]
    if not present:
        return {"balanced_acc": None, "worst_class": None, "worst_recall": None}
    worst = min(present, key=lambda row: row["recall"])
    balanced = round(float(np.mean([row["recall"] for row in present])), 4)
    return {"balanced_acc": balanced, "worst_class": worst["name"], "worst_recall": worst["recall"]}


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
    split: "str | None" = None,
    tta: "int | None" = None,
    batch_size: "int | None" = None,
    on_progress=None,
) -> Evaluation:
    """Score a split (default: test) at a TTA level (default: 0, none)."""
    check_compatible(classifier, dataset)
    split, tta = split or "test", tta or 0
    data = dataset.split(split)
    report_batch = (lambda done: on_progress("evaluating", done, len(data))) if on_progress else None
    logits = predict_in_batches(classifier, data.images, batch_size or EVAL_BATCH, tta, report_batch)
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
        **recall_summary(per_class),
        warnings=warnings,
    )
