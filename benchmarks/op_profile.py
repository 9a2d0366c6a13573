"""Where the default network's CPU time goes, by operator; appends to BENCHMARKS.md.

    python benchmarks/op_profile.py [--batch-size 500]

Three measurements on random data, torch's profiler over two repeats after two warm-ups:
  training step   forward, backward and an SGD step, channels_last, in this CPU's training
                  precision (bf16 where native), as `cifar train` takes its full-size steps
  fp32 scoring    a forward pass in fp32, channels_last, as the exact final scoring does
  max-pool        forward and backward of F.max_pool2d(x, 2) against two eager formulations
                  with the same forward values (reshape + amax, and a maximum of four strided
                  views), on the default network's three pooled shapes, best of five
"""

import argparse
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F
from common import ROOT, append_to_benchmarks, machine, today

sys.path.insert(0, str(ROOT))
from cifarcli.checkpoint import materialize
from cifarcli.models import airbench_net
from cifarcli.run import autocast_dtype_of, resolve_precision

COLUMNS = ["date", "machine", "workload", "precision", "share of CPU time by operator (top 5)"]
POOLED_SHAPES = [(64, 32, 32), (256, 16, 16), (256, 8, 8)]  # (channels, height, width) before pooling


def operator_shares(run, repeats: int = 2) -> str:
    from torch.profiler import ProfilerActivity, profile

    run()
    run()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            run()
    # Zero-filling the input gradient belongs to max-pool's backward, its only large fill here.
    names = {
        "aten::fill_": "max-pool backward (zero fill)",
        "aten::max_pool2d_with_indices_backward": "max-pool backward",
    }
    shares = Counter()
    for event in profiler.key_averages():
        name = names.get(event.key, event.key.removeprefix("aten::"))
        shares[name.replace("mkldnn_convolution", "convolution")] += event.self_cpu_time_total
    total = sum(shares.values())
    return ", ".join(f"{name} {time_ / total:.0%}" for name, time_ in shares.most_common(5))


def pool_rates(batch_size: int, dtype) -> str:
    def reshape_amax(x):
        height, width = x.shape[2:]
        return x.unflatten(3, (width // 2, 2)).unflatten(2, (height // 2, 2)).amax((3, 5))

    def four_way_maximum(x):
        top = torch.maximum(x[:, :, ::2, ::2], x[:, :, ::2, 1::2])
        return torch.maximum(top, torch.maximum(x[:, :, 1::2, ::2], x[:, :, 1::2, 1::2]))

    variants = {
        "max_pool2d": lambda x: F.max_pool2d(x, 2),
        "reshape+amax": reshape_amax,
        "4-way maximum": four_way_maximum,
    }
    totals = Counter()
    for channels, height, width in POOLED_SHAPES:
        x = torch.randn(batch_size, channels, height, width, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        for name, pool in variants.items():
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                y = pool(x)
                y.backward(torch.ones_like(y))
                best = min(best, time.perf_counter() - started)
            totals[name] += best
    return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in totals.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    precision = resolve_precision("auto", "cpu")
    autocast_dtype = autocast_dtype_of(precision)
    model = airbench_net(10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), widths=(64, 256, 256))
    materialize(model, 32)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.rand(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))

    def training_step():
        model.train()
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def scoring_pass():
        model.eval()
        with torch.no_grad():
            model(images)

    batch = f"batch {args.batch_size}"
    lines = [
        f"| {today()} | {machine()} | training step, default network, {batch} | {precision} | "
        f"{operator_shares(training_step)} |",
        f"| {today()} | {machine()} | fp32 scoring pass, default network, {batch} | fp32 | "
        f"{operator_shares(scoring_pass)} |",
        f"| {today()} | {machine()} | max-pool forward + backward, the network's 3 shapes, {batch} "
        f"(time, not share) | {precision} | {pool_rates(args.batch_size, autocast_dtype or torch.float32)} |",
    ]
    print("\n".join(lines))
    append_to_benchmarks("Where the CPU time goes (`benchmarks/op_profile.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
