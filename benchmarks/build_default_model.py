"""Rebuild the model that `cifar predict` uses when no --model is given.

    python benchmarks/build_default_model.py [--checkpoint runs/train/exp/last.pt]

Without --checkpoint it first trains the default recipe on the shared CIFAR-10 copy
(`cifar train --data ../shared/data/cifar10-jpeg.tar.gz`, about 30 minutes of training on a
2-core AVX2 CPU).
Then it exports the final weights (last.pt: never a checkpoint picked on the test split) to
cifarcli/assets/default.onnx with the parity checks of `cifar export`.
"""

import argparse
import json
import subprocess
from pathlib import Path

from common import ROOT, SHARED_DATA

TARGET = ROOT / "cifarcli" / "assets" / "default.onnx"
LIMIT_BYTES = 10_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, help="a last.pt to ship instead of training a new one")
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        command = ["cifar", "train", "--data", args.data, "--name", "default-model", "--json"]
        trained = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
        checkpoint = Path(trained["run_dir"]) / "last.pt"
    command = ["cifar", "export", str(checkpoint), "-o", str(TARGET), "--data", args.data, "--json"]
    report = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
    size = TARGET.stat().st_size
    if size > LIMIT_BYTES:
        raise SystemExit(f"{TARGET} is {size / 1e6:.1f} MB, over the 10 MB limit for the bundled model")
    print(f"wrote {TARGET} ({size / 1e6:.2f} MB) from {checkpoint}; max |diff| {report['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
