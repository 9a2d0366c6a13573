"""Should ONNX Runtime's threads spin while decoding threads share the cores? Appends to BENCHMARKS.md.

    python benchmarks/ort_spinning.py [--photos 1000] [--rounds 4]

By default ONNX Runtime's intra-op threads spin (busy-wait) between operators; `cifar predict`
turns that off (OnnxClassifier(..., beside_decoding=True)), since its two decoding threads share
the two cores with them. This times whole `cifar predict FOLDER -o rows.csv` commands as shipped
(sleeping) and with the session built the ONNX Runtime default way (spinning: the same command
through a two-line wrapper), alternating, --rounds times each, on the 10,000 CIFAR test JPEGs and
on generated photos (versus_ultralytics.make_photos); then ONNX Runtime alone at batch 256, one
session alive at a time. Rows give median images/s (whole commands: startup included).
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import SHARED_DATA, append_to_benchmarks, inference_rate, machine, today, unpack_test_split, whole_command
from versus_ultralytics import make_photos

from cifarcli.classifier import OnnxClassifier
from cifarcli.predict import choose_bundled_model, discover_images

COLUMNS = ["date", "machine", "model", "workload", "img/s, spinning", "img/s, sleeping", "sleeping / spinning"]
SPINNING_PREDICT = """
import sys, cifarcli.classifier as classifier
shipped = classifier.OnnxClassifier.__init__
classifier.OnnxClassifier.__init__ = lambda self, path, threads=0, beside_decoding=False: shipped(self, path, threads)
from cifarcli.cli import main
sys.argv = ["cifar", *sys.argv[1:]]
main()
"""


def command_rate(folder: Path, rows: Path, sleeping: bool) -> float:
    count = len(discover_images([str(folder)]))
    command = [sys.executable, "-m", "cifarcli"] if sleeping else [sys.executable, "-c", SPINNING_PREDICT]
    seconds, _ = whole_command([*command, "predict", str(folder), "-o", str(rows)])
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    threads = os.cpu_count()
    model, _ = choose_bundled_model(None)
    random_batch = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as temp:
        test = unpack_test_split(args.data, Path(temp) / "data")
        photos = Path(temp) / "photos"
        make_photos(test, photos, args.photos)
        rows = Path(temp) / "rows.csv"
        workloads = {
            "`cifar predict`, 10,000 CIFAR test JPEGs": lambda sleeping: command_rate(test, rows, sleeping),
            f"`cifar predict`, {args.photos:,} generated photos": lambda sleeping: command_rate(photos, rows, sleeping),
            "ONNX Runtime alone, batch 256": lambda sleeping: inference_rate(
                OnnxClassifier(model, threads, beside_decoding=sleeping), random_batch
            ),
        }
        lines = []
        for workload, measure in workloads.items():
            rates = {False: [], True: []}
            for _ in range(args.rounds):
                for sleeping in rates:
                    rates[sleeping].append(measure(sleeping))
            spinning, sleeping = statistics.median(rates[False]), statistics.median(rates[True])
            lines.append(
                f"| {today()} | {machine()} | {model.name} | {workload} | {spinning:.0f} | {sleeping:.0f} | "
                f"{sleeping / spinning:.2f} |"
            )
            print(lines[-1], flush=True)
    append_to_benchmarks("ONNX Runtime's threads beside decoding (`benchmarks/ort_spinning.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
