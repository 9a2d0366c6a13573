"""cifar check on a small folder with one of each problem planted: each is found, nothing else."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cifarcli.cli import app
from tests.conftest import CLASSES
from tests.corpus import decompression_bomb, jpeg_bytes

runner = CliRunner()


def unique_image(kind: str, rng: np.random.Generator, smear: int = 15) -> np.ndarray:
    """Random noise smeared along the class's direction (not at all for disc): every image a
    different picture, the class plain to a model."""
    noise = rng.normal(0, 1, (40, 40, 3))
    length = {"disc": (1, 1), "horizontal": (1, smear), "vertical": (smear, 1)}[kind]
    kernel = np.ones(length) / np.prod(length)
    smeared = np.stack(
        [np.real(np.fft.ifft2(np.fft.fft2(noise[..., c]) * np.fft.fft2(kernel, (40, 40)))) for c in range(3)], -1
    )
    smeared = smeared[4:36, 4:36]
    scaled = (smeared - smeared.mean()) / smeared.std() * 50 + rng.integers(60, 196, 3)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def clean_folder(root, rng):
    for split, count in (("train", 40), ("test", 12)):
        for kind in CLASSES:
            (root / split / kind).mkdir(parents=True)
            for index in range(count):
                Image.fromarray(unique_image(kind, rng)).save(root / split / kind / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def streaks_model(tmp_path_factory):
    """A tutorial CNN trained on a clean folder of the streaks, exported: a real model that
    knows these classes."""
    from cifarcli.data import load_dataset
    from cifarcli.export import export_checkpoint
    from cifarcli.models import get_model_entry
    from cifarcli.run import prepare_run
    from cifarcli.train import train

    folder = clean_folder(tmp_path_factory.mktemp("streaks") / "data", np.random.default_rng(3))
    dataset = load_dataset(folder, cache_dir=tmp_path_factory.mktemp("cache"))
    recipe = get_model_entry("tutorial").recipe.override(epochs=16, batch_size=32, lr=0.05)
    run_dir = tmp_path_factory.mktemp("run")
    result = train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=run_dir))
    assert result.test_acc >= 0.9
    return export_checkpoint(run_dir / "last.pt", run_dir / "streaks.onnx", features=True).path


def planted_folder(root):
    """ROOT/train, ROOT/test of the streaks, and {(problem, path)} of every problem planted."""
    rng = np.random.default_rng(7)
    clean_folder(root, rng)
    photo = Image.fromarray(unique_image("disc", rng))
    disc = root / "train" / "disc"
    (disc / "zero.png").write_bytes(b"")
    (disc / "cut.jpg").write_bytes(jpeg_bytes(photo)[:300])
    (disc / "words.png").write_text("not an image\n")
    (disc / "named.png").write_bytes(jpeg_bytes(photo.rotate(90)))
    photo.convert("CMYK").resize((34, 34)).save(disc / "cmyk.jpg")
    Image.fromarray(unique_image("disc", rng)[:6, :6]).save(disc / "tiny.png")
    Image.fromarray(np.tile(unique_image("disc", rng), (1, 6, 1))).save(disc / "wide.png")
    decompression_bomb(disc / "bomb.png")
    (disc / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "readme.txt").write_text("stray\n")
    (root / "train" / "empty").mkdir()
    rare = root / "train" / "rare"
    rare.mkdir()
    for index in range(2):
        Image.fromarray(unique_image("disc", rng)).save(rare / f"{index}.png")
    shutil.copy(disc / "001.png", disc / "copy.png")  # the same bytes
    shutil.copy(root / "train" / "vertical" / "002.png", root / "train" / "horizontal" / "other.png")  # labels differ
    source = np.asarray(Image.open(root / "train" / "horizontal" / "003.png")).astype(float)
    shifted = np.clip(np.roll(source, 1, axis=1) * 0.8 + 20, 0, 255).astype(np.uint8)  # shifted, darker, JPEG
    Image.fromarray(shifted).save(root / "test" / "horizontal" / "leak.jpg", quality=85)
    Image.fromarray(unique_image("vertical", rng, smear=31)).save(
        root / "test" / "disc" / "wrong.png"
    )  # plainly vertical
    return {
        ("zero-byte", "train/disc/zero.png"), ("truncated", "train/disc/cut.jpg"),
        ("not an image", "train/disc/words.png"), ("wrong extension", "train/disc/named.png"),
        ("unusual mode", "train/disc/cmyk.jpg"), ("tiny", "train/disc/tiny.png"),
        ("extreme aspect", "train/disc/wide.png"), ("decompression bomb", "train/disc/bomb.png"),
        ("hidden file", "train/disc/.DS_Store"), ("file outside a class folder", "train/readme.txt"),
        ("empty class", "train/empty"), ("class absent from test", "test/rare"), ("imbalanced classes", "train"),
        ("exact duplicate", "train/disc/copy.png"), ("exact duplicate", "train/vertical/002.png"),
        ("twins labelled differently", "train/vertical/002.png"), ("leak from train", "test/horizontal/leak.jpg"),
        ("likely mislabelled", "test/disc/wrong.png"),
    }  # fmt: skip


@pytest.mark.slow
def test_every_planted_problem_is_found_and_nothing_else(streaks_model, tmp_path):
    root = tmp_path / "data"
    planted = planted_folder(root)
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    result = runner.invoke(
        app, ["check", str(root), "--model", str(streaks_model), "--out", str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    found = {(finding["problem"], finding["path"]) for finding in report["findings"]}
    assert found == planted
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before  # the check only reads
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "findings.csv").read_text())))
    assert {(row["problem"], row["path"]) for row in rows} == planted
    leak = next(row for row in rows if row["problem"] == "leak from train")
    assert leak["related"] == "train/horizontal/003.png"
    wrong = next(row for row in rows if row["problem"] == "likely mislabelled")
    assert (wrong["given"], wrong["suggested"]) == ("disc", "vertical")
    assert Image.open(tmp_path / "out" / "duplicates.png").size[0] > 0


@pytest.mark.slow
def test_train_exclude_leaves_the_listed_files_out_and_records_it(image_folder, tmp_path):
    from cifarcli.checkpoint import load_checkpoint

    listed = ["train/disc/0000.png", "train/disc/0001.png", "test/vertical/0003.png"]
    findings = tmp_path / "findings.csv"
    findings.write_text(
        "path,kind,problem,score\n" + "".join(f"{path},duplicates,near duplicate,0.9\n" for path in listed)
    )
    arguments = ["train", "-m", "tutorial", "--data", str(image_folder), "--epochs", "1", "--batch-size", "32",
                 "--precision", "fp32", "--out", str(tmp_path), "--name", "run", "--exclude", findings]  # fmt: skip
    result = runner.invoke(app, [*map(str, arguments), "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["train"] == 3 * 80 - 2 and config["data"]["test"] == 3 * 30 - 1
    assert config["data"]["excluded"]["files"] == 3
    assert (tmp_path / "run" / "excluded.txt").read_text().splitlines() == sorted(listed)
    card = load_checkpoint(tmp_path / "run" / "last.pt")["info"]
    assert card.excluded == config["data"]["excluded"]
    again = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--exclude", str(findings)])
    assert again.exit_code == 2 and "keeps its own list" in again.output


def test_an_unreadable_exclusion_list_is_one_line(image_folder, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--exclude", str(tmp_path / "none.csv")])
    assert result.exit_code == 2 and "--exclude" in result.output and "Traceback" not in result.output


def test_the_official_batches_are_checked_image_by_image(tmp_path):
    from tests.test_data import write_batches_folder

    folder = tmp_path / "cifar-10-batches-py"
    write_batches_folder(folder)  # 5 training batches of 4 images, a test batch of 6
    result = runner.invoke(app, ["check", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == 26
    assert sum(report["class_counts"]["train"].values()) == 20 and sum(report["class_counts"]["test"].values()) == 6
    per_image = [finding for finding in report["findings"] if finding["kind"] != "structure"]
    assert all(finding["path"].split("[")[0] in ("train", "test") for finding in per_image)
    assert report["counts"]["files"] == {}


@pytest.mark.slow
def test_folds_find_a_wrong_label_in_the_training_split(streaks_model, tmp_path, cpu_kind):
    cpu_kind({"avx", "avx2", "fma"})  # the folds train in --precision auto: fp32 on every machine
    root = clean_folder(tmp_path / "data", np.random.default_rng(11))
    wrong = root / "train" / "disc" / "wrong.png"
    Image.fromarray(unique_image("vertical", np.random.default_rng(12), smear=31)).save(wrong)
    arguments = ["check", str(root), "--model", str(streaks_model), "--folds", "2", "--folds-model", "tutorial",
                 "--set", "epochs=30", "--set", "batch_size=32", "--set", "lr=0.05", "--json"]  # fmt: skip
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "--folds 2: training 2 models of tutorial" in result.stderr and "min here" in result.stderr
    issues = [f for f in json.loads(result.stdout)["findings"] if f["problem"] == "likely mislabelled"]
    training = [f for f in issues if f["path"].startswith("train/")]
    assert training and training[0]["path"] == "train/disc/wrong.png" and training[0]["suggested"] == "vertical"


def test_an_out_that_is_a_file_is_refused_before_the_check(image_folder, tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = runner.invoke(app, ["check", str(image_folder), "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "--out" in result.output and "is a file" in result.output
