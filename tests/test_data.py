"""Data sources: the official pickle layout (a tiny fake in the real format), image folders,
archives of them, the decode cache, and clear errors for everything else."""

import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from cifarcli.data import CIFAR10_CLASSES, load_dataset
from cifarcli.errors import CifarError


def fake_batch(count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake",
        b"labels": rng.integers(0, 10, count).tolist(),
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"filenames": [f"{i}.png".encode() for i in range(count)],
    }


def write_batches_folder(folder):
    """The layout of cifar-10-batches-py, as torchvision's own tests fake it."""
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": fake_batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = fake_batch(6, 99)
    batches["batches.meta"] = {b"label_names": [name.encode() for name in CIFAR10_CLASSES], b"num_cases_per_batch": 4}
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return batches


def test_official_batches_folder_reads_pixels_in_hwc_order(tmp_path):
    batches = write_batches_folder(tmp_path / "cifar-10-batches-py")
    dataset = load_dataset(tmp_path / "cifar-10-batches-py", cache_dir=tmp_path / "cache")
    assert dataset.classes == CIFAR10_CLASSES
    assert dataset.train.images.shape == (20, 32, 32, 3) and dataset.test.images.shape == (6, 32, 32, 3)
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(dataset.train.images[0], first)
    assert dataset.test.labels.tolist() == batches["test_batch"][b"labels"]


