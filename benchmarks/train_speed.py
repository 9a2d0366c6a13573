"""Train one preset end to end and append a row to BENCHMARKS.md.

    python benchmarks/train_speed.py --model tutorial [--epochs N] [--seed S] [--precision P] [--data PATH]

Runs `cifar train ... --json` in a subprocess (the machine should be otherwise idle) and
records date, CPU, command, epochs, training seconds, the command's wall seconds (startup,
per-epoch scoring and the final TTA pass included; decode excluded when the cache is warm,
as it is after the first run), images/s, the training precision, and the final weights' test
accuracy without and with TTA (scored in fp32).
"""

import argparse
import sys

from common import SHARED_DATA, append_to_benchmarks, machine, timed_cifar_train, today

SECTION = "Training runs with precision and wall time (`benchmarks/train_speed.py`)"
TRAIN_COLUMNS = [
    "date", "machine", "command", "epochs", "precision", "train s", "wall s", "img/s", "test acc", "test acc with TTA",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    command = ["cifar", "train", "--data", args.data, "--seed", str(args.seed), "--device", args.device]
    command += ["--precision", args.precision]
    command += ["--model", args.model] if args.model else []
    command += ["--epochs", str(args.epochs)] if args.epochs else []
    result, wall_seconds, shown = timed_cifar_train(command, args.data)
    history = result["history"]
    images_per_s = sum(row["images_per_s"] * row["seconds"] for row in history) / sum(row["seconds"] for row in history)
    row = (
        f"| {today()} | {machine()} | `{shown}` | {len(history)} | {result['precision']} | "
        f"{result['train_seconds']:.0f} | {wall_seconds:.0f} | {images_per_s:.0f} | {result['test_acc']:.2%} | "
        f"{result['test_acc_tta']:.2%} (level {result['tta']}) |"
    )
    print(row)
    append_to_benchmarks(SECTION, [row], TRAIN_COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
