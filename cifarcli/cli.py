"""The `cifar` command: parse options, call one library function, render the result.

Each command runs inside exits.user_errors(), which turns the library's CifarError into one
line and an exit code; exits.run_app() ends the process."""

import sys
from pathlib import Path

import typer

from cifarcli import options as opt
from cifarcli.errors import CifarError, check_finite
from cifarcli.exits import run_app, stops_said, user_errors

app = typer.Typer(
    help="Check data, train, evaluate, export, predict and serve a small image classifier, one command each.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(version: opt.Version = False):
    """cifarcli"""


def load_data(data, size, cache_dir, val_fraction=None, exclude=None):
    from cifarcli import report
    from cifarcli.data import load_dataset
    from cifarcli.hardware import cores

    with report.progress_callback() as on_progress:
        dataset = load_dataset(data, size, cache_dir, on_progress, val_fraction, cores(), exclude)
    report.notes(dataset.notes)
    if dataset.skipped:
        report.note(f"skipped {len(dataset.skipped)} unreadable image(s), first: {dataset.skipped[0]}")
    if exclude:
        report.note(f"left out {len(dataset.excluded)} of the {len(set(exclude))} file(s) that --exclude names")
    return dataset


def render(result, as_json: bool, show) -> None:
    """A command's result: as JSON on stdout (--json, its to_dict() where it has one), else show(result)."""
    from cifarcli import report

    if as_json:
        report.print_json(result.to_dict() if hasattr(result, "to_dict") else result)
    else:
        show(result)


EVERY_FILE_WHOLE = "no file is left half-written"  # every write is atomic: a stop leaves each file whole

# ---------------------------------------------------------------- cifar models


@app.command("models")
def models_command(as_json: opt.Json = False):
    """List the models: parameters, FLOPs per image and description."""
    from cifarcli import report
    from cifarcli.models import REGISTRY, describe_model

    rows = [describe_model(name) for name in REGISTRY]
    render(rows, as_json, report.show_models)


# ---------------------------------------------------------------- cifar train


@app.command("train")
def train_command(
    model: opt.ModelName = None,
    data: opt.Data = None,
    val_fraction: opt.ValFraction = None,
    epochs: opt.Epochs = None,
    batch_size: opt.TrainBatch = None,
    lr: opt.LearningRate = None,
    seed: opt.Seed = None,
    tta: opt.TtaLevel = None,
    precision: opt.Precision = None,
    balance: opt.Balance = None,
    settings: opt.Settings = None,
    name: opt.RunName = None,
    out: opt.RunsFolder = None,
    device: opt.Device = None,
    resume: opt.Resume = None,
    nproc: opt.Processes = None,
    log: opt.Trackers = None,
    exclude: opt.Exclude = None,
    cache_dir: opt.CacheDir = None,
    as_json: opt.Json = False,
):
    """Train a model; writes best.pt, last.pt, history.csv, curves.png and config.json."""
    from cifarcli import report
    from cifarcli.distributed import launch_local, once_per_machine
    from cifarcli.findings import read_exclusions
    from cifarcli.models import DEFAULT_MODEL, check_input_sizes, get_model_entry
    from cifarcli.recipes import parse_recipe_settings
    from cifarcli.run import decide_setup, take_run_folder
    from cifarcli.run_folder import open_resumable

    device, precision, log, balance = (opt.chosen(choice) for choice in (device, precision, log, balance))
    display = report.TrainDisplay()
    with user_errors():
        check_finite(epochs=epochs, lr=lr, val_fraction=val_fraction)
        options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "tta": tta, "balance": balance}
        overrides = parse_recipe_settings(settings or []) | {k: v for k, v in options.items() if v is not None}
        resumed = open_resumable(resume) if resume is not None else None
        excluded = read_exclusions(exclude) if exclude else []
        if resumed:
            if exclude:
                raise CifarError(f"--exclude {exclude}: the run being resumed keeps its own list; drop --exclude")
            excluded = resumed.excluded
            given = {"model": model, "data": data, "val_fraction": val_fraction, "precision": precision}
            resumed.refuse_contradictions({**given, **overrides, "name": name, "out": out})
            if resumed.finished:
                report.note(f"{resumed.folder.path}: the run already finished (epoch {resumed.epoch}); nothing to do")
                return
            model, data, precision = resumed.model, resumed.data, resumed.precision
            val_fraction = resumed.val_fraction or None
        model = model or DEFAULT_MODEL
        recipe = get_model_entry(model).recipe.override(**(resumed.recipe if resumed else overrides))
        if nproc and nproc > 1:
            raise typer.Exit(launch_local(nproc, recipe.batch_size, sys.argv[1:]))
        setup = decide_setup(device, precision)
        dataset = once_per_machine(setup.ranks, lambda: load_data(data, 32, cache_dir, val_fraction, excluded))
        if len(dataset.classes) < 2:
            raise CifarError(f"--data {data}: found {len(dataset.classes)} class; training needs at least 2")
        check_input_sizes(model, recipe, dataset.train.images.shape[1], len(dataset.classes))
        if resumed:
            context = setup.in_folder(resumed.folder.path)
        else:
            context = take_run_folder(setup, out or Path("runs/train"), name or "exp")
        result = train_with_trackers(dataset, model, recipe, context, resumed, log or [], display)
    if not context.ranks.is_main:
        return
    render(result, as_json, report.show_training_result)


