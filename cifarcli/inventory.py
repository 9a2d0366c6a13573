"""What a data source holds, file by file, for `cifar check`: every regular file with its split
and class as the path gives them, including the files that training skips (hidden files, names
without an image extension), since those are what a check reports.

Layouts, as `--data` reads them (data.py): ROOT/train/<class>/*, ROOT/test/<class>/* (and the
same inside one top folder of a .tar.gz/.tgz/.zip), or ROOT/<class>/*, whose files have no split
of their own (split ""). Classes are matched by name, never by order. The official CIFAR-10
batches (cifar-10-python.tar.gz or its cifar-10-batches-py/) hold pixels, not files: each image
is `train[i]` or `test[i]` (i its place in the official order) and reads as a PNG of its pixels.
A URL (s3://, gs://, ...) is a folder that fsspec lists and reads (sources.FileSystem), its
files read once, into memory.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cifarcli.cifar_batches import read_cifar_batches
from cifarcli.data import ARCHIVE_SUFFIXES, SPLITS, open_archive
from cifarcli.errors import CifarError

HIDDEN_PREFIXES = (".", "__MACOSX")


@dataclass(frozen=True)
class Entry:
    split: str  # "train", "test", or "" in a folder of class folders
    label: str  # its class folder's name
    path: str  # inside the source: what findings.csv and --exclude name


@dataclass
class Inventory:
    source: str
    entries: list[Entry]
    read: Callable[[str], bytes]  # path inside the source -> bytes
    hidden: list[str] = field(default_factory=list)  # hidden files and folders' files
    stray: list[str] = field(default_factory=list)  # files outside any class folder
    empty_classes: list[tuple[str, str]] = field(default_factory=list)  # (split, class) folders without files
    named_files: bool = True  # False for the official batches: their images have no file names to check

    def classes(self, split: str) -> list[str]:
        return sorted({entry.label for entry in self.entries if entry.split == split})


def is_hidden(path: str) -> bool:
    return any(part.startswith(HIDDEN_PREFIXES) for part in PurePosixPath(path).parts)


def sort_entries(paths: list[str], source: str, folders: list[str]) -> tuple[list[Entry], list[str], list[str]]:
    """(entries, hidden, stray) of the regular files' paths; folders name the class folders too,
    to find the empty ones."""
    top = common_top_folder(paths)
    in_splits = any(len(parts) >= 2 and parts[0] in SPLITS for parts in (relative(p, top) for p in paths))
    entries, hidden, stray = [], [], []
    for path in sorted(paths):
        parts = relative(path, top)
        if is_hidden(path):
            hidden.append(path)
        elif in_splits and len(parts) == 3 and parts[0] in SPLITS:
            entries.append(Entry(parts[0], parts[1], path))
        elif not in_splits and len(parts) == 2:
            entries.append(Entry("", parts[0], path))
        else:
            stray.append(path)
    if not entries:
        raise CifarError(
            f"{source}: no class folders found; give ROOT/train/<class>/*, ROOT/test/<class>/* or ROOT/<class>/*"
        )
    return entries, hidden, stray


def relative(path: str, top: str) -> tuple[str, ...]:
    return PurePosixPath(path).relative_to(top).parts if top else PurePosixPath(path).parts


def common_top_folder(paths: list[str]) -> str:
    """The one folder every path is inside (an archive's top folder), or ""."""
    tops = {PurePosixPath(path).parts[0] for path in paths if len(PurePosixPath(path).parts) > 1}
    single = len(tops) == 1 and all(len(PurePosixPath(path).parts) > 1 for path in paths)
    return tops.pop() if single and tops.isdisjoint(SPLITS) else ""


def empty_class_folders(folders: list[str], entries: list[Entry], top: str) -> list[tuple[str, str]]:
    held = {(entry.split, entry.label) for entry in entries}
    in_splits = any(entry.split for entry in entries)
    empty = []
    for folder in folders:
        parts = relative(folder, top)
        if in_splits and len(parts) == 2 and parts[0] in SPLITS:
            key = (parts[0], parts[1])
        elif not in_splits and len(parts) == 1:
            key = ("", parts[0])
        else:
            continue
        if not is_hidden(folder) and key not in held:
            empty.append(key)
    return sorted(set(empty))


def batches_inventory(read_member, source: str) -> Inventory:
    """The official batches' images as entries named split[index], each read as a PNG."""
    import io

    from PIL import Image

    (train, train_labels), (test, test_labels), classes = read_cifar_batches(read_member, source, 32)
    pixels = {}
    entries = []
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        for index, label in enumerate(labels):
            entries.append(Entry(split, classes[label], f"{split}[{index}]"))
            pixels[f"{split}[{index}]"] = images[index]

    def read(name: str) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels[name]).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    return Inventory(source, entries, read, named_files=False)


def remote_inventory(url: str, storage_options: dict) -> Inventory:
    """Every file below a URL, read through fsspec."""
    from cifarcli.errors import first_line
    from cifarcli.sources import FileSystem, protocol_of

    fs = FileSystem(protocol_of(url), storage_options).fsspec()
    root = fs._strip_protocol(url).rstrip("/")
    try:
        files = [fs._strip_protocol(name)[len(root) + 1 :] for name in fs.find(root)]
        fetched = {fs._strip_protocol(key): value for key, value in fs.cat([f"{root}/{n}" for n in files]).items()}
        contents = {name: fetched[f"{root}/{name}"] for name in files}
    except Exception as error:  # each store raises its own types: credentials, endpoint, network
        raise CifarError(f"{url}: cannot read it ({first_line(error)}); check the URL and --storage-options") from None
    folders = sorted({str(parent) for name in contents for parent in PurePosixPath(name).parents if str(parent) != "."})
    entries, hidden, stray = sort_entries(list(contents), url, folders)
    return Inventory(url, entries, contents.__getitem__, hidden, stray)


def take_inventory(source: "str | Path", storage_options: "dict | None" = None) -> Inventory:
    """Every file of a folder, an archive or a URL (read into memory once, in its own order)."""
    if "://" in str(source):
        return remote_inventory(str(source), storage_options or {})
    path = Path(source).expanduser()
    if not path.exists():
        raise CifarError(f"{source}: no such file or folder")
    if path.is_dir() and (path / "data_batch_1").exists():
        return batches_inventory(lambda member: (path / member).read_bytes(), str(path))
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
        folders = [str(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_dir()]
        paths = [file.relative_to(path).as_posix() for file in files]
        entries, hidden, stray = sort_entries(paths, str(path), folders)
        empty = empty_class_folders(folders, entries, common_top_folder(paths))
        return Inventory(str(path), entries, lambda name: (path / name).read_bytes(), hidden, stray, empty)
    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise CifarError(f"{source}: not a folder or a .tar.gz/.tgz/.zip of one; give the data's folder")
    with open_archive(path) as (names, read):
        batches = [name for name in names if name.endswith("cifar-10-batches-py/data_batch_1")]
        if batches:
            prefix = batches[0][: -len("data_batch_1")]
            return batches_inventory(lambda member: read(prefix + member), str(path))
        contents = {name: read(name) for name in names}
    folders = sorted({str(parent) for name in contents for parent in PurePosixPath(name).parents if str(parent) != "."})
    entries, hidden, stray = sort_entries(list(contents), str(path), folders)
    empty = empty_class_folders(folders, entries, common_top_folder(list(contents)))
    return Inventory(str(path), entries, contents.__getitem__, hidden, stray, empty)
