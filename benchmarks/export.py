"""Export: a checkpoint to fp32 and INT8 ONNX, their sizes, test accuracies (plain and TTA) and speeds.

    python benchmarks/export.py [CHECKPOINT] [--calibration-images 300]

CHECKPOINT defaults to the weights the bundled models are built from (tools/default_model/
model.pt), so a row describes the files `cifar predict` ships. `cifar export --int8 --json`
gives the sizes, the parity with PyTorch and the fitted temperature; each file is then timed in
ONNX Runtime (images/s at batch 256 on every core) and scored on the whole test split with and
without TTA as `cifar evaluate` scores it. Appends one row to benchmarks/results/export.jsonl.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, SHARED_DATA, append_result, code_version, shown

sys.path.insert(0, str(ROOT))
from cifarcli.classifier import OnnxClassifier
from cifarcli.data import load_dataset
from cifarcli.evaluate import evaluate

DEFAULT_CHECKPOINT = ROOT / "tools" / "default_model" / "model.pt"
SPEED_BATCH = 256


def ort_speed(classifier, images: np.ndarray, seconds: float = 2.0) -> float:
    """Images/s at batch SPEED_BATCH; the batch is padded to that size, best of the repeats."""
    batch = np.resize(images, (SPEED_BATCH, *images.shape[1:]))
    classifier.predict_logits(batch)
    best, spent = 0.0, 0.0
    while spent < seconds:
        started = time.perf_counter()
        classifier.predict_logits(batch)
        elapsed = time.perf_counter() - started
        spent += elapsed
        best = max(best, SPEED_BATCH / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--calibration-images", type=int, default=300)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "cifarcli", "export", str(args.checkpoint), "-o", f"{folder}/model.onnx"]
        command += ["--data", args.data, "--int8", "--calibration-images", str(args.calibration_images)]
        command += ["--json"]
        report = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
        accuracy, speed = {}, {}
        for name, path in (("fp32", report["path"]), ("int8", report["int8"]["path"])):
            classifier = OnnxClassifier(path)
            speed[name] = ort_speed(classifier, dataset.test.images[:SPEED_BATCH])
            level = int(classifier.info.recipe.get("tta", 1))
            accuracy[name] = evaluate(classifier, dataset, "test").accuracy
            accuracy[f"{name}_tta"] = evaluate(classifier, dataset, "test", level).accuracy
    int8 = report["int8"]
    figures = {
        "kind": "export",
        "code": code_version(),
        "checkpoint": shown(args.checkpoint),
        "opset": report["opset"],
        "fp32_mb": round(report["size_bytes"] / 1e6, 2),
        "int8_mb": round(int8["size_bytes"] / 1e6, 2),
        "fp32_test_acc": round(accuracy["fp32"], 4),
        "fp32_test_acc_tta": round(accuracy["fp32_tta"], 4),
        "int8_test_acc": round(accuracy["int8"], 4),
        "int8_test_acc_tta": round(accuracy["int8_tta"], 4),
        "fp32_ort_images_per_s": round(speed["fp32"]),
        "int8_ort_images_per_s": round(speed["int8"]),
        "int8_speedup": round(speed["int8"] / speed["fp32"], 2),
        "max_logit_diff": float(f"{report['max_abs_diff']:.2g}"),
        "calibration_images": args.calibration_images,
        "temperature": report["temperature"],
        "test_ece": round(report["calibration"]["test_ece"], 4),
        "test_ece_scaled": round(report["calibration"]["test_ece_scaled"], 4),
    }
    shown_command = (
        f"python benchmarks/export.py {shown(args.checkpoint)} --calibration-images {args.calibration_images}"
    )
    append_result("export", shown_command, figures)


if __name__ == "__main__":
    main()
