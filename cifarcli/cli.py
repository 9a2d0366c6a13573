"""The `cifar` command: parse options, call one library function, render the result.

Library code raises CifarError; `user_errors()` turns it into one line on stderr and its exit
code (CIFARCLI_DEBUG=1 shows tracebacks instead)."""

import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cifarcli import __version__
from cifarcli.errors import CifarError, check_finite, first_line

app = typer.Typer(
    help="Train, evaluate, export and serve a small image classifier, one command each.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def complete_model_name(incomplete: str) -> list[str]:
    """Shell completion of --model (`cifar --install-completion`); the registry imports no torch."""
    from cifarcli.models import REGISTRY

    return [name for name in REGISTRY if name.startswith(incomplete)]


DataOption = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="CIFAR-10 archive or batches folder, an image folder with train/ and test/, or a .tar.gz/.zip of one. "
        "Default: download CIFAR-10.",
    ),
]
CacheOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Where downloads and decoded pixels are cached. Default: ~/.cache/cifarcli."),
]
ValFractionOption = Annotated[
    float | None,
    typer.Option(
        help="For a folder of class folders (ROOT/<class>/*): the fraction of each class held out as its test "
        "split. Default: 0.1 for training; evaluation uses the model's."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else there.")]


# What the extras add to the inference-only install (predict, evaluate .onnx): package -> extra.
OPTIONAL_PACKAGES = {
    "torch": "train", "torchvision": "train", "onnx": "train", "onnxscript": "train", "matplotlib": "plots",
}  # fmt: skip


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except (CifarError, OSError) as error:
        if os.environ.get("CIFARCLI_DEBUG"):
            raise
        from cifarcli import report

        if isinstance(error, CifarError):
            report.error_line(str(error))
            raise typer.Exit(error.exit_code) from None
        # A full disk or a vanished folder mid-run; files written earlier were replaced atomically.
        report.error_line(f"{error.filename or 'output'}: {error.strerror or error}; check the path and free space")
        raise typer.Exit(1) from None


def version_callback(value: bool):
    if value:
        typer.echo(f"cifarcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
):
    """cifarcli"""


def load_data(data, size, cache_dir, val_fraction=None):
    from cifarcli import report
    from cifarcli.data import DEFAULT_VAL_FRACTION, load_dataset
    from cifarcli.hardware import cores

    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    with report.progress_callback() as on_progress:
        dataset = load_dataset(data, size, cache_dir, on_progress, fraction, cores())
    for message in dataset.notes:
        report.note(message)
    if dataset.skipped:
        report.note(f"skipped {len(dataset.skipped)} unreadable image(s), first: {dataset.skipped[0]}")
    return dataset


# ---------------------------------------------------------------- cifar models


@app.command("models")
def models_command(as_json: JsonOption = False):
    """List the models: parameters, FLOPs per image and description."""
    from cifarcli import report
    from cifarcli.models import REGISTRY, describe_model

    rows = [describe_model(name) for name in REGISTRY]
    if as_json:
        report.print_json(rows)
    else:
        report.show_models(rows)


# ---------------------------------------------------------------- cifar train


@app.command("train")
def train_command(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model name (see `cifar models`). Default: airbench-cpu.",
            autocompletion=complete_model_name,
        ),
    ] = None,
    data: DataOption = None,
    val_fraction: ValFractionOption = None,
    epochs: Annotated[float | None, typer.Option(help="Override the recipe's epochs.", min=0.01)] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Override the recipe's batch size (global, over all processes).", min=1)
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Override the recipe's peak learning rate.", min=0)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    tta: Annotated[
        int | None, typer.Option(help="Test-time augmentation level 0-2 for the final figure.", min=0, max=2)
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Training steps in auto, fp32, bf16 or fp16 (auto: bf16 where the hardware has it natively, "
            "fp16 on older GPUs, else fp32). Accuracy is always scored in fp32."
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override any recipe field, FIELD=VALUE (the fields are config.json's recipe), e.g. "
            "--set label_smoothing=0.1 --set crops=16:2,24:3. Repeatable.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name: <out>/<name>, numbered if taken. Default: exp.")] = None,
    out: Annotated[Path | None, typer.Option(help="Parent folder of run folders. Default: runs/train.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    resume: Annotated[
        Path | None, typer.Option(help="Continue a run from its folder (or its last.pt); needs no other option.")
    ] = None,
    nproc: Annotated[int, typer.Option(help="Train with N processes here (runs torchrun; see README).", min=1)] = 1,
    cache_dir: CacheOption = None,
    as_json: JsonOption = False,
):
    """Train a model; writes best.pt, last.pt, history.csv, curves.png and config.json."""
    from cifarcli import report, stops
    from cifarcli.distributed import launch_local, once_per_machine, shutdown
    from cifarcli.models import DEFAULT_MODEL, get_model_entry, parse_recipe_settings
    from cifarcli.run import prepare_run, take_run_folder
    from cifarcli.run_folder import LAST, open_resumable
    from cifarcli.train import train

    display = report.TrainDisplay()
    with user_errors():
        check_finite(epochs=epochs, lr=lr, val_fraction=val_fraction)
        options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "tta": tta}
        overrides = parse_recipe_settings(settings or []) | {k: v for k, v in options.items() if v is not None}
        resumed = open_resumable(resume) if resume is not None else None
        if resumed:
            given = {"model": model, "data": data, "val_fraction": val_fraction, "precision": precision}
            resumed.refuse_contradictions({**given, **overrides, "name": name, "out": out})
            if resumed.finished:
                report.note(f"{resumed.folder.path}: the run already finished (epoch {resumed.epoch}); nothing to do")
                return
            model, data, precision = resumed.model, resumed.data, resumed.precision
            val_fraction = resumed.val_fraction or None
        model = model or DEFAULT_MODEL
        recipe = get_model_entry(model).recipe.override(**(resumed.recipe if resumed else overrides))
        if nproc > 1:
            raise typer.Exit(launch_local(nproc, recipe.batch_size, sys.argv[1:]))
        context = prepare_run(device, precision or "auto", resumed.folder.path if resumed else None)
        dataset = once_per_machine(context.ranks, lambda: load_data(data, 32, cache_dir, val_fraction))
        if len(dataset.classes) < 2:
            raise CifarError(f"--data {data}: found {len(dataset.classes)} class; training needs at least 2")
        context = context if resumed else take_run_folder(context, out or Path("runs/train"), name or "exp")
        result = None
        try:
            result = train(dataset, model, recipe, context, display, resumed)
        except (KeyboardInterrupt, stops.Stopped) as stop:
            display.close()
            hint = f"resume with: cifar train --resume {context.folder.path}"
            report.note(f"interrupted; {hint if context.folder.file(LAST).exists() else 'no epoch had completed'}")
            raise typer.Exit(stops.exit_code(stop)) from None
        finally:
            display.close()
            shutdown(context.ranks, finished=result is not None)
    if not context.ranks.is_main:
        return
    if as_json:
        report.print_json(result.to_dict())
    else:
        report.show_training_result(result)


