"""Whether a training step of the default model runs faster with its batch in chunks (issue 14):
each chunk a BatchNorm batch of its own, the chunks' gradients summed (recipe.chunk_size).

    python benchmarks/chunk_speed.py [--data PATH] [--precision auto] [--pairs 8] [--chunks 1000 500 250]

The default recipe's own steps (setup() on the real data; augmentation, train.forward_backward
and train.step_optimizers, as the training loop calls them), at the crop size and the full
size: the whole batch in one pass against each chunk size, step by step in ABBA order (the
host's speed drifts within seconds); the speed-up is the median over the pairs. Appends one row
per step size and chunk size to BENCHMARKS.md.
"""

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import SHARED_DATA, alternate, append_to_benchmarks, machine, today

from cifarcli.data import load_dataset
from cifarcli.models import DEFAULT_MODEL, get_model_entry
from cifarcli.run import prepare_run, process_settings
from cifarcli.train import augment_batch, crop_size, flip_masks, forward_backward, setup, step_optimizers

SECTION = "Training steps in chunks (`benchmarks/chunk_speed.py`)"
COLUMNS = ["date", "machine", "command", "what", "precision", "milliseconds", "speed-up"]


def step_in_chunks(training, size: int, chunk_size: int, order, flips):
    """A function of the pair's number: one training step on that pair's batch, its phases in ms."""
    t = training
    recipe = replace(t.recipe, chunk_size=chunk_size)
    batches = len(order) // t.batch_size

    def step(pair: int) -> dict:
        t.recipe = recipe
        indices = order[(pair % batches) * t.batch_size : (pair % batches + 1) * t.batch_size]
        marks = [time.perf_counter()]
        inputs = augment_batch(t.padded, indices, size, flips[indices], t.generator)
        inputs = inputs.float().div_(255).contiguous(memory_format=torch.channels_last)
        marks.append(time.perf_counter())
        t.model.zero_grad(set_to_none=True)
        forward_backward(t, inputs, t.labels[indices])
        marks.append(time.perf_counter())
        step_optimizers(t)
        marks.append(time.perf_counter())
        names = ("augmentation", "forward and backward", "optimizers")
        return {name: (end - start) * 1000 for name, start, end in zip(names, marks[:-1], marks[1:], strict=True)}

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1000, 500, 250])
    args = parser.parse_args()
    chunks = " ".join(map(str, args.chunks))
    command = f"`python benchmarks/chunk_speed.py --precision {args.precision} --pairs {args.pairs} --chunks {chunks}`"

    dataset, recipe = load_dataset(args.data), get_model_entry(DEFAULT_MODEL).recipe
    context = prepare_run("cpu", args.precision, run_dir=Path(tempfile.mkdtemp()))
    rows = []
    with process_settings(context):
        training = setup(context, dataset, DEFAULT_MODEL, recipe)
        training.model.train()
        order = torch.randperm(len(training.labels), generator=training.generator)
        flips = flip_masks(recipe.flip, training.flip_base, 0, training.generator)
        full, crop = training.info.input_size, crop_size(0, training.info.input_size, recipe)
        for size in (crop, full):
            for chunk_size in args.chunks:
                paths = {  # the ratios: the whole batch's step time over the chunked step's
                    "the whole batch": step_in_chunks(training, size, 0, order, flips),
                    f"chunks of {chunk_size}": step_in_chunks(training, size, chunk_size, order, flips),
                }
                means, speedups = alternate(paths, args.pairs)
                for path, parts in means.items():
                    total = sum(parts.values())
                    shares = ", ".join(f"{part} {ms:.0f} ms" for part, ms in parts.items())
                    what = f"one step of batch {training.batch_size} at {size} px, {path}: {shares}"
                    speedup = (
                        "1.00x"
                        if path == "the whole batch"
                        else f"{statistics.median(speedups):.2f}x (median of {len(speedups)} pairs, "
                        f"{min(speedups):.2f}-{max(speedups):.2f})"
                    )
                    cells = [today(), machine(), command, what, context.precision, f"{total:.0f}", speedup]
                    rows.append(f"| {' | '.join(cells)} |")
                    print(rows[-1], flush=True)
    append_to_benchmarks(SECTION, rows, COLUMNS)


if __name__ == "__main__":
    main()
