"""The model description, and checkpoints that save atomically and load without unpickling code.

A checkpoint is a plain dict of tensors and JSON-safe values:
  {"format": 1, "info": ModelInfo as a dict, "model": state dict,
   "training": optimizer / lookahead / RNG state for --resume (last.pt only)}
It loads with torch.load(path, weights_only=True), never with a fallback.
"""

import contextlib
import json
import os
import signal
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cifarcli import __version__
from cifarcli.errors import CifarError, first_line

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class ModelInfo:
    """The one description of a model; travels in checkpoints and in ONNX metadata_props."""

    model: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    epoch: int = 0
    precision: str = "fp32"  # autocast of the training steps; every recorded metric is scored in fp32
    val_fraction: float = 0.0  # > 0: trained on a ROOT/<class>/* folder whose test split held this out
    temperature: float = 1.0  # confidences are softmax(logits / temperature); fitted by `cifar export --data`
    version: str = __version__

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "ModelInfo":
        required = ("model", "classes", "input_size", "mean", "std")
        missing = [key for key in required if key not in values]
        if missing:
            raise CifarError(f"{source}: model description lacks {', '.join(missing)}; re-export or retrain it")
        try:
            known = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
            info = cls(**known)
            if not (isinstance(info.classes, list) and all(isinstance(c, str) for c in info.classes)):
                raise ValueError("classes must be a list of names")
            if len(info.mean) != 3 or len(info.std) != 3 or int(info.input_size) < 8:
                raise ValueError("mean/std need 3 values and input_size at least 8")
        except (TypeError, ValueError) as error:
            raise CifarError(f"{source}: malformed model description ({first_line(error)})") from None
        return info


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGINT, signal.SIGTERM)):
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver the first one received.

    An exception that a signal handler raises inside torch.save's writer comes out as an
    unrelated RuntimeError, so a stop must wait until the file is written. Python handles
    signals only on the main thread; elsewhere there is nothing to defer.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.signal(number, lambda got, frame: received.append(got)) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


def atomic_write(path: Path, write) -> None:
    """write(file) into a temp file beside path, fsync, then rename over path.

    A crash at any instant leaves either the old file or the new one, never half of one, and
    Ctrl-C or SIGTERM take effect once the file is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


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
    if not path.is_file():
        raise CifarError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        code = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)
        if code:
            raise CifarError(f"{path}: refused, it would run code ({code[:160]})") from None
        raise CifarError(f"{path}: not a cifarcli checkpoint (not a plain PyTorch weights file)") from None
    except Exception as error:
        raise CifarError(f"{path}: not a cifarcli checkpoint ({type(error).__name__})") from None
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
