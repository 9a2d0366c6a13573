"""Export a checkpoint to one self-describing .onnx file, prove it equals PyTorch, optionally INT8.

The graph takes float32 NCHW RGB in [0, 1] with a dynamic batch axis and normalises inside
itself; metadata_props carry the model card (onnx_model.py). The model is built, checked and
described in memory, then saved once, atomically: nothing replaces the destination until every
check has passed. An INT8 file comes after the fp32 one, which it never takes down with it.
"""

import datetime
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cifarcli import stops
from cifarcli.checkpoint import atomic_write, check_can_write
from cifarcli.classifier import OnnxClassifier, TorchClassifier, predict_in_batches, softmax
from cifarcli.data import Dataset
from cifarcli.errors import CifarError
from cifarcli.evaluate import accuracy, calibration, fit_temperature
from cifarcli.onnx_model import DEFAULT_OPSET, FEATURES, OLDEST_OPSET, metadata_for

MAX_ABS_DIFF = 1e-4  # fp32 logits, ONNX Runtime against PyTorch
# Where benchmarks/portability.py loaded fp32 exports and matched the installed ONNX Runtime's
# top-1 on 1,000 test images.
VERIFIED_RUNTIMES = {20: "ONNX Runtime 1.17.3 and newer, OpenCV DNN 4.14"}
PARITY_IMAGES = 1000
SCORING_BATCH = 256  # images per ONNX Runtime call when scoring and fitting
TEMPERATURE_IMAGES = 5000


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
    temperature: float = 1.0  # fitted on training images with --data; 1: not fitted
    calibration: dict = field(default_factory=dict)  # fitted_on, test ECE before and after, with --data
    int8: dict = field(default_factory=dict)  # path, size and accuracies when --int8

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


def with_features(model) -> tuple:
    """(the model answering (logits, features), its output names): features are the input of its
    last linear layer, the image embeddings that `cifar check` compares. A model without a linear
    layer answers its logits alone."""
    from torch import nn

    layers = list(model.children())
    heads = [index for index, layer in enumerate(layers) if any(isinstance(m, nn.Linear) for m in layer.modules())]
    if not heads:
        return model, ["logits"]
    head = heads[-1]

    class WithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Sequential(*layers[:head]), nn.Sequential(*layers[head:])

        def forward(self, x):
            features = self.body(x)
            return self.head(features), features

    return WithFeatures().eval(), ["logits", FEATURES]


def build_onnx(model, input_size: int, opset: int, features: bool = False):
    """The model as an ONNX ModelProto, in memory; with features, a second output FEATURES (last:
    OpenCV's net.forward() answers the last output, so name "logits" there)."""
    import onnx
    import torch

    example = torch.rand(2, 3, input_size, input_size)
    exported, output_names = with_features(batchnorm_before_pool(model)) if features else (model, ["logits"])
    try:
        with stops.surfacing():
            program = torch.onnx.export(
                exported,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["images"],
                output_names=output_names,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
    except Exception as error:
        raise CifarError(f"--opset {opset}: torch could not export the model ({type(error).__name__})") from None
    proto = program.model_proto
    # The exporter stamps its own (newest) IR version; older runtimes refuse what they do not know.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    proto.doc_string = (
        "cifarcli image classifier: input 'images' float32 NCHW RGB in [0,1]; outputs 'logits' and 'features' "
        "(the input of the last linear layer)"
    )
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


def split_accuracy(classifier, split) -> float:
    return accuracy(predict_in_batches(classifier, split.images, SCORING_BATCH), split.labels)


@dataclass(frozen=True)
class ExportJob:
    """What one export makes, every option checked and the outputs shown writable before any work
    (plan_export); the data, when given, comes to run_export."""

    output: Path  # the fp32 file; --int8's is int8_path_for(output)
    opset: int
    int8: bool
    features: bool  # a second output, the embeddings `cifar check` compares
    calibration_images: int
    int8_max_loss: float
    threads: int  # ONNX Runtime's intra-op threads (0: its default)
    export_date: str


def export_checkpoint(
    checkpoint: "Path | TorchClassifier",
    output: "Path | None" = None,
    opset: "int | None" = None,
    dataset: "Dataset | None" = None,
    int8: bool = False,
    calibration_images: "int | None" = None,
    threads: int = 0,
    int8_max_loss: "float | None" = None,
    features: bool = False,
) -> ExportReport:
    """Export a checkpoint (its path, or loaded as a TorchClassifier) to output, beside the
    checkpoint by default; benchmarks/export.py times the files."""
    torch_model = checkpoint if isinstance(checkpoint, TorchClassifier) else TorchClassifier.from_checkpoint(checkpoint)
    job = plan_export(
        torch_model, output, opset, dataset is not None, int8, calibration_images, int8_max_loss, threads, features
    )
    return run_export(torch_model, job, dataset)


