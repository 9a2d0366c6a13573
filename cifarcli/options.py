"""The command line's options, declared once as Annotated types that cli.py's commands use.

Help texts are rich markup: a literal "[" is written "\\[".

Options default to None and the library resolves them; help texts read the library's constants,
so each default is stated once. Only modules without torch or onnxruntime are imported here,
so that `cifar --help` answers at once. Choices are Enums made from the library's own lists, so
--help lists them and the parser refuses others. One name means one thing in every command:
`--out DIR` is a folder, `--output/-o FILE` a file, `--model` the model a command uses.
"""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cifarcli.balance import AUTO_BALANCE, AUTO_IMBALANCE, BALANCES
from cifarcli.batches import PREDICT_BATCH
from cifarcli.bundled import MODELS as BUNDLED_MODELS
from cifarcli.check import CHECK_SPLITS
from cifarcli.classifier import EVAL_BATCH
from cifarcli.data import SPLITS
from cifarcli.int8 import CALIBRATION_IMAGES, INT8_MAX_LOSS
from cifarcli.models import DEFAULT_MODEL
from cifarcli.onnx_model import DEFAULT_OPSET, OLDEST_OPSET
from cifarcli.run import DEVICES, PRECISIONS
from cifarcli.serve import DEFAULT_HOST, DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, DEFAULT_PORT
from cifarcli.tracking import TRACKERS


def choices(name: str, values) -> type[Enum]:
    """An Enum of the library's choices, for typer to list and check."""
    return Enum(name, {value: value for value in values}, type=str)


def chosen(value: "Enum | list[Enum] | None"):
    """The library's plain string (or list of them) for a parsed Enum choice; None stays None."""
    if isinstance(value, list):
        return [item.value for item in value]
    return value.value if isinstance(value, Enum) else value


PrecisionChoice = choices("PrecisionChoice", PRECISIONS)
BalanceChoice = choices("BalanceChoice", BALANCES)
DeviceChoice = choices("DeviceChoice", DEVICES)
SplitChoice = choices("SplitChoice", SPLITS)
TrackerChoice = choices("TrackerChoice", TRACKERS)
BundledChoice = choices("BundledChoice", BUNDLED_MODELS)
CheckSplitChoice = choices("CheckSplitChoice", CHECK_SPLITS)


def complete_model_name(incomplete: str) -> list[str]:
    """Shell completion of --model (`cifar --install-completion`); the registry imports no torch."""
    from cifarcli.models import REGISTRY

    return [name for name in REGISTRY if name.startswith(incomplete)]


