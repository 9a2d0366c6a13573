"""One batch of image files to rows: read, decode and classify, all on the calling thread.

Below both engines of `cifar predict`: predict.py's worker threads on this machine and
cluster.py's Dask workers call classify_batch alike, so a row means the same wherever it was
made. Imports neither torch nor onnxruntime (the classifier comes from the caller).
"""

import contextlib
import threading

import numpy as np

from cifarcli.classifier import softmax
from cifarcli.errors import ImageDecodeError
from cifarcli.images import decode_image, decodes_without_gil
from cifarcli.rows import Row
from cifarcli.sources import FileSystem

LOCAL = FileSystem()
# Images per ONNX Runtime call, per worker or Dask task batch. Each call holds its own
# activations: 64 runs as fast as 256 in far less memory (docs/decisions.md).
PREDICT_BATCH = 64
UNSURE = "unsure"  # the label of an image whose top confidence is below --min-confidence
# Small files that Pillow decodes are decoded one at a time. Their decoding is mostly Python
# (Pillow's header parsing) rather than the codec, and two threads running that Python at once
# hand the GIL back and forth at every read; larger files, and the JPEGs that libjpeg-turbo
# decodes directly, decode beside each other without the GIL. The two costs are even at about
# this size (docs/decisions.md).
ONE_AT_A_TIME_BELOW_BYTES = 8192
SMALL_FILE_DECODING = threading.Lock()


def decode(data: bytes, name: str, size: int) -> np.ndarray:
    """decode_image of a file's bytes; small files that Pillow decodes, one thread at a time
    (ONE_AT_A_TIME_BELOW_BYTES)."""
    one_at_a_time = len(data) < ONE_AT_A_TIME_BELOW_BYTES and not decodes_without_gil(data)
    with SMALL_FILE_DECODING if one_at_a_time else contextlib.nullcontext():
        return decode_image(data, size, name)


def classify_batch(
    classifier, files: list[str], batch_size: int, top_k: int, min_confidence: float, file_system=LOCAL
) -> list[Row]:
    """Read and decode these files and classify those that decode, all on the calling thread: one
    row per file, in order."""
    classes, size = classifier.info.classes, classifier.info.input_size
    rows, pixels = [], []
    for path, data in zip(map(str, files), file_system.read(files), strict=True):
        try:
            if isinstance(data, ImageDecodeError):
                raise data
            pixels.append(decode(data, path, size))
            rows.append(Row(path))
        except ImageDecodeError as error:
            rows.append(Row(path, error=str(error).removeprefix(f"{path}: ")))
    if not pixels:
        return rows
    probabilities = batch_probabilities(classifier, np.stack(pixels), batch_size)
    for row, probs in zip([row for row in rows if not row.error], probabilities, strict=True):
        label_row(row, probs, classes, top_k, min_confidence)
    return rows


def batch_probabilities(classifier, batch: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities of decoded images (softmax at the model's temperature). The batch is
    padded to the next power of two (at most batch_size): ONNX Runtime keeps memory for every new
    input shape it sees, so the shapes stay few."""
    shape = max(len(batch), min(batch_size, 1 << (len(batch) - 1).bit_length()))
    padded = np.concatenate([batch, np.zeros((shape - len(batch), *batch.shape[1:]), np.uint8)])
    return softmax(classifier.predict_logits(padded)[: len(batch)] / classifier.info.temperature)


def label_row(row: Row, probabilities: np.ndarray, classes: list[str], top_k: int, min_confidence: float) -> Row:
    """Fill a row from its image's probabilities: the top class (UNSURE below min_confidence),
    its confidence and the top_k classes."""
    order = np.argsort(-probabilities)[:top_k]
    row.label, row.confidence = classes[order[0]], float(probabilities[order[0]])
    if row.confidence < min_confidence:
        row.label = UNSURE
    row.top_k = tuple((classes[i], float(probabilities[i])) for i in order)
    return row
