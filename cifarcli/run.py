"""A training run's context, decided once: device, precision, processes, threads, run folder.

After nanoGPT's top-of-script block ("device, dtype, ddp rank: decided once, used everywhere"):
`decide_setup()` decides the device, joins the process group and decides the precision and the
threads (a RunSetup); the RunContext adds the run folder, a new one taken once the data has
loaded (`take_run_folder`) or the one being resumed (`RunSetup.in_folder`); `train()` reads the
context and `config.json` records it. Nothing downstream decides any of these again.

Precision names the autocast of the training steps only. Every accuracy a run prints or records
is scored in fp32, so that `cifar evaluate` of the checkpoint and of its ONNX export reproduce
it on any machine.
"""

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cifarcli import stops
from cifarcli.distributed import Ranks, broadcast_from_main, join_process_group
from cifarcli.errors import CifarError
from cifarcli.hardware import cores, cpu_has_native_bf16
from cifarcli.run_folder import RunFolder

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
TORCH_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class RunSetup:
    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # autocast of the training steps: "fp32", "bf16" or "fp16"
    ranks: Ranks
    threads: int  # torch intra-op threads of this process (the machine's cores shared among its processes)

    def in_folder(self, path: Path) -> "RunContext":
        """The context of a run in this folder (rank 0 writes it)."""
        folder = RunFolder(Path(path), self.ranks.is_main)
        return RunContext(self.device, self.precision, self.ranks, self.threads, folder)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def autocast_dtype(self):
        return autocast_dtype_of(self.precision)

    @property
    def matrix_product_convolutions(self) -> bool:
        """bf16 training on a CPU takes small maps' convolutions as matrix products (small_map_conv.py)."""
        return self.device_type == "cpu" and self.precision == "bf16"

    def to_config(self) -> dict:
        """What config.json records of the context."""
        return {
            "device": self.device,
            "precision": self.precision,
            "processes": self.ranks.world,
            "threads": self.threads,
        }

    def describe(self) -> str:
        processes = f", {self.ranks.world} processes" if self.ranks.active else ""
        return f"{self.device} ({self.precision}, {self.threads} threads{processes})"


@dataclass(frozen=True)
class RunContext(RunSetup):
    """A RunSetup and the run's folder: what train() runs in."""

    folder: RunFolder


# ---------------------------------------------------------------- deciding the context


def autocast_dtype_of(precision: str):
    """The torch dtype of autocast for a precision name, or None for fp32."""
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[precision]) if precision in TORCH_DTYPE_NAMES else None


def resolve_device(requested: str, local_rank: int) -> str:
    """auto -> cuda, mps or cpu; under torchrun each process takes the GPU of its LOCAL_RANK."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise CifarError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
        return f"cuda:{local_rank}"
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise CifarError("--device mps: Apple's MPS backend is not available; use --device cpu or auto")
        return "mps"
    if requested == "cpu":
        return "cpu"
    raise CifarError(f"--device {requested}: choose {', '.join(DEVICES)}")


def resolve_precision(requested: str, device: str) -> str:
    """auto: bf16 where the hardware runs it natively, else fp16 on CUDA and fp32 elsewhere
    (emulated bf16 on CPUs without avx512_bf16 or AMX is many times slower than fp32)."""
    import torch

    if requested not in PRECISIONS:
        raise CifarError(f"--precision {requested}: choose {', '.join(PRECISIONS)}")
    device_type = device.split(":")[0]
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device_type != "cuda":
        raise CifarError(f"--precision fp16: only on CUDA GPUs (this run is on {device}); use bf16 or fp32")
    return requested


def decide_setup(device: "str | None" = None, precision: "str | None" = None) -> RunSetup:
    """Decide the device (from LOCAL_RANK under torchrun), join the process group, decide the
    precision and the threads; None is auto."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device or "auto", local_rank)
    ranks = join_process_group(device)
    precision = resolve_precision(precision or "auto", device)
    return RunSetup(device, precision, ranks, max(1, cores() // ranks.local_world))


def prepare_run(device: "str | None", precision: "str | None", run_dir: Path) -> "RunContext":
    """A library caller's run in a folder of its own: decide_setup() in that folder."""
    return decide_setup(device, precision).in_folder(run_dir)


def take_run_folder(setup: RunSetup, out: Path, name: str) -> "RunContext":
    """A new run folder out/<name> (numbered when taken), made by rank 0 and named to every rank."""
    path = broadcast_from_main(str(RunFolder.create(out, name).path) if setup.ranks.is_main else None, setup.ranks)
    return setup.in_folder(Path(path))


# ---------------------------------------------------------------- process-wide settings


@contextlib.contextmanager
def process_settings(context: RunContext):
    """Apply what a run changes for the whole process, and undo it afterwards so that a library
    caller (or the test process) gets its process back: torch's thread count, glibc's malloc
    keeping freed memory (CPU only), and SIGTERM raising stops.Stopped."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(context.threads)
    if context.device_type == "cpu":
        keep_freed_memory(True)
    try:
        with stops.stop_on_sigterm():
            yield
    finally:
        if context.device_type == "cpu":
            keep_freed_memory(False)
        torch.set_num_threads(threads_before)


def keep_freed_memory(keep: bool) -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the kernel, or restore
    glibc's defaults.

    A training step allocates and frees the same activations, hundreds of MB each at batch 2000.
    By default glibc maps blocks that large afresh and unmaps them on free, so every step
    page-faults them in again (docs/decisions.md). Not glibc: nothing to do.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from glibc's malloc.h
    if keep:
        libc.mallopt(m_mmap_max, 0)  # large blocks come from the heap, which is kept ...
        libc.mallopt(m_trim_threshold, 2**31 - 1)  # ... rather than trimmed after each free
        libc.mallopt(m_arena_max, 1)  # one heap, so the intra-op threads reuse the same memory
    else:  # glibc's documented defaults
        libc.mallopt(m_mmap_max, 65536)
        libc.mallopt(m_trim_threshold, 128 * 1024)
        libc.mallopt(m_arena_max, 0)
