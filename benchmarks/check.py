"""`cifar check` on the shared CIFAR-10 copy: its speed, and its findings against published lists.

    python benchmarks/check.py [--data PATH] [--phash 4 8 12]

Runs the whole command `cifar check DATA --json` (the bundled model `cifar check` picks on this
CPU, every core), then scores it against the human-verified lists in benchmarks/reference/:
- leaks: test images that `cifar check` finds with a twin in training, against ciFAIR's list:
  recall over its near-duplicates, and the share of ours that the list holds (a lower bound of
  the precision: the list is not complete);
- twins within the test split, against ciFAIR's test pairs: recall;
- label issues: how many of the 54 crowd-confirmed wrong test labels are among the 300 images
  ranked most likely mislabelled;
- twin ranks: where ciFAIR's training twin of each listed test image ranks among all training
  images, by the model's features alone and by the check's search embedding;
beside, on the same data: cleanlab's `find_label_issues` ranked by self-confidence on the
probabilities the check uses (the model's, with the mirror), and a perceptual-hash twin finder
(imagehash's pHash, Hamming distance at most --phash bits, each test image against its nearest
training image). cleanlab and
imagehash are benchmark-only (`pip install cleanlab imagehash`). One row per run goes to
benchmarks/results/check.jsonl. The machine must be otherwise idle.
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, SHARED_DATA, append_result, code_version

sys.path.insert(0, str(ROOT))
REFERENCE = ROOT / "benchmarks" / "reference"
RANKED = 300  # label issues: the top of the ranking that is looked at


def reference(name: str) -> list[dict]:
    return list(csv.DictReader(open(REFERENCE / name)))


def leak_scores(flagged: set, listed: list[dict]) -> dict:
    near = {row["test_local_path"] for row in listed if row["judgment_name"] == "near-duplicate"}
    every = {row["test_local_path"] for row in listed}
    return {"flagged": len(flagged), "recall_near": round(len(flagged & near) / len(near), 4),
            "listed_share": round(len(flagged & every) / max(len(flagged), 1), 4)}  # fmt: skip


def decoded(data: str):
    """Every file as `cifar check` decodes and embeds it: (entries, Inspected), the bundled model's."""
    from cifarcli.check import inspect_files, open_check_model, take_inventory
    from cifarcli.hardware import cores

    inventory = take_inventory(data)
    model = open_check_model(None, threads=1)
    inspected = inspect_files(inventory, inventory.entries, model, cores(), lambda *_: None)
    return [inventory.entries[index] for index in inspected.usable], inspected, model


def twin_ranks(entries, inspected, listed: list[dict]) -> dict:
    """For ciFAIR's test images, where their listed training twin ranks among all training
    images: by the model's features alone, and by the check's search embedding."""
    from cifarcli.duplicates import search_embeddings, unit_rows

    index = {entry.path: number for number, entry in enumerate(entries)}
    tests = np.array([index[row["test_local_path"]] for row in listed])
    twins = np.array([index[row["train_local_path"]] for row in listed])
    train = np.array([number for number, entry in enumerate(entries) if entry.split == "train"])
    features = unit_rows(inspected.features - inspected.features.mean(0))
    search, mirrored = search_embeddings(inspected.pixels, inspected.features)
    ranks = {}
    for name, (queries, mirror_queries, keys) in {"features": (features, features, features),
                                                   "search": (search, mirrored, search)}.items():  # fmt: skip
        similarity = np.maximum(queries[tests] @ keys[train].T, mirror_queries[tests] @ keys[train].T)
        twin = np.maximum((queries[tests] * keys[twins]).sum(1), (mirror_queries[tests] * keys[twins]).sum(1))
        rank = (similarity > twin[:, None] + 1e-6).sum(1)
        ranks[name] = {"first": round(float((rank < 1).mean()), 4), "top10": round(float((rank < 10).mean()), 4)}
    return ranks


def phash_leaks(data: str, bits: list[int]) -> dict:
    """Test images whose nearest training image by pHash is within each Hamming distance."""
    import io

    import imagehash
    from PIL import Image

    from cifarcli.check import take_inventory

    inventory = take_inventory(data)
    hashes = {split: [] for split in ("train", "test")}
    for entry in inventory.entries:
        code = imagehash.phash(Image.open(io.BytesIO(inventory.read(entry.path)))).hash.ravel()
        hashes[entry.split].append((entry.path, np.packbits(code)))
    train = np.stack([code for _, code in hashes["train"]])
    nearest = []
    for path, code in hashes["test"]:
        distance = np.unpackbits(train ^ code, axis=1).sum(1).min()
        nearest.append((path, int(distance)))
    return {limit: {path for path, distance in nearest if distance <= limit} for limit in bits}


def main() -> None:
    from cifarcli.classifier import softmax

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--phash", type=int, nargs="+", default=[4, 8, 12])
    args = parser.parse_args()
    started = time.perf_counter()
    command = [sys.executable, "-m", "cifarcli", "check", args.data, "--json"]
    report = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
    wall = time.perf_counter() - started
    findings = report["findings"]
    leaks = {f["path"] for f in findings if f["problem"].startswith("leak from train")}
    twins = {
        frozenset((f["path"], f["related"])) for f in findings if f["problem"] in ("near duplicate", "exact duplicate")
    }
    test_pairs = [frozenset((row["local_path_a"], row["local_path_b"])) for row in reference("cifair_test_test.csv")]
    errors = {row["local_path"] for row in reference("label_errors_test.csv")}
    issues = sorted((f for f in findings if f["kind"] == "label issues"), key=lambda f: -f["score"])
    entries, inspected, model = decoded(args.data)
    test = [number for number, entry in enumerate(entries) if entry.split == "test"]
    probabilities = softmax(inspected.label_logits[test].astype(np.float64) / model.info.temperature)
    labels = np.array([model.info.classes.index(entries[number].label) for number in test])
    paths = [entries[number].path for number in test]
    from cleanlab.filter import find_label_issues

    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    listed, phash = reference("cifair_test_train.csv"), phash_leaks(args.data, args.phash)
    figures = {
        "code": code_version(), "model": Path(report["model"]).name, "files": report["files"],
        "wall_s": round(wall, 1), "check_s": report["seconds"],
        "leaks": leak_scores(leaks, listed),
        "test_twins_recall": round(sum(pair in twins for pair in test_pairs) / len(test_pairs), 4),
        "label_issues": len(issues),
        "label_errors_in_top": round(len({f["path"] for f in issues[:RANKED]} & errors) / len(errors), 4),
        "cleanlab_label_issues": len(ranked),
        "cleanlab_errors_in_top": round(len({paths[i] for i in ranked[:RANKED]} & errors) / len(errors), 4),
        "phash_leaks": {str(bits): leak_scores(found, listed) for bits, found in phash.items()},
        "twin_ranks": twin_ranks(entries, inspected, listed),
    }  # fmt: skip
    append_result("check", "python benchmarks/check.py " + " ".join(sys.argv[1:]), figures)


if __name__ == "__main__":
    main()
