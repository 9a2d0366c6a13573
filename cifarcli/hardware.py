"""What this CPU can do: its cores, and what it runs fast from /proc/cpuinfo's flags (empty where none).

CIFARCLI_CPU_FLAGS, when set, replaces the detected flags (space- or comma-separated, e.g.
"avx2 fma" for an AVX2-only CPU): for tests that need a CPU kind, and for users who want to force
a path. It changes only what cifarcli decides (the training precision, the bundled model); pair
it with ONEDNN_MAX_CPU_ISA to make PyTorch's kernels behave as on that CPU too.
"""

import functools
import os

CPU_FLAGS_OVERRIDE = "CIFARCLI_CPU_FLAGS"


def cores() -> int:
    """The CPU cores this process may use: every thread and worker count starts from this."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_flags() -> frozenset[str]:
    """The CPU's flags, or CIFARCLI_CPU_FLAGS's where it is set."""
    override = os.environ.get(CPU_FLAGS_OVERRIDE)
    if override is not None:
        return frozenset(override.replace(",", " ").lower().split())
    return detected_cpu_flags()


@functools.cache
def detected_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_has_native_bf16() -> bool:
    """bf16 matrix instructions: without them, bf16 autocast is many times slower than fp32 (docs/decisions.md)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_int8_instructions() -> "str | None":
    """The instructions that ONNX Runtime's INT8 convolutions run on here: "VNNI/AMX" (int8 dot
    products in one instruction), "AVX2" (pairs of products summed in 16 bits, which the 7-bit
    weights of `cifar export --int8` cannot overflow), or None (neither: no INT8 figure exists)."""
    flags = cpu_flags()
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        return "VNNI/AMX"
    return "AVX2" if "avx2" in flags else None
