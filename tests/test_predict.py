"""cifar predict: one row per image file with the right outcome, rows written as they come,
documented exit codes, and no torch anywhere on the path."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cifarcli.classifier import OnnxClassifier
from cifarcli.cli import app
from cifarcli.predict import predict_files
from cifarcli.sources import discover_images
from tests.corpus import BAD, GOOD, make_corpus

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict") / "corpus"
    return root, make_corpus(root)


def test_discovery_finds_image_files_once_skipping_hidden_and_other_files(corpus):
    root, expected = corpus
    discovered = discover_images([str(root)])[0]
    assert all(type(path) is str for path in discovered)  # not Path objects: 4x the memory per file
    found = {os.path.relpath(path, root) for path in discovered}
    assert found == set(expected)  # the loop adds nothing, folder.jpg and notes.txt no rows
    shallow = {os.path.basename(path) for path in discover_images([str(root)], recursive=False)[0]}
    assert "nested.png" not in shallow and "plain.jpg" in shallow
    globbed = discover_images([str(root / "*.png")])[0]
    top_level_pngs = {name for name in expected if name.endswith(".png") and "/" not in name}
    assert {os.path.basename(path) for path in globbed} == top_level_pngs


def test_corpus_gives_one_row_per_image_file_with_the_right_outcome(corpus, exported, tmp_path):
    root, expected = corpus
    out = tmp_path / "rows.csv"
    result = runner.invoke(app, ["predict", str(root), "--model", str(exported), "--output", str(out)])
    assert result.exit_code == 3, result.output  # some files failed, the rest predicted
    assert "Traceback" not in result.output
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(expected)
    for row in rows:
        name = str(Path(row["path"]).relative_to(root))
        if expected[name] == GOOD:
            assert row["label"] in ("disc", "horizontal", "vertical") and not row["error"], name
            assert 0 < float(row["confidence"]) <= 1
        else:
            assert expected[name] == BAD and row["label"] == "" and row["error"], name
    assert "bomb" in next(r["error"] for r in rows if r["path"].endswith("bomb.png"))


def test_predictions_match_the_model_on_the_same_images(image_folder, exported, dataset, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = runner.invoke(
        app,
        [
            "predict",
            str(image_folder / "test"),
            "-m",
            str(exported),
            "-o",
            str(out),
            "--top-k",
            "2",
            "--batch-size",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(dataset.test)
    labels = [dataset.classes.index(Path(row["path"]).parent.name) for row in rows]
    predicted = [dataset.classes.index(row["label"]) for row in rows]
    model = OnnxClassifier(exported)
    expected = model.predict_logits(dataset.test.images).argmax(1)
    assert predicted == expected.tolist()  # same file order as the cached split
    assert labels == dataset.test.labels.tolist()
    assert all(len(row["top_k"]) == 2 and row["top_k"][0]["label"] == row["label"] for row in rows)


def test_workers_sharing_one_session_keep_file_order_and_report_bad_files_in_place(
    image_folder, exported, dataset, tmp_path
):
    files = discover_images([str(image_folder / "test")])[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    given = [*files[:13], broken, *files[13:]]
    model = OnnxClassifier(exported, threads=1)  # as cifar predict opens it
    rows = list(predict_files(model, given, batch_size=8, workers=3))
    assert [row.path for row in rows] == [str(path) for path in given]
    assert rows[13].error and not rows[13].label
    expected = model.predict_logits(dataset.test.images).argmax(1)  # same file order as the split
    predicted = [dataset.classes.index(row.label) for row in rows if not row.error]
    assert predicted == expected.tolist()


def test_json_output_is_a_valid_array_and_stdout_json_has_every_row(image_folder, exported, tmp_path):
    out = tmp_path / "rows.json"
    result = runner.invoke(
        app, ["predict", str(image_folder / "test" / "disc"), "-m", str(exported), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0
    assert len(json.loads(out.read_text())) == 30
    printed = json.loads(result.stdout)
    assert printed["summary"]["images"] == 30 and len(printed["rows"]) == 30


def test_rows_stream_batch_by_batch_in_file_order(image_folder, exported):
    files = discover_images([str(image_folder / "train")])[0]
    rows = predict_files(OnnxClassifier(exported), files, batch_size=16)
    first = [next(rows) for _ in range(16)]  # a generator: the first batch comes before the rest
    assert [row.path for row in first] == [str(f) for f in files[:16]]


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["no/such/folder"], 2, "no such file or folder"),
        (["{empty}"], 2, "no image files found"),
        (["{images}", "--model", "{checkpoint}"], 2, "takes an .onnx model"),
        (["{images}", "--model", "{junk}"], 2, "junk.onnx"),
        (["{images}", "--output", "{tmp}/rows.xml"], 2, "--output"),
    ],
)
def test_usage_errors_exit_2_with_one_line(arguments, code, message, image_folder, exported, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    names = {
        "empty": tmp_path / "empty",
        "images": image_folder / "test" / "disc",
        "checkpoint": trained_run.run_dir / "last.pt",
        "junk": tmp_path / "junk.onnx",
        "tmp": tmp_path,
    }
    arguments = [a.format(**names) for a in arguments]
    if "--model" not in arguments:
        arguments += ["--model", str(exported)]
    result = runner.invoke(app, ["predict", *arguments])
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_predict_runs_without_torch_installed(image_folder, exported, tmp_path):
    """A process where importing torch fails still predicts: cifar predict never needs it."""
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{Path(__file__).parents[1]}"}
    command = [sys.executable, "-m", "cifarcli", "predict", str(image_folder / "test"), "-m", str(exported), "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["summary"]["predicted"] == 90


@pytest.mark.cpu_kind
def test_bundled_default_model_is_used_when_no_model_is_given(tmp_path):
    from cifarcli.bundled import DEFAULT as DEFAULT_MODEL
    from cifarcli.bundled import MODELS as BUNDLED_MODELS

    for bundled in BUNDLED_MODELS.values():
        if not bundled.exists():
            pytest.fail(f"{bundled} is missing: run tools/build_default_model.py")
        assert bundled.stat().st_size <= 10_000_000
    image = tmp_path / "red.png"

    Image.fromarray(np.full((32, 32, 3), (200, 30, 30), np.uint8)).save(image)
    result = runner.invoke(app, ["predict", str(image), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][0]["label"] in OnnxClassifier(DEFAULT_MODEL).info.classes


def test_output_folder_that_cannot_be_created_is_one_line(image_folder, exported, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(
        app, ["predict", str(image_folder / "test"), "-m", str(exported), "-o", str(blocker / "sub" / "rows.csv")]
    )
    assert result.exit_code == 2 and "cannot write there" in result.output


def test_min_confidence_labels_low_confidence_images_unsure_and_counts_them(image_folder, trained_run, tmp_path):
    from cifarcli.export import export_checkpoint

    # Without --data no temperature is fitted: the confidences of a model this sure stay apart.
    exported = export_checkpoint(trained_run.run_dir / "last.pt", tmp_path / "plain.onnx").path
    out = tmp_path / "rows.jsonl"
    plain = runner.invoke(app, ["predict", str(image_folder), "--model", str(exported), "--json"])
    rows = json.loads(plain.stdout)["rows"]
    threshold = float(np.median([row["confidence"] for row in rows]))  # about half fall below
    arguments = ["predict", str(image_folder), "--model", str(exported), "--min-confidence", str(threshold)]
    result = runner.invoke(app, [*arguments, "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    gated = [json.loads(line) for line in out.read_text().splitlines()]
    below = [row for row in rows if row["confidence"] < threshold]
    assert 0 < len(below) < len(rows) and summary["unsure"] == len(below)
    for row, same in zip(rows, gated, strict=True):
        assert same["path"] == row["path"] and same["confidence"] == row["confidence"]
        assert same["label"] == ("unsure" if row["confidence"] < threshold else row["label"])
    shown = runner.invoke(app, arguments)
    assert f"({len(below):,} unsure)" in shown.stdout


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_kill_9_ends_with_the_uninterrupted_file(suffix, exported, noise_pngs, tmp_path):
    import signal
    import time

    images = noise_pngs
    command = ["predict", str(images), "--model", str(exported), "--batch-size", "1", "--threads", "1", "--top-k", "2"]
    whole = tmp_path / f"whole{suffix}"
    assert runner.invoke(app, [*command, "--output", str(whole)]).exit_code == 0
    cut = tmp_path / f"cut{suffix}"
    process = subprocess.Popen([sys.executable, "-m", "cifarcli", *command, "--output", str(cut)])
    deadline = time.time() + 120
    while time.time() < deadline and (not cut.exists() or cut.stat().st_size < 20_000):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert 0 < len(cut.read_text().splitlines()) < 3000  # stopped part way
    resumed = runner.invoke(app, [*command, "--output", str(cut), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert cut.read_text() == whole.read_text()


def test_resume_drops_a_row_cut_short_and_writes_nothing_twice(image_folder, exported, tmp_path):
    command = ["predict", str(image_folder), "--model", str(exported), "--output"]
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    assert runner.invoke(app, [*command, str(whole)]).exit_code == 0
    text = whole.read_text()
    cut.write_text(text[: text.index("\n", len(text) // 2) + 20])  # half the rows and part of one more
    shutil.copy(tmp_path / "whole.jsonl.run.json", tmp_path / "cut.jsonl.run.json")  # what a first run leaves
    assert runner.invoke(app, [*command, str(cut), "--resume"]).exit_code == 0
    assert cut.read_text() == text
    again = runner.invoke(app, [*command, str(cut), "--resume", "--json"])  # nothing left to do
    assert json.loads(again.stdout)["summary"]["images"] == 0 and cut.read_text() == text
    refused = runner.invoke(app, [*command, str(tmp_path / "rows.json"), "--resume"])
    assert refused.exit_code == 2 and "a .json array cannot grow" in refused.output


@pytest.mark.cpu_kind
@pytest.mark.parametrize(("flags", "bundled", "chosen"), [
    ({"avx2", "avx512_vnni"}, None, "int8"), (set(), None, "fp32"), ({"avx2"}, "fp32", "fp32"), (set(), "int8", "int8"),
])  # fmt: skip
def test_predict_says_which_bundled_model_it_uses_and_bundled_overrides(flags, bundled, chosen, image_folder, cpu_kind):
    from cifarcli.bundled import MODELS as BUNDLED_MODELS

    cpu_kind(flags)
    arguments = ["predict", str(image_folder / "test" / "disc"), "--json"]
    result = runner.invoke(app, arguments + (["--bundled", bundled] if bundled else []))
    assert result.exit_code == 0, result.output
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith(f"using the bundled CIFAR-10 model {BUNDLED_MODELS[chosen].name} (")
    assert json.loads(result.stdout)["model"] == str(BUNDLED_MODELS[chosen])


@pytest.mark.cpu_kind
@pytest.mark.parametrize(
    "flags, chosen, why",
    [
        ({"avx2", "avx512f", "avx512_vnni", "amx_int8"}, "int8", "INT8, for this CPU's VNNI/AMX int8 instructions"),
        ({"avx2", "fma"}, "int8", "INT8, for this CPU's AVX2 int8 instructions"),
        ({"sse4_2"}, "fp32", "no AVX2 or VNNI int8 instructions"),
        (set(), "fp32", "no AVX2 or VNNI int8 instructions"),
    ],
)
def test_bundled_model_follows_the_int8_measurements_by_cpu_kind(flags, chosen, why, cpu_kind):
    from cifarcli.bundled import MODELS as BUNDLED_MODELS
    from cifarcli.bundled import choose_bundled_model

    cpu_kind(flags)
    model, reason = choose_bundled_model(None)
    assert model == BUNDLED_MODELS[chosen] and why in reason


def test_bundled_int8_model_stays_within_its_accuracy_budget_of_fp32():
    import runpy

    from cifarcli.bundled import MODELS as BUNDLED_MODELS

    tool = runpy.run_path(str(Path(__file__).parents[1] / "tools" / "build_default_model.py"), run_name="tool")
    fp32, int8 = (OnnxClassifier(BUNDLED_MODELS[name]).info.metrics for name in ("fp32", "int8"))
    assert int8.fp32_test_acc == fp32.test_acc  # the same weights, quantized
    assert fp32.test_acc - int8.test_acc <= tool["MAX_INT8_LOSS"]
