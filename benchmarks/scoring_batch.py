"""How fast a checkpoint scores the test split at several batch sizes (classifier.EVAL_BATCH).

    python benchmarks/scoring_batch.py runs/bench/bench/last.pt [--sizes 500 100] [--rounds 8] [--bf16]

One plain pass over the 10,000 test images per size and round, in fp32 as training's final
scoring and `cifar evaluate` run it (or in bf16 autocast, as the per-epoch estimates), the sizes
alternating in order and in reverse, since this host's speed drifts within minutes. A row per
size: the median seconds, every round's, and the median of its per-round ratio to the first size.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, SHARED_DATA, append_to_benchmarks, machine, today

sys.path.insert(0, str(ROOT))
from cifarcli.classifier import TorchClassifier
from cifarcli.data import load_dataset

COLUMNS = ["date", "machine", "command", "batch", "s per pass (median)", "every round's s", "first size / this"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 100])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="score in bf16 autocast, as the per-epoch estimates")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    import torch

    classifier = TorchClassifier.from_checkpoint(args.checkpoint)
    classifier.autocast_dtype = torch.bfloat16 if args.bf16 else None
    images = load_dataset(args.data).test.images
    seconds = {size: [] for size in args.sizes}
    for round_index in range(args.rounds):
        for size in args.sizes if round_index % 2 == 0 else args.sizes[::-1]:
            started = time.perf_counter()
            for start in range(0, len(images), size):
                classifier.predict_logits(images[start : start + size])
            seconds[size].append(time.perf_counter() - started)

    shown = " ".join(sys.argv[1:]).replace(str(args.data), args.data.name)
    first = seconds[args.sizes[0]]
    lines = [
        f"| {today()} | {machine()} | `python benchmarks/scoring_batch.py {shown}` | {size} | "
        f"{statistics.median(times):.2f} | {' / '.join(f'{t:.1f}' for t in times)} | "
        f"{statistics.median(a / b for a, b in zip(first, times, strict=True)):.2f} |"
        for size, times in seconds.items()
    ]
    print("\n".join(lines))
    append_to_benchmarks("Scoring batch size (`benchmarks/scoring_batch.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
