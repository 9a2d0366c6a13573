"""A `cifar` command of this checkout against the same command at an earlier commit, whole
commands, alternating.

    python benchmarks/versus_commit.py --baseline 7f30810 predict [--photos 1000] [--repeats 5]
    python benchmarks/versus_commit.py --baseline 7f30810 evaluate runs/bench/bench/last.pt [--repeats 5]

The baseline runs from a temporary git worktree at that commit, with this checkout's interpreter
(`python -m cifarcli` started in the worktree imports the worktree's package). Workloads:
  predict    `cifar predict FOLDER -m MODEL -o rows.csv` on the 10,000 CIFAR test JPEGs, on
             generated photo-sized JPEGs (common.make_photos) and on the first of those alone
             (startup); MODEL is this checkout's bundled choice for this CPU, copied into the
             worktree's assets folder so that both sides load the same bytes as a bundled model
             (a file from elsewhere gets the onnx checker, about 0.1 s and 20 MB more), so a
             row measures the code alone
  evaluate   `cifar evaluate CHECKPOINT --data DATA --tta` on the 10,000 test images (the
             decoded-pixel cache warm): training's final scoring, as a user reruns it
Each command runs whole, interpreter start included, alternating which goes first, --repeats
times. This host's speed drifts by up to 2x within minutes, so the ratio is the median of the
ratios of runs taken side by side, not a ratio of medians.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    SHARED_DATA,
    append_to_benchmarks,
    compile_package,
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
    "command (images)",
    "baseline commit img/s (median)",
    "this checkout img/s (median)",
    "this / baseline (median of pairs)",
    "peak RSS MB baseline / this",
]


def checkout_name() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    return commit.stdout.strip() + (" with uncommitted changes" if changed.stdout.strip() else "")


def shown_rate(images_per_second: float) -> str:
    """Whole images/s for folders; two decimals for one image, where the rate is 1 / seconds."""
    return f"{images_per_second:.0f}" if images_per_second >= 100 else f"{images_per_second:.2f}"


def predict_workloads(args, temp: Path, worktree: Path) -> list[tuple[str, list[str], int]]:
    """(description, cifar arguments, images) for each corpus."""
    model, _ = choose_bundled_model(None)
    shutil.copyfile(model, worktree / "cifarcli" / "assets" / model.name)
    model = Path("cifarcli") / "assets" / model.name  # each side runs in its own root
    test = unpack_test_split(args.data, temp / "data")
    described = make_photos(test, temp / "photos", args.photos)
    first_photo = discover_images([str(temp / "photos")])[0]
    corpora = [
        ("10,000 CIFAR test JPEGs (32 px)", test),
        (described, temp / "photos"),
        ("one photo of those (startup: img/s is 1 / seconds)", first_photo),
    ]
    workloads = []
    for corpus, source in corpora:
        arguments = ["predict", str(source), "-m", str(model), "-o", str(temp / "rows.csv")]
        workloads.append((f"`cifar predict -m {model.name}`, {corpus}", arguments, len(discover_images([str(source)]))))
    return workloads


def evaluate_workloads(args, temp: Path, worktree: Path) -> list[tuple[str, list[str], int]]:
    arguments = ["evaluate", str(args.checkpoint.resolve()), "--data", str(args.data), "--tta"]
    shown = f"`cifar evaluate {args.checkpoint} --data {args.data.name} --tta`, 10,000 test images"
    return [(shown, arguments, 10_000)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="a commit of this repository")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    workload = parser.add_subparsers(dest="workload", required=True)
    predict = workload.add_parser("predict")
    predict.add_argument("--photos", type=int, default=1000)
    predict.set_defaults(workloads=predict_workloads)
    evaluate = workload.add_parser("evaluate")
    evaluate.add_argument("checkpoint", type=Path)
    evaluate.set_defaults(workloads=evaluate_workloads)
    args = parser.parse_args()

    lines = []
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        worktree = temp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True)
        try:
            compile_package(ROOT)
            compile_package(worktree)
            for described, arguments, images in args.workloads(args, temp, worktree):
                command = [sys.executable, "-m", "cifarcli", *arguments]
                runs = {"baseline": [], "this": []}
                for repeat in range(args.repeats):
                    order = ["baseline", "this"] if repeat % 2 == 0 else ["this", "baseline"]
                    for which in order:
                        seconds, peak = whole_command(command, cwd=worktree if which == "baseline" else ROOT)
                        runs[which].append((images / seconds, peak))
                rates = {which: [rate for rate, _ in pairs] for which, pairs in runs.items()}
                pairs = zip(rates["this"], rates["baseline"], strict=True)
                lines.append(
                    f"| {today()} | {machine()} | {described} | "
                    f"{shown_rate(statistics.median(rates['baseline']))} ({args.baseline}) | "
                    f"{shown_rate(statistics.median(rates['this']))} ({checkout_name()}) | "
                    f"{statistics.median(mine / theirs for mine, theirs in pairs):.2f} | "
                    f"{max(p for _, p in runs['baseline'])} / {max(p for _, p in runs['this'])} |"
                )
                print(lines[-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
    append_to_benchmarks("A command against an earlier commit (`benchmarks/versus_commit.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
