"""Bad input and misuse: one line naming the file or option and what to do, the documented exit
code, no traceback, nothing already written lost; or it just works."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cifarcli.cli import app

runner = CliRunner()


def cifar(*arguments, timeout=120, env=None):
    """The real command in a subprocess: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "cifarcli", *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def copy_of_test_shapes(image_folder: Path, root: Path, count: int = 5) -> Path:
    for path in sorted((image_folder / "test" / "disc").glob("*.png"))[:count]:
        (root).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.name)
    return root


# ---------------------------------------------------------------- files that are not files


def test_a_fifo_named_like_an_image_is_reported_and_the_rest_predicted(image_folder, exported, tmp_path):
    folder = copy_of_test_shapes(image_folder, tmp_path / "images")
    os.mkfifo(folder / "pipe.jpg")
    code, stdout, _ = cifar("predict", folder, "--model", exported, "--json", timeout=60)
    assert code == 3
    rows = {Path(row["path"]).name: row for row in json.loads(stdout)["rows"]}
    assert "not a regular file" in rows["pipe.jpg"]["error"]
    assert sum(1 for row in rows.values() if row["label"]) == 5


def test_a_fifo_in_a_training_folder_is_skipped_and_counted(image_folder, tmp_path):
    source = tmp_path / "shapes"
    shutil.copytree(image_folder, source)
    os.mkfifo(source / "train" / "disc" / "pipe.png")
    script = f"from cifarcli.data import load_dataset; d = load_dataset({str(source)!r}, cache_dir={str(tmp_path)!r}); "
    script += "print(len(d.skipped), d.skipped[0])"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 ") and "pipe.png: not a regular file" in done.stdout


# ---------------------------------------------------------------- training that goes wrong


@pytest.mark.parametrize("option", ["--lr", "--epochs"])
def test_non_finite_numbers_are_refused_when_parsed(option, image_folder):
    result = runner.invoke(app, ["train", "--data", str(image_folder), option, "nan"])
    assert result.exit_code == 2
    assert f"{option} nan: give a finite number" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_run_whose_loss_stops_being_finite_stops_at_once_and_keeps_the_last_finite_epoch(
    image_folder, cache_dir, tmp_path
):
    # With a constant learning rate of 0.001 and a weight decay of 2150, each step multiplies the
    # weights by 1 - 2.15 = -1.15, whatever the gradient: the logits overflow near the middle of
    # the second epoch (15 steps an epoch here), in fp32 and in bf16 alike.
    constant = ["--set", "lr_start=1", "--set", "lr_peak_at=0", "--set", "lr_end=1", "--set", "momentum=0"]
    arguments = ["train", "-m", "tutorial", "--precision", "fp32", "--data", image_folder, "--epochs", "4",
                 "--batch-size", "16", "--lr", "0.001", "--set", "weight_decay=2150", *constant,
                 "--out", tmp_path, "--name", "run"]  # fmt: skip
    code, _, stderr = cifar(*arguments)
    assert code == 1
    line = stderr.strip().splitlines()[-1]  # after the run's first line and its epoch lines
    assert "Traceback" not in stderr and line.startswith("error: epoch 2, step ")
    assert "not finite" in line and "last.pt keeps epoch 1" in line and "lower --lr" in line
    from cifarcli.checkpoint import load_checkpoint

    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(bool(np.isfinite(tensor.float().numpy()).all()) for tensor in last["model"].values())
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) - 1 == last["info"].epoch and "nan" not in " ".join(history)


def test_json_output_is_standard_json_with_null_for_a_missing_figure(trained_run, image_folder, tmp_path):
    import torch

    from cifarcli.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(trained_run.run_dir / "last.pt")
    broken = {name: torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor
              for name, tensor in payload["model"].items()}  # fmt: skip
    from cifarcli.checkpoint import build_model

    model = build_model(payload["info"], payload["model"])
    model.load_state_dict(broken)
    save_checkpoint(tmp_path / "nan.pt", model, payload["info"])
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nan.pt"), "--data", str(image_folder), "--json"])
    assert result.exit_code == 0 and "NaN" not in result.stdout and json.loads(result.stdout)["loss"] is None
    exported = runner.invoke(app, ["export", str(tmp_path / "nan.pt")])
    assert exported.exit_code == 2 and "not finite" in exported.output and "--opset" not in exported.output