# ---------------------------------------------------------------- shared

Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="CIFAR-10 archive or batches folder, an image folder with train/ and test/ or class folders, or a "
        ".tar.gz/.zip of one. Default: download CIFAR-10.",
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Where downloads and decoded pixels are cached. Default: ~/.cache/cifarcli."),
]
ValFraction = Annotated[
    float | None,
    typer.Option(
        help="For a folder of class folders (ROOT/<class>/*): the fraction of each class held out as its test "
        "split. Default: 0.1 for training; evaluation uses the model's."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else there.")]


def show_version(value: bool) -> None:
    if value:
        from cifarcli import __version__

        typer.echo(f"cifarcli {__version__}")
        raise typer.Exit()


Version = Annotated[
    bool, typer.Option("--version", callback=show_version, is_eager=True, help="Show the version and exit.")
]

# ---------------------------------------------------------------- cifar train

ModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=f"Model name (see `cifar models`). Default: {DEFAULT_MODEL}.",
        autocompletion=complete_model_name,
    ),
]
Epochs = Annotated[float | None, typer.Option(help="Override the recipe's epochs.", min=0.01)]
TrainBatch = Annotated[
    int | None, typer.Option(help="Override the recipe's batch size (global, over all processes).", min=1)
]
LearningRate = Annotated[float | None, typer.Option(help="Override the recipe's peak learning rate.", min=0)]
Seed = Annotated[int | None, typer.Option(help="Random seed.")]
TtaLevel = Annotated[
    int | None,
    typer.Option(
        "--tta", help="Test-time augmentation level 0-2 for the final figure. Default: the recipe's.", min=0, max=2
    ),
]
Precision = Annotated[
    PrecisionChoice | None,
    typer.Option(
        help="Training steps' precision (auto: bf16 where the hardware has it natively, fp16 on older GPUs, else "
        "fp32). Accuracy is always scored in fp32. Default: auto."
    ),
]
Balance = Annotated[
    BalanceChoice | None,
    typer.Option(
        help=f"How rare classes are made up for: class weights in the loss (reweight), class-balanced draws "
        f"(resample) or the class priors added to the logits in the loss (logit-adjust). Default: auto, "
        f"{AUTO_BALANCE} when the training split's largest class has {AUTO_IMBALANCE:g}x the smallest's images "
        "or more, else none."
    ),
]
Settings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any recipe field, FIELD=VALUE (the fields are config.json's recipe), e.g. --set "
        "label_smoothing=0.1 --set crops=16:2,24:3. Repeatable.",
    ),
]
RunName = Annotated[str | None, typer.Option(help="Run name: <out>/<name>, numbered if taken. Default: exp.")]
RunsFolder = Annotated[Path | None, typer.Option(help="Parent folder of run folders. Default: runs/train.")]
Device = Annotated[DeviceChoice | None, typer.Option(help="Where to train. Default: auto.")]
Resume = Annotated[
    Path | None, typer.Option(help="Continue a run from its folder (or its last.pt); needs no other option.")
]
Processes = Annotated[
    int | None, typer.Option(help="Train with N processes here (runs torchrun; see README). Default: 1.", min=1)
]
Trackers = Annotated[
    list[TrackerChoice] | None,
    typer.Option(
        "--log",
        help="Also track the run in TensorBoard or MLflow (cifarcli\\[tensorboard], \\[mlflow]); evaluate "
        "attaches to an MLflow run. Repeatable.",
    ),
]

# ---------------------------------------------------------------- cifar evaluate

ModelFile = Annotated[
    Path, typer.Argument(help="A .pt checkpoint, an .onnx export, or default / default.int8 (the bundled models).")
]
Split = Annotated[SplitChoice | None, typer.Option(help="The data split to score. Default: test.")]
EvaluateBatch = Annotated[
    int | None, typer.Option("--batch-size", help=f"Images per forward pass. Default: {EVAL_BATCH}.", min=1)
]
EvaluateOut = Annotated[Path | None, typer.Option(help="Write metrics.json and the pictures here.")]
RunId = Annotated[
    str | None,
    typer.Option(help="The MLflow run for --log mlflow. Default: the one the checkpoint's run folder records."),
]

# ---------------------------------------------------------------- cifar export

Checkpoint = Annotated[Path, typer.Argument(help="A .pt checkpoint from `cifar train`.")]
OnnxOutput = Annotated[
    Path | None, typer.Option("--output", "-o", help="The .onnx file. Default: beside the checkpoint.")
]
Opset = Annotated[
    int | None,
    typer.Option(
        help=f"ONNX opset: {OLDEST_OPSET} up to the newest torch and ONNX Runtime support. Default: {DEFAULT_OPSET}, "
        "the most portable.",
        min=OLDEST_OPSET,
    ),
]
Int8 = Annotated[bool, typer.Option("--int8", help="Also write <name>.int8.onnx, statically quantized (needs --data).")]
Features = Annotated[
    bool,
    typer.Option(
        "--features",
        help="Add a second output, 'features' (the embeddings `cifar check --model` needs); OpenCV then needs "
        "net.forward('logits').",
    ),
]
CalibrationImages = Annotated[
    int | None,
    typer.Option(help=f"Training images used to calibrate --int8. Default: {CALIBRATION_IMAGES}.", min=1),
]
Int8MaxLoss = Annotated[
    float | None,
    typer.Option(
        help="Refuse an --int8 model whose test accuracy is more than this below fp32's (0.01: one point). "
        f"Default: {INT8_MAX_LOSS}.",
        min=0,
    ),
]

# ---------------------------------------------------------------- cifar predict

