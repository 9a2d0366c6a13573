"""Export a checkpoint to fp32 and INT8 ONNX and record sizes, test accuracies and speeds.

    python benchmarks/export_int8.py runs/train/exp/last.pt [--calibration-images N]

Speeds are ONNX Runtime images/s at batch 256 with 2 threads (best of repeats over ~2 s),
accuracies are on the whole test split of the shared CIFAR-10 copy.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import SHARED_DATA, append_to_benchmarks, machine, today

COLUMNS = [
    "date",
    "machine",
    "command",
    "MB fp32 / int8",
    "test acc fp32 / int8",
    "ORT img/s fp32 / int8 (batch 256)",
    "max logit diff fp32",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--calibration-images", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        command = [
            "cifar",
            "export",
            str(args.checkpoint),
            "-o",
            f"{folder}/model.onnx",
            "--data",
            args.data,
            "--int8",
            "--calibration-images",
            str(args.calibration_images),
            "--json",
        ]
        report = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
    q = report["int8"]
    shown = f"cifar export {args.checkpoint} --data {Path(args.data).name} --int8"
    shown += f" --calibration-images {args.calibration_images}"
    speedup = q["int8_images_per_s"] / q["fp32_images_per_s"]
    row = (
        f"| {today()} | {machine()} | `{shown}` | {report['size_bytes'] / 1e6:.2f} / {q['size_bytes'] / 1e6:.2f} | "
        f"{q['fp32_test_acc']:.2%} / {q['int8_test_acc']:.2%} | "
        f"{q['fp32_images_per_s']:.0f} / {q['int8_images_per_s']:.0f} ({speedup:.2f}x) | "
        f"{report['max_abs_diff']:.1e} |"
    )
    print(row)
    append_to_benchmarks("ONNX export, fp32 / INT8 (`benchmarks/export_int8.py`)", [row], COLUMNS)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
