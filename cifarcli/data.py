"""Data sources for `--data`, decoded once to uint8 arrays and cached.

A source is one of:
  None                      CIFAR-10 downloaded by torchvision into the cache folder
  cifar-10-python.tar.gz    the official archive (its pickles are read by a restricted unpickler)
  cifar-10-batches-py/      the official archive, extracted
  ROOT/                     an image folder: ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg,
                            or ROOT/<class>/*.jpg, whose test split is a held-out fraction
  ROOT.tar.gz|.tgz|.zip     an archive of such an image folder

Whatever the source, the result is a `Dataset` of two `Split`s holding uint8 RGB pixels
(N, H, W, 3) and int64 labels: pixels stay uint8 until they reach the model.
"""

import contextlib
import hashlib
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarcli.checkpoint import atomic_write
from cifarcli.cifar_batches import download_cifar10, read_cifar_batches
from cifarcli.errors import CifarError, ImageDecodeError, first_line
from cifarcli.images import decode_image, is_image_name

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CACHE_FORMAT = 3  # bump when the cached arrays change meaning
DEFAULT_VAL_FRACTION = 0.1  # of each class of a ROOT/<class>/* folder, held out as its test split
SPLIT_SEED = 0  # the same hold-out for every run, whatever its training seed
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")

# (description, done, total): how data code reports progress without knowing the terminal.
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, count: int) -> "Split":
        """A fixed random sample of count images (all of them when there are fewer), in the
        split's order: the same images every time, for estimates and calibrations."""
        if len(self) <= count:
            return self
        picks = np.sort(np.random.default_rng(0).permutation(len(self))[:count])
        return Split(self.images[picks], self.labels[picks])


SPLITS = ("train", "test")


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)  # "file: reason" for undecodable images
    val_fraction: float = 0.0  # > 0: the test split was held out of a ROOT/<class>/* folder
    held_out: list[str] = field(default_factory=list)  # then: its files, as paths inside the source
    notes: list[str] = field(default_factory=list)  # what the loading did that a user should hear of
    excluded: list[str] = field(default_factory=list)  # files left out by --exclude, as paths inside the source

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise CifarError(f"--split {name}: choose {' or '.join(SPLITS)}")
        return self.train if name == "train" else self.test


def default_cache_dir() -> Path:
    return Path(os.environ.get("CIFARCLI_CACHE", Path.home() / ".cache" / "cifarcli"))


def load_dataset(
    source: "str | Path | None",
    size: int = 32,
    cache_dir: "Path | None" = None,
    on_progress: "ProgressCallback | None" = None,
    val_fraction: "float | None" = None,
    threads: int = 1,
    exclude: "list[str] | None" = None,
) -> Dataset:
    """Load a data source as uint8 splits of size x size, decoding only on the first call, on
    `threads` threads. val_fraction applies only to a folder of class folders, which has no test
    split of its own (default DEFAULT_VAL_FRACTION); exclude names files (paths inside the source)
    to leave out."""
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if not 0 < val_fraction < 1:
        raise CifarError(f"--val-fraction {val_fraction}: choose a fraction between 0 and 1, such as 0.1")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if source is None:
        path = download_cifar10(cache_dir)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise CifarError(f"--data {source}: no such file or folder")
    exclude = sorted(set(exclude or []))
    cache_file = cache_dir / "decoded" / f"{source_fingerprint(path, size, val_fraction, exclude)}.npz"
    notes = []
    if cache_file.exists():
        try:
            return read_cache(cache_file, str(path))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # derived data: rebuild it
            notes.append(
                f"{cache_file}: the cache of decoded pixels is unreadable ({first_line(error)}); decoded again"
            )
    dataset = decode_source(path, size, on_progress or (lambda *_: None), val_fraction, threads, set(exclude))
    try:
        write_cache(cache_file, dataset)
    except CifarError as error:  # the cache only saves time: go on without it
        notes.append(f"the cache of decoded pixels was not written ({error}); the next run decodes again")
    dataset.notes = notes
    return dataset


