"""Rebuild the bundled models that `cifar predict` uses when no --model is given.

    python tools/build_default_model.py [--checkpoint runs/train/exp/last.pt] [--data PATH]

The source is SOURCE below: the final weights (a last.pt, never a checkpoint picked on the test
split) of a default `cifar train` run, without its optimizer state, kept in the repository so
that a rebuild (another opset, a newer exporter) needs no retraining. `--checkpoint` ships
another run instead and replaces SOURCE with its weights.

Writes cifarcli/assets/default.onnx (fp32) and, through `cifar export --int8 --features`,
default.int8.onnx, both with the features output that `cifar check` compares,
refusing an INT8 model more than MAX_INT8_LOSS below fp32 on the test split.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SOURCE = ROOT / "tools" / "default_model" / "model.pt"
LIMIT_BYTES = 10_000_000
MAX_INT8_LOSS = 0.003


def keep_weights_only(checkpoint: Path, destination: Path) -> None:
    """A checkpoint with its training state dropped (half the size; nothing to resume)."""
    import torch

    from cifarcli.checkpoint import atomic_write, load_checkpoint

    payload = load_checkpoint(checkpoint)
    weights = {"format": payload["format"], "info": payload["info"].to_dict(), "model": payload["model"]}
    atomic_write(destination, lambda file: torch.save(weights, file))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from cifarcli.bundled import MODELS

    target = MODELS["fp32"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help=f"a last.pt to ship instead of {SOURCE.name}")
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()
    if args.checkpoint:
        keep_weights_only(args.checkpoint, SOURCE)
    command = [
        sys.executable,
        "-m",
        "cifarcli",
        "export",
        str(SOURCE),
        "-o",
        str(target),
        "--data",
        args.data,
        "--int8",
        "--features",
        "--json",
    ]
    report = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
    int8 = report["int8"]
    loss = int8["fp32_test_acc"] - int8["int8_test_acc"]
    if loss > MAX_INT8_LOSS:
        Path(int8["path"]).unlink()
        raise SystemExit(f"INT8 loses {loss:.2%} against fp32 (limit {MAX_INT8_LOSS:.1%}); not shipped")
    for path in (target, Path(int8["path"])):
        if path.stat().st_size > LIMIT_BYTES:
            raise SystemExit(f"{path} is {path.stat().st_size / 1e6:.1f} MB, over the 10 MB limit for a bundled model")
    print(
        f"wrote {target.name} ({report['size_bytes'] / 1e6:.2f} MB, opset {report['opset']}, "
        f"{int8['fp32_test_acc']:.2%}) and {Path(int8['path']).name} ({int8['size_bytes'] / 1e6:.2f} MB, "
        f"{int8['int8_test_acc']:.2%}) from {SOURCE}"
    )


if __name__ == "__main__":
    main()
