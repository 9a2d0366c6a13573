"""Long-tailed CIFAR-10: `cifar train --balance` on the standard CIFAR-10-LT splits.

    python benchmarks/long_tail.py [--imbalance 100 10] [--balance none reweight resample logit-adjust]
                                   [--seeds 0] [--set FIELD=VALUE ...]

CIFAR-10-LT (Cui et al. 2019; Cao et al. 2019): class i of CIFAR-10's label order keeps its first
round(5000 * IF^(-i/9)) training images, so the largest class has IF times the smallest's; the
test split stays whole and balanced (1,000 a class), so its accuracy is also the balanced one.
Each split is unpacked once from the shared archive into runs/long_tail/. A run is the whole
`cifar train ... --json` command, as in training.py; `--set` tunes the recipe for the smaller split.

The machine must be otherwise idle. Rows go to benchmarks/results/long_tail.jsonl.
"""

import argparse
import tarfile
from pathlib import Path

from common import ROOT, SHARED_DATA, append_result, code_version, timed_cifar_train

SUITE = "long_tail"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 5000  # CIFAR-10's training images per class


def kept_per_class(imbalance: float) -> list[int]:
    return [round(PER_CLASS * imbalance ** (-index / (len(CLASSES) - 1))) for index in range(len(CLASSES))]


def long_tailed_folder(archive: Path, imbalance: float) -> Path:
    """ROOT/train/<class> with each class's first kept images and the whole ROOT/test, made once."""
    folder = ROOT / "runs" / "long_tail" / f"cifar10-lt-{imbalance:g}"
    if (folder / "complete").exists():
        return folder
    keep = dict(zip(CLASSES, kept_per_class(imbalance), strict=True))
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        chosen, taken = [], dict.fromkeys(CLASSES, 0)
        for member in members:
            split, label = Path(member.name).parts[-3:-1]
            if split == "test" or taken[label] < keep[label]:
                taken[label] += split == "train"
                chosen.append(member)
        tar.extractall(folder, members=chosen, filter="data")
    for split in ("train", "test"):
        next(folder.rglob(split)).rename(folder / split)  # the archive's top folder removed
    (folder / "complete").touch()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imbalance", type=float, nargs="+", default=[100, 10], help="largest class / smallest")
    parser.add_argument("--balance", nargs="+", default=["none", "reweight", "resample", "logit-adjust"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a recipe field")
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()
    for imbalance in args.imbalance:
        folder = long_tailed_folder(Path(args.data), imbalance)
        for balance in args.balance:
            for seed in args.seeds:
                command = ["cifar", "train", "--data", str(folder), "--balance", balance, "--seed", str(seed)]
                command += ["--precision", args.precision] + [item for pair in args.set for item in ("--set", pair)]
                result, wall_s, shown = timed_cifar_train(command, str(folder))
                recall = {row["name"]: row["recall"] for row in result["per_class"]}
                figures = {
                    "code": code_version(),
                    "model": result["model"],
                    "imbalance": imbalance,
                    "train_images": sum(result["train_counts"]),
                    "balance": balance,
                    "resolved": result["balance"],
                    "variant": " ".join(args.set) or None,
                    "seed": seed,
                    "precision": result["precision"],
                    "epochs": result["history"][-1]["epoch"],
                    "train_s": result["train_seconds"],
                    "wall_s": round(wall_s, 1),
                    "test_acc": result["test_acc"],
                    "test_acc_tta": result["test_acc_tta"],
                    "balanced_acc": result["balanced_acc"],
                    "rarest_recall": recall[CLASSES[-1]],
                    "worst_class": result["worst_class"],
                    "worst_recall": result["worst_recall"],
                }
                append_result(SUITE, shown, figures)


if __name__ == "__main__":
    main()
