"""Shared fixtures: a small generated image data set, and a tutorial model trained on it once.

Two tiers: a test that trains or exports a model (or uses the fixtures that do) is `slow`;
`pytest -m "not slow"` runs the rest in about a minute."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["disc", "horizontal", "vertical"]


TRAINING_FIXTURES = {"trained_run", "exported"}


def pytest_collection_modifyitems(items):
    """A test that uses a trained model's fixture is slow, as is one marked so."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def cpu_kind(monkeypatch):
    """Set the CPU flags cifarcli decides by (hardware.CPU_FLAGS_OVERRIDE), never the host's."""

    def set_flags(flags):
        from cifarcli.hardware import CPU_FLAGS_OVERRIDE

        monkeypatch.setenv(CPU_FLAGS_OVERRIDE, " ".join(sorted(flags)))

    return set_flags


@pytest.fixture(autouse=True)
def plain_terminal(monkeypatch):
    """Rich output as a log would see it: no colour codes, no live bars."""
    for name in ("FORCE_COLOR", "NO_COLOR", "CIFARCLI_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "160")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def draw(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One 32x32 picture of a class: a disc, horizontal or vertical stripes, in random colours."""
    background = rng.integers(0, 256, 3)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    color = (background + rng.integers(96, 160, 3)) % 256
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    if kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(25, 64)
    elif kind == "horizontal":
        mask = (yy // rng.integers(2, 5)) % 2 == 0
    else:
        mask = (xx // rng.integers(2, 5)) % 2 == 0
    image[mask] = color
    noise = rng.normal(0, 8, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, train_per_class: int = 80, test_per_class: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(draw(kind, rng)).save(folder / f"{index:04d}.png")
    return root


def make_class_folders(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """ROOT/<class>/*.png, the layout with no train/ and test/ of its own."""
    rng = np.random.default_rng(seed)
    for kind, count in per_class.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.fromarray(draw(kind, rng)).save(root / kind / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def class_folders(tmp_path_factory) -> Path:
    return make_class_folders(
        tmp_path_factory.mktemp("classes") / "shapes", {"disc": 60, "horizontal": 50, "vertical": 41}
    )


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("shapes") / "shapes")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["CIFARCLI_CACHE"] = str(path)  # subprocesses share it
    return path


@pytest.fixture(scope="session")
def dataset(image_folder, cache_dir):
    from cifarcli.data import load_dataset

    return load_dataset(image_folder, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def trained_run(dataset, tmp_path_factory):
    """The tutorial CNN trained for a few epochs on the shapes: a real model, in seconds."""
    from cifarcli.models import get_model_entry
    from cifarcli.run import prepare_run
    from cifarcli.train import train

    recipe = get_model_entry("tutorial").recipe.override(epochs=12, batch_size=32, lr=0.05)
    run_dir = tmp_path_factory.mktemp("runs") / "exp"
    run_dir.mkdir()
    return train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=run_dir))


@pytest.fixture(scope="session")
def exported(trained_run, dataset, tmp_path_factory) -> Path:
    from cifarcli.export import export_checkpoint

    path = tmp_path_factory.mktemp("export") / "shapes.onnx"
    export_checkpoint(trained_run.run_dir / "last.pt", path, dataset=dataset)
    return path


@pytest.fixture(scope="session")
def noise_pngs(tmp_path_factory) -> Path:
    """3,000 small PNGs of noise: enough rows that a kill or a Ctrl-C lands part way through a run."""
    rng, root = np.random.default_rng(0), tmp_path_factory.mktemp("noise")
    for index in range(3000):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{index:05d}.png")
    return root
