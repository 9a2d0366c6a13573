"""How much of TTA's gain survives when only the least sure images get the extra views?

    python benchmarks/tta_fraction.py [--models A.pt B.pt ...] [--data PATH] [--precision fp32|bf16]

For each model, scores the test split once per TTA view (level 2: the image, its mirror, two
one-pixel translations and their mirrors, in fp32 or, with --precision bf16, under bf16 autocast as
training's estimates are scored); then, for each fraction, the accuracy when
only that fraction of each batch of EVAL_BATCH images (those whose two best logits are closest)
gets the weighted sum of the views, and the cost in passes over the data. Appends one row per
fraction (each model's accuracy and their mean) to BENCHMARKS.md. Chose
cifarcli.classifier.TTA_FRACTION.
"""

import argparse
import os
import time

import numpy as np
import torch
from common import ROOT, SHARED_DATA, append_to_benchmarks, machine, today

from cifarcli.classifier import EVAL_BATCH, TorchClassifier, least_sure, tta_views
from cifarcli.data import load_dataset

FRACTIONS = [0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0]


def views_by_batch(classifier, images) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch of EVAL_BATCH: (plain logits, full TTA logits)."""
    batches = []
    for start in range(0, len(images), EVAL_BATCH):
        batch = images[start : start + EVAL_BATCH]
        views = [(weight, classifier.predict_logits(np.ascontiguousarray(v))) for weight, v in tta_views(batch, 2)]
        batches.append((views[0][1], sum(weight * logits for weight, logits in views)))
    return batches


def accuracy_with_fraction(batches, labels, fraction: float) -> float:
    predictions = []
    for plain, full in batches:
        mixed = plain.copy()
        unsure = least_sure(plain, fraction)
        mixed[unsure] = full[unsure]
        predictions.append(mixed.argmax(1))
    return float((np.concatenate(predictions) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=[str(ROOT / "benchmarks" / "default_model" / "model.pt")])
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()

    test = load_dataset(args.data).test
    scored = []
    for path in args.models:
        started = time.perf_counter()
        classifier = TorchClassifier.from_checkpoint(path)
        classifier.autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
        scored.append(views_by_batch(classifier, test.images))
        seconds = time.perf_counter() - started
        print(f"{path}: 6 views of {len(test)} images in {args.precision} in {seconds:.0f} s", flush=True)

    shown = ", ".join(f"`{os.path.relpath(path, ROOT)}`" for path in args.models)
    rows = []
    for fraction in FRACTIONS:
        accuracies = [accuracy_with_fraction(batches, test.labels, fraction) for batches in scored]
        each = " / ".join(f"{acc:.2%}" for acc in accuracies)
        rows.append(
            f"| {today()} | {machine()} | {shown} | {args.precision} | {fraction:.0%} | {1 + 5 * fraction:.2f} | "
            f"{each} | {np.mean(accuracies):.2%} |"
        )
        print(rows[-1])
    columns = ["date", "machine", "models", "scored in", "images given the views", "passes", "test acc of each", "mean"]
    append_to_benchmarks("TTA on the least sure images (`benchmarks/tta_fraction.py`)", rows, columns)


if __name__ == "__main__":
    main()