# ---------------------------------------------------------------- cifar evaluate


@app.command("evaluate")
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="A .pt checkpoint or an .onnx model from `cifar export`.")],
    data: DataOption = None,
    val_fraction: ValFractionOption = None,
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Test-time augmentation at the model recipe's level.")
    ] = False,
    # classifier.EVAL_BATCH, written out so that --help imports no numpy
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.", min=1)] = 100,
    out: Annotated[Path | None, typer.Option(help="Write metrics.json and confusion.png here.")] = None,
    cache_dir: CacheOption = None,
    as_json: JsonOption = False,
):
    """Accuracy, loss, per-class metrics and a confusion matrix on a data split."""
    from cifarcli import report
    from cifarcli.classifier import load_classifier
    from cifarcli.evaluate import evaluate, write_outputs

    with user_errors():
        check_finite(val_fraction=val_fraction)
        classifier = load_classifier(model)
        val_fraction = val_fraction if val_fraction is not None else classifier.info.val_fraction or None
        dataset = load_data(data, classifier.info.input_size, cache_dir, val_fraction)
        level = int(classifier.info.recipe.get("tta", 1)) if tta else 0
        with report.progress_callback() as on_progress:
            evaluation = evaluate(classifier, dataset, split, level, batch_size, on_progress)
        written, skipped = write_outputs(evaluation, out, dataset.split(split).images) if out else ([], [])
    report.show_evaluation_notes(evaluation, skipped)
    if as_json:
        report.print_json(evaluation.to_dict())
    else:
        report.show_evaluation(evaluation, written)


