"""Export a checkpoint to one self-describing .onnx file, prove it equals PyTorch, optionally INT8.

The graph takes float32 NCHW RGB in [0, 1] with a dynamic batch axis and normalises inside
itself; metadata_props carry the model card (onnx_model.py). The model is built, checked and
described in memory, then saved once, atomically: nothing replaces the destination until every
check has passed. An INT8 file comes after the fp32 one, which it never takes down with it.
"""

import contextlib
import datetime
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cifarcli import stops
from cifarcli.checkpoint import atomic_write, check_can_write
from cifarcli.classifier import OnnxClassifier, TorchClassifier, predict_in_batches, softmax, to_model_input
from cifarcli.data import Dataset
from cifarcli.errors import CifarError
from cifarcli.evaluate import accuracy, calibration, fit_temperature
from cifarcli.onnx_model import metadata_for

MAX_ABS_DIFF = 1e-4  # fp32 logits, ONNX Runtime against PyTorch
# The most portable opset that represents every registered network exactly, stamped with the
# lowest IR version that carries it (9). Opset 20 has GELU as one op; below it GELU becomes
# Erf-based ops, which ONNX Runtime runs exactly but OpenCV 4.14's importer crashes on
# (benchmarks/portability.py).
DEFAULT_OPSET = 20
OLDEST_OPSET = 18  # the oldest torch's exporter writes
# Where benchmarks/portability.py loaded fp32 exports and matched the installed ONNX Runtime's
# top-1 on 1,000 test images.
VERIFIED_RUNTIMES = {20: "ONNX Runtime 1.17.3 and newer, OpenCV DNN 4.14"}
PARITY_IMAGES = 1000
SPEED_BATCH = 256
TEMPERATURE_IMAGES = 5000
INT8_DESCRIPTION = "int8 static QLinearConv (uint8 activations, per-channel 7-bit weights), first convolution in float"


@dataclass
class ExportReport:
    path: Path
    size_bytes: int
    opset: int
    ir_version: int
    loads_on: str
    images_checked: int
    checked_on: str  # "test split" or "generated images"
    max_abs_diff: float
    agreement: float
    ort_images_per_s: "float | None" = None  # with speed=True (`cifar export --speed`)
    temperature: float = 1.0  # fitted on training images with --data; 1: not fitted
    calibration: dict = field(default_factory=dict)  # fitted_on, test ECE before and after, with --data
    int8: dict = field(default_factory=dict)  # path, size, accuracies and speeds when --int8

    def to_dict(self) -> dict:
        """What `cifar export --json` prints."""
        return {**asdict(self), "path": str(self.path)}


def newest_supported_opset() -> int:
    """The newest opset that both torch's exporter writes and the installed ONNX Runtime loads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from torch.onnx import _constants  # the exporter's own limit; no public name exists

    probe_value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", probe_value[:1], probe_value[1:])
    for opset in range(min(onnx.defs.onnx_opset_version(), _constants.ONNX_MAX_OPSET), 17, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:
            continue
    return 18


def batchnorm_before_pool(model):
    """A copy of the model in which each MaxPool2d -> BatchNorm2d pair runs as BatchNorm2d ->
    MaxPool2d, wherever every channel's BatchNorm scale is positive. The two orders then give
    bitwise the same output (each step of BatchNorm is non-decreasing, so it commutes with max),
    and in the new order the exporter folds the BatchNorm into the convolution before it, which
    makes the INT8 file faster (docs/decisions.md)."""
    import copy

    import torch
    from torch import nn

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            pool, norm = module[index], module[index + 1]
            # Without running statistics a BatchNorm normalises by the batch's: no swap then.
            if isinstance(pool, nn.MaxPool2d) and isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None:
                weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
                if bool((weight / torch.sqrt(norm.running_var + norm.eps) > 0).all()):
                    module[index], module[index + 1] = norm, pool
    return model


def build_onnx(model, input_size: int, opset: int):
    """The model as an ONNX ModelProto, in memory."""
    import onnx
    import torch

    example = torch.rand(2, 3, input_size, input_size)
    try:
        with stops.surfacing():
            program = torch.onnx.export(
                batchnorm_before_pool(model),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
    except Exception as error:
        raise CifarError(f"--opset {opset}: torch could not export the model ({type(error).__name__})") from None
    proto = program.model_proto
    # The exporter stamps its own (newest) IR version; older runtimes refuse what they do not know.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    proto.doc_string = "cifarcli image classifier: input 'images' float32 NCHW RGB in [0,1]; output 'logits'"
    return proto


def int8_path_for(output: Path) -> Path:
    """Where --int8 writes its file: <name>.int8.onnx beside the fp32 one."""
    return output.with_name(output.stem + ".int8.onnx")


def described(proto, metadata: dict[str, str]) -> bytes:
    """The serialized model with exactly these metadata_props."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def save(path: Path, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def runtimes_for(opset: int) -> str:
    import onnxruntime as ort

    return VERIFIED_RUNTIMES.get(opset, f"ONNX Runtime releases with opset {opset} (the installed {ort.__version__})")


