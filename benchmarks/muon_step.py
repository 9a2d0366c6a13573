"""How long one Muon step takes on the default model's filters, its Newton-Schulz products in
fp32 against bf16 (optim.Muon's matmul_dtype; a bf16 run uses bf16, as airbench94_muon does).

    python benchmarks/muon_step.py [--model airbench-cpu] [--rounds 8] [--steps 10]

Random gradients on the model as setup() builds it (the step's cost does not depend on the
values). Each round times --steps steps of each dtype, the two alternating in order and in
reverse, since this host's speed drifts within minutes. A row per dtype: the median
milliseconds a step, every round's, and per round the fp32 step's time over this one's.
"""

import argparse
import statistics
import sys
import time

from common import ROOT, append_to_benchmarks, machine, today

sys.path.insert(0, str(ROOT))
import torch

from cifarcli.checkpoint import materialize
from cifarcli.models import create_model, get_model_entry
from cifarcli.optim import make_optimizers

COLUMNS = ["date", "machine", "command", "Newton-Schulz in", "ms a step (median)", "every round's ms", "fp32 / this"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def muon_with_random_gradients(model_name: str, dtype):
    model = create_model(model_name, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    materialize(model, 32)
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator) if param.requires_grad else None
    return make_optimizers(model, get_model_entry(model_name).recipe, dtype)[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="airbench-cpu")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)

    muons = {name: muon_with_random_gradients(args.model, dtype) for name, dtype in DTYPES.items()}
    for muon in muons.values():  # warm-up: first calls allocate and pick kernels
        muon.step()
    milliseconds = {name: [] for name in muons}
    for round_index in range(args.rounds):
        for name in muons if round_index % 2 == 0 else list(muons)[::-1]:
            started = time.perf_counter()
            for _ in range(args.steps):
                muons[name].step()
            milliseconds[name].append((time.perf_counter() - started) * 1000 / args.steps)

    command = " ".join(["python benchmarks/muon_step.py", *sys.argv[1:]])
    lines = [
        f"| {today()} | {machine()} | `{command}` | {name} | "
        f"{statistics.median(times):.1f} | {' / '.join(f'{t:.1f}' for t in times)} | "
        f"{statistics.median(a / b for a, b in zip(milliseconds['fp32'], times, strict=True)):.2f} |"
        for name, times in milliseconds.items()
    ]
    print("\n".join(lines))
    append_to_benchmarks("Muon's step (`benchmarks/muon_step.py`)", lines, COLUMNS)


if __name__ == "__main__":
    main()
