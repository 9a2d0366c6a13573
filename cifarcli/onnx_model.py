"""Reading an exported .onnx model safely, and the metadata that makes it self-describing.

Imports neither torch nor (unless it is installed) onnx: `cifar predict` runs with only
onnxruntime, numpy, pillow, typer and rich. When the onnx package is present its full checker
runs before anything else touches the model.
"""

import json
import re
from pathlib import Path

from cifarcli.checkpoint import ModelInfo
from cifarcli.errors import CifarError, first_line

# The package's own models, checked when tools/build_default_model.py built them: the
# onnx checker (about 0.1 s of a one-image prediction) runs on every other file.
BUNDLED_FOLDER = Path(__file__).parent / "assets"
INPUT_LAYOUT = "NCHW"
INPUT_RANGE = "float32 RGB in [0, 1]"


def metadata_for(info: ModelInfo, export_date: str) -> dict[str, str]:
    """The metadata_props written into every export: all strings, JSON where structured."""
    return {
        "cifarcli_model": info.model,
        "classes": json.dumps(info.classes),
        "input_size": str(info.input_size),
        "input_layout": INPUT_LAYOUT,
        "input_range": INPUT_RANGE,
        "normalization": json.dumps({"mean": info.mean, "std": info.std, "inside_graph": True}),
        "test_accuracy": json.dumps(info.metrics.get("test_acc")),
        "metrics": json.dumps(info.metrics),
        "recipe": json.dumps(info.recipe),
        "epoch": str(info.epoch),
        "training_precision": info.precision,
        "val_fraction": str(info.val_fraction),
        "temperature": str(info.temperature),
        "cifarcli_version": info.version,
        "export_date": export_date,
    }


def info_from_metadata(metadata: dict[str, str], source: str) -> ModelInfo:
    if "cifarcli_model" not in metadata or "classes" not in metadata:
        raise CifarError(
            f"{source}: not a cifarcli export (no class names in its metadata); export it with `cifar export`"
        )
    try:
        normalization = json.loads(metadata.get("normalization", "{}"))
        values = {
            "model": metadata["cifarcli_model"],
            "classes": json.loads(metadata["classes"]),
            "input_size": int(metadata["input_size"]),
            "mean": normalization["mean"],
            "std": normalization["std"],
            "recipe": json.loads(metadata.get("recipe", "{}")),
            "metrics": json.loads(metadata.get("metrics", "{}")),
            "epoch": int(metadata.get("epoch", 0)),
            "precision": metadata.get("training_precision", "fp32"),
            "val_fraction": float(metadata.get("val_fraction", 0)),
            "temperature": float(metadata.get("temperature", 1)),
            "version": metadata.get("cifarcli_version", "unknown"),
        }
    except (KeyError, ValueError, TypeError) as error:
        raise CifarError(
            f"{source}: malformed cifarcli metadata ({type(error).__name__}: {first_line(error)})"
        ) from None
    return ModelInfo.from_dict(values, source)


def check_with_onnx(serialized: bytes, source: str) -> None:
    """Full onnx.checker pass and a refusal of external data, where the onnx package exists."""
    try:
        import onnx
    except ImportError:
        return
    try:
        model = onnx.load_from_string(serialized)
    except Exception as error:
        raise CifarError(f"{source}: not an ONNX model ({type(error).__name__})") from None
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise CifarError(f"{source}: refers to external data files; only self-contained exports are loaded")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:
        raise CifarError(f"{source}: fails onnx.checker ({first_line(error)})") from None


def explain_load_failure(error: Exception, path: Path) -> str:
    """One line; for a model newer than the installed ONNX Runtime, its opset, the runtime's
    version and the two fixes."""
    import onnxruntime as ort

    message = str(error)
    opset = re.search(r"Opset (\d+) is under development.*?domain ([\w.]+)", message, re.DOTALL)
    ir_version = re.search(r"Unsupported model IR version: (\d+)", message)
    if not (opset or ir_version):
        return f"{path}: not a loadable ONNX model ({first_line(error)})"
    needs = f"opset {opset[1]} of {opset[2]}" if opset else f"IR version {ir_version[1]}"
    return (
        f"{path}: the model needs {needs}, newer than onnxruntime {ort.__version__} supports; "
        f"upgrade it (pip install -U onnxruntime) or re-export with `cifar export CHECKPOINT --opset 20`"
    )


def open_onnx_model(path: "str | Path", threads: int = 0):
    """(description, ONNX Runtime session) of a cifarcli export, or a one-line CifarError.
    threads: ONNX Runtime's intra-op threads (0: its default, one per core)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CifarError(f"{path}: no such ONNX file")
    serialized = path.read_bytes()
    if path.resolve().parent != BUNDLED_FOLDER.resolve():
        check_with_onnx(serialized, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        # From bytes, not the path: ONNX Runtime then cannot resolve external data next to it.
        session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise CifarError(explain_load_failure(error, path)) from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return info_from_metadata(metadata, str(path)), session
