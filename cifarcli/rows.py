"""The rows of `cifar predict`, written as they come: .csv, .json or .jsonl, one per image file.

A .csv or .jsonl file can be continued (--resume) after a kill: a line cut short is dropped, the
files already written are skipped, and what produced the rows (the model's hash and the options
that change rows) is kept beside the file in <name>.run.json, so that a resume never mixes rows
of another model. Imports neither torch nor onnxruntime.
"""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cifarcli.checkpoint import atomic_write, check_can_write
from cifarcli.errors import CifarError


@dataclass
class Row:
    path: str
    label: str = ""
    confidence: float = 0.0
    top_k: tuple = ()  # ((label, probability), ...)
    error: str = ""


class RowWriter:
    """Writes rows as they come (.csv, .json or .jsonl by extension), each flushed at once.

    With resume, an existing .csv or .jsonl is continued: a line cut short by a kill is dropped,
    and `done` holds the paths already written, for the caller to skip. What produced the rows
    (provenance: the model's hash and the options that change rows) is kept beside the file in
    <name>.run.json, and a resume that would mix rows of another model or options is refused."""

    def __init__(
        self, path: Path, top_k: int, resume: bool = False, provenance: "dict | None" = None, overwrite: bool = False
    ):
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json", ".jsonl"):
            raise CifarError(f"--output {path}: use a .csv, .json or .jsonl file name")
        if path.is_dir():
            raise CifarError(f"--output {path}: is a folder; give a file name")
        if resume and suffix == ".json":
            raise CifarError(f"--output {path}: --resume continues a .jsonl or .csv file; a .json array cannot grow")
        if resume and overwrite:
            raise CifarError("--resume and --overwrite: choose one (continue the rows, or replace them)")
        self.path, self.kind, self.top_k, self.count = path, suffix, top_k, 0
        extra = [f"top{i}_{part}" for i in range(1, top_k + 1) for part in ("label", "confidence")] if top_k > 1 else []
        header = ["path", "label", "confidence", *extra, "error"]
        # An existing file is continued (--resume) or replaced (--overwrite), never replaced unasked.
        if not (resume or overwrite) and holds_something(path, header):
            raise CifarError(
                f"--output {path}: already holds rows or other data; continue its rows with --resume, or replace "
                "it with --overwrite"
            )
        record = path.with_name(path.name + ".run.json")
        continuing = resume and path.exists()
        if continuing:
            check_provenance(path, record, provenance or {})
        self.done = rows_already_written(path, suffix, header) if continuing else set()
        check_can_write(path)
        if not continuing:  # first, so that a failure leaves no empty output behind
            atomic_write(record, lambda file: file.write((json.dumps(provenance or {}, indent=2) + "\n").encode()))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if continuing else "w", newline="" if suffix == ".csv" else None)
            if suffix == ".csv":
                self.csv = csv.writer(self.file)
                if self.file.tell() == 0:
                    self.csv.writerow(header)
            elif suffix == ".json":
                self.file.write("[")
            self.file.flush()
        except OSError as error:
            if not continuing:
                path.unlink(missing_ok=True)
            raise CifarError(f"--output {path}: cannot write there ({error.strerror})", 1) from None

    def write(self, row: Row) -> None:
        try:
            self.write_row(row)
        except OSError as error:
            raise self.write_failed(error) from None

    def write_failed(self, error: OSError) -> CifarError:
        return CifarError(
            f"--output {self.path}: cannot write it ({error.strerror}); its complete rows are kept: free some "
            "space and continue with --resume",
            1,
        )

    def write_row(self, row: Row) -> None:
        if self.kind == ".csv":
            extra = []
            if self.top_k > 1:
                pairs = list(row.top_k) + [("", None)] * (self.top_k - len(row.top_k))
                extra = [value for label, p in pairs for value in (label, "" if p is None else f"{p:.6f}")]
            confidence = f"{row.confidence:.6f}" if row.label else ""
            self.csv.writerow([row.path, row.label, confidence, *extra, row.error])
        else:
            text = json.dumps(row_to_dict(row, self.top_k))
            if self.kind == ".json":
                text = ("\n  " if self.count == 0 else ",\n  ") + text
            else:
                text += "\n"
            self.file.write(text)
        self.count += 1
        self.file.flush()

    def close(self) -> None:
        try:
            if self.kind == ".json":
                self.file.write("\n]\n" if self.count else "]\n")
            self.file.close()
        except OSError as error:
            raise self.write_failed(error) from None


def holds_something(path: Path, header: list[str]) -> bool:
    """Whether an output file holds anything but what a run stopped before its first row leaves
    (nothing, our CSV header, or the opening of a JSON array): that is replaced; all else is kept."""
    try:
        text = path.read_bytes()[: 1 << 16].decode(errors="replace").strip()
    except OSError:
        return False
    return text not in ("", ",".join(header), "[")


def check_provenance(path: Path, record: Path, provenance: dict) -> None:
    """Refuse to continue rows that another model or other options wrote."""
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError):
        raise CifarError(
            f"--output {path}: {record.name}, which says what wrote its rows, is missing or unreadable; "
            "give another --output"
        ) from None
    names = {"model_sha256": "model", "top_k": "--top-k", "min_confidence": "--min-confidence"}
    differing = [names.get(key, key) for key, value in provenance.items() if recorded.get(key) != value]
    if differing:
        raise CifarError(
            f"--output {path}: written with another {', '.join(differing)} (see {record.name}); resume with the "
            "model and options that wrote it, or give another --output"
        )


def rows_already_written(path: Path, suffix: str, header: list[str]) -> set[str]:
    """The paths of the complete rows in an output file (cutting off a partial last line)."""
    if not path.is_file():
        return set()
    try:
        text = path.read_bytes()
        complete = text[: text.rfind(b"\n") + 1]
        if len(complete) < len(text):
            os.truncate(path, len(complete))
    except OSError as error:
        raise CifarError(f"--output {path}: cannot read it to resume ({error.strerror})") from None
    lines = complete.decode().splitlines()
    if suffix == ".jsonl":
        try:
            return {json.loads(line)["path"] for line in lines if line.strip()}
        except (ValueError, KeyError, TypeError):
            raise CifarError(f"--output {path}: not rows of cifar predict; give another --output") from None
    rows = list(csv.reader(lines))
    if rows and rows[0] != header:
        raise CifarError(f"--output {path}: written with other columns (--top-k); resume with the same options")
    return {row[0] for row in rows[1:] if row}


def row_to_dict(row: Row, top_k: int) -> dict:
    value = {
        "path": row.path,
        "label": row.label or None,
        "confidence": round(row.confidence, 6) if row.label else None,
        "error": row.error or None,
    }
    if top_k > 1:
        value["top_k"] = [{"label": label, "confidence": round(p, 6)} for label, p in row.top_k]
    return value
