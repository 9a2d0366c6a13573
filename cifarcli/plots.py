"""Pictures of an evaluation (and the training curves' helpers): matplotlib, imported only here and
only when a picture is drawn, each file written atomically. `--out` writes metrics.json beside them.
"""

import json
from pathlib import Path

import numpy as np

from cifarcli.checkpoint import atomic_write
from cifarcli.errors import CifarError


def write_outputs(evaluation, out_dir: Path, images: np.ndarray) -> tuple[list[Path], list[str]]:
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


def plot_per_class_accuracy(path: Path, evaluation) -> None:
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


def plot_reliability(path: Path, evaluation) -> None:
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


def plot_mistakes(path: Path, evaluation, images: np.ndarray) -> None:
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


def plot_confusion(path: Path, evaluation) -> None:
    draw_confusion(
        path, evaluation.confusion, evaluation.classes, f"{evaluation.split}, accuracy {evaluation.accuracy:.2%}"
    )


def draw_confusion(path: Path, counts: list[list[int]], classes: list[str], subtitle: str) -> None:
    """Counts by true class (rows) and predicted class (columns), each cell written in it."""
    plt = pyplot()
    confusion = np.array(counts)
    size = max(5, 0.6 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="Predicted class",
        ylabel="True class",
        title=f"Confusion ({subtitle})",
    )
    axes.set_xticklabels(classes, rotation=45, ha="right")
    axes.set_yticklabels(classes)
    threshold = confusion.max() / 2
    for (row, column), count in np.ndenumerate(confusion):
        color = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    save_figure(figure, path)
