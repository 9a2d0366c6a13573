"""How much of TTA's gain survives when only the least sure images get the extra views?

    python benchmarks/tta_fraction.py [--model benchmarks/default_model/model.pt] [--data PATH]

Scores the test split once per TTA view (level 2: the image, its mirror, two one-pixel
translations and their mirrors, in fp32), then, for each fraction, the accuracy when only that
fraction of each batch of EVAL_BATCH images (those whose two best logits are closest) gets the
weighted sum of the views, and the cost in passes over the data. Appends the rows to
BENCHMARKS.md. Chose cifarcli.classifier.TTA_FRACTION.
"""

import argparse
import os
import time

import numpy as np
from common import ROOT, SHARED_DATA, append_to_benchmarks, machine, today

from cifarcli.classifier import EVAL_BATCH, TorchClassifier, least_sure, tta_views
from cifarcli.data import load_dataset

FRACTIONS = [0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0]
COLUMNS = ["date", "machine", "model", "images given the views", "passes over the data", "test acc"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "benchmarks" / "default_model" / "model.pt"))
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()

    test = load_dataset(args.data).test
    classifier = TorchClassifier.from_checkpoint(args.model)
    started = time.perf_counter()
    batches = []  # per batch: (plain logits, full TTA logits)
    for start in range(0, len(test), EVAL_BATCH):
        images = test.images[start : start + EVAL_BATCH]
        views = [
            (weight, classifier.predict_logits(np.ascontiguousarray(view))) for weight, view in tta_views(images, 2)
        ]
        batches.append((views[0][1], sum(weight * logits for weight, logits in views)))
    print(f"{len(tta_views(test.images[:1], 2))} views of {len(test)} images in {time.perf_counter() - started:.0f} s")

    rows = []
    for fraction in FRACTIONS:
        predictions = []
        for plain, full in batches:
            mixed = plain.copy()
            unsure = least_sure(plain, fraction)
            mixed[unsure] = full[unsure]
            predictions.append(mixed.argmax(1))
        accuracy = float((np.concatenate(predictions) == test.labels).mean())
        passes = 1 + 5 * fraction
        shown = os.path.relpath(args.model, ROOT)
        rows.append(f"| {today()} | {machine()} | `{shown}` | {fraction:.0%} | {passes:.2f} | {accuracy:.2%} |")
        print(rows[-1])
    append_to_benchmarks("TTA on the least sure images (`benchmarks/tta_fraction.py`)", rows, COLUMNS)


if __name__ == "__main__":
    main()
