"""A training run's context, decided once: device, precision, processes, run folder, stops.

After nanoGPT's top-of-script block ("device, dtype, ddp rank: decided once, used everywhere"):
`prepare_run()` makes a RunContext before training, `train()` reads it, and `config.json`
records it. A resumed run rebuilds the same context from its run folder (`load_resumable_run`),
so `cifar train --resume RUN_DIR` needs nothing else.

Precision names the autocast of the training steps only. Every accuracy a run prints or records
is scored in fp32, so that `cifar evaluate` of the checkpoint and of its ONNX export reproduce
it on any machine.
"""

import contextlib
import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from cifarcli.data import DEFAULT_VAL_FRACTION
from cifarcli.distributed import Ranks, broadcast_from_main, join_process_group
from cifarcli.errors import CifarError
from cifarcli.hardware import cpu_has_native_bf16

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TORCH_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16"}
# config.json before --precision existed spelled the dtype out.
EARLIER_PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class TrainingInterrupted(Exception):
    """Raised by the SIGTERM handler; last.pt holds the last completed epoch."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


@dataclass(frozen=True)
class RunContext:
    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # autocast of the training steps: "fp32", "bf16" or "fp16"
    ranks: Ranks
    run_dir: Path
    threads: int  # torch intra-op threads of this process (the CPU's cores shared among its processes)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def autocast_dtype(self):
        return autocast_dtype_of(self.precision)

    def describe(self) -> str:
        processes = f", {self.ranks.world} processes" if self.ranks.active else ""
        return f"{self.device} ({self.precision}, {self.threads} threads{processes})"


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
    raise CifarError(f"--device {requested}: choose auto, cpu, cuda or mps")


def resolve_precision(requested: str, device: str) -> str:
    """auto: bf16 where the hardware runs it natively, else fp16 on CUDA and fp32 elsewhere.
    Emulated bf16 on CPUs without avx512_bf16/amx_bf16 is 9-16x slower than fp32."""
    import torch

    requested = EARLIER_PRECISION_NAMES.get(requested, requested)
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


def prepare_run(
    device: str = "auto",
    precision: str = "auto",
    run_dir: "Path | None" = None,
    out: Path = Path("runs/train"),
    name: str = "exp",
) -> RunContext:
    """Decide the device (from LOCAL_RANK under torchrun), join the process group, decide the
    precision, and take the run folder: `run_dir` when given (a resumed run, or a library
    caller's own), else a new numbered folder under out/name, made by rank 0."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device, local_rank)
    ranks = join_process_group(device)
    precision = resolve_precision(precision, device)
    if run_dir is None:
        run_dir = broadcast_from_main(new_run_dir(out, name) if ranks.is_main else None, ranks)
    threads = max(1, (os.cpu_count() or 1) // ranks.local_world)
    return RunContext(device, precision, ranks, Path(run_dir), threads)


def new_run_dir(out: Path, name: str) -> Path:
    """runs/train/<name>, or <name>2, <name>3, ... when it exists (as Ultralytics does)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise CifarError(f"--name {name}: give a plain folder name; use --out to choose where runs go")
    try:
        out.mkdir(parents=True, exist_ok=True)
        candidate, number = out / name, 1
        while candidate.exists():
            number += 1
            candidate = out / f"{name}{number}"
        candidate.mkdir()
    except OSError as error:
        raise CifarError(f"--out {out}: cannot create a run folder there ({error.strerror})") from None
    return candidate


# ---------------------------------------------------------------- process-wide settings


@contextlib.contextmanager
def process_settings(context: RunContext):
    """Apply what a run changes for the whole process, and undo it afterwards so that a library
    caller (or the test process) gets its process back: torch's thread count, glibc's malloc
    keeping freed memory (CPU only), and SIGTERM raising TrainingInterrupted."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(context.threads)
    if context.device_type == "cpu":
        keep_freed_memory(True)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        sigterm_before = signal.signal(signal.SIGTERM, raise_training_interrupted)
    try:
        yield
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, sigterm_before)
        if context.device_type == "cpu":
            keep_freed_memory(False)
        torch.set_num_threads(threads_before)


def raise_training_interrupted(signal_number, frame):
    raise TrainingInterrupted(signal_number)


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


# ---------------------------------------------------------------- resuming from the run folder


@dataclass(frozen=True)
class ResumableRun:
    run_dir: Path
    checkpoint: Path  # last.pt
    model: str
    recipe: dict
    data: str  # the resolved data source the run trained on
    val_fraction: float  # of a ROOT/<class>/* source, held out as its test split
    precision: str

    def recorded(self) -> dict:
        """The options of `cifar train` that the run folder fixes, by option name."""
        data = {"data": self.data, "val_fraction": self.val_fraction}
        return {"model": self.model, "precision": self.precision, **data, **self.recipe}


def load_resumable_run(path: Path) -> ResumableRun:
    """What a run folder (or its last.pt) says about how to continue it: its config.json. Training
    checks the checkpoint against it when it loads last.pt."""
    checkpoint = path / "last.pt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise CifarError(f"--resume {path}: no last.pt there; give a run folder or its last.pt")
    config_file = checkpoint.parent / "config.json"
    try:
        config = json.loads(config_file.read_text())
        data, precision = config["data"], config["precision"]
        return ResumableRun(
            run_dir=checkpoint.parent,
            checkpoint=checkpoint,
            model=config["model"],
            recipe=config["recipe"],
            data=data["source"],
            val_fraction=data.get("val_fraction") or DEFAULT_VAL_FRACTION,
            precision=EARLIER_PRECISION_NAMES.get(precision, precision),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CifarError(
            f"--resume {path}: {config_file} is missing or unreadable; it records the data and recipe to resume with"
        ) from None


def refuse_contradictions(run: ResumableRun, given: dict) -> None:
    """Options given with --resume (by name, None when not given) must agree with the run folder;
    one line names the first that does not."""
    recorded = run.recorded()
    for name, value in given.items():
        if value is None or (name == "precision" and value == "auto"):
            continue
        if name == "data":
            value = str(Path(value).expanduser().resolve())
        if value != recorded[name]:
            option = "--" + name.replace("_", "-")
            raise CifarError(f"{option} {value}: the run being resumed has {recorded[name]}; drop {option}")