# ---------------------------------------------------------------- cifar export


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A .pt checkpoint from `cifar train`.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The .onnx file. Default: beside the checkpoint.")
    ] = None,
    opset: Annotated[
        int | None,
        typer.Option(
            help="ONNX opset: 18 up to the newest torch and ONNX Runtime support. Default: 20, the most portable.",
            min=18,
        ),
    ] = None,
    data: DataOption = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write <name>.int8.onnx, statically quantized (needs --data).")
    ] = False,
    calibration_images: Annotated[int, typer.Option(help="Training images used to calibrate --int8.", min=1)] = 300,
    int8_max_loss: Annotated[
        float,
        typer.Option(
            help="Refuse an --int8 model whose test accuracy is more than this below fp32's (0.01: one point).",
            min=0,
        ),
    ] = 0.01,
    speed: Annotated[bool, typer.Option("--speed", help="Also time ONNX Runtime on the exported files.")] = False,
    cache_dir: CacheOption = None,
    as_json: JsonOption = False,
):
    """Export to one self-describing .onnx file and prove it equals PyTorch."""
    from cifarcli import report
    from cifarcli.classifier import TorchClassifier
    from cifarcli.export import export_checkpoint

    with user_errors():
        torch_model = TorchClassifier.from_checkpoint(checkpoint)
        info = torch_model.info
        dataset = load_data(data, info.input_size, cache_dir, info.val_fraction or None) if data else None
        result = export_checkpoint(
            torch_model, output, opset, dataset, int8, calibration_images, int8_max_loss=int8_max_loss, speed=speed
        )
    if as_json:
        report.print_json(result.to_dict())
    else:
        report.show_export(result)


# ---------------------------------------------------------------- cifar predict

EXIT_SOME_FAILED = 3


@app.command("predict")
def predict_command(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="An .onnx model, or default / default.int8. Default: the bundled CIFAR-10 model."
        ),
    ] = None,
    # predict.PREDICT_BATCH, written out so that --help imports no numpy
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call, per worker.", min=1)] = 64,
    top_k: Annotated[int, typer.Option(help="Also list the k most likely classes.", min=1)] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write rows to a .csv, .json or .jsonl file.")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into subfolders.")] = True,
    threads: Annotated[
        int, typer.Option(help="Worker threads, each decoding whole batches; 0: one per core.", min=0)
    ] = 0,
    min_confidence: Annotated[
        float, typer.Option(help="Label an image 'unsure' when its top class's confidence is below this.", min=0, max=1)
    ] = 0.0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run: skip the files already in --output.")
    ] = False,
    bundled: Annotated[
        str | None,
        typer.Option(
            help="Without --model: the bundled model in fp32 or int8. Default: int8 on x86 CPUs with int8 instructions."
        ),
    ] = None,
    as_json: JsonOption = False,
):
    """Classify images with an ONNX model. Exit 0: all predicted; 3: some files failed; 2: usage errors."""
    from cifarcli import report, stops
    from cifarcli.hardware import cores
    from cifarcli.predict import Summary, prepare_predictions, run_predictions
    from cifarcli.rows import row_to_dict

    with user_errors():
        check_finite(min_confidence=min_confidence)
        run = prepare_predictions(paths, model, bundled, output, top_k, min_confidence, resume, recursive)
        for message in run.notes:
            report.note(message)
        summary = Summary(keep_all=as_json)
        try:
            with report.PredictDisplay(len(run.files)) as display, stops.stop_on_sigterm():
                run_predictions(run, summary, display.advance, batch_size, threads or cores())
        except (KeyboardInterrupt, stops.Stopped) as stop:
            report.note(run.interrupted_hint(summary, sys.argv[1:]))
            raise typer.Exit(stops.exit_code(stop)) from None
    if as_json:
        rows = [row_to_dict(row, top_k) for row in summary.rows]
        report.print_json({"model": str(run.model), "summary": summary.totals(), "rows": rows})
    else:
        report.show_predictions(summary, top_k, output)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def main():
    try:
        app(prog_name="cifar")
    except Exception as error:  # a missing training package, or a bug: one line unless debugging
        if os.environ.get("CIFARCLI_DEBUG"):
            raise
        from cifarcli import report

        package = (getattr(error, "name", None) or "").split(".")[0]
        if isinstance(error, ModuleNotFoundError) and package in OPTIONAL_PACKAGES:
            report.error_line(
                f"this command needs {package}, which this install lacks; "
                f"install it with: pip install 'cifarcli[{OPTIONAL_PACKAGES[package]}]'"
            )
            raise SystemExit(2) from None
        report.error_line(
            f"unexpected {type(error).__name__}: {first_line(error)} (set CIFARCLI_DEBUG=1 for the traceback)"
        )
        raise SystemExit(1) from None
    finally:
        # The process ends next, and its last garbage collection would walk every object of
        # every imported module (numpy, onnxruntime, rich): frozen objects are skipped.
        gc.freeze()