def parity_images(dataset: "Dataset | None", input_size: int) -> tuple[np.ndarray, str]:
    if dataset is not None:
        return dataset.test.images[:PARITY_IMAGES], "test split"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (256, input_size, input_size, 3), dtype=np.uint8), "generated images"


def ort_speed(classifier, images: np.ndarray, seconds: float = 2.0) -> float:
    """Images/s at batch SPEED_BATCH; the batch is padded to that size, best of the repeats."""
    batch = np.resize(images, (SPEED_BATCH, *images.shape[1:]))
    classifier.predict_logits(batch)
    best, spent = 0.0, 0.0
    while spent < seconds:
        started = time.perf_counter()
        classifier.predict_logits(batch)
        elapsed = time.perf_counter() - started
        spent += elapsed
        best = max(best, SPEED_BATCH / elapsed)
    return best


def split_accuracy(classifier, split) -> float:
    return accuracy(predict_in_batches(classifier, split.images, SPEED_BATCH), split.labels)


def export_checkpoint(
    checkpoint: "Path | TorchClassifier",
    output: "Path | None" = None,
    opset: "int | None" = None,
    dataset: "Dataset | None" = None,
    int8: bool = False,
    calibration_images: int = 300,
    threads: int = 0,
    int8_max_loss: float = 0.01,
    speed: bool = False,
) -> ExportReport:
    """Export a checkpoint (its path, or loaded as a TorchClassifier) to output, beside the
    checkpoint by default. speed: also time ONNX Runtime (a few seconds)."""
    import torch

    loaded = isinstance(checkpoint, TorchClassifier)
    torch_model = checkpoint if loaded else TorchClassifier.from_checkpoint(checkpoint)
    info = torch_model.info
    if not all(bool(torch.isfinite(tensor).all()) for tensor in torch_model.model.state_dict().values()):
        raise CifarError(
            f"{torch_model.source}: its weights are not finite (a training run that diverged); train again with "
            "a lower --lr"
        )
    if dataset is not None and dataset.classes != info.classes:
        raise CifarError(f"--data {dataset.source}: its classes differ from the checkpoint's {info.classes}")
    if int8 and dataset is None:
        raise CifarError("--int8 needs --data: calibration uses training images and the report test accuracy")
    output = Path(output) if output else Path(torch_model.source).with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        raise CifarError(f"-o {output}: the output file must end in .onnx")
    if output.is_dir():
        raise CifarError(f"-o {output}: is a folder; give a file name ending in .onnx")
    check_can_write(output)  # before the work, not after it
    if int8:
        check_can_write(int8_path_for(output))
    newest = newest_supported_opset()
    if opset is not None and not OLDEST_OPSET <= opset <= newest:
        raise CifarError(
            f"--opset {opset}: choose {OLDEST_OPSET} to {newest}, the newest torch and ONNX Runtime both support"
        )
    opset = opset or DEFAULT_OPSET
    export_date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    proto = build_onnx(torch_model.model, info.input_size, opset)
    onnx_model = OnnxClassifier(described(proto, metadata_for(info, export_date)), threads, source=str(output))
    images, checked_on = parity_images(dataset, info.input_size)
    expected, actual = torch_model.predict_logits(images), onnx_model.predict_logits(images)
    max_diff = float(np.abs(expected - actual).max())
    agreement = float((expected.argmax(1) == actual.argmax(1)).mean())
    if not (max_diff <= MAX_ABS_DIFF and agreement == 1.0):  # NaN fails too
        raise CifarError(
            f"{output}: ONNX Runtime differs from PyTorch (max |diff| {max_diff:.2e} > {MAX_ABS_DIFF:g} "
            f"or top-1 agreement {agreement:.2%} < 100%); not written, try another --opset"
        )
    report = ExportReport(output, 0, opset, proto.ir_version, runtimes_for(opset), len(images), checked_on,
                          max_diff, agreement)  # fmt: skip
    if speed:
        report.ort_images_per_s = ort_speed(onnx_model, images)
    if dataset is not None:
        info = replace(info, temperature=calibrate(onnx_model, dataset, report))
    data = described(proto, metadata_for(info, export_date))
    report.size_bytes = len(data)
    save(output, data)
    if int8:
        fp32_model = OnnxClassifier(data, threads, source=str(output))
        report.int8 = quantize_int8(data, output, dataset, calibration_images, fp32_model, threads, info,
                                    export_date, int8_max_loss, speed)  # fmt: skip
    return report


