"""Where `cifar predict`'s images are: local files, folders and globs, or any file system fsspec
reaches by URL (s3://, gs://, az://, https://, ...); how they are listed, shared among shards,
and read. Imports neither torch nor onnxruntime; fsspec only for URLs.

Files are plain strings (paths, or URLs as fsspec writes them), not Path objects, which keep
cached parts: a fourth of the memory at a million files.
"""

import glob
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cifarcli.errors import CifarError, ImageDecodeError, first_line
from cifarcli.images import is_image_name, read_regular_file

GLOB_CHARACTERS = set("*?[")
# The extra that brings each file system's fsspec package (the matching package, installed).
FILE_SYSTEM_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
                      "abfss": "azure", "http": "http", "https": "http"}  # fmt: skip


def protocol_of(path: str) -> "str | None":
    """The URL's protocol ("s3"), or None for a local path."""
    return path.split("://", 1)[0] if "://" in path else None


@dataclass(frozen=True)
class FileSystem:
    """Reads files: local ones directly, others through fsspec with the user's storage options.
    Holds no connection, so it travels to Dask's workers, each of which opens its own."""

    protocol: "str | None" = None  # None: the local file system
    storage_options: dict = field(default_factory=dict)

    def fsspec(self):
        try:
            import fsspec

            return fsspec.filesystem(self.protocol, **self.storage_options)
        except ImportError as error:
            extra = FILE_SYSTEM_EXTRAS.get(self.protocol, "dask")
            raise CifarError(
                f"{self.protocol}://: this file system needs a package this install lacks ({first_line(error)}); "
                f"install it with: pip install 'cifarcli[{extra}]'"
            ) from None

    def read(self, files: list[str]) -> list:
        """Each file's bytes, or the ImageDecodeError that says why it could not be read."""
        if self.protocol is None:
            return [read_or_error(path) for path in files]
        fetched = self.fsspec().cat(files, on_error="return")
        fetched = fetched if isinstance(fetched, dict) else {files[0]: fetched}
        found = {key if "://" in key else f"{self.protocol}://{key}": value for key, value in fetched.items()}
        return [error_for(path, found.get(path, KeyError("not found"))) for path in files]


def read_or_error(path: str):
    try:
        return read_regular_file(path)
    except ImageDecodeError as error:
        return error


def error_for(path: str, value):
    if isinstance(value, bytes):
        return value
    return ImageDecodeError(f"{path}: cannot be read ({first_line(value) if isinstance(value, Exception) else value})")


# ---------------------------------------------------------------- finding the files


LISTING_REPORT_EVERY = 1024  # files: how often on_found hears how many have been found


def discover_images(
    paths: Iterable[str], recursive: bool = True, storage_options: "dict | None" = None, on_found=None
) -> tuple[list[str], FileSystem]:
    """Image files under the given files, folders, globs or URLs, in a stable order, each once, and
    the file system that reads them (one per command). on_found(count, finished) hears the count
    as it grows, and once more at the end.

    Hidden files and folders and non-image names are skipped silently; local symlinks are
    followed, and a folder reached twice (a symlink loop) is walked once."""
    paths = list(paths)
    protocols = {protocol_of(path) for path in paths}
    if len(protocols) > 1:
        raise CifarError(f"{' '.join(paths)}: give the sources of one file system per command")
    protocol = protocols.pop()
    file_system = FileSystem(protocol, storage_options or {})
    on_found = on_found or (lambda count, finished: None)
    if protocol is None:
        found = discover_local(paths, recursive, on_found)
    else:
        found = discover_remote(paths, recursive, file_system)
    on_found(len(found), True)
    return found, file_system


def discover_local(paths: list[str], recursive: bool, on_found) -> list[str]:
    found, seen_files, seen_dirs = [], set(), set()

    def add_file(path: str):
        key = os.path.abspath(path)
        if key not in seen_files:
            seen_files.add(key)
            found.append(path)
            if len(found) % LISTING_REPORT_EVERY == 0:
                on_found(len(found), False)

    def walk(folder: str):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            return
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if os.path.isdir(entry.path):
                if recursive:
                    walk(entry.path)
            elif is_image_name(entry.name):
                add_file(entry.path)  # broken links too: they become error rows

    for given in paths:
        matches = [given]
        if not os.path.lexists(given) and GLOB_CHARACTERS & set(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise CifarError(f"{given}: the pattern matches no files")
        for path in matches:
            if os.path.isdir(path):
                walk(path)
            elif os.path.lexists(path):
                if is_image_name(os.path.basename(path)):
                    add_file(path)
            else:
                raise CifarError(f"{path}: no such file or folder")
    return found


def discover_remote(urls: list[str], recursive: bool, file_system: FileSystem) -> list[str]:
    fs, found = file_system.fsspec(), {}
    for url in urls:
        try:
            if GLOB_CHARACTERS & set(url):
                matches = fs.glob(url)
            elif fs.isdir(url):
                matches = fs.find(url, maxdepth=None if recursive else 1)
            elif fs.exists(url):
                matches = [url]
            else:
                raise CifarError(f"{url}: no such file or folder")
        except CifarError:
            raise
        except Exception as error:  # each store raises its own types: credentials, endpoint, network
            raise CifarError(
                f"{url}: cannot list it ({first_line(error)}); check the URL and --storage-options"
            ) from None
        for match in matches:
            parts = fs._strip_protocol(match).split("/")
            if is_image_name(parts[-1]) and not any(part.startswith(".") for part in parts):
                found.setdefault(fs.unstrip_protocol(match), None)
    return sorted(found)


# ---------------------------------------------------------------- shards


def parse_storage_options(text: "str | None") -> dict:
    """--storage-options JSON -> the keyword arguments of the URL's fsspec file system."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as error:
        raise CifarError(f"--storage-options: not JSON ({first_line(error)}); e.g. '{{\"anon\": true}}'") from None
    if not isinstance(options, dict):
        raise CifarError("--storage-options: give a JSON object of the file system's options")
    return options


def parse_shard(text: "str | None") -> "tuple[int, int] | None":
    """--shard I/N -> (I, N), 0 <= I < N."""
    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise CifarError(f"--shard {text}: give I/N with 0 <= I < N, e.g. --shard 0/4")
    return index, count


def in_shard(path: str, index: int, count: int) -> bool:
    """Whether a file is in shard index of count: a stable hash of its name, the same on every
    machine and run, so that the N shards of a job array hold every file once."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "big") % count == index
