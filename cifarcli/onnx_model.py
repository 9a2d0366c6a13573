"""Reading an exported .onnx model safely, and the metadata that makes it self-describing.

Imports neither torch nor (unless it is installed) onnx: `cifar predict` runs with only
onnxruntime, numpy, pillow, typer and rich. When the onnx package is present its full checker
runs before anything else touches the model.
"""

import json
import re
from pathlib import Path

from cifarcli.bundled import is_bundled
from cifarcli.checkpoint import ModelInfo
from cifarcli.errors import CifarError, first_line

CARD_KEY = "cifarcli_model_card"  # the model card's JSON, as checkpoints hold it
# The most portable opset that represents every registered network exactly, stamped with the
# lowest IR version that carries it (9). Opset 20 has GELU as one op; below it GELU becomes
# Erf-based ops, which ONNX Runtime runs exactly but OpenCV 4.14's importer crashes on
# (benchmarks/portability.py).
DEFAULT_OPSET = 20
OLDEST_OPSET = 18  # the oldest torch's exporter writes
INPUT_LAYOUT = "NCHW"
INPUT_RANGE = "float32 RGB in [0, 1]"
FEATURES = "features"  # the optional second output: the input of the last linear layer, per image


def metadata_for(info: ModelInfo, export_date: str, quantization: "str | None" = None) -> dict[str, str]:
    """The metadata_props of an export: the model card under CARD_KEY, which is what cifarcli
    reads back, and flat keys derived from it for other tools (never read back)."""
    flat = {
        "classes": json.dumps(info.classes),
        "input_size": str(info.input_size),
        "input_layout": INPUT_LAYOUT,
        "input_range": INPUT_RANGE,
        "normalization": json.dumps({"mean": info.mean, "std": info.std, "inside_graph": True}),
        "test_accuracy": json.dumps(info.metrics.test_acc),
        "temperature": str(info.temperature),
        "cifarcli_version": info.version,
        "export_date": export_date,
    }
    return {CARD_KEY: json.dumps(info.to_dict()), **flat, **({"quantization": quantization} if quantization else {})}


def info_from_metadata(metadata: dict[str, str], source: str) -> ModelInfo:
    if CARD_KEY not in metadata:
        raise CifarError(
            f"{source}: not a cifarcli export (no model card in its metadata); export it with `cifar export`"
        )
    try:
        card = json.loads(metadata[CARD_KEY])
    except ValueError as error:
        raise CifarError(f"{source}: malformed cifarcli model card ({first_line(error)})") from None
    if not isinstance(card, dict):
        raise CifarError(f"{source}: malformed cifarcli model card (not a JSON object)")
    return ModelInfo.from_dict(card, source)


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
        f"upgrade it (pip install -U onnxruntime) or re-export with `cifar export CHECKPOINT --opset {DEFAULT_OPSET}`"
    )


def open_onnx_model(model: "str | Path | bytes", threads: int = 0, source: "str | None" = None):
    """(description, ONNX Runtime session) of a cifarcli export, from its file or its bytes, or a
    one-line CifarError. threads: ONNX Runtime's intra-op threads (0: its default, one per core)."""
    import onnxruntime as ort

    if isinstance(model, bytes):
        serialized, bundled = model, False
    else:
        path = Path(model)
        if not path.is_file():
            raise CifarError(f"{path}: no such ONNX file")
        serialized, bundled = path.read_bytes(), is_bundled(path)
    source = source or str(model)
    if not bundled:  # the bundled models passed it when built; it would slow every short prediction (docs/decisions.md)
        check_with_onnx(serialized, source)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        # From bytes, not a path: ONNX Runtime then cannot resolve external data next to it.
        runtime = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise CifarError(explain_load_failure(error, source)) from None
    metadata = dict(runtime.get_modelmeta().custom_metadata_map)
    info = info_from_metadata(metadata, source)
    check_graph_matches_card(runtime, info, source)
    return info, runtime


def check_graph_matches_card(runtime, info: ModelInfo, source: str) -> None:
    """Refuse a graph that cannot take what its model card promises: one float32 input of any
    batch, INPUT_LAYOUT at the card's input size, and a first output of one logit per class (a
    second, FEATURES, gives the embeddings)."""
    inputs, outputs = runtime.get_inputs(), runtime.get_outputs()
    problem = None
    if len(inputs) != 1 or not 1 <= len(outputs) <= 2 or (len(outputs) == 2 and outputs[1].name != FEATURES):
        problem = (
            f"has {len(inputs)} inputs and outputs {[output.name for output in outputs]}, not one input and logits"
        )
    else:
        images, logits = inputs[0], outputs[0]
        expected, classes = [3, info.input_size, info.input_size], len(info.classes)
        if images.type != "tensor(float)" or len(images.shape) != 4 or images.shape[1:] != expected:
            promised = " x ".join(map(str, ["N", *expected]))
            problem = f"takes {images.type} {images.shape}, where its card says float32 {promised}"
        elif isinstance(images.shape[0], int):
            problem = f"takes a fixed batch of {images.shape[0]} images, not any number"
        elif len(logits.shape) != 2 or (isinstance(logits.shape[1], int) and logits.shape[1] != classes):
            problem = f"gives {logits.shape}, where its card has {classes} classes"
    if problem:
        raise CifarError(f"{source}: its graph does not match its model card: it {problem}; export it again")
