"""One classifier interface for PyTorch checkpoints and ONNX models.

    classifier.predict_logits(uint8 images (N, H, W, 3)) -> float32 logits (N, classes)

Test-time augmentation is defined here once, on uint8 pixels, so that training's final
figure, `cifar evaluate` of a .pt and `cifar evaluate` of an .onnx agree to the image.
This module imports torch only inside TorchClassifier.
"""

import math
from pathlib import Path

import numpy as np

from cifarcli.checkpoint import ModelInfo
from cifarcli.errors import CifarError

# One batch size for training's scores and `cifar evaluate`, so that both run the same kernels
# and pick the same images for TTA; small batches stay in the caches of a small CPU, and 100
# divides the test split (docs/decisions.md).
EVAL_BATCH = 100
# TTA runs in two stages on each batch. The least sure MIRROR_FRACTION (by the gap between their
# two best logits) get the mirror view; then the least sure TRANSLATE_FRACTION of the batch, ranked
# again after the mirror, get the translations too; the rest keep their plain logits. That gives
# full TTA's accuracy for a third of its passes (docs/decisions.md, experiments.jsonl tta_fraction).
MIRROR_FRACTION = 0.4
TRANSLATE_FRACTION = 0.15


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]: the input contract of every model."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate (N, H, W, 3) images by whole pixels with reflect padding."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    return padded[:, pad - dy : pad - dy + height, pad - dx : pad - dx + width]


def least_sure(logits: np.ndarray, count: int) -> np.ndarray:
    """Indices (ascending) of the `count` rows whose top two logits are closest."""
    top_two = np.sort(logits, axis=1)[:, -2:]
    return np.sort(np.argsort(top_two[:, 1] - top_two[:, 0], kind="stable")[:count])


def mirror(images: np.ndarray) -> np.ndarray:
    return images[:, :, ::-1]


def translated_views(images: np.ndarray) -> list[np.ndarray]:
    """TTA level 2's views beyond the mirror: two one-pixel translations and their mirrors."""
    views = []
    for dy, dx in ((-1, -1), (1, 1)):
        moved = shift(images, dy, dx)
        views += [moved, mirror(moved)]
    return views


def blend_tta(
    plain: np.ndarray,
    level: int,
    mirror_logits,
    translated_logits,
    mirror_fraction=MIRROR_FRACTION,
    translate_fraction=TRANSLATE_FRACTION,
) -> np.ndarray:
    """The TTA logits of one batch from its plain logits (N, classes). Level 1 averages an image
    and its mirror; level 2 (airbench's) gives that pair half the weight and the four translated
    views an eighth each. Only the least sure images get them, in two stages (MIRROR_FRACTION).
    mirror_logits(rows) gives the mirror view's logits of those rows of the batch,
    translated_logits(rows) the four translated views' logits (4, len(rows), classes)."""
    total = plain.copy()
    if level <= 0:
        return total
    unsure = least_sure(plain, math.ceil(mirror_fraction * len(plain)))
    total[unsure] = 0.5 * (plain[unsure] + mirror_logits(unsure))
    if level >= 2:
        unsurest = unsure[least_sure(total[unsure], math.ceil(translate_fraction * len(plain)))]
        total[unsurest] = 0.5 * total[unsurest] + 0.125 * sum(translated_logits(unsurest))
    return total


class Classifier:
    info: ModelInfo
    source: str

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_plain_and_tta(self, images: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """The plain logits and the TTA logits (blend_tta) of one batch."""

        def mirror_logits(rows):
            return self.predict_logits(mirror(images[rows]))

        def translated_logits(rows):
            # One call for the four views: a batch's few unsurest are too few to run fast alone.
            return np.split(self.predict_logits(np.concatenate(translated_views(images[rows]))), 4)

        plain = self.predict_logits(images)
        return plain, blend_tta(plain, level, mirror_logits, translated_logits)


class TorchClassifier(Classifier):
    """fp32, channels_last, as training scores its model: the same kernels give the same logits.
    An autocast dtype makes a faster, inexact one (training's per-epoch estimates)."""

    def __init__(self, model, info: ModelInfo, source: str = "model", device: str = "cpu", autocast_dtype=None):
        import torch

        self.model, self.info, self.source = model, info, source
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype

    @classmethod
    def from_checkpoint(cls, path: "str | Path", device: str = "cpu") -> "TorchClassifier":
        import torch

        from cifarcli.checkpoint import build_model, load_checkpoint

        payload = load_checkpoint(path)
        model = build_model(payload["info"], payload["model"], str(path))
        model = model.to(device, memory_format=torch.channels_last)
        return cls(model, payload["info"], str(path), device)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        was_training = self.model.training
        self.model.eval()
        inputs = torch.from_numpy(to_model_input(images)).to(self.device)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = self.model(inputs).float().cpu().numpy()
        self.model.train(was_training)
        return logits


class OnnxClassifier(Classifier):
    """An ONNX model, from its file or its bytes (source then names it in messages)."""

    def __init__(self, model: "str | Path | bytes", threads: int = 0, source: "str | None" = None):
        from cifarcli.onnx_model import open_onnx_model

        self.source = source or str(model)
        self.info, self.session = open_onnx_model(model, threads, self.source)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names[:1], {self.input_name: to_model_input(images)})[0]

    def predict_logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the embeddings of the model's FEATURES output (exports of cifar export have it)."""
        from cifarcli.onnx_model import FEATURES

        if FEATURES not in self.output_names:
            raise CifarError(
                f"{self.source}: has no '{FEATURES}' output; export the checkpoint with `cifar export --features`"
            )
        logits, features = self.session.run([self.output_names[0], FEATURES], {self.input_name: to_model_input(images)})
        return logits, features


def load_classifier(path: "str | Path", device: str = "cpu", threads: int = 0) -> Classifier:
    """A .onnx file goes to ONNX Runtime (no torch); anything else must be a checkpoint. The
    bundled models answer to their names (bundled.NAMES) from any folder."""
    from cifarcli.bundled import bundled_or_path

    path = bundled_or_path(path)
    if path.is_dir():
        raise CifarError(f"{path}: is a folder; give a .pt checkpoint or an .onnx model file in it")
    if not path.is_file():
        raise CifarError(f"{path}: no such model file (give a .pt checkpoint or an .onnx model)")
    if path.suffix.lower() == ".onnx":
        return OnnxClassifier(path, threads)
    return TorchClassifier.from_checkpoint(path, device)


def predict_in_batches(classifier: Classifier, images: np.ndarray, batch_size: int, tta: int = 0, on_batch=None):
    """Logits for many images, batch by batch, with TTA at the given level; on_batch(done)
    reports progress."""
    return predict_plain_and_tta_in_batches(classifier, images, batch_size, tta, on_batch)[1]


def predict_plain_and_tta_in_batches(classifier, images, batch_size: int, tta: int, on_batch=None):
    """(plain logits, TTA logits) for many images, in one pass over the TTA views."""
    plain, total = [], []
    for start in range(0, len(images), batch_size):
        batch_plain, batch_total = classifier.predict_plain_and_tta(images[start : start + batch_size], tta)
        plain.append(batch_plain)
        total.append(batch_total)
        if on_batch:
            on_batch(min(start + batch_size, len(images)))
    if not plain:
        empty = np.zeros((0, len(classifier.info.classes)), np.float32)
        return empty, empty
    return np.concatenate(plain), np.concatenate(total)
