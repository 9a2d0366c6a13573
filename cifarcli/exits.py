"""How a command ends: every error as one line with its exit code (CIFARCLI_DEBUG=1 shows
tracebacks instead), Ctrl-C and SIGTERM said, a broken pipe as a shell reports it. cli.py's
commands run inside user_errors() (CifarError to one line) and stops_said(); run_app() runs the app.
"""

import contextlib
import gc
import os
import shutil
import sys

import typer

from cifarcli.errors import CifarError, first_line

# What the extras add to the inference-only install (predict, evaluate .onnx): package -> extra.
OPTIONAL_PACKAGES = {
    "torch": "train", "torchvision": "train", "onnx": "train", "onnxscript": "train", "matplotlib": "plots",
    "tensorboard": "tensorboard", "mlflow": "mlflow", "distributed": "dask", "dask": "dask", "fsspec": "dask",
    "s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure", "aiohttp": "http", "starlette": "serve", "uvicorn": "serve",
    "multipart": "serve",
}  # fmt: skip
HELP_MIN_WIDTH = 80  # columns: the widest option name and its type stay whole in --help
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader (`| head`) stopped reading, as a shell reports it


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


@contextlib.contextmanager
def stops_said(kept: str):
    """Ctrl-C or SIGTERM end the command with one line saying what stays, and 130 or 143."""
    from cifarcli import report, stops

    try:
        with stops.stop_on_sigterm():
            yield
    except (KeyboardInterrupt, stops.Stopped) as stop:
        report.note(f"interrupted; {kept}")
        raise typer.Exit(stops.exit_code(stop)) from None


def stdout_file() -> "tuple[int, int] | None":
    """What file descriptor 1 is (device, inode), to notice it was sent to /dev/null."""
    try:
        status = os.fstat(1)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def failed_command(error, prog_name: str) -> str:
    """The command a usage error belongs to ("cifar train"): its context's, or where an error has
    none (an option missing its value), the command the arguments name first."""
    if error.ctx is not None:
        return error.ctx.command_path
    first = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
    return f"{prog_name} {first}" if first else prog_name


def run_app(app, prog_name: str) -> None:
    """Run the typer app and end the process: its exit code, or one line and 2 for a usage error,
    130 for Ctrl-C, 141 for a broken pipe, 2 naming the extra a command lacks, 1 otherwise."""
    from cifarcli import report

    usage_error = typer.BadParameter.__mro__[1]  # click's UsageError (typer may vendor click)
    if shutil.get_terminal_size().columns < HELP_MIN_WIDTH:  # narrower help tables cut option names
        from typer import rich_utils

        rich_utils.MAX_WIDTH = HELP_MIN_WIDTH
    stdout_before = stdout_file()
    try:
        # standalone_mode=False: usage errors come here, to be one line like every other error.
        code = app(prog_name=prog_name, standalone_mode=False)
    except usage_error as error:  # a value out of range, an unknown option, a missing argument
        report.error_line(f"{first_line(error.format_message(), 400)} (see {failed_command(error, prog_name)} --help)")
        raise SystemExit(error.exit_code) from None
    except typer.Abort:  # Ctrl-C or end of input outside a command's own handling
        raise SystemExit(130) from None
    except SystemExit as exit_:
        # rich and typer end a broken pipe with 1, quietly, after sending stdout to /dev/null (rich)
        # or wrapping it (typer): say it as a shell does.
        if exit_.code == 1 and (stdout_file() != stdout_before or type(sys.stdout).__name__ == "PacifyFlushWrapper"):
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        raise
    except Exception as error:  # a missing training package, or a bug: one line unless debugging
        if os.environ.get("CIFARCLI_DEBUG"):
            raise

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
    else:
        raise SystemExit(code if isinstance(code, int) else 0)
    finally:
        # The process ends next, and its last garbage collection would walk every object of
        # every imported module (numpy, onnxruntime, rich): frozen objects are skipped.
        gc.freeze()