def train_with_trackers(dataset, model, recipe, context, resumed, log: list[str], display):
    """tracking.train_tracked; a stop says how to resume and exits 130 or 143."""
    from cifarcli import report, stops
    from cifarcli.run_folder import LAST
    from cifarcli.tracking import train_tracked

    try:
        return train_tracked(dataset, model, recipe, context, resumed, log, display)
    except (KeyboardInterrupt, stops.Stopped) as stop:
        hint = f"resume with: cifar train --resume {context.folder.path}"
        report.note(f"interrupted; {hint if context.folder.file(LAST).exists() else 'no epoch had completed'}")
        raise typer.Exit(stops.exit_code(stop)) from None


# ---------------------------------------------------------------- cifar evaluate


@app.command("evaluate")
def evaluate_command(
    model: opt.ModelFile,
    data: opt.Data = None,
    val_fraction: opt.ValFraction = None,
    split: opt.Split = None,
    tta: opt.TtaLevel = None,
    batch_size: opt.EvaluateBatch = None,
    out: opt.EvaluateOut = None,
    log: opt.Trackers = None,
    run_id: opt.RunId = None,
    cache_dir: opt.CacheDir = None,
    as_json: opt.Json = False,
):
    """Accuracy, loss, per-class metrics and a confusion matrix on a data split."""
    from cifarcli import report
    from cifarcli.classifier import load_classifier
    from cifarcli.evaluate import evaluate
    from cifarcli.plots import write_outputs

    split, log = opt.chosen(split), opt.chosen(log) or []
    with user_errors(), stops_said(EVERY_FILE_WHOLE):
        check_finite(val_fraction=val_fraction)
        if set(log) - {"mlflow"}:
            raise CifarError("--log tensorboard: an evaluation attaches to an MLflow run; use --log mlflow or --out")
        classifier = load_classifier(model)
        val_fraction = val_fraction if val_fraction is not None else classifier.info.val_fraction or None
        dataset = load_data(data, classifier.info.input_size, cache_dir, val_fraction)
        with report.progress_callback() as on_progress:
            evaluation = evaluate(classifier, dataset, split, tta, batch_size, on_progress)
        written, skipped = write_outputs(evaluation, out, dataset.split(evaluation.split).images) if out else ([], [])
        if log:
            from cifarcli.tracking import log_evaluation

            pictures = [path for path in written if path.suffix == ".png"]
            report.note(f"logged to MLflow run {log_evaluation(evaluation, run_id, model, pictures)}")
    report.show_evaluation_notes(evaluation, skipped)
    render(evaluation, as_json, lambda shown: report.show_evaluation(shown, written))


# ---------------------------------------------------------------- cifar export


@app.command("export")
def export_command(
    checkpoint: opt.Checkpoint,
    output: opt.OnnxOutput = None,
    opset: opt.Opset = None,
    data: opt.Data = None,
    int8: opt.Int8 = False,
    features: opt.Features = False,
    calibration_images: opt.CalibrationImages = None,
    int8_max_loss: opt.Int8MaxLoss = None,
    cache_dir: opt.CacheDir = None,
    as_json: opt.Json = False,
):
    """Export to one self-describing .onnx file and prove it equals PyTorch."""
    from cifarcli import report
    from cifarcli.classifier import TorchClassifier
    from cifarcli.export import plan_export, run_export

    with user_errors(), stops_said(EVERY_FILE_WHOLE):
        torch_model = TorchClassifier.from_checkpoint(checkpoint)
        job = plan_export(
            torch_model, output, opset, data is not None, int8, calibration_images, int8_max_loss, 0, features
        )
        info = torch_model.info
        dataset = load_data(data, info.input_size, cache_dir, info.val_fraction or None) if data else None
        result = run_export(torch_model, job, dataset)
    render(result, as_json, report.show_export)


# ---------------------------------------------------------------- cifar predict

EXIT_SOME_FAILED = 3


