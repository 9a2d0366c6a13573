"""The bundled CIFAR-10 models: their files, the names they answer to, and which one a CPU gets.

Both are built by tools/build_default_model.py from tools/default_model/model.pt, the INT8 one
refused when it scores more than the tool's limit below fp32, and checked (onnx checker, graph
against card) when built, so loading them skips the onnx checker. Imports no torch.
"""

from pathlib import Path

from cifarcli.errors import CifarError
from cifarcli.hardware import cpu_int8_instructions

FOLDER = Path(__file__).parent / "assets"
MODELS = {"fp32": FOLDER / "default.onnx", "int8": FOLDER / "default.int8.onnx"}  # --bundled's choices
DEFAULT = MODELS["fp32"]
# Names that work from any folder: `cifar evaluate default`, `--model default.int8`.
NAMES = {path.name.removesuffix(".onnx"): path for path in MODELS.values()}


def is_bundled(path: Path) -> bool:
    return path.resolve().parent == FOLDER.resolve()


def bundled_or_path(model: "str | Path") -> Path:
    """A bundled model's file for its name, unless a file of that name is here; else the path."""
    path = Path(model)
    if not path.exists() and str(model) in NAMES:
        return NAMES[str(model)]
    return path


def choose_bundled_model(bundled: "str | None") -> tuple[Path, str]:
    """(bundled model, why) for --bundled fp32, int8 or None (this CPU's choice): INT8 on x86
    CPUs whose int8 instructions ONNX Runtime's INT8 kernels use, where the bundled INT8 file was
    measured faster than fp32 (docs/decisions.md), fp32 elsewhere."""
    if bundled is not None:
        if bundled not in MODELS:
            raise CifarError(f"--bundled {bundled}: choose {' or '.join(MODELS)}")
        return MODELS[bundled], f"--bundled {bundled}"
    instructions = cpu_int8_instructions()
    if instructions is None:
        return MODELS["fp32"], "fp32: this CPU has no AVX2 or VNNI int8 instructions; --bundled int8 for INT8"
    return MODELS["int8"], f"INT8, for this CPU's {instructions} int8 instructions; --bundled fp32 for fp32"