def plan_export(
    torch_model,
    output: "Path | None" = None,
    opset: "int | None" = None,
    with_data: bool = False,
    int8: bool = False,
    calibration_images: "int | None" = None,
    int8_max_loss: "float | None" = None,
    threads: int = 0,
    features: bool = False,
) -> ExportJob:
    """The ExportJob, once every option is checked and the outputs are shown to be writable;
    options left None take int8.py's and onnx_model.py's defaults."""
    import torch

    from cifarcli.int8 import CALIBRATION_IMAGES, INT8_MAX_LOSS

    if not all(bool(torch.isfinite(tensor).all()) for tensor in torch_model.model.state_dict().values()):
        raise CifarError(
            f"{torch_model.source}: its weights are not finite (a training run that diverged); train again with "
            "a lower --lr"
        )
    if int8 and not with_data:
        raise CifarError("--int8 needs --data: calibration uses training images and the report test accuracy")
    output = Path(output) if output else Path(torch_model.source).with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        raise CifarError(f"-o {output}: the output file must end in .onnx")
    if output.is_dir():
        raise CifarError(f"-o {output}: is a folder; give a file name ending in .onnx")
    newest = newest_supported_opset()
    if opset is not None and not OLDEST_OPSET <= opset <= newest:
        raise CifarError(
            f"--opset {opset}: choose {OLDEST_OPSET} to {newest}, the newest torch and ONNX Runtime both support"
        )
    check_can_write(output)  # last of the checks (it makes the folder), before the work
    if int8:
        check_can_write(int8_path_for(output))
    export_date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return ExportJob(
        output,
        opset or DEFAULT_OPSET,
        int8,
        features,
        calibration_images or CALIBRATION_IMAGES,
        INT8_MAX_LOSS if int8_max_loss is None else int8_max_loss,
        threads,
        export_date,
    )


def run_export(torch_model, job: ExportJob, dataset: "Dataset | None") -> ExportReport:
    """Build the ONNX model in memory, check it against PyTorch, fit a temperature (with data),
    save it once, then the INT8 file (job.int8)."""
    info = torch_model.info
    if dataset is not None and dataset.classes != info.classes:
        raise CifarError(f"--data {dataset.source}: its classes differ from the checkpoint's {info.classes}")
    proto = build_onnx(torch_model.model, info.input_size, job.opset, job.features)
    onnx_model = OnnxClassifier(described(proto, metadata_for(info, job.export_date)), job.threads, str(job.output))
    images, checked_on = parity_images(dataset, info.input_size)
    expected, actual = torch_model.predict_logits(images), onnx_model.predict_logits(images)
    max_diff = float(np.abs(expected - actual).max())
    agreement = float((expected.argmax(1) == actual.argmax(1)).mean())
    if not (max_diff <= MAX_ABS_DIFF and agreement == 1.0):  # NaN fails too
        raise CifarError(
            f"{job.output}: ONNX Runtime differs from PyTorch (max |diff| {max_diff:.2e} > {MAX_ABS_DIFF:g} "
            f"or top-1 agreement {agreement:.2%} < 100%); not written, try another --opset"
        )
    report = ExportReport(job.output, 0, job.opset, proto.ir_version, runtimes_for(job.opset), len(images),
                          checked_on, max_diff, agreement)  # fmt: skip
    if dataset is not None:
        info = replace(info, temperature=calibrate(onnx_model, dataset, report))
    data = described(proto, metadata_for(info, job.export_date))
    report.size_bytes = len(data)
    save(job.output, data)
    if job.int8:
        report.int8 = export_int8(job, info, data, dataset)
    return report


def calibrate(classifier, dataset: Dataset, report: ExportReport) -> float:
    """Fit the temperature on up to TEMPERATURE_IMAGES training images (the test split is for
    measuring, never for fitting) and record the test split's calibration error before and after."""
    fitting = dataset.train.sample(TEMPERATURE_IMAGES)
    logits = predict_in_batches(classifier, fitting.images, SCORING_BATCH)
    temperature = fit_temperature(logits, fitting.labels)
    test_logits = predict_in_batches(classifier, dataset.test.images, SCORING_BATCH).astype(np.float64)
    correct = test_logits.argmax(1) == dataset.test.labels
    before, _ = calibration(softmax(test_logits).max(1), correct)
    after, _ = calibration(softmax(test_logits / temperature).max(1), correct)
    report.temperature = temperature
    report.calibration = {"fitted_on": f"{len(fitting)} training images", "test_ece": before, "test_ece_scaled": after}
    return temperature


def export_int8(job: ExportJob, info, fp32_data: bytes, dataset: Dataset) -> dict:
    """Quantize the written fp32 model (int8.py), calibrated on the job's training images, and
    write it beside, unless it scores more than int8_max_loss below fp32 on the test split.
    Returns both models' accuracies."""
    from cifarcli import int8

    test, int8_path = dataset.test, int8_path_for(job.output)
    calibration_images = dataset.train.sample(job.calibration_images).images
    proto = int8.quantize(fp32_data, calibration_images)
    fp32_model = OnnxClassifier(fp32_data, job.threads, source=str(job.output))
    fp32_acc = split_accuracy(fp32_model, test)
    int8_acc = split_accuracy(OnnxClassifier(described(proto, metadata_for(info, job.export_date)), job.threads), test)
    if fp32_acc - int8_acc > job.int8_max_loss:
        raise CifarError(
            f"{int8_path}: not written (the fp32 {job.output.name} was), INT8 scores {int8_acc:.2%} against fp32's "
            f"{fp32_acc:.2%} on the test split, more than --int8-max-loss {job.int8_max_loss:g} below; calibrate on "
            "more images (--calibration-images) or raise the limit"
        )
    # The INT8 file describes itself: its own accuracy, the fp32 figure beside it, and none of
    # the fp32 model's other test figures (loss, TTA), which it was not measured for.
    metrics = {"test_acc": round(int8_acc, 5), "fp32_test_acc": round(fp32_acc, 5)}
    quantized_info = info.measured(info.epoch, **metrics, train_seconds=info.metrics.train_seconds)
    data = described(proto, metadata_for(quantized_info, job.export_date, int8.DESCRIPTION))
    save(int8_path, data)
    result = {"path": str(int8_path), "size_bytes": len(data), "calibration_images": len(calibration_images),
              "fp32_test_acc": fp32_acc, "int8_test_acc": int8_acc}  # fmt: skip
    return result