@app.command("predict")
def predict_command(
    paths: opt.Paths,
    model: opt.OnnxModel = None,
    batch_size: opt.PredictBatch = None,
    top_k: opt.TopK = None,
    output: opt.Rows = None,
    recursive: opt.Recursive = None,
    threads: opt.Threads = None,
    min_confidence: opt.MinConfidence = None,
    resume: opt.ResumeRows = False,
    overwrite: opt.Overwrite = False,
    bundled: opt.Bundled = None,
    cluster: opt.Cluster = None,
    storage_options: opt.StorageOptions = None,
    shard: opt.Shard = None,
    as_json: opt.Json = False,
):
    """Classify images with an ONNX model. Exit 0: all predicted; 3: some files failed; 2: usage errors."""
    from cifarcli import report, report_predict, stops
    from cifarcli.hardware import cores
    from cifarcli.predict import Summary, prepare_predictions, run_predictions
    from cifarcli.rows import row_to_dict
    from cifarcli.sources import parse_shard, parse_storage_options

    with user_errors():
        check_finite(min_confidence=min_confidence)
        with report.progress_callback() as on_progress:
            run = prepare_predictions(
                paths, model, opt.chosen(bundled), output, top_k, min_confidence, resume, recursive,
                storage_options=parse_storage_options(storage_options), shard=parse_shard(shard), overwrite=overwrite,
                on_listing=lambda count, finished: on_progress("listing files", count, count if finished else None),
            )  # fmt: skip
        report.notes(run.notes)
        summary = Summary(keep_all=as_json)
        try:
            with report_predict.PredictDisplay(len(run.files)) as display, stops.stop_on_sigterm():
                rows = engine_rows(run, batch_size, threads or cores(), cluster)
                run_predictions(run, rows, summary, display.advance)
        except (KeyboardInterrupt, stops.Stopped) as stop:
            report.note(run.interrupted_hint(summary, sys.argv[1:]))
            raise typer.Exit(stops.exit_code(stop)) from None
    if as_json:
        rows = [row_to_dict(row, run.top_k) for row in summary.rows]
        report.print_json({"model": str(run.model), "summary": summary.totals(), "rows": rows})
    else:
        report_predict.show_predictions(summary, run.top_k, output)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def engine_rows(run, batch_size: int, workers: int, cluster: "str | None"):
    """The rows of the run's files from the chosen engine: the Dask cluster, or `workers` threads here."""
    work = (run.files, batch_size, run.top_k)
    if cluster:
        from cifarcli.cluster import cluster_rows

        return cluster_rows(cluster, run.model.read_bytes(), *work, run.min_confidence, run.file_system)
    from cifarcli.predict import predict_files

    return predict_files(run.classifier, *work, workers, run.min_confidence, run.file_system)


# ---------------------------------------------------------------- cifar check


@app.command("check")
def check_command(
    data: opt.CheckData,
    model: opt.CheckModel = None,
    split: opt.CheckSplit = None,
    out: opt.CheckOut = None,
    folds: opt.Folds = None,
    folds_model: opt.FoldsModel = None,
    settings: opt.Settings = None,
    storage_options: opt.StorageOptions = None,
    as_json: opt.Json = False,
):
    """Find broken files, structure problems, duplicates and leaks between splits, and likely wrong labels."""
    from cifarcli import report
    from cifarcli.check import FoldsPlan, run_check
    from cifarcli.check_outputs import check_outputs_writable, write_check_outputs
    from cifarcli.report_check import show_check

    with user_errors(), stops_said("the data is unchanged; nothing is left half-written"):
        check_outputs_writable(out)
        with report.progress_callback() as on_progress:
            plan = FoldsPlan.from_options(folds, folds_model, settings)
            result = run_check(data, model, opt.chosen(split), None, on_progress, plan, report.note, storage_options)
        written = write_check_outputs(result, out) if out else []
    report.notes(result.notes)
    render(result, as_json, lambda shown: show_check(shown, written))


# ---------------------------------------------------------------- cifar serve


@app.command("serve")
def serve_command(
    model: opt.ServeModel = None,
    host: opt.Host = None,
    port: opt.Port = None,
    max_batch: opt.MaxBatch = None,
    max_wait_ms: opt.MaxWait = None,
    threads: opt.ServeThreads = None,
    token_env: opt.TokenEnv = None,
):
    """Serve the model over HTTP: a JSON API with dynamic batching, and a web page."""
    from cifarcli import report
    from cifarcli.serve import serve

    with user_errors():
        serve(model, host, port, max_batch, max_wait_ms, threads, token_env, report.note)


def main():
    run_app(app, prog_name="cifar")
