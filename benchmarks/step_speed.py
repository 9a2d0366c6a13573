"""Training-step images/s of network variants on random data: the quick way to price a change
before spending a full training run on it.

    python benchmarks/step_speed.py [--batch-size 512] [--steps 6] [--only NAME ...] [--compile] [--glibc-default]

Each variant: SGD-Nesterov steps on one random batch (fp32 or native bf16, channels_last),
two warm-up steps (their time reported: compile time for --compile), best of two timed rounds.
Like training, it first makes glibc keep freed memory (--glibc-default leaves malloc as it is).
"""

import argparse
import shlex
import sys
import time

import torch
from common import ROOT, append_to_benchmarks, machine, today

sys.path.insert(0, str(ROOT))
from cifarcli.checkpoint import materialize
from cifarcli.models import airbench_net, get_model_entry
from cifarcli.run import autocast_dtype_of, keep_freed_memory, resolve_precision

STATS = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
VARIANTS = {
    "airbench94 (64/256/256, GELU)": {"widths": (64, 256, 256)},
    "64/256/256, ReLU": {"widths": (64, 256, 256), "activation": "relu"},
    "64/192/192, GELU": {"widths": (64, 192, 192)},
    "airbench-narrow (64/128/256, GELU)": {"widths": (64, 128, 256)},
    "airbench-narrow at 24x24 input": {"widths": (64, 128, 256), "size": 24},
    "airbench94 at 24x24 input": {"widths": (64, 256, 256), "size": 24},
    "tutorial": {"model": "tutorial"},
    "tutorial, NCHW (no channels_last)": {"model": "tutorial", "channels_last": False},
}


COLUMNS = ["date", "machine", "command", "variant", "precision", "training img/s", "warm-up s"]


def images_per_second(model, batch_size, size, autocast_dtype, steps=6, channels_last=True):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.85, nesterov=True
    )
    inputs = torch.rand(batch_size, 3, size, size).contiguous(memory_format=memory_format)
    targets = torch.randint(0, 10, (batch_size,))

    def step():
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), targets, label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    step()
    warm_up = time.perf_counter() - started
    best = 0.0
    for _ in range(2):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, batch_size * steps / (time.perf_counter() - started))
    return best, warm_up


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="steps per timed round (two rounds, best kept)")
    parser.add_argument("--only", nargs="*", help="variant names to time (default: all)")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16, as cifar train --precision")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of airbench94 (32 and 24 px)")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as it is (training keeps freed memory)",
    )
    args = parser.parse_args()
    if not args.glibc_default:
        keep_freed_memory(True)
    precision = resolve_precision(args.precision, "cpu")
    autocast_dtype = autocast_dtype_of(precision)
    runs = {label: options for label, options in VARIANTS.items() if not args.only or label in args.only}
    if args.compile:  # the default's network, at both of its training sizes
        runs["airbench94, torch.compile (inductor)"] = {"widths": (64, 256, 256), "compiled": True}
        runs["airbench94 at 24x24, torch.compile (inductor)"] = {"widths": (64, 256, 256), "size": 24, "compiled": True}
    lines = []
    for label, options in runs.items():
        size, compiled = options.pop("size", 32), options.pop("compiled", False)
        channels_last, registered = options.pop("channels_last", True), options.pop("model", None)
        torch.manual_seed(0)
        if registered:
            model = get_model_entry(registered).build(10, *STATS)
            materialize(model, size)
        else:
            model = airbench_net(10, *STATS, **options)
        model = torch.compile(model) if compiled else model
        rate, warm_up = images_per_second(model, args.batch_size, size, autocast_dtype, args.steps, channels_last)
        lines.append(
            f"| {today()} | {machine()} | `python benchmarks/step_speed.py {shlex.join(sys.argv[1:])}` | "
            f"{label} | {precision} | {rate:.0f} | {warm_up:.1f} |"
        )
        print(lines[-1], flush=True)
    append_to_benchmarks("Training-step speed of network variants (`benchmarks/step_speed.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
