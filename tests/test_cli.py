"""The command line as a user meets it: help without torch, versions, every error path as one
line with the right exit code, and each command's machine-readable output."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cifarcli import __version__
from cifarcli.cli import app

runner = CliRunner()


def test_help_does_not_import_torch():
    script = (
        "import sys\n"
        "sys.argv = ['cifar', '--help']\n"
        "from cifarcli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "train" in completed.stdout and "predict" in completed.stdout


def test_options_default_to_none_and_help_shows_the_librarys_defaults():
    import inspect

    from cifarcli.batches import PREDICT_BATCH
    from cifarcli.classifier import EVAL_BATCH
    from cifarcli.cli import app

    for command in app.registered_commands:
        for name, parameter in inspect.signature(command.callback).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                assert parameter.default in (None, False), f"cifar {command.name} --{name}: {parameter.default!r}"
    assert f"Default: {EVAL_BATCH}." in runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "400"}).output
    assert f"Default: {PREDICT_BATCH}." in runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "400"}).output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cifarcli {__version__}"


def test_models_lists_the_registry_as_json():
    result = runner.invoke(app, ["models", "--json"])
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"tutorial", "airbench94", "airbench-cpu", "airbench-narrow"} <= set(rows)
    assert rows["tutorial"]["parameters"] == 122_570  # the Keras model.summary() total
    assert rows["airbench-cpu"]["default"] and not rows["airbench94"]["default"]
    assert rows["airbench94"]["gflops"] > rows["airbench-narrow"]["gflops"]


@pytest.mark.cpu_kind
@pytest.mark.slow
def test_train_evaluate_export_from_the_command_line(image_folder, cache_dir, tmp_path):
    train = ["train", "-m", "tutorial", "--data", str(image_folder), "--out", str(tmp_path), "--name", "run"]
    result = runner.invoke(app, [*train, "--epochs", "2", "--batch-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["run_dir"] == str(tmp_path / "run") and len(trained["history"]) == 2
    again = runner.invoke(app, [*train, "--epochs", "0.5"])
    assert again.exit_code == 0 and (tmp_path / "run2" / "last.pt").exists()
    assert "scored on" in again.stdout and "90 imgs, fp32" in again.stdout  # how the epoch's figure was measured

    checkpoint = tmp_path / "run" / "last.pt"
    evaluated = runner.invoke(
        app, ["evaluate", str(checkpoint), "--data", str(image_folder), "--json", "--out", str(tmp_path / "eval")]
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["accuracy"] == trained["test_acc"] and metrics["split"] == "test"
    assert set(metrics) >= {"accuracy", "loss", "per_class", "confusion", "model", "data", "split", "tta"}
    assert (tmp_path / "eval" / "confusion.png").exists()

    shown = runner.invoke(app, ["evaluate", str(checkpoint), "--data", str(image_folder)])
    assert "Per class" in shown.stdout and "Confusion matrix" in shown.stdout and "most confused" in shown.stdout
    assert f"balanced accuracy {metrics['balanced_acc']:.2%}" in shown.stdout and "worst class" in shown.stdout

    exported = runner.invoke(app, ["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--json"])
    assert exported.exit_code == 0, exported.output
    report = json.loads(exported.stdout)
    assert report["agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4
    assert report["checked_on"] == "generated images"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--model", "tutorrial", "--data", "{folder}"], "did you mean 'tutorial'"),
        (["train", "--data", "{tmp}/missing"], "no such file or folder"),
        (["train", "--resume", "{tmp}"], "no last.pt there"),
        (["train", "--device", "cuda", "-m", "tutorial", "--data", "{folder}"], "--device cuda"),
        (["train", "-m", "tutorial", "--data", "{folder}", "--name", "../escape"], "plain folder name"),
        (["train", "-m", "tutorial", "--data", "{folder}", "--out", "{tmp}/notes.txt"], "cannot create a run folder"),
        (["evaluate", "{tmp}/missing.pt"], "no such model file"),
        (["evaluate", "{tmp}/notes.txt", "--data", "{folder}"], "not a cifarcli checkpoint"),
        (["evaluate", "{tmp}/fake.onnx", "--data", "{folder}"], "fake.onnx"),
        (["export", "{tmp}/notes.txt"], "not a cifarcli checkpoint"),
        (["export", "{checkpoint}", "-o", "{tmp}/model.txt"], "must end in .onnx"),
        (["export", "{checkpoint}", "--int8"], "--int8 needs --data"),
    ],
)
def test_errors_are_one_line_without_traceback(arguments, message, image_folder, trained_run, tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "fake.onnx").write_text("not onnx")
    names = {"folder": image_folder, "tmp": tmp_path, "checkpoint": trained_run.run_dir / "last.pt"}
    result = runner.invoke(app, [a.format(**names) for a in arguments])
    if result.exit_code == 2 and "Usage" in result.output:
        pytest.fail(f"typer rejected the arguments: {result.output}")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_bad_option_values_are_refused_by_the_parser(image_folder):
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output


@pytest.mark.slow
def test_sigterm_saves_and_exits_143_with_a_resume_command(image_folder, cache_dir, tmp_path):
    import os
    import signal
    import time

    command = [
        sys.executable,
        "-m",
        "cifarcli",
        "train",
        "-m",
        "airbench94",
        "--precision",
        "fp32",
        "--data",
        str(image_folder),
        "--epochs",
        "50",
        "--batch-size",
        "60",
        "--out",
        str(tmp_path),
        "--name",
        "run",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    last = tmp_path / "run" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 143, stderr
    assert f"cifar train --resume {tmp_path / 'run'}" in stderr and "Traceback" not in stderr
    from cifarcli.checkpoint import load_checkpoint

    assert load_checkpoint(last)["info"].epoch >= 1


def test_a_stop_during_a_checkpoint_write_waits_until_the_file_is_in_place(tmp_path):
    import os
    import signal

    from cifarcli.checkpoint import atomic_write

    class Stopped(Exception):
        pass

    def stop(signal_number, frame):
        raise Stopped

    def write_while_signalled(file):
        file.write(b"first half ")
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` would, in the middle of torch.save
        file.write(b"second half")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            atomic_write(tmp_path / "last.pt", write_while_signalled)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "last.pt").read_bytes() == b"first half second half"
    assert [path.name for path in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def without_timings(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in history]


@pytest.mark.slow
def test_kill_9_then_resume_with_the_run_folder_alone_gives_the_uninterrupted_history(
    image_folder, cache_dir, tmp_path
):
    import os
    import signal
    import time

    arguments = ["train", "-m", "tutorial", "--precision", "fp32", "--data", str(image_folder), "--epochs", "16"]
    arguments += ["--batch-size", "8", "--lr", "0.02"]
    arguments += ["--out", str(tmp_path)]
    whole = runner.invoke(app, [*arguments, "--name", "whole", "--json"])
    assert whole.exit_code == 0, whole.output

    process = subprocess.Popen([sys.executable, "-m", "cifarcli", *arguments, "--name", "cut"], stderr=subprocess.PIPE)
    history = tmp_path / "cut" / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not history.exists() or len(history.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut"), "--json"])
    assert resumed.exit_code == 0, resumed.output
    expected, actual = json.loads(whole.stdout), json.loads(resumed.stdout)
    assert without_timings(actual["history"]) == without_timings(expected["history"])
    assert (actual["test_acc"], actual["test_acc_tta"]) == (expected["test_acc"], expected["test_acc_tta"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "5"], "--epochs 5.0: the run being resumed has 12"),
        (["--model", "airbench94"], "--model airbench94: the run being resumed has tutorial"),
        (["--data", "{tmp}"], "--data {tmp}: the run being resumed has"),
        (["--precision", "{other}"], "--precision {other}: the run being resumed has {precision}"),
        (["--val-fraction", "0.2"], "--val-fraction 0.2: the run being resumed has no held-out split"),
    ],
)
def test_resume_refuses_an_option_that_contradicts_the_run_folder(extra, message, trained_run, tmp_path):
    names = {"tmp": tmp_path, "precision": "fp32", "other": "bf16"}  # the shared run trains in fp32
    result = runner.invoke(app, ["train", "--resume", str(trained_run.run_dir), *[a.format(**names) for a in extra]])
    assert result.exit_code == 2, result.output
    assert message.format(**names) in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_class_folders_train_record_their_hold_out_and_evaluate_on_it(class_folders, cache_dir, tmp_path):
    arguments = ["train", "-m", "tutorial", "--precision", "fp32", "--data", str(class_folders), "--epochs", "3"]
    arguments += ["--batch-size", "16"]
    trained = runner.invoke(app, [*arguments, "--out", str(tmp_path), "--name", "run", "--json"])
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "run"
    held_out = (run / "held_out.txt").read_text().splitlines()
    assert len(held_out) == 15 and all((class_folders / name).is_file() for name in held_out)
    assert json.loads((run / "config.json").read_text())["data"]["val_fraction"] == 0.1
    exported = runner.invoke(app, ["export", str(run / "last.pt"), "-o", str(tmp_path / "m.onnx")])
    assert exported.exit_code == 0, exported.output
    for model in (run / "last.pt", tmp_path / "m.onnx"):  # no --val-fraction: the model's own split
        evaluated = runner.invoke(app, ["evaluate", str(model), "--data", str(class_folders), "--json"])
        assert evaluated.exit_code == 0, evaluated.output
        metrics = json.loads(evaluated.stdout)
        assert metrics["images"] == 15 and metrics["accuracy"] == json.loads(trained.stdout)["test_acc"]


def test_shell_completion_offers_model_names_without_importing_torch():
    import os

    env = {**os.environ, "_CIFAR_COMPLETE": "complete_bash", "COMP_WORDS": "cifar train --model air", "COMP_CWORD": "3"}
    script = "import sys\nfrom cifarcli.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
    script += "assert 'torch' not in sys.modules, 'torch was imported'\n"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["airbench94", "airbench-cpu", "airbench-narrow"]


@pytest.mark.parametrize("command", [["train", "-m", "tutorial", "--data", "{folder}"], ["models"]])
def test_a_command_that_needs_torch_says_what_to_install_when_it_is_missing(command, image_folder, cache_dir):
    arguments = [argument.format(folder=image_folder) for argument in command]
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # an inference-only install: importing torch fails\n"
        f"sys.argv = ['cifar', *{arguments!r}]\n"
        "from cifarcli.cli import main\n"
        "main()\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 2, completed.stderr
    assert "pip install 'cifarcli[train]'" in completed.stderr and "Traceback" not in completed.stderr
    assert len([line for line in completed.stderr.splitlines() if line.strip()]) == 1


def test_resume_without_the_run_folder_config_says_so_in_one_line(trained_run, tmp_path):
    import shutil

    (tmp_path / "run").mkdir()
    shutil.copy(trained_run.run_dir / "last.pt", tmp_path / "run" / "last.pt")
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 2 and "config.json is missing or unreadable" in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


@pytest.mark.slow
def test_two_runs_started_at_once_with_one_name_both_finish_in_two_folders(image_folder, cache_dir, tmp_path):
    command = [sys.executable, "-m", "cifarcli", "train", "-m", "tutorial", "--precision", "fp32", "--data",
               str(image_folder), "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path), "--name", "same",
               "--json"]  # fmt: skip
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [error[-2000:] for _, error in outputs]
    folders = {json.loads(stdout)["run_dir"] for stdout, _ in outputs}
    assert folders == {str(tmp_path / "same"), str(tmp_path / "same2")}
    assert all((tmp_path / name / "last.pt").exists() for name in ("same", "same2"))


def test_each_epochs_test_figure_stays_on_a_terminal_above_the_live_bars(monkeypatch):
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from cifarcli import report

    screen = io.StringIO()
    monkeypatch.setattr(report, "err", Console(file=screen, force_terminal=True, width=160, color_system=None))
    context = SimpleNamespace(describe=lambda: "cpu (bf16)", folder=SimpleNamespace(path="runs/train/exp"))
    display = report.TrainDisplay()
    display.start(context, "tutorial", 2, 3, "")
    display.epoch_start(1, 3)
    display.step(3, 1.0, 0.5, 100.0)
    row = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 0.9, "test_acc": 0.6123, "test_images": 2000,
           "scored_in": "bf16", "seconds": 1.0, "images_per_s": 100.0}  # fmt: skip
    display.epoch_end(row)
    display.epoch_start(2, 3)
    shown = screen.getvalue()
    assert "test_acc 0.6123 (2,000 imgs, bf16)" in shown
    assert shown.index("test_acc 0.6123") < shown.rindex("epoch 2/2")  # on screen when the next epoch starts
    display.close()