def calibrate(classifier, dataset: Dataset, report: ExportReport) -> float:
    """Fit the temperature on up to TEMPERATURE_IMAGES training images (the test split is for
    measuring, never for fitting) and record the test split's calibration error before and after."""
    fitting = dataset.train.sample(TEMPERATURE_IMAGES)
    logits = predict_in_batches(classifier, fitting.images, SPEED_BATCH)
    temperature = fit_temperature(logits, fitting.labels)
    test_logits = predict_in_batches(classifier, dataset.test.images, SPEED_BATCH).astype(np.float64)
    correct = test_logits.argmax(1) == dataset.test.labels
    before, _ = calibration(softmax(test_logits).max(1), correct)
    after, _ = calibration(softmax(test_logits / temperature).max(1), correct)
    report.temperature = temperature
    report.calibration = {"fitted_on": f"{len(fitting)} training images", "test_ece": before, "test_ece_scaled": after}
    return temperature


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


def quantize_int8(
    fp32_data: bytes,
    output: Path,
    dataset: Dataset,
    count: int,
    fp32_model,
    threads,
    info,
    export_date,
    max_loss,
    speed,
):
    """Static quantization of the convolutions with ONNX Runtime's own tools, calibrated on
    training images; writes <output>.int8.onnx and returns both models' accuracies (and speeds).

    The format is the one that loads everywhere we checked (benchmarks/portability.py): standard
    QLinearConv nodes, which OpenCV's importer reads and ONNX Runtime runs as fast as the QDQ form
    (OpenCV rejects QDQ's DequantizeLinear of constant weights). Activations are uint8 because
    ONNX Runtime's int8-activation QLinearConv ran 25x slower on x86; only Conv is quantized so
    that no Microsoft-only operator (QGemm, QLinearMul) enters the file. Weights use 7 bits
    (reduce_range): on CPUs without VNNI, ONNX Runtime sums pairs of uint8 x int8 products in
    16 bits, which 8-bit weights can overflow and 7-bit ones cannot, at no cost in accuracy
    (docs/decisions.md)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = dataset.train.sample(count).images

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calibration[i : i + 32] for i in range(0, len(calibration), 32)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": to_model_input(batch)}

    int8_path = int8_path_for(output)
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
    fp32_acc = split_accuracy(fp32_model, dataset.test)
    int8_acc = split_accuracy(OnnxClassifier(described(proto, metadata_for(info, export_date)), threads), dataset.test)
    if fp32_acc - int8_acc > max_loss:
        raise CifarError(
            f"{int8_path}: not written (the fp32 {output.name} was), INT8 scores {int8_acc:.2%} against fp32's "
            f"{fp32_acc:.2%} on the test split, more than --int8-max-loss {max_loss:g} below; calibrate on more "
            "images (--calibration-images) or raise the limit"
        )
    # The INT8 file describes itself: its own accuracy, the fp32 figure beside it, and none of
    # the fp32 model's other test figures (loss, TTA), which it was not measured for.
    metrics = {"test_acc": round(int8_acc, 5), "fp32_test_acc": round(fp32_acc, 5)}
    quantized_info = info.measured(info.epoch, **metrics, train_seconds=info.metrics.train_seconds)
    data = described(proto, metadata_for(quantized_info, export_date, INT8_DESCRIPTION))
    save(int8_path, data)
    result = {"path": str(int8_path), "size_bytes": len(data), "calibration_images": len(calibration),
              "fp32_test_acc": fp32_acc, "int8_test_acc": int8_acc}  # fmt: skip
    if speed:
        int8_model = OnnxClassifier(data, threads)
        result["fp32_images_per_s"] = ort_speed(fp32_model, dataset.test.images[:SPEED_BATCH])
        result["int8_images_per_s"] = ort_speed(int8_model, dataset.test.images[:SPEED_BATCH])
    return result