# ---------------------------------------------------------------- what a command shows


def test_failed_files_are_named_on_screen_with_where_the_full_list_is(image_folder, exported, tmp_path):
    folder = copy_of_test_shapes(image_folder, tmp_path / "images", count=25)
    for name in ("broken1.png", "broken2.png"):
        (folder / name).write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", str(folder), "--model", str(exported), "-o", str(tmp_path / "rows.csv")])
    assert result.exit_code == 3
    assert "broken1.png" in result.stdout and "broken2.png" in result.stdout
    assert "rows.csv" in result.stdout


def test_a_class_without_test_images_is_named_and_left_out_of_the_averages(trained_run, image_folder, tmp_path):
    source = tmp_path / "shapes"
    shutil.copytree(image_folder, source)
    shutil.rmtree(source / "test" / "vertical")
    (source / "test" / "vertical").mkdir()
    result = runner.invoke(app, ["evaluate", str(trained_run.run_dir / "last.pt"), "--data", str(source), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    vertical = next(row for row in metrics["per_class"] if row["name"] == "vertical")
    assert vertical["support"] == 0 and vertical["recall"] is None
    assert "vertical" in result.stderr and "no test images" in result.stderr
    recalls = [row["recall"] for row in metrics["per_class"] if row["support"]]
    assert metrics["macro_recall"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-4)
    assert metrics["balanced_acc"] == metrics["macro_recall"] and metrics["worst_recall"] == min(recalls)
    assert metrics["worst_class"] != "vertical"


def test_confusion_matrix_keeps_whole_class_names_on_a_narrow_terminal(trained_run, dataset):
    import io

    from rich.console import Console

    from cifarcli import report
    from cifarcli.classifier import load_classifier
    from cifarcli.evaluate import evaluate

    evaluation = evaluate(load_classifier(trained_run.run_dir / "last.pt"), dataset)
    console = Console(file=io.StringIO(), width=60, color_system=None)
    console.print(report.confusion_table(evaluation, console.width))
    shown = console.file.getvalue()
    assert "…" not in shown and all(name in shown for name in dataset.classes)


# ---------------------------------------------------------------- options that cannot mean anything


def test_nproc_that_does_not_divide_the_batch_is_refused_before_launching(image_folder, tmp_path):
    code, _, stderr = cifar("train", "--data", image_folder, "--batch-size", "33", "--nproc", "2", "--out", tmp_path)
    assert code == 2 and "--nproc 2" in one_line_error(stderr) and "--batch-size" in stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["predict", "{folder}", "--top-k", "11"], "--top-k 11: the model has 3 classes"),
        (["predict", "{folder}", "--min-confidence", "nan"], "--min-confidence nan: give a finite number"),
        (["train", "--data", "{folder}", "--val-fraction", "0"], "--val-fraction 0.0: choose a fraction between 0"),
        (["train", "--resume", "{run}", "--name", "other"], "--name other: --resume continues the run in its folder"),
        (["train", "--resume", "{run}", "--out", "elsewhere"], "--out elsewhere: --resume continues the run in its"),
    ],
)
def test_options_that_cannot_mean_anything_are_refused(arguments, message, image_folder, exported, trained_run):
    names = {"folder": image_folder / "test", "run": trained_run.run_dir}
    extra = ["--model", str(exported)] if arguments[0] == "predict" else []
    result = runner.invoke(app, [argument.format(**names) for argument in arguments] + extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- derived and recorded data


def test_a_corrupt_cache_file_is_said_and_decoded_again(image_folder, tmp_path):
    from cifarcli.data import load_dataset

    first = load_dataset(image_folder, cache_dir=tmp_path)
    (cached,) = (tmp_path / "decoded").glob("*.npz")
    cached.write_bytes(b"PK\x03\x04 not a zip any more")
    again = load_dataset(image_folder, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    assert str(cached) in again.notes[0] and "decoded again" in again.notes[0]


def test_predict_resume_with_another_model_or_top_k_is_refused(image_folder, exported, trained_run, tmp_path):
    from cifarcli.export import export_checkpoint

    other = export_checkpoint(trained_run.run_dir / "best.pt", tmp_path / "other.onnx").path
    rows = tmp_path / "rows.csv"
    folder = str(image_folder / "test")
    assert runner.invoke(app, ["predict", folder, "--model", str(exported), "-o", str(rows)]).exit_code == 0
    before = rows.read_text()
    for extra in (["--model", str(other)], ["--model", str(exported), "--top-k", "2"]):
        result = runner.invoke(app, ["predict", folder, *extra, "-o", str(rows), "--resume"])
        assert result.exit_code == 2 and "written with" in result.output, result.output
    assert rows.read_text() == before


# ---------------------------------------------------------------- stops and resumes


def test_ctrl_c_during_predict_says_how_to_resume(exported, tmp_path, noise_pngs):
    rows = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "cifarcli", "predict", noise_pngs, "--model", exported, "--threads", "1",
               "--batch-size", "1", "-o", rows]  # fmt: skip
    # Started as a shell starts a command, Ctrl-C at its default, whatever the test runner's is.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(list(map(str, command)), stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and (not rows.exists() or rows.stat().st_size < 2000):
        time.sleep(0.01)
    written = rows.stat().st_size if rows.exists() else 0
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, f"the signal came after {written} bytes of rows"
    assert "--resume" in stderr.splitlines()[-1] and str(rows) in stderr.splitlines()[-1]


def test_resuming_a_finished_run_says_so_and_changes_nothing(trained_run):
    files = {path: path.stat().st_mtime_ns for path in trained_run.run_dir.iterdir()}
    result = runner.invoke(app, ["train", "--resume", str(trained_run.run_dir)])
    assert result.exit_code == 0 and "already finished" in result.output
    assert {path: path.stat().st_mtime_ns for path in trained_run.run_dir.iterdir()} == files


def test_resuming_a_run_stopped_before_its_first_epoch_says_what_happened(trained_run, tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    shutil.copy(trained_run.run_dir / "config.json", run / "config.json")
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 2 and "stopped before its first epoch ended" in result.output


# ---------------------------------------------------------------- library messages


def test_pillows_raw_messages_and_warnings_do_not_reach_the_user(tmp_path, monkeypatch):
    from cifarcli.errors import ImageDecodeError
    from cifarcli.images import decode_image

    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError) as error:
        decode_image(tmp_path / "empty.jpg", 32)
    assert "<_io" not in str(error.value) and "empty file" in str(error.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40x40 image is then a warning, not an error
    Image.new("RGB", (40, 40), "teal").save(tmp_path / "large.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(tmp_path / "large.png", 32).shape == (32, 32, 3)


# ---------------------------------------------------------------- what the README promises


def test_the_bundled_model_has_a_name_that_works_from_any_folder(image_folder, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "cifarcli", "evaluate", "default", "--data", str(image_folder),
                           "--json"], capture_output=True, text=True, cwd=elsewhere, timeout=120)  # fmt: skip
    # The bundled model knows CIFAR-10's ten classes, not the shapes': the name resolved, the data did not fit.
    assert done.returncode == 2 and "default.onnx: the model has 10 classes" in done.stderr


def test_help_names_the_defaults_the_library_uses():
    from cifarcli.models import DEFAULT_MODEL
    from cifarcli.onnx_model import DEFAULT_OPSET

    assert f"Default: {DEFAULT_MODEL}." in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert f"Default: {DEFAULT_OPSET}," in runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output


def test_evaluate_out_without_matplotlib_writes_metrics_and_names_the_skipped_pictures(
    trained_run, image_folder, cache_dir, tmp_path
):
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from cifarcli.cli import main\n"
        f"sys.argv = ['cifar', 'evaluate', {str(trained_run.run_dir / 'last.pt')!r}, '--data', "
        f"{str(image_folder)!r}, '--out', {str(tmp_path / 'eval')!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "eval" / "metrics.json").exists() and not (tmp_path / "eval" / "confusion.png").exists()
    assert "confusion.png" in done.stderr and "cifarcli[plots]" in done.stderr
