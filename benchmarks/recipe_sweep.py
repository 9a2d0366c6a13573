"""Train several recipe variants (and seeds) on one device and record their test accuracy.

    python benchmarks/recipe_sweep.py --device cuda --results sweep.jsonl [--budget-s 480] [--only NAME ...]
    python benchmarks/recipe_sweep.py --record sweep.jsonl     # append mean and spread per variant to BENCHMARKS.md

Accuracy barely depends on the device, so a lent GPU can price a recipe change in seconds
that a CPU run prices in half an hour; the CPU's time for a variant then follows from its
training-step speed (benchmarks/step_speed.py). Each run appends one JSON line as it ends, so
a sweep cut short keeps what it finished; runs that would start after --budget-s are skipped.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import ROOT, SHARED_DATA, append_to_benchmarks, machine, today

sys.path.insert(0, str(ROOT))
from cifarcli.data import load_dataset
from cifarcli.models import AIRBENCH94_RECIPE, airbench_net, init_whitening, register_model
from cifarcli.run import prepare_run
from cifarcli.train import train

# Networks that are only candidates live here, not in the registry users see.
CANDIDATE_WIDTHS = {"sweep-64-192-192": (64, 192, 192)}
for candidate, widths in CANDIDATE_WIDTHS.items():
    register_model(candidate, AIRBENCH94_RECIPE, f"candidate: blocks {widths}", prepare=init_whitening)(
        lambda num_classes, mean, std, widths=widths: airbench_net(num_classes, mean, std, widths=widths)
    )

# name -> (model, recipe overrides), in the order they run.
CROPS_24 = {"small_crop": 24}
VARIANTS = {
    "tutorial (6 ep)": ("tutorial", {"epochs": 6}),
    "airbench-narrow (18 ep)": ("airbench-narrow", {}),
    "airbench-narrow 20 ep, first 10 on 24px crops": (
        "airbench-narrow",
        {"epochs": 20, "small_crop_epochs": 10, **CROPS_24},
    ),
    "airbench94 (9.9 ep)": ("airbench94", {}),
    "airbench94 12 ep, first 6 on 24px crops": ("airbench94", {"epochs": 12, "small_crop_epochs": 6, **CROPS_24}),
    "64/192/192 12 ep": ("sweep-64-192-192", {"epochs": 12}),
    "airbench-narrow 16 ep, first 8 on 24px crops": (
        "airbench-narrow",
        {"epochs": 16, "small_crop_epochs": 8, **CROPS_24},
    ),
    "airbench-narrow 24 ep, first 14 on 24px crops": (
        "airbench-narrow",
        {"epochs": 24, "small_crop_epochs": 14, **CROPS_24},
    ),
    "airbench94 30 ep": ("airbench94", {"epochs": 30}),
    "airbench94 10 ep, first 5 on 24px crops": ("airbench94", {"epochs": 10, "small_crop_epochs": 5, **CROPS_24}),
    "airbench94 14 ep, first 8 on 24px crops": ("airbench94", {"epochs": 14, "small_crop_epochs": 8, **CROPS_24}),
    "airbench94 12 ep, first 6 on 20px crops": ("airbench94", {"epochs": 12, "small_crop_epochs": 6, "small_crop": 20}),
    # airbench-cpu is airbench94's network with airbench94_muon's optimizer settings.
    "muon 8 ep": ("airbench-cpu", {"epochs": 8, "small_crop": 0}),
    "muon 8 ep, first 4 on 24px crops": ("airbench-cpu", {"epochs": 8, "small_crop_epochs": 4}),
    "muon 10 ep, first 5 on 24px crops": ("airbench-cpu", {}),
    # The tutorial's network is fixed (the Keras tutorial's); only its recipe can make it faster.
    "tutorial 4 ep": ("tutorial", {"epochs": 4}),
    "tutorial 4 ep, TTA level 2": ("tutorial", {"epochs": 4, "tta": 2}),
    "tutorial 4 ep, peak lr 0.2": ("tutorial", {"epochs": 4, "lr": 0.2}),
    "tutorial 4 ep, peak lr 0.05": ("tutorial", {"epochs": 4, "lr": 0.05}),
    "tutorial 4 ep, batch 512, peak lr 0.2": ("tutorial", {"epochs": 4, "batch_size": 512, "lr": 0.2}),
    "tutorial 4 ep, lookahead": ("tutorial", {"epochs": 4, "lookahead": True}),
    "tutorial 4 ep, lr peaks at 15%": ("tutorial", {"epochs": 4, "lr_peak_at": 0.15}),
    "tutorial 4 ep, no label smoothing": ("tutorial", {"epochs": 4, "label_smoothing": 0.0}),
}
SWEEP_COLUMNS = [
    "date",
    "device",
    "variant",
    "seeds",
    "epochs",
    "train s (mean)",
    "test acc (mean)",
    "test acc with TTA: mean ± sd (min-max)",
]


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return machine()


def run_sweep(args) -> None:
    from cifarcli.models import get_model_entry

    dataset = load_dataset(args.data)
    started = time.perf_counter()
    for variant, (model, overrides) in VARIANTS.items():
        if args.only and variant not in args.only:
            continue
        for seed in args.seeds:
            if time.perf_counter() - started > args.budget_s:
                print(f"skipped (budget): {variant} seed {seed}", flush=True)
                continue
            recipe = replace(get_model_entry(model).recipe.override(**overrides), seed=seed)
            with tempfile.TemporaryDirectory() as run_dir:
                result = train(dataset, model, recipe, prepare_run(args.device, run_dir=Path(run_dir)))
            row = {
                "date": today(),
                "device": device_name(args.device),
                "variant": variant,
                "seed": seed,
                "epochs": len(result.history),
                "train_seconds": round(result.train_seconds, 1),
                "test_acc": result.test_acc,
                "test_acc_tta": result.test_acc_tta,
                "epoch_acc": [row["test_acc"] for row in result.history],
            }
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as file:
                file.write(json.dumps(row) + "\n")


def record(path: Path) -> None:
    """One row per variant and device: the mean and spread over its seeds."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["date"], row["device"], row["variant"]), []).append(row)
    lines = []
    for (date, device, variant), runs in groups.items():
        tta = [run["test_acc_tta"] for run in runs]
        spread = f" ± {statistics.stdev(tta):.2%} ({min(tta):.2%}-{max(tta):.2%})" if len(tta) > 1 else ""
        lines.append(
            f"| {date} | {device} | {variant} | {len(runs)} | {runs[0]['epochs']} | "
            f"{statistics.mean(run['train_seconds'] for run in runs):.1f} | "
            f"{statistics.mean(run['test_acc'] for run in runs):.2%} | {statistics.mean(tta):.2%}{spread} |"
        )
    append_to_benchmarks("Recipe sweep (`benchmarks/recipe_sweep.py`)", lines, SWEEP_COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--results", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no run after this many seconds")
    parser.add_argument("--only", nargs="*", help="variant names to run")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--record", type=Path, help="append the rows of this results file to BENCHMARKS.md")
    args = parser.parse_args()
    if args.record:
        record(args.record)
    else:
        run_sweep(args)


if __name__ == "__main__":
    main()
