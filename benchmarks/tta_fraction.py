"""Which images should get TTA's extra views? Accuracy against passes over the data.

    python benchmarks/tta_fraction.py [--models A.pt B.pt ...] [--data PATH] [--precision fp32|bf16]

For each model, scores the test split once per TTA view of level 2 (the image, its mirror, two
one-pixel translations and their mirrors) in fp32 or, with --precision bf16, under bf16 autocast.
Then, for each rule, the accuracy when in each batch of EVAL_BATCH images the least sure
`mirror` fraction (the smallest gaps between the two best logits) get the mirror view, and the
least sure `translate` fraction of the batch, ranked again after the mirror, get the
translations too (cifarcli.classifier's two stages); the rest keep their plain logits. A rule
whose two fractions are equal gives every view to the same images (the one-stage rule used
before). Passes over the data: 1 + mirror + 4 x translate. Checks that the rule of
cifarcli.classifier, applied here to the stored views, gives the first model's scoring by
`predict_plain_and_tta` to the image, and appends one row per rule to BENCHMARKS.md. Chose
MIRROR_FRACTION and TRANSLATE_FRACTION.
"""

import argparse
import os
import time

import numpy as np
import torch
from common import ROOT, SHARED_DATA, append_to_benchmarks, machine, today

from cifarcli.classifier import (
    EVAL_BATCH,
    MIRROR_FRACTION,
    TRANSLATE_FRACTION,
    TorchClassifier,
    blend_tta,
    mirror,
    predict_plain_and_tta_in_batches,
    translated_views,
)
from cifarcli.data import load_dataset

RULES = [  # (mirror fraction, translate fraction)
    (0.0, 0.0), (0.2, 0.2), (0.25, 0.25), (0.3, 0.3), (0.5, 0.5), (1.0, 1.0),
    (0.25, 0.1), (0.25, 0.15), (0.3, 0.1), (0.3, 0.15), (0.4, 0.1), (0.4, 0.15), (0.4, 0.2),
    (0.5, 0.15), (0.5, 0.2),
]  # fmt: skip
SECTION = "TTA in two stages on the least sure images (`benchmarks/tta_fraction.py`)"
COLUMNS = [
    "date", "machine", "models", "scored in", "mirror to", "translations to", "passes", "test acc of each", "mean",
]  # fmt: skip


def score_views(classifier, images) -> np.ndarray:
    """(6, N, classes): the logits of the image, its mirror and the four translated views."""
    views = np.zeros((6, len(images), len(classifier.info.classes)), np.float32)
    for start in range(0, len(images), EVAL_BATCH):
        batch = images[start : start + EVAL_BATCH]
        for index, view in enumerate([batch, mirror(batch), *translated_views(batch)]):
            views[index, start : start + len(batch)] = classifier.predict_logits(np.ascontiguousarray(view))
    return views


def tta_logits(views: np.ndarray, mirror_fraction: float, translate_fraction: float) -> np.ndarray:
    """cifarcli.classifier.blend_tta, batch by batch as Classifier scores, on stored views."""

    def blend(batch):  # (6, EVAL_BATCH, classes)
        mirror_logits, translated_logits = (lambda rows: batch[1, rows]), (lambda rows: batch[2:, rows])
        return blend_tta(batch[0], 2, mirror_logits, translated_logits, mirror_fraction, translate_fraction)

    return np.concatenate(
        [blend(views[:, start : start + EVAL_BATCH]) for start in range(0, views.shape[1], EVAL_BATCH)]
    )


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
        scored.append(score_views(classifier, test.images))
        print(f"{path}: 6 views of {len(test)} images in {args.precision} in {time.perf_counter() - started:.0f} s")
        if len(scored) == 1:
            _, scoring = predict_plain_and_tta_in_batches(classifier, test.images, EVAL_BATCH, 2)
            stored = tta_logits(scored[0], MIRROR_FRACTION, TRANSLATE_FRACTION)
            agree = (scoring.argmax(1) == stored.argmax(1)).mean()
            print(f"the package's TTA and this rule on the stored views agree on {agree:.2%} of the images")
            assert agree == 1.0, "tta_logits no longer follows Classifier.predict_plain_and_tta"

    shown = ", ".join(f"`{os.path.relpath(path, ROOT)}`" for path in args.models)
    rows = []
    for mirror_fraction, translate_fraction in RULES:
        predictions = [tta_logits(views, mirror_fraction, translate_fraction).argmax(1) for views in scored]
        accuracies = [(predicted == test.labels).mean() for predicted in predictions]
        each = " / ".join(f"{acc:.2%}" for acc in accuracies)
        passes = 1 + mirror_fraction + 4 * translate_fraction
        rows.append(
            f"| {today()} | {machine()} | {shown} | {args.precision} | {mirror_fraction:.0%} | "
            f"{translate_fraction:.0%} | {passes:.2f} | {each} | {np.mean(accuracies):.3%} |"
        )
        print(rows[-1].split(" | ")[4:], flush=True)
    append_to_benchmarks(SECTION, rows, COLUMNS)


if __name__ == "__main__":
    main()