def source_fingerprint(path: Path, size: int, val_fraction: float, exclude: "list[str] | None" = None) -> str:
    """A key that changes when the source's files change (path, sizes, modification times) or
    the files left out do."""
    path = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{size}|{val_fraction}|{path}|{'|'.join(exclude or [])}".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"|{file.relative_to(path.parent)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def read_cache(cache_file: Path, source: str) -> Dataset:
    with np.load(cache_file, allow_pickle=False) as arrays:
        return Dataset(
            train=Split(arrays["train_images"], arrays["train_labels"]),
            test=Split(arrays["test_images"], arrays["test_labels"]),
            classes=[str(name) for name in arrays["classes"]],
            source=source,
            skipped=[str(line) for line in arrays["skipped"]],
            val_fraction=float(arrays["val_fraction"]),
            held_out=[str(name) for name in arrays["held_out"]],
            excluded=[str(name) for name in arrays["excluded"]],
        )


def write_cache(cache_file: Path, dataset: Dataset) -> None:
    """The decoded pixels, written atomically (no partial file is left behind, even on a stop)."""
    arrays = {
        "train_images": dataset.train.images,
        "train_labels": dataset.train.labels,
        "test_images": dataset.test.images,
        "test_labels": dataset.test.labels,
        "classes": np.array(dataset.classes),
        "skipped": np.array(dataset.skipped, dtype=str),
        "val_fraction": np.array(dataset.val_fraction),
        "held_out": np.array(dataset.held_out, dtype=str),
        "excluded": np.array(dataset.excluded, dtype=str),
    }
    atomic_write(cache_file, lambda file: np.savez(file, **arrays))


def decode_source(
    path: Path, size: int, on_progress: ProgressCallback, val_fraction: float, threads: int, exclude: set[str]
) -> Dataset:
    name = path.name.lower()
    left_out = []

    def kept(items):  # the (name, payload) items that --exclude does not name
        for item in items:
            if item[0] in exclude:
                left_out.append(item[0])
            else:
                yield item

    def dataset_of(items) -> Dataset:
        dataset = read_image_folder(kept(items), str(path), size, on_progress, val_fraction, threads)
        dataset.excluded = left_out
        return dataset

    if path.is_dir() and (path / "data_batch_1").exists():
        refuse_exclusions(exclude, path)
        return batches_dataset(lambda member: (path / member).read_bytes(), str(path), size)
    if path.is_dir():
        return dataset_of(iter_folder_images(path))
    if name.endswith(ARCHIVE_SUFFIXES):
        try:
            with open_archive(path) as (names, read):
                batches = [member for member in names if member.endswith("cifar-10-batches-py/data_batch_1")]
                if batches:
                    refuse_exclusions(exclude, path)
                    prefix = batches[0][: -len("data_batch_1")]
                    return batches_dataset(lambda member: read(prefix + member), str(path), size)
                return dataset_of((member, read(member)) for member in names if is_image_name(member))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
            raise CifarError(f"--data {path}: cannot read the archive ({first_line(error)})") from None
    raise CifarError(
        f"--data {path}: not a data source; give an image folder (ROOT/train/<class>, ROOT/test/<class> "
        "or ROOT/<class>), a .tar.gz/.tgz/.zip of one, or the official cifar-10-python.tar.gz"
    )


def refuse_exclusions(exclude: set[str], path: Path) -> None:
    if exclude:
        raise CifarError(f"--exclude: {path} holds CIFAR batches, not files to leave out; give an image folder")


def batches_dataset(read_member: Callable[[str], bytes], source: str, size: int) -> Dataset:
    """The official cifar-10-batches-py layout (cifar_batches.py) as a Dataset."""
    (train_images, train_labels), (test_images, test_labels), classes = read_cifar_batches(read_member, source, size)
    return Dataset(Split(train_images, train_labels), Split(test_images, test_labels), classes, source)


@contextlib.contextmanager
def open_archive(path: Path):
    """(names of the regular files, read(name) -> bytes) of a .zip or a tar archive, read in
    memory: nothing is extracted, so no member's name can point outside."""
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            yield [info.filename for info in archive.infolist() if not info.is_dir()], archive.read
        return
    with tarfile.open(path, "r:*") as archive:
        members = {member.name: member for member in archive.getmembers() if member.isfile()}
        yield list(members), lambda name: archive.extractfile(members[name]).read()


# ---------------------------------------------------------------- image folders


def iter_folder_images(root: Path) -> Iterator[tuple[str, Path]]:
    pattern = "*/*/*" if (root / "train").is_dir() else "*/*"
    for file in sorted(root.glob(pattern)):
        if is_image_name(file.name) and not file.name.startswith("."):
            yield str(file.relative_to(root)), file


def read_image_folder(
    items: "Iterator[tuple[str, bytes | Path]]",
    source: str,
    size: int,
    on_progress: ProgressCallback,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    threads: int = 1,
) -> Dataset:
    """items: (path inside the source, bytes or file). Paths end in <split>/<class>/<file>, or in
    <class>/<file> when the source has no train/ and test/: then each class's test images are
    held out by `hold_out`."""
    files = [(Path(name).parts, name, payload) for name, payload in items if not Path(name).name.startswith(".")]
    in_splits = [entry for entry in files if len(entry[0]) >= 3 and entry[0][-3] in ("train", "test")]
    entries = [(parts[-3], parts[-2], name, payload) for parts, name, payload in in_splits]
    holds_out = not entries
    if holds_out:
        in_classes = [(parts[-2], name, payload) for parts, name, payload in files if len(parts) >= 2]
        entries = hold_out(in_classes, val_fraction, source)
    entries.sort(key=lambda entry: (entry[0], entry[1], Path(entry[2]).name))  # archive order varies
    classes = sorted({cls for split, cls, _, _ in entries if split == "train"})
    test_classes = sorted({cls for split, cls, _, _ in entries if split == "test"})
    if not classes or not test_classes:
        raise CifarError(f"--data {source}: expected images under train/<class>/ and test/<class>/")
    if not set(test_classes) <= set(classes):
        extra = ", ".join(sorted(set(test_classes) - set(classes)))
        raise CifarError(f"--data {source}: test/ has classes that train/ lacks: {extra}")
    results = decode_entries(entries, size, threads, on_progress)
    index = {name: i for i, name in enumerate(classes)}
    splits, skipped = {}, []
    for split in ("train", "test"):
        pixels, labels = [], []
        for (entry_split, cls, _, _), (image, error) in zip(entries, results, strict=True):
            if entry_split != split:
                continue
            if error:
                skipped.append(error)
                continue
            pixels.append(image)
            labels.append(index[cls])
        if not pixels:
            raise CifarError(f"--data {source}: no readable images in {split}/")
        splits[split] = Split(np.stack(pixels), np.asarray(labels, dtype=np.int64))
    if not holds_out:
        return Dataset(splits["train"], splits["test"], classes, source, skipped)
    decoded = zip(entries, results, strict=True)
    test_files = sorted(name for (split, _, name, _), (_, error) in decoded if split == "test" and not error)
    return Dataset(splits["train"], splits["test"], classes, source, skipped, val_fraction, test_files)


def decode_entries(entries: list[tuple], size: int, threads: int, on_progress: ProgressCallback) -> list[tuple]:
    """(pixels, None) or (None, "<name>: why") for each (split, class, name, payload), in order,
    decoded on `threads` threads."""

    def decode(entry):
        _, _, name, payload = entry
        try:
            return decode_image(payload, size), None
        except ImageDecodeError as error:
            return None, f"{name}: {str(error).split(': ', 1)[-1]}"

    results = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done, result in enumerate(pool.map(decode, entries, chunksize=256), 1):
            results.append(result)
            if done % 1000 == 0 or done == len(entries):
                on_progress("decoding images", done, len(entries))
    return results


def hold_out(files: list[tuple[str, str, object]], fraction: float, source: str) -> list[tuple]:
    """(class, name, payload) files -> (split, class, name, payload) entries. Stratified and
    deterministic: each class's files, in name order, are shuffled by a generator seeded with
    SPLIT_SEED and the class name (so adding a class moves no other class's files), and the first
    round(fraction x count), at least one, become its test images."""
    by_class: dict[str, list] = {}
    for cls, name, payload in files:
        by_class.setdefault(cls, []).append((name, payload))
    if len(by_class) < 2:
        raise CifarError(
            f"--data {source}: expected class folders (ROOT/<class>/*) or ROOT/train/<class> and ROOT/test/<class>"
        )
    entries = []
    for cls, members in sorted(by_class.items()):
        members.sort(key=lambda member: member[0])
        count = max(1, round(fraction * len(members)))
        if count >= len(members):
            raise CifarError(
                f"--data {source}: class '{cls}' has {len(members)} image(s), too few to hold out "
                f"{fraction:g} of them for testing; add images or lay out train/ and test/ yourself"
            )
        order = np.random.default_rng([SPLIT_SEED, zlib.crc32(cls.encode())]).permutation(len(members))
        test = set(order[:count].tolist())
        entries += [("test" if i in test else "train", cls, name, payload) for i, (name, payload) in enumerate(members)]
    return entries


def describe(dataset: Dataset) -> dict:
    return {
        "source": str(Path(dataset.source).resolve()),
        "classes": dataset.classes,
        "train": len(dataset.train),
        "test": len(dataset.test),
        "skipped": len(dataset.skipped),
        "image_size": list(dataset.train.images.shape[1:3]),
        "val_fraction": dataset.val_fraction,
    }
