"""Install: the size of the inference-only install, and how fast its commands start.

    python benchmarks/install.py [--venv /tmp/cifarcli-inference]

Builds a new virtual environment with `pip install .` (no extras: what a machine that only runs
the model gets), and records its size on disk (`du`, pip and setuptools included), whether
torch came with it (it must not), and the median of five whole commands each of `cifar --help`
and `cifar predict` on one image with the bundled model, timed from the installed copy (byte-
compiled by pip, as users run it). Appends one row to benchmarks/results/install.jsonl.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_result, code_version


def seconds_of(command: list[str], repeats: int = 5) -> float:
    """The median wall seconds of a command, after one untimed run."""
    times = []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if repeat:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "cifarcli-inference")
    args = parser.parse_args()
    shutil.rmtree(args.venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
    subprocess.run([str(args.venv / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
    megabytes = int(subprocess.run(["du", "-sm", str(args.venv)], stdout=subprocess.PIPE, text=True).stdout.split()[0])
    python = str(args.venv / "bin" / "python")
    has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    cifar = str(args.venv / "bin" / "cifar")
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "one.png"
        subprocess.run([python, "-c", f"from PIL import Image; Image.new('RGB', (400, 300), 'teal').save('{image}')"])
        figures = {
            "kind": "inference_install",
            "code": code_version(),
            "megabytes": megabytes,
            "torch_installed": has_torch,
            "help_s": round(seconds_of([cifar, "--help"]), 3),
            "predict_one_image_s": round(seconds_of([cifar, "predict", str(image)]), 3),
            "interpreter_s": round(seconds_of([python, "-c", "pass"]), 3),
        }
    append_result("install", f"python benchmarks/install.py --venv {args.venv}", figures)


if __name__ == "__main__":
    main()
