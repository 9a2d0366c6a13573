"""The model description, and checkpoints that save atomically and load without unpickling code.

A checkpoint is a plain dict of tensors and JSON-safe values:
  {"format": 1, "info": ModelInfo as a dict, "model": state dict,
   "training": optimizer / lookahead / RNG state for --resume (last.pt only)}
It loads with torch.load(path, weights_only=True), never with a fallback.
"""

import json
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cifarcli import __version__, stops
from cifarcli.errors import CifarError, first_line
from cifarcli.recipes import upgrade_recipe_fields

CHECKPOINT_FORMAT = 1
MODEL_CARD_SCHEMA = 2  # 2: the recipe's crop stages (crops); 1: one small crop (small_crop, small_crop_epochs)
UMASK = os.umask(0o022)  # reading the umask means setting it: set it back at once
os.umask(UMASK)


@dataclass(frozen=True)
class Metrics:
    """What a model was measured to do on its test split. Exact figures are the whole split
    scored in fp32, which `cifar evaluate` reproduces; an estimate (a sample in the training
    precision, during training) has fields of its own, so nothing takes it for an exact one."""

    test_acc: "float | None" = None
    test_loss: "float | None" = None
    test_acc_tta: "float | None" = None
    tta: "int | None" = None  # the TTA level of test_acc_tta
    estimated_test_acc: "float | None" = None
    estimated_on: "str | None" = None  # e.g. "2000 test images in bf16"
    fp32_test_acc: "float | None" = None  # an INT8 file: its fp32 model's test_acc, beside its own
    train_seconds: "float | None" = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ModelInfo:
    """The model card: the one description of a model. Its JSON form (to_dict) travels in
    checkpoints and, under one key, in ONNX metadata; from_dict reads it back from either."""

    model: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    recipe: dict = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    epoch: int = 0
    precision: str = "fp32"  # autocast of the training steps; every exact metric is scored in fp32
    val_fraction: float = 0.0  # > 0: trained on a ROOT/<class>/* folder whose test split held this out
    temperature: float = 1.0  # confidences are softmax(logits / temperature); fitted by `cifar export --data`
    excluded: dict = field(
        default_factory=dict
    )  # files left out by `cifar train --exclude` (findings.exclusion_record)
    train_counts: list = field(default_factory=list)  # training images per class, in the classes' order
    version: str = __version__  # of the cifarcli that wrote it
    schema: int = MODEL_CARD_SCHEMA  # of this JSON form; from_dict reads older ones

    def to_dict(self) -> dict:
        return {**asdict(self), "metrics": self.metrics.to_dict()}

    def measured(self, epoch: int, **metrics) -> "ModelInfo":
        """This description for the weights of an epoch, with what they were measured to do."""
        return replace(self, epoch=epoch, metrics=Metrics(**metrics))

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "ModelInfo":
        """The card in today's schema, from its JSON form in any schema up to this one's."""
        check_readable_schema(values, MODEL_CARD_SCHEMA, f"{source}: its model card")  # every older one upgrades alike
        values = {**values, "schema": MODEL_CARD_SCHEMA}
        if isinstance(values.get("recipe"), dict):
            values["recipe"] = upgrade_recipe_fields(values["recipe"])
        required = ("model", "classes", "input_size", "mean", "std")
        missing = [key for key in required if key not in values]
        if missing:
            raise CifarError(f"{source}: model description lacks {', '.join(missing)}; re-export or retrain it")
        try:
            known = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
            metrics = known.get("metrics") or {}
            known["metrics"] = Metrics(**{key: metrics[key] for key in Metrics.__dataclass_fields__ if key in metrics})
            info = cls(**known)
            if not (isinstance(info.classes, list) and all(isinstance(c, str) for c in info.classes)):
                raise ValueError("classes must be a list of names")
            if len(info.mean) != 3 or len(info.std) != 3 or int(info.input_size) < 8:
                raise ValueError("mean/std need 3 values and input_size at least 8")
        except (TypeError, ValueError, AttributeError) as error:
            raise CifarError(f"{source}: malformed model description ({first_line(error)})") from None
        return info


