"""airbench94 and `cifar train` back to back on this machine; appends both and their ratio.

    python benchmarks/versus_airbench.py [--reference-epochs 9.9] [--seed 0] [--precision auto]

Time goals are ratios to Keller Jordan's airbench94 run on the same machine in the same sitting
(../shared/tools/airbench_reference.py; its timer counts training only), because machines here
differ by up to 3x and micro-benchmark factors drift. `--reference-epochs 3` runs a short
reference and uses its estimate for 9.9 epochs (the mean of its epochs after the first).
The reference runs before and after `cifar train`, and the ratio is to the mean of the two: this
host's speed drifts by up to 2x within minutes, and a drift that runs one way through the
sitting then weighs on both sides alike. The machine must be otherwise idle: with 2 cores,
anything beside it halves it.
"""

import argparse
import json
import subprocess
import sys

from common import ROOT, SHARED_DATA, append_to_benchmarks, machine, timed_cifar_train, today

REFERENCE = ROOT.parent / "shared" / "tools" / "airbench_reference.py"
COLUMNS = [
    "date", "machine", "airbench94 train s (TTA acc)", "cifar train command", "train s", "wall s",
    "test acc with TTA", "ratio train s / airbench94",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference-epochs", type=float, default=9.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()

    reference_command = [sys.executable, str(REFERENCE), "--epochs", str(args.reference_epochs)]
    reference_command += ["--seed", str(args.seed)]

    def run_reference() -> dict:
        output = subprocess.run(reference_command, stdout=subprocess.PIPE, text=True, check=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    before = run_reference()
    command = ["cifar", "train", "--data", args.data, "--seed", str(args.seed), "--precision", args.precision]
    result, wall_s, shown = timed_cifar_train(command, args.data)
    after = run_reference()
    # Its own timer for 9.9 epochs, or the estimate from a short run.
    times = [reference["full_run_s_estimate"] for reference in (before, after)]
    reference_s = sum(times) / 2
    accuracies = f"{before['tta_acc']:.2%} / {after['tta_acc']:.2%}" if args.reference_epochs == 9.9 else "estimated"
    row = (
        f"| {today()} | {machine()} | {times[0]:.0f} before, {times[1]:.0f} after: {reference_s:.0f} "
        f"({accuracies}; {args.reference_epochs:g} epochs run) | "
        f"`{shown}` ({result['precision']}) | {result['train_seconds']:.0f} | {wall_s:.0f} | "
        f"{result['test_acc_tta']:.2%} | {result['train_seconds'] / reference_s:.2f} |"
    )
    print(row)
    append_to_benchmarks(
        "Training against airbench94 on the same machine (`benchmarks/versus_airbench.py`)", [row], COLUMNS
    )


if __name__ == "__main__":
    main()