def test_official_archive_matches_extracted_folder(tmp_path):
    write_batches_folder(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_archive = load_dataset(archive, cache_dir=tmp_path / "cache")
    from_folder = load_dataset(tmp_path / "cifar-10-batches-py", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(from_archive.train.images, from_folder.train.images)
    np.testing.assert_array_equal(from_archive.test.labels, from_folder.test.labels)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches_folder(folder)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(CifarError, match="refusing to load"):
        load_dataset(folder, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_image_folder_classes_are_sorted_names_and_labels_follow(image_folder, dataset):
    assert dataset.classes == ["disc", "horizontal", "vertical"]
    assert len(dataset.train) == 240 and len(dataset.test) == 90
    assert np.bincount(dataset.test.labels).tolist() == [30, 30, 30]
    assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape[1:] == (32, 32, 3)


def test_zip_and_tar_of_an_image_folder_match_the_folder(image_folder, dataset, tmp_path):
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in image_folder.rglob("*.png"):
            zipped.write(file, f"shapes/{file.relative_to(image_folder)}")
    tarred = tmp_path / "shapes.tgz"
    with tarfile.open(tarred, "w:gz") as tar:
        tar.add(image_folder, arcname="shapes")
    for source in (archive, tarred):
        loaded = load_dataset(source, cache_dir=tmp_path / "cache")
        assert loaded.classes == dataset.classes
        np.testing.assert_array_equal(loaded.test.images, dataset.test.images)
        np.testing.assert_array_equal(loaded.train.labels, dataset.train.labels)


def two_class_folder(root, write_files):
    """root/{train,test}/{a,b}/ with write_files(folder) called in each."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            write_files(folder)
    return root


def test_images_of_any_size_are_resized_and_bad_files_skipped_and_counted(tmp_path):
    from PIL import Image

    def big_and_broken(folder):
        Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "big.jpg")
        (folder / "broken.png").write_bytes(b"not a png")

    two_class_folder(tmp_path / "data", big_and_broken)
    dataset = load_dataset(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert dataset.train.images.shape == (2, 32, 32, 3)
    assert len(dataset.skipped) == 4 and all("broken.png" in line for line in dataset.skipped)


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path):
    from PIL import Image

    two_class_folder(tmp_path / "data", lambda folder: Image.new("RGB", (32, 32), (10, 10, 10)).save(folder / "0.png"))
    cache = tmp_path / "cache"
    first = load_dataset(tmp_path / "data", cache_dir=cache)
    cached = list((cache / "decoded").glob("*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = load_dataset(tmp_path / "data", cache_dir=cache)
    assert cached[0].stat().st_mtime_ns == stamp  # read, not rewritten
    np.testing.assert_array_equal(first.train.images, again.train.images)
    Image.new("RGB", (32, 32), (250, 250, 250)).save(tmp_path / "data" / "train" / "a" / "0.png")
    changed = load_dataset(tmp_path / "data", cache_dir=cache)
    assert len(list((cache / "decoded").glob("*.npz"))) == 2
    assert changed.train.images.max() > first.train.images.max()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "not a data source"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "expected class folders"),
        (lambda p: (p / "bad.tar.gz").write_bytes(b"junk") and p / "bad.tar.gz", "cannot read the archive"),
    ],
)
def test_wrong_data_paths_fail_with_one_clear_line(tmp_path, make, message):
    with pytest.raises(CifarError, match=message) as caught:
        load_dataset(make(tmp_path), cache_dir=tmp_path / "cache")
    assert "\n" not in str(caught.value)


def test_no_network_download_fails_with_a_hint_to_pass_data(tmp_path, monkeypatch):
    # Point torchvision at an address that refuses at once: no traffic leaves the machine.
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(CifarError, match="pass --data PATH"):
        load_dataset(None, cache_dir=tmp_path / "cache")


def test_restricted_unpickler_still_reads_numpy_arrays():
    from cifarcli.cifar_batches import unpickle_batch

    batch = fake_batch(2, 0)
    loaded = unpickle_batch(pickle.dumps(batch, protocol=2))
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])


def test_a_folder_of_class_folders_holds_out_a_stratified_deterministic_test_split(class_folders, tmp_path):
    from tests.conftest import make_class_folders

    first = load_dataset(class_folders, cache_dir=tmp_path / "one")
    again = load_dataset(class_folders, cache_dir=tmp_path / "two")  # decoded afresh
    assert first.held_out == again.held_out and first.val_fraction == 0.1
    np.testing.assert_array_equal(first.test.images, again.test.images)
    assert first.classes == ["disc", "horizontal", "vertical"]
    held = {cls: [name for name in first.held_out if name.startswith(cls + "/")] for cls in first.classes}
    assert {cls: len(names) for cls, names in held.items()} == {"disc": 6, "horizontal": 5, "vertical": 4}
    assert len(first.train) == 151 - 15 and len(first.test) == 15
    assert np.bincount(first.test.labels).tolist() == [6, 5, 4]
    # Each held-out file's pixels are in the test split and not in the training split.
    test_rows = {image.tobytes() for image in first.test.images}
    train_rows = {image.tobytes() for image in first.train.images}
    from cifarcli.images import decode_image

    for name in first.held_out:
        pixels = decode_image(class_folders / name, 32).tobytes()
        assert pixels in test_rows and pixels not in train_rows, name

    # A class added later moves no other class's held-out files.
    grown = make_class_folders(tmp_path / "grown", {"disc": 60, "horizontal": 50, "vertical": 41, "zigzag": 10})
    more = load_dataset(grown, cache_dir=tmp_path / "three")
    assert set(first.held_out) <= set(more.held_out)
    assert load_dataset(class_folders, cache_dir=tmp_path / "one", val_fraction=0.2).held_out != first.held_out


@pytest.mark.parametrize(
    ("per_class", "fraction", "message"),
    [
        ({"disc": 5, "horizontal": 1}, 0.1, "class 'horizontal' has 1 image(s), too few to hold out 0.1"),
        ({"disc": 5}, 0.1, "expected class folders"),
        ({"disc": 5, "horizontal": 5}, 1.5, "--val-fraction 1.5: choose a fraction between 0 and 1"),
    ],
)
def test_class_folders_too_small_to_split_are_refused_in_one_line(per_class, fraction, message, tmp_path):
    from tests.conftest import make_class_folders

    root = make_class_folders(tmp_path / "data", per_class)
    with pytest.raises(CifarError) as raised:
        load_dataset(root, cache_dir=tmp_path / "cache", val_fraction=fraction)
    assert message in str(raised.value)
