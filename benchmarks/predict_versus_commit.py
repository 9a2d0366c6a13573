"""`cifar predict` of this checkout against an earlier commit's, whole commands, alternating.

    python benchmarks/predict_versus_commit.py --baseline 7f30810 [--repeats 5] [--photos 1000]

The baseline runs from a temporary git worktree at that commit, with this checkout's interpreter
(`python -m cifarcli` started in the worktree imports the worktree's package). Both commands get
the same model file, this checkout's bundled choice for this CPU, so a row measures the code
between the commits alone. Each command runs whole, interpreter start included, alternating
which goes first, --repeats times per corpus: the 10,000 CIFAR test JPEGs and generated
photo-sized JPEGs (common.make_photos). This host's speed drifts by up to 2x within minutes,
so the ratio is the median of the ratios of runs taken side by side, not a ratio of medians.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    SHARED_DATA,
    append_to_benchmarks,
    machine,
    make_photos,
    today,
    unpack_test_split,
    whole_command,
)

sys.path.insert(0, str(ROOT))
from cifarcli.predict import choose_bundled_model, discover_images

COLUMNS = [
    "date",
    "machine",
    "corpus",
    "model",
    "baseline commit img/s (median)",
    "this checkout img/s (median)",
    "this / baseline (median of pairs)",
    "peak RSS MB baseline / this",
]


def checkout_name() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    return commit.stdout.strip() + (" with uncommitted changes" if changed.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="a commit of this repository")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    model, _ = choose_bundled_model(None)
    lines = []
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        worktree = temp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True)
        try:
            test = unpack_test_split(args.data, temp / "data")
            described = make_photos(test, temp / "photos", args.photos)
            for corpus, folder in [("10,000 CIFAR test JPEGs (32 px)", test), (described, temp / "photos")]:
                count = len(discover_images([str(folder)]))
                command = [sys.executable, "-m", "cifarcli", "predict", str(folder), "-m", str(model)]
                command += ["-o", str(temp / "rows.csv")]
                runs = {"baseline": [], "this": []}
                for repeat in range(args.repeats):
                    order = ["baseline", "this"] if repeat % 2 == 0 else ["this", "baseline"]
                    for which in order:
                        where = worktree if which == "baseline" else ROOT
                        seconds, peak = whole_command(command, cwd=where)
                        runs[which].append((count / seconds, peak))
                rates = {which: [rate for rate, _ in pairs] for which, pairs in runs.items()}
                ratio = statistics.median(
                    mine / theirs for mine, theirs in zip(rates["this"], rates["baseline"], strict=True)
                )
                lines.append(
                    f"| {today()} | {machine()} | {corpus} | {model.name} | "
                    f"{statistics.median(rates['baseline']):.0f} ({args.baseline}) | "
                    f"{statistics.median(rates['this']):.0f} ({checkout_name()}) | {ratio:.2f} | "
                    f"{max(p for _, p in runs['baseline'])} / {max(p for _, p in runs['this'])} |"
                )
                print(lines[-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
    append_to_benchmarks(
        "cifar predict against an earlier commit (`benchmarks/predict_versus_commit.py`)", lines, COLUMNS
    )


if __name__ == "__main__":
    main()
