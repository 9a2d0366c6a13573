"""`cifar predict` against Ultralytics' classifier, whole commands on the same machine, back to back.

    python benchmarks/versus_ultralytics.py --yolo /tmp/ultra/bin/yolo [--photos 1000] [--repeats 2]

Ultralytics goes in a throwaway venv, since it brings its own torch:
    python -m venv /tmp/ultra && /tmp/ultra/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        ultralytics onnx onnxruntime
Its model is yolo11n-cls built from the model's YAML and exported to ONNX by Ultralytics itself
(ULTRALYTICS_SETUPS): the pretrained weights are a download these machines cannot make, and the
speed does not depend on the weights. The ratio is taken against the fastest setup. Ultralytics
runs as a user would run it on a folder (`yolo classify predict model=... source=DIR/*/*.jpg
save=False verbose=False`, its defaults otherwise), `cifar predict DIR -o rows.csv` with no
--model (the bundled model it picks for this CPU), its package byte-compiled first as an
installed copy is. Each command runs whole,
interpreter start included, alternating, --repeats times; a row of
benchmarks/results/versus_ultralytics.jsonl gives the faster run of each and its peak RSS.

Corpora: the 10,000 CIFAR test JPEGs (32 px), and N photo-sized JPEGs made from test images:
upscaled to a long side drawn around 430 px (one at 2400x1600), with sensor-like noise so that
they compress like photos (bits per pixel reported), a tenth progressive and a tenth stored
turned with an EXIF orientation. Beside each: the decode-only and ONNX-Runtime-only rates of
cifar predict's model, the ceiling that the two stages sharing two cores allow.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    SHARED_DATA,
    append_result,
    code_version,
    compile_package,
    decode_images,
    inference_rate,
    make_photos,
    unpack_test_split,
    whole_command,
)

sys.path.insert(0, str(ROOT))
from cifarcli.bundled import choose_bundled_model
from cifarcli.classifier import OnnxClassifier
from cifarcli.sources import discover_images

# Ultralytics' model exported three ways (export options, predict options): at its default 224 px,
# at 32 px (what a user of 32 px images may pick), and at 32 px with a dynamic batch that predict
# fills 64 images at a time; the ratio is taken against the fastest.
ULTRALYTICS_SETUPS = {
    "224 px": ("imgsz=224", []),
    "32 px": ("imgsz=32", []),
    "32 px, batch 64": ("imgsz=32, dynamic=True", ["batch=64"]),
}
ULTRALYTICS_ENVIRONMENT = {**os.environ, "YOLO_OFFLINE": "1"}  # no update checks over a network we lack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yolo", type=Path, required=True, help="the yolo command of an Ultralytics venv")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    compile_package()
    threads = os.cpu_count()
    model_path, _ = choose_bundled_model(None)
    model = OnnxClassifier(model_path, threads=1)  # as cifar predict's workers share it

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        test = unpack_test_split(args.data, temp / "data")
        described = make_photos(test, temp / "photos", args.photos)
        ultralytics_python = args.yolo.parent / "python"
        yolo_models = {}
        for index, (setup, (export_options, _)) in enumerate(ULTRALYTICS_SETUPS.items()):
            folder = temp / f"yolo{index}"
            folder.mkdir()
            export = f"from ultralytics import YOLO; YOLO('yolo11n-cls.yaml').export(format='onnx', {export_options})"
            subprocess.run([str(ultralytics_python), "-c", export], cwd=folder, check=True, capture_output=True)
            yolo_models[setup] = folder / "yolo11n-cls.onnx"

        for name, folder in [("10,000 CIFAR test JPEGs (32 px)", test), (described, temp / "photos")]:
            files = discover_images([str(folder)])[0]
            ours = [sys.executable, "-m", "cifarcli", "predict", str(folder), "-o", str(temp / "rows.csv")]
            commands = {"ours": ours}
            for setup, yolo_model in yolo_models.items():
                commands[setup] = [str(args.yolo), "classify", "predict", f"model={yolo_model}"]
                commands[setup] += [f"source={folder}/*/*.jpg", "save=False", "verbose=False"]
                commands[setup] += ULTRALYTICS_SETUPS[setup][1]
            runs = {key: [] for key in commands}
            for _ in range(args.repeats):
                for key, command in commands.items():
                    runs[key].append(whole_command(command, ULTRALYTICS_ENVIRONMENT))
            best = {key: min(times) for key, times in runs.items()}  # (seconds, peak RSS MB)
            images, decode_rate = decode_images(files, model.info.input_size, threads)
            ort_rate = inference_rate(model, images, workers=threads)
            our_rate = len(files) / best["ours"][0]
            their_rss = max(best[setup][1] for setup in yolo_models)
            their_rates = {setup: len(files) / best[setup][0] for setup in yolo_models}
            figures = {
                "code": code_version(),
                "corpus": name,
                "files": len(files),
                "model": model_path.name,
                "cifar_images_per_s": round(our_rate),
                "ultralytics_images_per_s": {setup: round(rate) for setup, rate in their_rates.items()},
                "ratio": round(our_rate / max(their_rates.values()), 2),
                "peak_rss_mb": best["ours"][1],
                "ultralytics_peak_rss_mb": their_rss,
                "decode_images_per_s": round(decode_rate),
                "ort_images_per_s": round(ort_rate),
            }
            append_result(
                "versus_ultralytics", "python benchmarks/versus_ultralytics.py " + shlex.join(sys.argv[1:]), figures
            )


if __name__ == "__main__":
    main()
