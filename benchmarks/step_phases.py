"""Where a training step of the default model goes, and whether its convolutions have a faster
path (issue 14: what would buy the time that crops and Muon cannot).

    python benchmarks/step_phases.py [--data PATH] [--precision auto] [--pairs 16]
                                     [--baseline onednn|weight-gradient|whole-batch|full-maps]
                                     [--steps-only]

1. The default recipe's own steps (setup() on the real data, the training loop's calls):
   augmentation, forward, backward and the optimizers, timed apart at the crop size and the
   full size, with the convolutions as training computes them (cifarcli/small_map_conv.py)
   and with a baseline: oneDNN's throughout, only the weight gradients by matrix product
   (`--baseline weight-gradient`), each weight gradient one product over the whole batch
   (`--baseline whole-batch`), or the convolutions before a max-pool computing the last row and
   column of odd maps that the pool drops (`--baseline full-maps`), step by step in ABBA order
   (--pairs of steps after one warm-up pair); the speed-up is the median over the pairs.
2. Each 3x3 convolution of the default network at its training batch, on the maps of both
   sizes (shapes taken from the model itself): oneDNN's forward, input gradient and weight
   gradient, against the same three as training's matrix products on im2col'd channels_last
   tensors (what AMX multiplies fastest).

Appends one row per step size and path, and one per convolution and part, to BENCHMARKS.md.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import SHARED_DATA, alternate, append_to_benchmarks, machine, today

from cifarcli import small_map_conv
from cifarcli.data import load_dataset
from cifarcli.models import DEFAULT_MODEL, get_model_entry
from cifarcli.run import prepare_run, process_settings
from cifarcli.small_map_conv import conv_by_matmul, input_gradient_by_matmul, weight_gradient_by_matmul
from cifarcli.train import augment_batch, crop_size, draw_crop_offsets, flip_masks, setup

PHASES = ("augmentation", "forward", "backward", "optimizers")
SECTION = "Where a training step's time goes (`benchmarks/step_phases.py`)"
COLUMNS = ["date", "machine", "command", "what", "precision", "milliseconds", "share or ratio"]
TRAINED_PATH = "as training computes them (small_map_conv.py)"
BASELINES = {  # name: (what it is, the settings of small_map_conv it runs with)
    "onednn": ("oneDNN throughout", {"SMALL_MAP": 0, "TINY_MAP": 0}),
    "weight-gradient": (
        "weight gradients by matmul, forward and input gradients by oneDNN",
        {"TINY_MAP": 0},
    ),
    "whole-batch": ("each weight gradient one matrix product over the whole batch", {"IMAGES_PER_PRODUCT": 10**9}),
    "full-maps": ("convolutions before a max-pool compute the rows it drops too", {"POOLED_ONLY": False}),
}


def ms_per_call(work, calls: int = 3) -> float:
    work()
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - started) / calls * 1000


# ---------------------------------------------------------------- 1. the recipe's steps


def time_step(training, size: int, indices, flips) -> dict:
    """Milliseconds of each phase of one training step on the given images."""
    t, dtype = training, training.context.autocast_dtype
    marks = [time.perf_counter()]
    offsets = draw_crop_offsets(t.padded, size, 1, len(indices), t.generator)
    inputs = augment_batch(t.padded, indices, size, flips[indices], None if offsets is None else offsets[0])
    inputs = inputs.float().div_(255).contiguous(memory_format=torch.channels_last)
    marks.append(time.perf_counter())
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = t.network(inputs).float()
    loss = F.cross_entropy(logits, t.labels[indices], label_smoothing=t.recipe.label_smoothing)
    marks.append(time.perf_counter())
    t.model.zero_grad(set_to_none=True)
    loss.backward()
    marks.append(time.perf_counter())
    for optimizer in t.optimizers:
        optimizer.step()
    marks.append(time.perf_counter())
    return {phase: (end - start) * 1000 for phase, start, end in zip(PHASES, marks[:-1], marks[1:], strict=True)}


def compare_paths(training, size: int, pairs: int, paths: dict) -> tuple[dict, list[float]]:
    """Steps alternating between the paths (settings of small_map_conv) in ABBA order:
    each path's mean milliseconds per phase, and per pair the first path's step time over the
    second's."""
    t = training
    t.model.train()
    order = torch.randperm(len(t.labels), generator=t.generator)
    flips = flip_masks(t.recipe.flip, t.flip_base, 0, t.generator)
    batches = len(order) // t.batch_size

    def step_with(settings: dict):
        def step(pair: int) -> dict:
            apply_settings(settings)
            indices = order[(pair % batches) * t.batch_size : (pair % batches + 1) * t.batch_size]
            return time_step(t, size, indices, flips)

        return step

    return alternate({path: step_with(settings) for path, settings in paths.items()}, pairs)


def apply_settings(settings: dict) -> None:
    for name, value in settings.items():
        setattr(small_map_conv, name, value)


