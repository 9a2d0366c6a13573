"""Training: accuracy and seconds of `cifar train` runs, and the cost of a training step by size.

    python benchmarks/training.py [--model NAME] [--seeds 0 1] [--precision auto] [--set FIELD=VALUE ...]
    python benchmarks/training.py --step-cost [--sizes 16 20 24 28 32] [--rounds 4] [--steps 2]

A run is the whole `cifar train ... --json` command in a subprocess, as a user waits for it:
`wall_s` is command to prompt (the decode cache warm after the first run), `train_s` the epochs'
training loops, and the accuracies are the final weights' on the test split, scored in fp32,
plain and with the recipe's TTA. `--set` changes recipe fields, as `cifar train --set` does: a
row with a `variant` is a candidate recipe, not the model's own.

`--step-cost` prices recipes without training them: the real training steps of the model
(augmentation, forward, backward, optimizers) on crops of each size, the sizes alternating
round by round so that the host's drift falls on all of them alike; a recipe's cost is then
the sum over its epochs of images x seconds per image at that epoch's size. Each size's row
also gives the step's achieved GFLOP/s (three times the forward's multiply-adds, twice) beside
a plain large matrix product's in the same precision on the same cores: how far the step is from
what the machine can do.

The machine must be otherwise idle. Rows go to benchmarks/results/training.jsonl.
"""

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, append_result, code_version, timed_cifar_train

SUITE = "training"


def run_rows(args) -> None:
    for seed in args.seeds:
        command = ["cifar", "train", "--data", args.data, "--seed", str(seed), "--precision", args.precision]
        command += ["--model", args.model] if args.model else []
        for setting in args.set:
            command += ["--set", setting]
        result, wall_s, shown = timed_cifar_train(command, args.data)
        history = result["history"]
        seconds = sum(row["seconds"] for row in history)
        figures = {
            "kind": "run",
            "code": code_version(),
            "model": result["model"],
            "variant": " ".join(args.set) or None,
            "seed": seed,
            "precision": result["precision"],
            "epochs": history[-1]["epoch"],
            "train_s": result["train_seconds"],
            "wall_s": round(wall_s, 1),
            "images_per_s": round(sum(row["images_per_s"] * row["seconds"] for row in history) / seconds),
            "test_acc": result["test_acc"],
            "test_acc_tta": result["test_acc_tta"],
            "tta": result["tta"],
            "epoch_test_acc": [row["test_acc"] for row in history],
        }
        append_result(SUITE, shown, figures)


def step_cost_rows(args) -> None:
    """Milliseconds of a training step at each crop size, alternating sizes every round."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cifarcli.data import load_dataset
    from cifarcli.events import SilentEvents
    from cifarcli.models import DEFAULT_MODEL, describe_model, get_model_entry
    from cifarcli.run import prepare_run, process_settings
    from cifarcli.train import run_epoch, setup

    model = args.model or DEFAULT_MODEL
    dataset = load_dataset(args.data)
    context = prepare_run("cpu", args.precision, run_dir=Path(tempfile.mkdtemp()))
    milliseconds = {size: [] for size in args.sizes}
    with process_settings(context):
        trainings = {}
        for size in args.sizes:  # one model per size; epoch 0 of each trains on crops of that size
            recipe = get_model_entry(model).recipe.override(crops=[[size, 1]], epochs=1)
            trainings[size] = setup(context, dataset, model, recipe)
        for round_ in range(args.rounds + 1):  # round 0 warms every size up
            for size in args.sizes if round_ % 2 else args.sizes[::-1]:
                started = time.perf_counter()
                run_epoch(trainings[size], 0, args.steps, SilentEvents())
                if round_:
                    milliseconds[size].append((time.perf_counter() - started) * 1000 / args.steps)
        matmul = matmul_gflops(context.autocast_dtype)
    batch_size = trainings[args.sizes[0]].schedule.batch_size
    command = "python benchmarks/training.py " + shlex.join(sys.argv[1:])
    for size in args.sizes:
        median = statistics.median(milliseconds[size])
        step_gflop = 3 * describe_model(model, input_size=size)["gflops"] * batch_size
        figures = {
            "kind": "step",
            "code": code_version(),
            "model": model,
            "precision": context.precision,
            "batch_size": batch_size,
            "size": size,
            "ms_per_step": round(median, 1),
            "images_per_s": round(batch_size / median * 1000),
            "step_gflops_per_s": round(step_gflop / median * 1000),
            "matmul_gflops_per_s": round(matmul),
            "every_round_ms": [round(ms, 1) for ms in milliseconds[size]],
        }
        append_result(SUITE, command, figures)


def matmul_gflops(dtype, size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a size x size matrix product in the training precision, the best of repeats."""
    import torch

    left, right = (torch.randn(size, size, dtype=dtype or torch.float32) for _ in range(2))
    left @ right  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a registered model [the default]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a recipe field")
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--step-cost", action="store_true", help="time training steps by crop size instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 24, 28, 32])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="steps a size takes in each round")
    args = parser.parse_args()
    step_cost_rows(args) if args.step_cost else run_rows(args)


if __name__ == "__main__":
    main()
