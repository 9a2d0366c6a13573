"""Experiment tracking where users already compare runs: TensorBoard and MLflow, opt-in (--log).

A tracker follows a run's events (events.py: start, epoch_start, step, epoch_end), records
the result (finish) and how the run ended (end: FINISHED, FAILED or KILLED). TensorBoard's event
files go into the run folder, so `tensorboard --logdir runs/train` compares every run. MLflow
records a run at MLFLOW_TRACKING_URI (MLflow's own default when unset), in the experiment
MLFLOW_EXPERIMENT_NAME names; the run folder keeps the run's id, so that --resume continues it
and `cifar evaluate --log mlflow` of its checkpoint attaches to it. Each tracker's package is an
extra (cifarcli[tensorboard], cifarcli[mlflow]), imported only when asked for.
"""

import json
import math
import tempfile
from pathlib import Path

from cifarcli.errors import CifarError
from cifarcli.events import SilentEvents
from cifarcli.run_folder import CONFUSION, CURVES, RunFolder
from cifarcli.scoring import is_exact

TRACKERS = ("tensorboard", "mlflow")


def open_trackers(names: list[str], folder: RunFolder) -> list:
    """The trackers asked for, in order, each once, and those the run folder was tracked with
    (a resumed run goes on in them); none in processes that do not write the folder."""
    for name in names:
        if name not in TRACKERS:
            raise CifarError(f"--log {name}: choose {' or '.join(TRACKERS)}")
    if not folder.writes:
        return []
    names = list(dict.fromkeys([*folder.read_tracking().get("trackers", []), *names]))
    if names:
        folder.write_tracking({**folder.read_tracking(), "trackers": names})
    makers = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    return [makers[name](folder) for name in names]


def end_all(trackers: list, status: str) -> None:
    for tracker in trackers:
        tracker.end(status)


class Together:
    """Several events listeners (the display, the trackers) as one."""

    def __init__(self, *listeners):
        self.listeners = listeners

    def __getattr__(self, event):
        def call(*args):
            for listener in self.listeners:
                getattr(listener, event)(*args)

        return call


def epoch_scalars(row: dict, test_images: int) -> dict:
    """A history row as tracked figures. The test figure is named by how it was scored: exact
    (the whole test split in fp32) or an estimate (a sample in the training precision)."""
    test = "test" if is_exact(row, test_images) else "test_estimate"
    return {
        "train/loss": row["train_loss"],
        "train/acc": row["train_acc"],
        f"{test}/loss": row["test_loss"],
        f"{test}/acc": row["test_acc"],
        **(
            {f"{test}/balanced_acc": row["balanced_acc"], f"{test}/worst_recall": row["worst_recall"]}
            if row["worst_recall"] is not None
            else {}
        ),
        "lr": row["lr"],
        "images_per_s": row["images_per_s"],
    }


def final_scalars(result) -> dict:
    figures = ("test_acc", "test_acc_tta", "balanced_acc", "worst_recall")
    return {f"final/{name}": getattr(result, name) for name in figures if getattr(result, name) is not None}


def recipe_params(config: dict) -> dict:
    """config.json as flat parameters: the recipe's fields and the run's settings."""
    settings = {key: config.get(key) for key in ("model", "device", "precision", "processes", "threads")}
    data = {f"data_{key}": config["data"].get(key) for key in ("source", "train", "test", "val_fraction")}
    recipe = {key: json.dumps(value) if isinstance(value, list) else value for key, value in config["recipe"].items()}
    return {**settings, **data, **recipe}


def confusion_picture(folder: RunFolder, result) -> Path:
    """The final weights' confusion matrix on the test split, as training scored it, drawn into the run folder."""
    from cifarcli.plots import draw_confusion

    subtitle = f"test split, accuracy {result.test_acc:.2%}"
    draw_confusion(folder.file(CONFUSION), result.confusion, result.classes, subtitle)
    return folder.file(CONFUSION)


class SilentTracker(SilentEvents):
    """A tracker hears the training events, then finish(result) and end(status)."""

    folder: RunFolder
    config: dict  # config.json, written before the run starts

    def start(self, context, model_name, epochs, steps_per_epoch, balance_note):
        self.config = self.folder.read_config()

    def finish(self, result): ...
    def end(self, status: str): ...