# ---------------------------------------------------------------- 2. the convolutions


def conv_shapes(model, size: int) -> list[tuple[int, int, int]]:
    """(in channels, out channels, map size) of each 3x3 convolution, from a forward pass."""
    shapes = []
    hooks = [
        module.register_forward_hook(
            lambda m, inputs, out: shapes.append((m.in_channels, m.out_channels, out.shape[-1]))
        )
        for module in model.modules()
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return shapes


def time_convolution(batch: int, channels: int, out: int, size: int, dtype) -> dict:
    x = torch.randn(batch, channels, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out, channels, 3, 3, dtype=dtype)
    grad = torch.randn(batch, out, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x_nhwc, grad_nhwc = x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)

    def onednn_backward(input_gradient: bool, weight_gradient: bool):
        mask = [input_gradient, weight_gradient, False]
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
        )

    expected_input, expected_weight, _ = onednn_backward(True, True)
    checks = [
        (input_gradient_by_matmul(grad, weight), expected_input),
        (weight_gradient_by_matmul(x_nhwc, grad_nhwc), expected_weight),
    ]
    for ours, theirs in checks:
        error = ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item()
        assert error < 1e-2, f"the matrix-product path differs from oneDNN by {error:.1e}"
    return {
        "forward": (
            ms_per_call(lambda: F.conv2d(x, weight, padding=1)),
            ms_per_call(lambda: conv_by_matmul(x, weight)),
        ),
        "input gradient": (
            ms_per_call(lambda: onednn_backward(True, False)),
            ms_per_call(lambda: input_gradient_by_matmul(grad, weight)),
        ),
        "weight gradient": (
            ms_per_call(lambda: onednn_backward(False, True)),
            ms_per_call(lambda: weight_gradient_by_matmul(x_nhwc, grad_nhwc)),
        ),
    }


def convolution_rows(training, sizes, context, command: str) -> list[str]:
    """One row per 3x3 convolution of the network (at both sizes' maps) and part."""
    dtype = context.autocast_dtype or torch.float32
    shapes = {shape for size in sizes for shape in conv_shapes(training.model, size)}
    rows = []
    for channels, out, size in sorted(shapes, key=lambda shape: -shape[2]):
        for part, (onednn, matmul) in time_convolution(training.batch_size, channels, out, size, dtype).items():
            what = f"3x3 conv {channels}->{out} at {size} px, {part}: oneDNN / im2col + matmul"
            cells = [today(), machine(), command, what, context.precision, f"{onednn:.0f} / {matmul:.0f}"]
            rows.append(f"| {' | '.join(cells)} | {onednn / matmul:.2f}x |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--baseline", choices=list(BASELINES), default="onednn")
    parser.add_argument("--steps-only", action="store_true", help="skip the single convolutions")
    args = parser.parse_args()
    options = f"--precision {args.precision} --pairs {args.pairs} --baseline {args.baseline}"
    command = f"`python benchmarks/step_phases.py {options}{' --steps-only' * args.steps_only}`"

    dataset, recipe = load_dataset(args.data), get_model_entry(DEFAULT_MODEL).recipe
    context = prepare_run("cpu", args.precision, run_dir=Path(tempfile.mkdtemp()))
    rows = []
    with process_settings(context):
        training = setup(context, dataset, DEFAULT_MODEL, recipe)
        full, crop = training.info.input_size, crop_size(0, training.info.input_size, recipe)
        settings = ("SMALL_MAP", "TINY_MAP", "IMAGES_PER_PRODUCT", "POOLED_ONLY")
        trained = {name: getattr(small_map_conv, name) for name in settings}
        baseline_name, baseline_changes = BASELINES[args.baseline]
        paths = {baseline_name: {**trained, **baseline_changes}, TRAINED_PATH: trained}
        for size in (crop, full):
            means, ratios = compare_paths(training, size, args.pairs, paths)
            for path, parts in means.items():
                total = sum(parts.values())
                shares = ", ".join(f"{key} {ms:.0f} ms ({ms / total:.0%})" for key, ms in parts.items())
                what = f"one step of batch {training.batch_size} at {size} px, {path}: {shares}"
                speedup = (
                    "1.00x"
                    if path == baseline_name
                    else (
                        f"{statistics.median(ratios):.2f}x (median of {len(ratios)} pairs, "
                        f"{min(ratios):.2f}-{max(ratios):.2f})"
                    )
                )
                cells = [today(), machine(), command, what, context.precision, f"{total:.0f}", speedup]
                rows.append(f"| {' | '.join(cells)} |")
                print(rows[-1], flush=True)
        apply_settings(trained)
        if not args.steps_only:
            rows += convolution_rows(training, (crop, full), context, command)
    append_to_benchmarks(SECTION, rows, COLUMNS)


if __name__ == "__main__":
    main()