Paths = Annotated[list[str], typer.Argument(help="Image files, folders or globs.")]
OnnxModel = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="An .onnx model, or default / default.int8. Default: the bundled CIFAR-10 model."
    ),
]
PredictBatch = Annotated[
    int | None,
    typer.Option("--batch-size", help=f"Images per ONNX Runtime call, per worker. Default: {PREDICT_BATCH}.", min=1),
]
TopK = Annotated[int | None, typer.Option(help="Also list the k most likely classes. Default: 1.", min=1)]
Rows = Annotated[Path | None, typer.Option("--output", "-o", help="Write rows to a .csv, .json or .jsonl file.")]
Recursive = Annotated[
    bool | None, typer.Option("--recursive/--no-recursive", help="Descend into subfolders. Default: yes.")
]
Threads = Annotated[
    int | None, typer.Option(help="Worker threads, each decoding whole batches. Default (or 0): one per core.", min=0)
]
MinConfidence = Annotated[
    float | None,
    typer.Option(
        help="Label an image 'unsure' when its top class's confidence is below this. Default: 0.", min=0, max=1
    ),
]
ResumeRows = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run: skip the files already in --output.")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an --output file that already holds rows.")]
Bundled = Annotated[
    BundledChoice | None,
    typer.Option(
        help="Without --model: the bundled model's precision. Default: int8 on x86 CPUs with int8 instructions."
    ),
]
Cluster = Annotated[
    str | None, typer.Option(help="Predict on a Dask cluster: its scheduler's address, e.g. tcp://host:8786.")
]
StorageOptions = Annotated[
    str | None, typer.Option(help="JSON options of the sources' fsspec file system, e.g. '{\"anon\": true}'.")
]
Shard = Annotated[
    str | None, typer.Option(help="Only the I-th of N parts of the files found, I/N (0-based), for job arrays.")
]

# ---------------------------------------------------------------- cifar check

CheckData = Annotated[
    str,
    typer.Argument(
        help="An image folder (ROOT/train/<class>, ROOT/test/<class>, or ROOT/<class>), a .tar.gz/.zip of one, the "
        "official CIFAR-10 batches, or a URL (s3://..., with --storage-options)."
    ),
]
CheckModel = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="An .onnx model (`cifar export --features`) whose features and probabilities the check uses; for "
        "label issues, trained on the training split. Default: the bundled CIFAR-10 model.",
    ),
]
CheckSplit = Annotated[CheckSplitChoice | None, typer.Option(help="The split to check. Default: all.")]
Folds = Annotated[
    int | None,
    typer.Option(
        help="Also check the training split's labels: train K models of --folds-model, each scoring the fold it "
        "never saw (needs cifarcli\\[train]; says its time first).",
        min=2,
    ),
]
FoldsModel = Annotated[
    str | None,
    typer.Option(
        help=f"The registered model whose recipe --folds trains (see `cifar models`). Default: {DEFAULT_MODEL}."
    ),
]
CheckOut = Annotated[
    Path | None, typer.Option(help="Write findings.csv and a picture per kind (duplicates, label issues) here.")
]
Exclude = Annotated[
    Path | None,
    typer.Option(help="Train without the files this list names: a findings.csv of `cifar check`, or one path a line."),
]

# ---------------------------------------------------------------- cifar serve

ServeModel = Annotated[
    Path | None,
    typer.Argument(help="An .onnx model, or default / default.int8. Default: the bundled model predict picks."),
]
Host = Annotated[
    str | None, typer.Option(help=f"The address to listen on. Default: {DEFAULT_HOST} (this machine only).")
]
Port = Annotated[int | None, typer.Option(help=f"The port. Default: {DEFAULT_PORT}.", min=0, max=65535)]
MaxBatch = Annotated[
    int | None,
    typer.Option(help=f"Images run through the model together at most. Default: {DEFAULT_MAX_BATCH}.", min=1),
]
MaxWait = Annotated[
    float | None,
    typer.Option(
        "--max-wait-ms", help=f"How long a batch waits for more images. Default: {DEFAULT_MAX_WAIT_MS:g}.", min=0
    ),
]
ServeThreads = Annotated[
    int | None, typer.Option(help="Decoding threads and ONNX Runtime's threads. Default: one per core.", min=1)
]
TokenEnv = Annotated[
    str | None,
    typer.Option(help="The environment variable holding a token that every API request must send as a bearer token."),
]