class TensorBoardTracker(SilentTracker):
    """Event files in the run folder: scalars per epoch, the final figures with the recipe as
    hyperparameters, and curves.png and the confusion matrix as images."""

    def __init__(self, folder: RunFolder):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.folder, self.writer = folder, SummaryWriter(log_dir=str(folder.path))

    def epoch_end(self, row):
        for name, value in epoch_scalars(row, self.config["data"]["test"]).items():
            self.writer.add_scalar(name, value, row["epoch"])
        self.writer.flush()

    def finish(self, result):
        import numpy as np
        from PIL import Image

        last_epoch = result.history[-1]["epoch"]
        for name, value in final_scalars(result).items():
            self.writer.add_scalar(name, value, last_epoch)
        params = recipe_params(self.config)
        kept = {key: value for key, value in params.items() if isinstance(value, int | float | str | bool)}
        metrics = {name.replace("final/", "hparam/"): value for name, value in final_scalars(result).items()}
        self.writer.add_hparams(kept, metrics, run_name=".")
        for tag, picture in (
            ("curves", self.folder.file(CURVES)),
            ("confusion", confusion_picture(self.folder, result)),
        ):
            with Image.open(picture) as image:
                self.writer.add_image(tag, np.asarray(image.convert("RGB")), last_epoch, dataformats="HWC")
        self.writer.flush()

    def end(self, status):
        self.writer.close()


class MlflowTracker(SilentTracker):
    """An MLflow run: the recipe and options as params, each epoch's figures as metrics with the
    epoch as step, the final figures, and the run folder's files as artifacts."""

    def __init__(self, folder: RunFolder):
        import mlflow

        self.mlflow, self.folder = mlflow, folder
        run_id = folder.read_tracking().get("mlflow_run_id")
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else folder.path.name)
        self.resumed = run_id is not None
        folder.write_tracking({**folder.read_tracking(), "mlflow_run_id": self.run.info.run_id})

    def start(self, context, model_name, epochs, steps_per_epoch, balance_note):
        super().start(context, model_name, epochs, steps_per_epoch, balance_note)
        if not self.resumed:  # params cannot change once logged
            self.mlflow.log_params(recipe_params(self.config))

    def epoch_end(self, row):
        scalars = epoch_scalars(row, self.config["data"]["test"])
        figures = {name: value for name, value in scalars.items() if math.isfinite(value)}
        self.mlflow.log_metrics(figures, step=row["epoch"])

    def finish(self, result):
        confusion_picture(self.folder, result)
        self.mlflow.log_metrics(final_scalars(result), step=result.history[-1]["epoch"])
        self.mlflow.log_artifacts(str(self.folder.path))

    def end(self, status):
        self.mlflow.end_run(status)


def log_evaluation(evaluation, run_id: "str | None", model: Path, pictures: list[Path]) -> str:
    """Attach an evaluation's metrics and pictures to an MLflow run: the one given, or the one
    the checkpoint's run folder records. Returns the run's id."""
    import mlflow

    run_id = run_id or RunFolder(Path(model).parent).read_tracking().get("mlflow_run_id")
    if not run_id:
        raise CifarError(f"--log mlflow: {model} is not from a tracked run folder; give --run-id RUN")
    prefix = f"evaluate_{evaluation.split}"  # the split it measured: evaluate_test/accuracy
    figures = {"accuracy": evaluation.accuracy, "loss": evaluation.loss, "ece": evaluation.ece,
               "macro_f1": evaluation.macro_f1}  # fmt: skip
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"{prefix}/{key}": value for key, value in figures.items() if value is not None})
        with tempfile.TemporaryDirectory() as folder:
            metrics = Path(folder) / "metrics.json"
            metrics.write_text(json.dumps(evaluation.to_dict(), indent=2, allow_nan=True))
            for path in [metrics, *pictures]:
                mlflow.log_artifact(str(path), artifact_path=prefix)
    return run_id


def train_tracked(dataset, model: str, recipe, context, resumed, log: list[str], display):
    """Train with the display and the trackers asked for (--log) listening, and end the trackers
    FINISHED, KILLED (Ctrl-C or SIGTERM, raised again) or FAILED."""
    from cifarcli import stops
    from cifarcli.distributed import shutdown
    from cifarcli.train import train

    trackers, result = open_trackers(log, context.folder), None
    try:
        result = train(dataset, model, recipe, context, Together(display, *trackers), resumed)
        for tracker in trackers:
            tracker.finish(result)
        end_all(trackers, "FINISHED")
        return result
    except (KeyboardInterrupt, stops.Stopped):
        display.close()
        end_all(trackers, "KILLED")
        raise
    except BaseException:
        end_all(trackers, "FAILED")
        raise
    finally:
        display.close()
        shutdown(context.ranks, finished=result is not None)
