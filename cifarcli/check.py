"""`cifar check`: a data set's problems, kind by kind (findings.py): broken files, a structure
that training would silently get wrong, duplicates and leaks between splits, and likely wrong
labels. The check only reads the data.

    take_inventory -> inspect each file (file_checks) -> structure -> the model's logits and
    features of every decodable image -> duplicates -> label issues of the test split

The model is an ONNX file with a features output (every `cifar export`; the bundled model by
default). Label issues need probabilities from a model that never trained on the images: the
test split's, with a model trained on the training split and classes of the same names.
"""

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarcli.classifier import EVAL_BATCH, blend_tta, mirror, softmax
from cifarcli.duplicates import find_duplicates
from cifarcli.errors import CifarError
from cifarcli.file_checks import inspect_file
from cifarcli.findings import KINDS, Finding, ordered
from cifarcli.inventory import Entry, Inventory, take_inventory
from cifarcli.label_issues import label_issues

CHECK_SPLITS = ("all", "train", "test")
IMBALANCE_RATIO = 10  # largest class over smallest in a split above which the split is flagged
NO_PROGRESS = lambda *_: None  # noqa: E731


@dataclass
class CheckReport:
    source: str
    model: str
    split: str
    files: int
    class_counts: dict[str, dict[str, int]]  # split -> class -> decodable images
    findings: list[Finding]
    notes: list[str]
    seconds: float
    pixels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # path -> decoded, for pictures

    def counts(self) -> dict[str, dict[str, int]]:
        """kind -> problem -> findings, every kind present."""
        counts = {kind: {} for kind in KINDS}
        for finding in self.findings:
            counts[finding.kind][finding.problem] = counts[finding.kind].get(finding.problem, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "source": self.source, "model": self.model, "split": self.split, "files": self.files,
            "seconds": round(self.seconds, 2), "class_counts": self.class_counts, "counts": self.counts(),
            "notes": self.notes, "findings": [finding.to_dict() for finding in ordered(self.findings)],
        }  # fmt: skip


def open_check_model(model: "str | Path | None", threads: int):
    """The ONNX model whose logits and features the check uses: the bundled one by default."""
    from cifarcli.bundled import bundled_or_path, choose_bundled_model
    from cifarcli.classifier import OnnxClassifier

    path = bundled_or_path(model) if model else choose_bundled_model(None)[0]
    if path.suffix.lower() != ".onnx":
        raise CifarError(f"--model {path}: check runs an .onnx model; export the checkpoint with `cifar export {path}`")
    if not path.is_file():
        raise CifarError(f"--model {path}: no such model file")
    return OnnxClassifier(path, threads)


def chosen_entries(inventory: Inventory, split: str) -> list[Entry]:
    if split not in CHECK_SPLITS:
        raise CifarError(f"--split {split}: choose {', '.join(CHECK_SPLITS)}")
    has_splits = any(entry.split for entry in inventory.entries)
    if split != "all" and not has_splits:
        raise CifarError(f"--split {split}: {inventory.source} has no train/ and test/ folders; use --split all")
    return [entry for entry in inventory.entries if split == "all" or entry.split == split]


@dataclass
class Inspected:
    """The files of a check, in order: each one's findings, and for the decodable ones their
    pixels, their bytes' digest and the model's logits and features."""

    findings: list[Finding]
    usable: list[int]  # indices of the decodable entries
    pixels: np.ndarray
    digests: list[bytes]
    logits: np.ndarray
    features: np.ndarray
    label_logits: np.ndarray  # the logits label issues use: the test split's with the mirror (TTA level 1)


def inspect_batch(inventory: Inventory, entries: list[Entry], classifier) -> tuple:
    """One batch, decoded and run through the model by one worker (as cifar predict's workers do)."""
    found, usable, pixels, digests = [], [], [], []
    for index, entry in enumerate(entries):
        try:
            data = inventory.read(entry.path)
        except OSError as error:
            found.append(Finding("files", "unreadable", entry.path, detail=str(error)))
            continue
        image, problems = inspect_file(entry.path, data, classifier.info.input_size, inventory.named_files)
        found += problems
        if image is not None:
            usable.append(index)
            pixels.append(image)
            digests.append(hashlib.blake2b(data, digest_size=16).digest())
    if not pixels:
        return found, usable, pixels, digests, None, None, None
    images = np.stack(pixels)
    logits, features = classifier.predict_logits_and_features(images)
    label_logits, tested = logits.copy(), [k for k, index in enumerate(usable) if entries[index].split == "test"]
    if tested:
        mirrored = lambda rows: classifier.predict_logits(mirror(images[tested][rows]))  # noqa: E731
        label_logits[tested] = blend_tta(logits[tested], 1, mirrored, None)
    return found, usable, pixels, digests, logits, features, label_logits