def check_readable_schema(values: dict, newest: int, what: str) -> None:
    """A one-line CifarError for a JSON file whose schema (1 where it declares none, as files from
    before schemas) is malformed or newer than this cifarcli reads."""
    schema = values.get("schema", 1)
    if type(schema) is not int or schema < 1:
        raise CifarError(f"{what}: malformed schema {schema!r}; write it again with cifarcli")
    if schema > newest:
        raise CifarError(
            f"{what} has schema {schema}, newer than this cifarcli {__version__} reads (up to {newest}); "
            "upgrade cifarcli"
        )


def atomic_write(path: Path, write) -> None:
    """write(file) into a temp file beside path, fsync, then rename over path.

    A crash at any instant leaves either the old file or the new one, never half of one; the
    temporary file goes however the write ends; Ctrl-C or SIGTERM take effect once the file is in
    place. A write-protected target is refused (check_can_replace), and a failed write (a full
    disk, a read-only folder) is a one-line CifarError naming the file. The file gets the
    permissions the user's umask gives new files (a temporary file is private until renamed).
    """
    path = Path(path)
    check_can_replace(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with stops.deferred():
            descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(descriptor, 0o666 & ~UMASK)
                with os.fdopen(descriptor, "wb") as file:
                    write(file)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
    except OSError as error:
        raise CifarError(
            f"{path}: cannot write it ({error.strerror or error}); check free space and permissions", 1
        ) from None


def check_can_replace(path: Path) -> None:
    """Refuse to replace a file its owner write-protected, or another user's: a rename would
    replace either, whatever its mode."""
    try:
        status = path.stat()
    except OSError:
        return
    if not status.st_mode & 0o200:
        raise CifarError(
            f"{path}: is write-protected (mode {status.st_mode & 0o777:o}); remove it or choose another file"
        )
    if hasattr(os, "geteuid") and status.st_uid != os.geteuid():
        raise CifarError(f"{path}: belongs to another user; remove it or choose another file")


def check_can_write(path: Path) -> None:
    """Before long work: the file could be written, or a one-line CifarError naming it."""
    path = Path(path)
    check_can_replace(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise CifarError(f"{path}: cannot write there ({error.strerror or error}); choose another folder") from None


def save_checkpoint(path: Path, model, info: ModelInfo, training: "dict | None" = None) -> None:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "info": json.loads(json.dumps(info.to_dict())), "model": model.state_dict()}
    if training is not None:
        payload["training"] = training
    atomic_write(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: "str | Path") -> dict:
    """Load a checkpoint safely; any file that is not one of ours fails in one line."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise CifarError(f"{path}: is a folder; give a checkpoint file, such as {path / 'last.pt'}")
    if not path.is_file():
        raise CifarError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        code = re.search(r"GLOBAL (\S+)", str(error))
        if code:
            raise CifarError(
                f"{path}: refused: loading it would run code ({code[1]}); only checkpoints of weights load"
            ) from None
        raise CifarError(f"{path}: not a cifarcli checkpoint (not a plain PyTorch weights file)") from None
    except Exception as error:
        raise CifarError(f"{path}: not a cifarcli checkpoint, or a damaged one ({first_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "model" not in payload:
        raise CifarError(f"{path}: not a cifarcli checkpoint (train one with `cifar train`)")
    payload["info"] = ModelInfo.from_dict(payload.get("info") or {}, str(path))
    return payload


def build_model(info: ModelInfo, state_dict: dict, source: str = "checkpoint"):
    """Rebuild the network named in the description and load its weights."""
    from cifarcli.models import create_model

    model = create_model(info.model, len(info.classes), info.mean, info.std)
    materialize(model, info.input_size)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CifarError(f"{source}: weights do not fit model {info.model} ({first_line(error)})") from None
    return model.eval()


def materialize(model, input_size: int) -> None:
    """Run one dummy forward so lazy layers get their shapes from the input size."""
    import torch

    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, input_size, input_size))
    model.train(was_training)
