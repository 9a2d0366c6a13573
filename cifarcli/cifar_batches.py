"""The official CIFAR-10 batches (cifar-10-batches-py): pickles read without running code.

Python's pickle runs whatever a file names; NumpyOnlyUnpickler allows only the numpy types the
official batches hold, so a crafted batch file is refused instead of executed.
"""

import io
import pickle
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifarcli.errors import CifarError, first_line


class NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow the few numpy types they hold and nothing that runs code."""

    ALLOWED: typing.ClassVar = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def unpickle_batch(raw: bytes) -> dict:
    return NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()


def read_cifar_batches(read_member: Callable[[str], bytes], source: str, size: int):
    """((train images, labels), (test images, labels), classes) of the official layout:
    data_batch_1..5, test_batch, batches.meta; images uint8 N x size x size x 3."""

    def read_split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for member in names:
            batch = unpickle_batch(read_member(member))
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            images.append(data.transpose(0, 2, 3, 1))
            labels.extend(batch[b"labels"])
        pixels = np.ascontiguousarray(np.concatenate(images))
        if size != 32:
            pixels = np.stack([resize_array(image, size) for image in pixels])
        return pixels, np.asarray(labels, dtype=np.int64)

    try:
        meta = unpickle_batch(read_member("batches.meta"))
        classes = [name.decode() for name in meta[b"label_names"]]
        train = read_split([f"data_batch_{i}" for i in range(1, 6)])
        test = read_split(["test_batch"])
    except (KeyError, FileNotFoundError, pickle.UnpicklingError, ValueError, EOFError) as error:
        raise CifarError(f"--data {source}: not a valid cifar-10-batches-py layout ({first_line(error)})") from None
    return train, test, classes


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def download_cifar10(cache_dir: Path) -> Path:
    """Download the official archive with torchvision; fail in one line without network."""
    target = cache_dir / "cifar-10-batches-py"
    if (target / "batches.meta").exists():
        return target
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(cache_dir), download=True)
    except Exception as error:
        raise CifarError(
            f"could not download CIFAR-10 into {cache_dir} ({type(error).__name__}); "
            "pass --data PATH to a local copy (cifar-10-python.tar.gz, cifar-10-batches-py/, "
            "or an image folder with train/ and test/)"
        ) from None
    return target