def inspect_files(inventory: Inventory, entries: list[Entry], classifier, threads: int, on_progress) -> Inspected:
    """Every entry inspected and, where decodable, embedded: `threads` workers, a batch each."""
    batches = [entries[start : start + EVAL_BATCH] for start in range(0, len(entries), EVAL_BATCH)]
    inspected = Inspected([], [], [], [], [], [], [])
    with ThreadPoolExecutor(threads) as pool:
        work = pool.map(lambda batch: inspect_batch(inventory, batch, classifier), batches)
        for number, (found, usable, pixels, digests, logits, features, label_logits) in enumerate(work):
            inspected.findings += found
            inspected.usable += [number * EVAL_BATCH + index for index in usable]
            inspected.pixels += pixels
            inspected.digests += digests
            if logits is not None:
                inspected.logits.append(logits)
                inspected.features.append(features)
                inspected.label_logits.append(label_logits)
            on_progress("checking files", min((number + 1) * EVAL_BATCH, len(entries)), len(entries))
    if inspected.pixels:
        inspected.pixels = np.stack(inspected.pixels)
        for name in ("logits", "features", "label_logits"):
            setattr(inspected, name, np.concatenate(getattr(inspected, name)))
    return inspected


def structure_findings(inventory: Inventory, counts: dict[str, dict[str, int]], whole: bool = True) -> list[Finding]:
    """Classes one split lacks, empty classes, class-name near-clashes, imbalance, hidden and stray files."""
    found = []
    if {"train", "test"} <= set(counts):
        train, test = set(counts["train"]), set(counts["test"])
        for label in sorted(train - test):
            found.append(Finding("structure", "class absent from test", f"test/{label}", 0.8,
                                 detail="no test images: its accuracy cannot be measured"))  # fmt: skip
        for label in sorted(test - train):
            detail = "training never sees it; classes are matched by name, never by order"
            found.append(Finding("structure", "class absent from train", f"train/{label}", 1.0, detail=detail))
    for split, label in inventory.empty_classes:
        found.append(
            Finding("structure", "empty class", f"{split}/{label}".lstrip("/"), 0.9, detail="a folder without files")
        )
    names = sorted({label for by_class in counts.values() for label in by_class})
    folded = {}
    for name in names:
        folded.setdefault(name.strip().lower().replace("_", " ").replace("-", " "), []).append(name)
    for clash in (group for group in folded.values() if len(group) > 1):
        found.append(Finding("structure", "class names that differ only in spelling", clash[0], 0.9,
                             detail=" / ".join(clash)))  # fmt: skip
    for split, by_class in counts.items():
        if len(by_class) > 1 and max(by_class.values()) > IMBALANCE_RATIO * max(min(by_class.values()), 1):
            rarest, largest = min(by_class, key=by_class.get), max(by_class, key=by_class.get)
            detail = f"{largest} {by_class[largest]:,} images, {rarest} {by_class[rarest]:,}"
            detail += "; cifar train --balance auto makes up for it" if split != "test" else ""
            found.append(Finding("structure", "imbalanced classes", split or ".", 0.7, detail=detail))
    if not whole:  # hidden and stray files belong to no split
        return found
    found += [Finding("structure", "hidden file", path, 0.3, detail="training skips it") for path in inventory.hidden]
    found += [Finding("structure", "file outside a class folder", path, 0.3, detail="training skips it")
              for path in inventory.stray]  # fmt: skip
    return found


