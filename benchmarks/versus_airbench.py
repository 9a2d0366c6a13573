"""Against airbench94: the reference and `cifar train` back to back on this machine, and their ratio.

    python benchmarks/versus_airbench.py --reference PATH/airbench_reference.py
                                         [--reference-epochs 9.9] [--seed 0] [--precision auto]
                                         [--model NAME] [--set FIELD=VALUE ...]

Time goals are ratios to Keller Jordan's airbench94 run on the same machine, back to back
(the reference script runs it unchanged except for the device; its timer counts training only),
because machines of one name differ by up to 3x and micro-benchmark factors drift. The reference
runs before and after `cifar train`, and the ratio is to the mean of the two: this host's speed
drifts by up to 2x within minutes, and a drift that runs one way through the three runs then
weighs on both sides alike. `--reference-epochs 3` runs a short reference and uses its estimate for 9.9
epochs (the mean of its epochs after the first). `ratio` is cifar train's training seconds over
airbench94's, `wait_ratio` its whole command's (the user's wait). The machine must be otherwise
idle: with 2 cores, anything beside it halves it. Appends one row to
benchmarks/results/versus_airbench.jsonl.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from common import SHARED_DATA, append_result, code_version, timed_cifar_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="airbench94's reference script")
    parser.add_argument("--reference-epochs", type=float, default=9.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--model", default=None, help="a registered model [the default]")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a recipe field")
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()

    reference_command = [sys.executable, str(args.reference), "--epochs", str(args.reference_epochs)]
    reference_command += ["--seed", str(args.seed)]

    def run_reference() -> dict:
        output = subprocess.run(reference_command, stdout=subprocess.PIPE, text=True, check=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    before = run_reference()
    command = ["cifar", "train", "--data", args.data, "--seed", str(args.seed), "--precision", args.precision]
    command += ["--model", args.model] if args.model else []
    for setting in args.set:
        command += ["--set", setting]
    result, wall_s, _ = timed_cifar_train(command, args.data)
    after = run_reference()
    reference_s = (before["full_run_s_estimate"] + after["full_run_s_estimate"]) / 2
    history = result["history"]
    figures = {
        "kind": "run",
        "code": code_version(),
        "model": result["model"],
        "variant": " ".join(args.set) or None,
        "seed": args.seed,
        "precision": result["precision"],
        "epochs": history[-1]["epoch"],
        "train_s": result["train_seconds"],
        "wall_s": round(wall_s, 1),
        "test_acc": result["test_acc"],
        "test_acc_tta": result["test_acc_tta"],
        "tta": result["tta"],
        "airbench94_epochs_run": args.reference_epochs,
        "airbench94_s_before": before["full_run_s_estimate"],
        "airbench94_s_after": after["full_run_s_estimate"],
        "airbench94_s": round(reference_s, 1),
        "airbench94_test_acc_tta": [before["tta_acc"], after["tta_acc"]] if args.reference_epochs >= 9.9 else None,
        "ratio": round(result["train_seconds"] / reference_s, 3),
        "wait_ratio": round(wall_s / reference_s, 3),
    }
    append_result("versus_airbench", "python benchmarks/versus_airbench.py " + shlex.join(sys.argv[1:]), figures)


if __name__ == "__main__":
    main()
