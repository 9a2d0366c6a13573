"""Experiment tracking (--log): TensorBoard's event files and MLflow's runs, read back with the
trackers' own readers; nothing is written or imported without --log."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

TRAIN = ["train", "-m", "tutorial", "--precision", "fp32", "--epochs", "2", "--batch-size", "32", "--name", "run"]


def cifar(arguments, cwd, env=None, timeout=300):
    done = subprocess.run([sys.executable, "-m", "cifarcli", *map(str, arguments)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_tensorboard_event_files_hold_both_epochs_the_final_figures_and_the_pictures(image_folder, cache_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cifar([*TRAIN, "--data", image_folder, "--out", tmp_path, "--log", "tensorboard", "--json"], tmp_path)
    run = tmp_path / "run"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [event.step for event in events.Scalars("train/acc")] == [1, 2]
    history = (run / "history.csv").read_text().splitlines()[1:]
    # The shapes' 90 test images are scored whole: in the training precision an estimate, the last epoch exact.
    test_accuracy = {event.step: event.value for tag in scalars if tag.endswith("/acc") and tag.startswith("test")
                     for event in events.Scalars(tag)}  # fmt: skip
    assert sorted(test_accuracy) == [1, 2]
    assert test_accuracy[2] == pytest.approx(float(history[1].split(",")[4]))
    assert "test/acc" in scalars and "final/test_acc_tta" in scalars
    assert {"curves", "confusion"} <= set(events.Tags()["images"])


def test_mlflow_run_holds_params_every_epoch_and_the_run_folder_and_resume_continues_it(
    image_folder, cache_dir, tmp_path
):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "shapes"}
    command = [sys.executable, "-m", "cifarcli", *map(str, [*TRAIN, "--data", image_folder, "--out", tmp_path,
               "--epochs", "12", "--batch-size", "8", "--lr", "0.02", "--log", "mlflow"])]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    history = tmp_path / "run" / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not history.exists() or len(history.read_text().splitlines()) < 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 143
    run_id = json.loads((tmp_path / "run" / "tracking.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    stopped = client.get_run(run_id)
    assert stopped.info.status == "KILLED" and stopped.data.params["model"] == "tutorial"
    assert client.get_experiment(stopped.info.experiment_id).name == "shapes"

    cifar(["train", "--resume", tmp_path / "run"], tmp_path, env)
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.params["batch_size"] == "8"
    steps = [metric.step for metric in client.get_metric_history(run_id, "train/acc")]
    assert sorted(set(steps)) == list(range(1, 13))
    assert finished.data.metrics["final/test_acc_tta"] > 0.5
    artifacts = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert {"last.pt", "best.pt", "history.csv", "curves.png", "config.json", "confusion.png"} <= artifacts

    cifar(["evaluate", tmp_path / "run" / "last.pt", "--data", image_folder, "--log", "mlflow"], tmp_path, env)
    evaluated = client.get_run(run_id).data.metrics
    assert evaluated["evaluate_test/accuracy"] == pytest.approx(finished.data.metrics["final/test_acc"], abs=1e-5)


def test_without_log_no_tracker_is_imported_or_written(image_folder, cache_dir, tmp_path):
    script = (
        "import sys\n"
        f"sys.argv = ['cifar', *{[str(a) for a in [*TRAIN, '--data', image_folder, '--out', tmp_path]]!r}]\n"
        "from cifarcli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "assert not {'mlflow', 'tensorboard'} & set(sys.modules), 'a tracker was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        not list((tmp_path / "run").glob("events.out.tfevents*")) and not (tmp_path / "run" / "tracking.json").exists()
    )
    assert not (tmp_path / "mlruns").exists()
