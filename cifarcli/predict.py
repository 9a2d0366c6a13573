"""Batch predictions on folders of images through ONNX Runtime; never imports torch.

The pipeline: discover image files (prepare_predictions) -> batches of files, each read, decoded
and classified by batches.classify_batch on one worker thread of this machine (predict_files: a
bounded window of batches, so the images in memory stay few) or on a Dask worker (cluster.py);
the CLI chooses the engine -> rows, one per image file found, in order, written as they come
(run_predictions). A file that cannot be decoded becomes an error row; it never ends the batch.
"""

import hashlib
import shlex
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cifarcli.batches import LOCAL, PREDICT_BATCH, UNSURE, classify_batch
from cifarcli.bundled import bundled_or_path, choose_bundled_model
from cifarcli.errors import CifarError
from cifarcli.rows import Row, RowWriter
from cifarcli.sources import FileSystem, discover_images, in_shard


@dataclass
class Summary:
    """Counts for the closing line and table; keeps every row only when asked (--json)."""

    keep_all: bool = False
    shown: int = 20  # rows kept for the table when not keeping all, and failures named on screen
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # the first `shown` failed rows
    counts: Counter = field(default_factory=Counter)
    images: int = 0
    failed: int = 0
    unsure: int = 0
    seconds: float = 0.0

    def add(self, row: Row) -> None:
        self.images += 1
        self.failed += bool(row.error)
        self.unsure += row.label == UNSURE
        self.counts[row.label or "(failed)"] += 1
        if self.keep_all or len(self.rows) < self.shown:
            self.rows.append(row)
        if row.error and len(self.failures) < self.shown:
            self.failures.append(row)

    def totals(self) -> dict:
        rate = self.images / self.seconds if self.seconds else 0.0
        return {
            "images": self.images,
            "predicted": self.images - self.failed,
            "failed": self.failed,
            "unsure": self.unsure,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(rate, 1),
        }


def predict_files(
    classifier,
    files: list[str],
    batch_size: "int | None" = None,
    top_k: int = 1,
    workers: int = 1,
    min_confidence: float = 0,
    file_system=LOCAL,
) -> Iterator[Row]:
    """Rows in the order of `files`, batch by batch.

    Each of `workers` threads (cifar predict: one per core) decodes a batch and runs it through the
    model itself; open the classifier with one ONNX Runtime thread, as cifar predict does. Every
    core then does whole batches, with no hand-off between decoding threads and a model that
    splits each operator across the cores, which ran slower (docs/decisions.md). At most two
    batches per worker are in flight, so memory stays flat
    however many files. A top confidence below min_confidence is labelled UNSURE; the row keeps
    that confidence and the top-k candidates."""
    top_k = max(1, min(top_k, len(classifier.info.classes)))
    # A folder of a few images still gives every worker a share.
    batch_size = batch_size or PREDICT_BATCH
    per_batch = max(1, min(batch_size, -(-len(files) // workers)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        in_flight: deque = deque()
        for start in range(0, len(files), per_batch):
            chunk = files[start : start + per_batch]
            work = (classifier, chunk, batch_size, top_k, min_confidence, file_system)
            in_flight.append(pool.submit(classify_batch, *work))
            if len(in_flight) >= 2 * workers:
                yield from in_flight.popleft().result()
        while in_flight:
            yield from in_flight.popleft().result()


@dataclass
class PredictionRun:
    """What a `cifar predict` command works on, decided before the first row."""

    model: Path
    classifier: object  # OnnxClassifier, one ONNX Runtime thread: the workers are the parallelism
    files: list[str]  # still to predict
    file_system: FileSystem
    writer: "RowWriter | None"
    top_k: int
    min_confidence: float
    notes: list[str] = field(default_factory=list)  # for the user: which model, what a resume skips

    def interrupted_hint(self, summary: "Summary", arguments: list[str]) -> str:
        """The line a stopped run ends with: what was kept, and the command that continues it."""
        if not self.writer:
            return f"interrupted after {summary.images:,} images; --output FILE keeps rows, and --resume continues them"
        kept = [argument for argument in arguments if argument != "--overwrite"]  # the rows are now to continue
        command = shlex.join(["cifar", *kept, *([] if "--resume" in kept else ["--resume"])])
        return f"interrupted; {self.writer.count:,} rows written to {self.writer.path}; continue with: {command}"


def prepare_predictions(
    paths: list[str], model: "Path | None", bundled: "str | None", output: "Path | None", top_k: "int | None",
    min_confidence: "float | None", resume: bool, recursive: "bool | None", storage_options: "dict | None" = None,
    shard: "tuple[int, int] | None" = None, overwrite: bool = False, on_listing=None,
) -> PredictionRun:  # fmt: skip
    """The model (the bundled one when none is given), the files found (the shard's only, with
    --shard), and the output: a new file, with resume the same file continued once it is shown to
    come from the same model and options, with overwrite an existing file replaced.
    on_listing(count, finished): the number of files found so far, while they are listed. None
    means: top 1, no confidence floor, folders searched recursively."""
    from cifarcli.classifier import OnnxClassifier

    top_k, min_confidence, recursive = top_k or 1, min_confidence or 0.0, recursive is not False
    notes = []
    if model is None:
        model, why = choose_bundled_model(bundled)
        notes.append(f"using the bundled CIFAR-10 model {model.name} ({why}); pass --model for your own")
    elif bundled is not None:
        raise CifarError(f"--bundled {bundled}: chooses between the bundled models; drop it with --model")
    model = bundled_or_path(model)
    if model.suffix.lower() != ".onnx":
        raise CifarError(
            f"--model {model}: predict takes an .onnx model; a checkpoint of `cifar train` exports to one with "
            f"`cifar export {model}`"
        )
    classifier = OnnxClassifier(model, threads=1)
    classes = len(classifier.info.classes)
    if top_k > classes:
        raise CifarError(f"--top-k {top_k}: the model has {classes} classes; choose at most {classes}")
    files, file_system = discover_images(paths, recursive, storage_options, on_listing)
    if not files:
        raise CifarError(f"{' '.join(paths)}: no image files found (jpg, jpeg, png, bmp, gif, webp, tif, tiff)")
    if shard:
        files = [path for path in files if in_shard(path, *shard)]
        notes.append(f"shard {shard[0]}/{shard[1]}: {len(files):,} of the files found")
    if resume and not output:
        raise CifarError("--resume: give the --output file of the run to continue")
    if overwrite and not output:
        raise CifarError("--overwrite: give the --output file to replace")
    provenance = {"model_sha256": file_sha256(model), "top_k": top_k, "min_confidence": min_confidence}
    writer = RowWriter(output, top_k, resume, provenance, overwrite) if output else None
    if writer and writer.done:
        files = [path for path in files if path not in writer.done]
        notes.append(f"resuming: {len(writer.done):,} rows already in {output}, {len(files):,} files to go")
    return PredictionRun(model, classifier, files, file_system, writer, top_k, min_confidence, notes)


def run_predictions(run: PredictionRun, rows: Iterator[Row], summary: "Summary", on_row) -> "Summary":
    """Take the rows of the run's files from an engine (predict_files here, or
    cluster.cluster_rows), counting each in `summary` and writing it as it comes; on_row(summary)
    after each. The writer is closed however the loop ends, so every row written so far stays."""
    started = time.perf_counter()
    try:
        for row in rows:
            summary.add(row)
            if run.writer:
                run.writer.write(row)
            on_row(summary)
    finally:
        summary.seconds = time.perf_counter() - started
        if run.writer:
            run.writer.close()
    return summary


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
