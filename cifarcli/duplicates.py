"""The duplicates kind of `cifar check`: the same image twice, within a split or across splits
(a test image that training saw is a leak), and twins whose labels disagree.

Exact twins share their bytes or their decoded pixels. Near twins (the same shot re-encoded,
shifted a few pixels, mirrored, or with its colours changed) are found in two steps:
- search: each image's nearest image in each split by a search embedding, the model's features
  (centred) beside the image's edges at half size, mirrored or not, reduced to its principal
  components; blocked matrix products within the image's two most likely classes, since twins
  look alike to the model. A pair is a candidate when its cosine reaches SEARCH_COSINE.
- confirmation: the edges at full size agree (correlation) by EDGE_MATCH at the best of the
  shifts of up to MAX_SHIFT pixels, mirrored or not.
The model's features alone rank class-mates too close to tell twins apart (docs/decisions.md).
"""

import hashlib
from collections import defaultdict

import numpy as np

from cifarcli.findings import Finding

SEARCH_COSINE = 0.74  # search embeddings' cosine of a candidate (docs/decisions.md)
EDGE_MATCH = 0.44  # edges' correlation at the best shift that confirms it (docs/decisions.md)
MAX_SHIFT = 1  # pixels, each way, that the confirmation tries
SEARCH_DIMENSIONS = 64  # principal components of the search embedding
BLOCK = 2048  # query rows per matrix product


def unit_rows(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def edges(pixels: np.ndarray, half: bool = False) -> np.ndarray:
    """(N, H, W, 2) horizontal and vertical grey differences, each image of unit norm."""
    grey = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if half:
        count, size = grey.shape[:2]
        grey = grey.reshape(count, size // 2, 2, size // 2, 2).mean((2, 4))
    across, down = np.zeros_like(grey), np.zeros_like(grey)
    across[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    down[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
    both = np.stack([across, down], -1)
    return both / np.maximum(np.sqrt((both * both).sum((1, 2, 3), keepdims=True)), 1e-6)


def search_embeddings(pixels: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the images', their mirror images') search embeddings: features beside half-size edges."""
    model = unit_rows(features - features.mean(0))  # centred: the features are mostly positive
    sides = []
    for image_edges in (edges(pixels, half=True), edges(pixels[:, :, ::-1], half=True)):
        sides.append(unit_rows(np.concatenate([image_edges.reshape(len(pixels), -1), model], 1)))
    sample = sides[0][np.random.default_rng(0).permutation(len(pixels))[:5000]]
    components = np.linalg.svd(sample - sample.mean(0), full_matrices=False)[2][:SEARCH_DIMENSIONS]
    return unit_rows(sides[0] @ components.T), unit_rows(sides[1] @ components.T)


def nearest_candidates(embedding: np.ndarray, mirrored: np.ndarray, likely: np.ndarray, splits: np.ndarray):
    """(i, j, cosine) of each image i with its nearest image j of each split, among the images
    likely of its most likely class (likely: each image's two most likely classes), kept when
    the cosine reaches SEARCH_COSINE."""
    found = []
    for label in np.unique(likely[:, 0]):
        queries = np.flatnonzero(likely[:, 0] == label)
        for split in np.unique(splits):
            keys = np.flatnonzero((likely == label).any(1) & (splits == split))
            if len(keys) == 0:
                continue
            for start in range(0, len(queries), BLOCK):
                rows = queries[start : start + BLOCK]
                similarity = np.maximum(embedding[rows] @ embedding[keys].T, mirrored[rows] @ embedding[keys].T)
                similarity[rows[:, None] == keys[None, :]] = -1.0
                nearest = similarity.argmax(1)
                cosine = similarity[np.arange(len(rows)), nearest]
                kept = cosine >= SEARCH_COSINE
                found.append(np.stack([rows[kept], keys[nearest[kept]], cosine[kept]], 1))
    return np.concatenate(found) if found else np.zeros((0, 3))


def edge_agreement(first: np.ndarray, second: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per pair of (P, H, W, 3) images: the best correlation of their edges over shifts of up to
    MAX_SHIFT pixels, the second mirrored or not."""
    best = np.full(len(first), -1.0, dtype=np.float32)
    for start in range(0, len(first), chunk):
        a, b = edges(first[start : start + chunk]), edges(second[start : start + chunk])
        size, part = a.shape[1], best[start : start + chunk]
        for other in (b, b[:, :, ::-1] * np.array([-1, 1], dtype=np.float32)):
            for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
                for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                    x = a[:, max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)]
                    y = other[:, max(-dy, 0) : size + min(-dy, 0), max(-dx, 0) : size + min(-dx, 0)]
                    np.maximum(part, np.einsum("pijc,pijc->p", x, y), out=part)
    return best


def find_duplicates(entries: list, pixels: np.ndarray, byte_digests: list, features=None, logits=None) -> list[Finding]:
    """Findings for (split, label, path) entries with their decoded pixels, their bytes' digests,
    and the model's features and logits (None: exact twins only). The later of two twins (train
    before test) carries the finding; each file keeps its best twin in each split."""
    order = sorted(range(len(entries)), key=lambda index: (entries[index][0] != "train", entries[index][2]))
    rank = {index: position for position, index in enumerate(order)}
    best: dict[tuple[int, str], tuple[float, int, str]] = {}  # (file, its twin's split) -> the best twin

    def pair(first: int, second: int, score: float, how: str) -> None:
        earlier, later = sorted((first, second), key=rank.__getitem__)
        key = (later, entries[earlier][0])
        exact_before = key in best and best[key][2].startswith("the same")
        if key not in best or (score > best[key][0] and not exact_before):
            best[key] = (score, earlier, how)

    pixel_digests = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in pixels]
    for digests, how in ((byte_digests, "the same bytes"), (pixel_digests, "the same pixels")):
        groups = defaultdict(list)
        for index, digest in enumerate(digests):
            groups[digest].append(index)
        for members in groups.values():
            for member in members[1:]:
                pair(members[0], member, 1.0, how)
    if features is not None and len(entries) > 1:
        likely = np.argsort(-logits, axis=1)[:, :2]
        splits = np.array([entry[0] for entry in entries])
        candidates = nearest_candidates(*search_embeddings(pixels, features), likely, splits)
        first, second = candidates[:, 0].astype(int), candidates[:, 1].astype(int)
        agreement = edge_agreement(pixels[first], pixels[second])
        for i, j, cosine, match in zip(first, second, candidates[:, 2], agreement, strict=True):
            if match >= EDGE_MATCH:
                pair(int(i), int(j), float(match), f"edges agree {match:.2f}, search cosine {cosine:.2f}")
    return [finding for (later, _), twin in best.items() for finding in twin_findings(entries, later, *twin)]


def twin_findings(entries: list, later: int, score: float, earlier: int, how: str) -> list[Finding]:
    (split, label, path), (twin_split, twin_label, twin_path) = entries[later], entries[earlier]
    exact = how.startswith("the same")
    if split != twin_split:
        problem = f"leak from {twin_split}" + (" (exact)" if exact else "")
    else:
        problem = "exact duplicate" if exact else "near duplicate"
    found = [Finding("duplicates", problem, path, score, twin_path, label, twin_label, how)]
    if label != twin_label:
        detail = f"{how}; labelled {label} here and {twin_label} there"
        found.append(
            Finding("duplicates", "twins labelled differently", path, score, twin_path, label, twin_label, detail)
        )
    return found