@dataclass(frozen=True)
class FoldsPlan:
    """--folds: label issues of the training split from `folds` models of a registered recipe."""

    folds: int
    model: str  # a registry name
    settings: dict = field(default_factory=dict)  # recipe overrides, as --set gives them

    @classmethod
    def from_options(cls, folds, model, settings) -> "FoldsPlan | None":
        """The plan of --folds, --folds-model (default: the default model) and --set; None without --folds."""
        from cifarcli.models import DEFAULT_MODEL, get_model_entry
        from cifarcli.recipes import parse_recipe_settings

        if not folds:
            return None
        get_model_entry(model or DEFAULT_MODEL)  # an unknown name fails here, before the check
        return cls(folds, model or DEFAULT_MODEL, parse_recipe_settings(settings or []))


def run_check(
    source, model=None, split: "str | None" = None, threads: "int | None" = None, on_progress=None, folds=None,
    on_note=None, storage_options: "str | None" = None,
) -> CheckReport:  # fmt: skip
    """Check a data set's split (default: all) on `threads` workers (default: one per core); folds
    (a FoldsPlan) also checks the training split's labels, and on_note(line) hears its estimate;
    storage_options: the JSON of a URL's fsspec options."""
    from cifarcli.hardware import cores
    from cifarcli.sources import parse_storage_options

    started, on_progress, threads = time.perf_counter(), on_progress or NO_PROGRESS, threads or cores()
    inventory, split = take_inventory(source, parse_storage_options(storage_options)), split or "all"
    entries = chosen_entries(inventory, split)
    classifier = open_check_model(model, threads=1)  # one ONNX Runtime thread per worker
    inspected = inspect_files(inventory, entries, classifier, threads, on_progress)
    kept = [entries[index] for index in inspected.usable]
    counts = {}
    for entry in kept:
        counts.setdefault(entry.split, {}).setdefault(entry.label, 0)
        counts[entry.split][entry.label] += 1
    findings, notes = inspected.findings + structure_findings(inventory, counts, split == "all"), []
    if split != "all":
        notes.append(f"--split {split}: duplicates across splits (leaks) and hidden or stray files need --split all")
    pixels = {}
    if kept:
        images, logits = inspected.pixels, inspected.logits
        twins = [(entry.split, entry.label, entry.path) for entry in kept]
        findings += find_duplicates(twins, images, inspected.digests, inspected.features, logits)
        findings += test_label_issues(classifier, kept, inspected.label_logits, notes)
        if folds:
            findings += training_label_issues(kept, images, folds, on_progress, on_note or NO_PROGRESS)
        pixels = {entry.path: image for entry, image in zip(kept, images, strict=True)}
    seconds = time.perf_counter() - started
    return CheckReport(
        inventory.source, classifier.source, split, len(entries), counts, findings, notes, seconds, pixels
    )


def test_label_issues(classifier, kept: list[Entry], logits: np.ndarray, notes: list[str]) -> list[Finding]:
    """Label issues of the test split, when the model knows every class by name."""
    classes = classifier.info.classes
    test = [index for index, entry in enumerate(kept) if entry.split == "test"]
    if not test:
        notes.append("label issues are checked on test images only (the model must not have trained on them)")
        return []
    unknown = sorted({kept[index].label for index in test} - set(classes))
    if unknown:
        notes.append(f"no label issues: the model does not know the classes {', '.join(unknown)}; pass --model")
        return []
    labels = np.array([classes.index(kept[index].label) for index in test])
    probabilities = softmax(logits[test].astype(np.float64) / classifier.info.temperature)
    return label_issues(probabilities, labels, classes, [kept[index].path for index in test])


def training_label_issues(kept: list[Entry], images: np.ndarray, plan: FoldsPlan, on_progress, on_note) -> list:
    """Label issues of the training split (of the whole set when it has no splits) from
    out-of-fold probabilities; classes by name, as the folders give them."""
    from cifarcli.folds import out_of_fold_logits

    chosen = [index for index, entry in enumerate(kept) if entry.split in ("train", "")]
    classes = sorted({kept[index].label for index in chosen})
    labels = np.array([classes.index(kept[index].label) for index in chosen])
    logits = out_of_fold_logits(images[chosen], labels, classes, plan.folds, plan.model, plan.settings, on_progress,
                                on_note)  # fmt: skip
    return label_issues(softmax(logits.astype(np.float64)), labels, classes, [kept[index].path for index in chosen])
