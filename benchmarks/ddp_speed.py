"""Training images/s with 1 and with N processes (torchrun, gloo on CPU) on the same machine.

    python benchmarks/ddp_speed.py [--nproc 2] [--model tutorial] [--epochs 1]

Both runs train the same recipe with the same global batch on the shared CIFAR-10 copy; the
figure is the mean of the per-epoch images/s that `cifar train` records in history.csv.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import SHARED_DATA, append_to_benchmarks, machine, today

COLUMNS = ["date", "machine", "command", "processes", "training img/s", "test acc"]


def train(arguments: list[str]) -> dict:
    completed = subprocess.run(["cifar", "train", *arguments, "--json"], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(completed.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="tutorial")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as out:
        for nproc in (1, args.nproc):
            arguments = ["-m", args.model, "--data", args.data, "--epochs", str(args.epochs), "--out", out]
            result = train([*arguments, "--nproc", str(nproc)])
            rate = sum(row["images_per_s"] for row in result["history"]) / len(result["history"])
            shown = (
                f"cifar train -m {args.model} --data {Path(args.data).name} --epochs {args.epochs:g} --nproc {nproc}"
            )
            lines.append(f"| {today()} | {machine()} | `{shown}` | {nproc} | {rate:.0f} | {result['test_acc']:.2%} |")
            print(lines[-1], flush=True)
    append_to_benchmarks(
        "Processes: DistributedDataParallel on one machine (`benchmarks/ddp_speed.py`)", lines, COLUMNS
    )


if __name__ == "__main__":
    main()
