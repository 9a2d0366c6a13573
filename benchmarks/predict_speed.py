"""How fast and how faithful `cifar predict` is on the 10,000 test JPEGs, and its memory on 100,000.

    python benchmarks/predict_speed.py [--model cifarcli/assets/default.onnx] [--threads 2]

Without --model, the bundled model that `cifar predict` picks on this CPU.

Measured in one run, with the same thread count:
  decode-only   decode_image on every file, batches of 256 on a thread pool (images/s)
  ORT-only      ONNX Runtime on already-decoded images at batch 256, one ONNX Runtime thread
                per worker thread as in cifar predict (images/s)
  end to end    `cifar predict FOLDER -o rows.csv` in a subprocess (its wall time, startup included)
  startup       the same on one image: interpreter, imports and model load, subtracted for the
                steady rate that the x10 run is compared with
  x10           the same on the test set linked ten times (100,000 files): peak RSS and images/s
and the accuracy of the predicted rows against folder names beside `cifar evaluate`'s figure.
The end-to-end rate is given as a fraction of two ceilings: the slower stage's rate (issue 5's
bar), and the cores' ceiling (issue 15's): every worker both decodes and runs the model, so at
best each core does both at its one-thread rates, threads / (1 / decode + 1 / ORT) with each
stage timed on one thread in predict's batches of 64 (two threads of either stage alone contend
for the GIL, which understates what the pipeline gets).
"""

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    SHARED_DATA,
    append_to_benchmarks,
    compile_package,
    decode_images,
    inference_rate,
    machine,
    today,
    unpack_test_split,
    whole_command,
)

sys.path.insert(0, str(ROOT))
from cifarcli.classifier import OnnxClassifier
from cifarcli.data import load_dataset
from cifarcli.evaluate import evaluate
from cifarcli.predict import PREDICT_BATCH, choose_bundled_model, discover_images

COLUMNS = [
    "date",
    "machine",
    "command",
    "decode-only img/s",
    "ORT-only img/s",
    "end to end img/s, 10,000",
    "100,000 images: img/s",
    "peak RSS MB 10k / 100k",
    "accuracy of rows / cifar evaluate",
]


def run_predict(paths: list, model: Path, threads: int, rows: Path) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of one `cifar predict` subprocess."""
    command = [
        sys.executable,
        "-m",
        "cifarcli",
        "predict",
        *map(str, paths),
        "-m",
        str(model),
        "-o",
        str(rows),
        "--threads",
        str(threads),
    ]
    return whole_command(command)


def row_accuracy(rows: Path) -> tuple[float, int]:
    with open(rows, newline="") as file:
        table = list(csv.DictReader(file))
    correct = sum(row["label"] == Path(row["path"]).parent.name for row in table)
    return correct / len(table), len(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=choose_bundled_model(None)[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    compile_package()
    classifier = OnnxClassifier(args.model, threads=1)  # as cifar predict's workers share it
    size = classifier.info.input_size

    with tempfile.TemporaryDirectory() as temp:
        test = unpack_test_split(args.data, Path(temp) / "data")
        files = discover_images([str(test)])

        images, decode_rate = decode_images(files, size, args.threads)
        ort_rate = inference_rate(classifier, images, workers=args.threads)
        _, decode_one_thread = decode_images(files, size, threads=1, batch_size=PREDICT_BATCH)
        ort_one_thread = inference_rate(classifier, images, batch_size=PREDICT_BATCH, workers=1)
        ceiling = args.threads / (1 / decode_one_thread + 1 / ort_one_thread)

        seconds, peak_10k = run_predict([test], args.model, args.threads, Path(temp) / "rows.csv")
        predicted_acc, count = row_accuracy(Path(temp) / "rows.csv")
        end_to_end = count / seconds
        startup, _ = run_predict(files[:1], args.model, args.threads, Path(temp) / "one.csv")

        copies = Path(temp) / "x10"
        for index in range(10):  # hard links: ten distinct files per image, no extra disk
            for file in map(Path, files):
                target = copies / f"copy{index}" / file.parent.name / file.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(file, target)
        seconds_100k, peak_100k = run_predict([copies], args.model, args.threads, Path(temp) / "rows100k.csv")
        _, count_100k = row_accuracy(Path(temp) / "rows100k.csv")

    dataset = load_dataset(args.data)
    evaluated = evaluate(classifier, dataset, "test").accuracy
    floor = 0.8 * min(decode_rate, ort_rate)
    lines = [
        f"| {today()} | {machine()} | `python benchmarks/predict_speed.py --model {args.model.name} "
        f"--threads {args.threads}` | {decode_rate:.0f} | {ort_rate:.0f} | {end_to_end:.0f} "
        f"({end_to_end / min(decode_rate, ort_rate):.2f} of the slower, bar {floor:.0f}; "
        f"{end_to_end / ceiling:.2f} of the cores' ceiling, {ceiling:.0f}) | "
        f"{count_100k / seconds_100k:.0f} end to end; steady, 10,000 / {count_100k:,}: "
        f"{count / (seconds - startup):.0f} / {count_100k / (seconds_100k - startup):.0f} "
        f"(startup {startup:.1f} s excluded) | {peak_10k} / {peak_100k} | "
        f"{predicted_acc:.2%} / {evaluated:.2%} |"
    ]
    print("\n".join(lines))
    append_to_benchmarks("cifar predict (`benchmarks/predict_speed.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
