"""Static INT8 quantization of an exported fp32 model with ONNX Runtime's own tools.

The format is the one that loads everywhere we checked (benchmarks/portability.py): standard
QLinearConv nodes, which OpenCV's importer reads and ONNX Runtime runs as fast as the QDQ form
(OpenCV rejects QDQ's DequantizeLinear of constant weights). Activations are uint8 because ONNX
Runtime's int8-activation QLinearConv ran slower on x86; only Conv is quantized so that no
Microsoft-only operator (QGemm, QLinearMul) enters the file. Weights use 7 bits (reduce_range):
on CPUs without VNNI, ONNX Runtime sums pairs of uint8 x int8 products in 16 bits, which 8-bit
weights can overflow and 7-bit ones cannot, at no cost in accuracy (docs/decisions.md).
"""

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np

from cifarcli.classifier import to_model_input

DESCRIPTION = "int8 static QLinearConv (uint8 activations, per-channel 7-bit weights), first convolution in float"
CALIBRATION_BATCH = 32
CALIBRATION_IMAGES = 300  # training images that calibrate the activation ranges
INT8_MAX_LOSS = 0.01  # refuse an int8 model more than one point of test accuracy below fp32


def quantize(fp32_data: bytes, calibration: np.ndarray):
    """The INT8 ModelProto of a serialized fp32 model, calibrated on these uint8 images."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            starts = range(0, len(calibration), CALIBRATION_BATCH)
            self.batches = iter([calibration[start : start + CALIBRATION_BATCH] for start in starts])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": to_model_input(batch)}

    with tempfile.TemporaryDirectory() as folder:  # the quantizer's tools read and write files
        fp32_file, prepared, quantized = (Path(folder) / name for name in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        fp32_file.write_bytes(fp32_data)
        with root_logger_quiet():  # the quantizer's "WARNING:root:Axis 1 is out-of-range ..." chatter
            quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=True)
            # The first convolution stays float: airbench's whitening stem scales its filters by
            # 1/sqrt(eigenvalue), and its int8 output cost the default model most of its accuracy.
            first_conv = next(node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv")
            quantize_static(
                str(prepared),
                str(quantized),
                Batches(),
                quant_format=QuantFormat.QOperator,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=[first_conv],
            )
        proto = onnx.load(str(quantized))
    drop_unused_opset_imports(proto)
    return proto


def drop_unused_opset_imports(proto) -> None:
    """ONNX Runtime's quantizer imports every domain it knows (ai.onnx.ml 5 among them), which
    older runtimes refuse to load; keep the domains the graph uses, and the IR version they need."""
    import onnx

    used = {node.domain for node in proto.graph.node} | {""}
    kept = [entry for entry in proto.opset_import if entry.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto.ir_version = onnx.helper.find_min_ir_version_for(kept, ignore_unknown=True)


@contextlib.contextmanager
def root_logger_quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
