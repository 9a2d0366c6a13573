"""What a hostile user tries: outputs that already exist, protected files, stops in the middle,
forged models, names that look like markup, options at their limits. Each answer is one line
that names the file or option, with the right exit code, and nothing already written is lost."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cifarcli.cli import app
from cifarcli.errors import CifarError

runner = CliRunner()


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.full((32, 32, 3), index * 80, np.uint8)).save(folder / f"{index}.png")
    return folder


# ---------------------------------------------------------------- forged ONNX files


def forged(tmp_path, change_card=None, change_graph=None):
    """The bundled fp32 model with its card or its graph changed, saved as forged.onnx."""
    import onnx

    from cifarcli.bundled import MODELS as BUNDLED_MODELS
    from cifarcli.onnx_model import CARD_KEY

    model = onnx.load(str(BUNDLED_MODELS["fp32"]))
    entry = next(prop for prop in model.metadata_props if prop.key == CARD_KEY)
    card = json.loads(entry.value)
    if change_card:
        change_card(card)
    entry.value = json.dumps(card)
    if change_graph:
        change_graph(model)
    onnx.save(model, str(tmp_path / "forged.onnx"))
    return tmp_path / "forged.onnx"


def fixed_batch(model):
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1


def third_output(model):
    import onnx

    logits = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("Identity", [logits.name], ["copy"]))
    model.graph.output.append(logits)
    model.graph.output[2].name = "copy"


@pytest.mark.parametrize(
    ("change_card", "change_graph", "message"),
    [
        (lambda card: card.update(input_size=64), None, "where its card says float32 N x 3 x 64 x 64"),
        (lambda card: card.update(classes=["a", "b", "c", "d"]), None, "where its card has 4 classes"),
        (None, fixed_batch, "a fixed batch of 1 images"),
        (
            lambda card: card.update(classes=["a", "b", "c", "d"]),
            third_output,
            "not one input and logits",
        ),
    ],
)
def test_a_model_whose_card_does_not_match_its_graph_is_refused_in_one_line(
    change_card, change_graph, message, tmp_path, pictures
):
    model = forged(tmp_path, change_card, change_graph)
    for command in (["predict", str(pictures), "--model", str(model), "--top-k", "3"], ["evaluate", str(model)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        line = one_line(result)
        assert "forged.onnx: its graph does not match its model card" in line and message in line


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-m", "tutorial", "--set", "crops=16:2,24:3"], "--set crops=16:2,24:3: tutorial cannot take 16 px images"),
        (["--set", "batch_size=0"], "--set batch_size=0: choose a batch size of at least 1"),
        (["--set", "flip=sideways"], "--set flip=sideways: choose alternating, random or none"),
    ],
)
def test_a_recipe_the_network_cannot_train_is_refused_before_a_run_folder_is_taken(
    arguments, message, image_folder, cache_dir, tmp_path
):
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--out", str(tmp_path), *arguments])
    assert result.exit_code == 2, result.output
    assert message in one_line(result)
    assert list(tmp_path.iterdir()) == []  # no run folder used up a name


# ---------------------------------------------------------------- outputs that already exist


def test_predict_into_an_existing_output_refuses_unless_told_to_resume_or_overwrite(pictures, tmp_path):
    rows = tmp_path / "rows.csv"
    assert runner.invoke(app, ["predict", str(pictures), "-o", str(rows)]).exit_code == 0
    before = rows.read_bytes(), (tmp_path / "rows.csv.run.json").read_bytes()
    again = runner.invoke(app, ["predict", str(pictures), "-o", str(rows), "--top-k", "2"])
    assert again.exit_code == 2
    assert "already holds rows or other data; continue its rows with --resume, or replace it with --overwrite" in (
        one_line(again)
    )
    assert (rows.read_bytes(), (tmp_path / "rows.csv.run.json").read_bytes()) == before
    both = runner.invoke(app, ["predict", str(pictures), "-o", str(rows), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "choose one" in one_line(both)
    replaced = runner.invoke(app, ["predict", str(pictures), "-o", str(rows), "--top-k", "2", "--overwrite"])
    assert replaced.exit_code == 0 and "top2_label" in rows.read_text().splitlines()[0]


def test_atomic_write_refuses_a_write_protected_file_and_leaves_nothing_behind(tmp_path):
    from cifarcli.checkpoint import atomic_write

    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    with pytest.raises(CifarError, match=r"model.onnx: is write-protected \(mode 444\)"):
        atomic_write(target, lambda file: file.write(b"new"))
    assert target.read_bytes() == b"keep me" and [path.name for path in tmp_path.iterdir()] == ["model.onnx"]


def test_export_refuses_a_write_protected_file_and_an_unwritable_folder_before_the_work(trained_run, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    checkpoint = str(trained_run.run_dir / "last.pt")
    protected = runner.invoke(app, ["export", checkpoint, "-o", str(target)])
    assert protected.exit_code == 2 and "is write-protected" in one_line(protected)
    assert target.read_bytes() == b"keep me"
    (tmp_path / "file").write_text("a file, not a folder")
    folder = runner.invoke(app, ["export", checkpoint, "-o", str(tmp_path / "file" / "m.onnx")])
    assert folder.exit_code == 2 and "m.onnx: cannot write there" in one_line(folder)


# ---------------------------------------------------------------- stops


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")
def test_a_stop_that_the_exporter_turns_into_its_own_error_is_still_a_stop():
    import signal

    import torch

    from cifarcli.export import build_onnx

    class InterruptedWhileTraced(torch.nn.Module):
        """Raises Ctrl-C in the middle of the export, and wraps it as a library may."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt as stop:
                raise RuntimeError("tracing failed") from stop
            return self.conv(x).mean((2, 3))

    with pytest.raises(KeyboardInterrupt):
        build_onnx(InterruptedWhileTraced().eval(), 8, 20)


# ---------------------------------------------------------------- missing extras, bad caches, full disks


def test_cluster_without_the_dask_extra_names_it(pictures):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['distributed'] = None  # an install without the dask extra\n"
        f"sys.argv = ['cifar', 'predict', {str(pictures)!r}, '--cluster', 'tcp://127.0.0.1:1']\n"
        "from cifarcli.cli import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "pip install 'cifarcli[dask]'" in done.stderr and "Traceback" not in done.stderr


def test_an_unwritable_cache_is_said_and_the_data_still_loads(image_folder, tmp_path):
    from cifarcli.data import load_dataset

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder would be")
    dataset = load_dataset(image_folder, cache_dir=not_a_folder)
    assert len(dataset.train) == 240
    assert any("cache of decoded pixels was not written" in note for note in dataset.notes)


def cifar_with_file_size_limit(limit: int, *arguments):
    """cifar in a process that can write at most `limit` bytes per file: a full disk, as the
    process sees it (EFBIG instead of ENOSPC)."""
    import resource
    import subprocess
    import sys

    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "cifarcli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, preexec_fn=limit_files, timeout=120, check=False)


def test_a_full_disk_names_the_file_keeps_the_rows_written_and_leaves_no_partial_files(pictures, tmp_path):
    for index in range(40):
        Image.fromarray(np.full((32, 32, 3), index * 6, np.uint8)).save(pictures / f"more{index:02d}.png")
    rows = tmp_path / "out" / "rows.csv"
    nothing = cifar_with_file_size_limit(0, "predict", pictures, "-o", rows)
    assert nothing.returncode == 1 and "rows.csv.run.json: cannot write it" in nothing.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # no empty CSV, no temp file
    some = cifar_with_file_size_limit(1000, "predict", pictures, "-o", rows, "--batch-size", "4")
    assert (
        some.returncode == 1 and "rows.csv: cannot write it" in some.stderr and "continue with --resume" in some.stderr
    )
    kept = rows.read_text().splitlines()[1:-1]  # the last line may be cut short, as by a kill
    assert 1 < len(kept) < 43 and all(line.count(",") == 3 for line in kept)
    resumed = runner.invoke(app, ["predict", str(pictures), "-o", str(rows), "--resume"])
    lines = rows.read_text().splitlines()
    assert resumed.exit_code == 0 and len(lines) == 44 and len({line.split(",")[0] for line in lines}) == 44
    assert lines[1 : 1 + len(kept)] == kept  # the rows written before the disk filled are kept as they were
    assert sorted(path.name for path in rows.parent.iterdir()) == ["rows.csv", "rows.csv.run.json"]


def test_a_cluster_that_does_not_answer_fails_in_one_line_without_waiting_half_a_minute(pictures):
    import subprocess
    import sys

    command = [sys.executable, "-m", "cifarcli", "predict", str(pictures), "--cluster", "tcp://127.0.0.1:1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=8, check=False)
    assert done.returncode == 2 and "--cluster tcp://127.0.0.1:1: no Dask scheduler answered" in done.stderr
    command[-1] = "tcp://127.0.0.1:99999"
    done = subprocess.run(command, capture_output=True, text=True, timeout=8, check=False)
    assert done.returncode == 2 and "--cluster tcp://127.0.0.1:99999: not a port" in done.stderr


# ---------------------------------------------------------------- what reaches the terminal


def test_names_that_look_like_markup_are_shown_as_they_are(tmp_path):
    folder = tmp_path / "[bold]odd"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "[bold]evil.png")
    (folder / "[red]broken.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["predict", str(folder)])
    assert result.exit_code == 3
    assert "[bold]evil.png" in result.stdout and "[red]broken.png: " in result.stdout
    assert "cifarcli[tensorboard]" in runner.invoke(app, ["train", "--help"]).stdout


def test_a_confusion_matrix_too_wide_for_the_terminal_shows_the_worst_classes_and_says_so():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from cifarcli.report import confusion_table

    rng = np.random.default_rng(0)
    confusion = (np.eye(120, dtype=int) * 50 + rng.integers(0, 3, (120, 120))).tolist()
    confusion[7][8] = 40  # class 7 is the most confused
    screen = io.StringIO()
    Console(file=screen, width=100, color_system=None).print(
        confusion_table(SimpleNamespace(classes=[f"class{i}" for i in range(120)], confusion=confusion), 100)
    )
    shown = screen.getvalue()
    assert "…" not in shown and "of 120: the terminal is too narrow for all" in shown
    assert "7=class7" in shown and "8=class8" in shown


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1."),
        (["predict", "x", "--top-k", "0"], "Invalid value for '--top-k'"),
        (["predict", "x", "--min-confidence", "1.5"], "Invalid value for '--min-confidence'"),
        (["train", "--epochs", "0"], "Invalid value for '--epochs'"),
        (["train", "--nproc", "0"], "Invalid value for '--nproc'"),
        (["train", "--tta", "5"], "Invalid value for '--tta'"),
        (["evaluate", "x.pt", "--split", "val"], "Invalid value for '--split': 'val' is not one of 'train', 'test'."),
        (["train", "--precision", "fp64"], "Invalid value for '--precision'"),
        (["evaluate", "x.pt", "--log", "wandb"], "Invalid value for '--log'"),
        (["export", "x.pt", "--opset", "7"], "Invalid value for '--opset'"),
        (["train", "--lr", "-1"], "Invalid value for '--lr'"),
        (["train", "--set"], "Option '--set' requires an argument."),
    ],
)
def test_range_errors_are_one_line_like_every_other_error(arguments, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cifarcli", *arguments], capture_output=True, text=True, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert lines[0].endswith(f"(see cifar {arguments[0]} --help)")


def test_help_on_a_narrow_terminal_keeps_every_option_name_whole():
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "40"}
    command = [sys.executable, "-m", "cifarcli", "train", "--help"]
    shown = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    for name in ("--val-fraction", "--batch-size", "--precision", "--cache-dir"):
        assert name in shown


def test_a_reader_that_stops_reading_ends_the_command_quietly_as_a_shell_would(tmp_path):
    import subprocess
    import sys

    reader, writer = __import__("os").pipe()
    __import__("os").close(reader)  # `| head` that has already stopped
    done = subprocess.run([sys.executable, "-m", "cifarcli", "--help"], stdout=writer, stderr=subprocess.PIPE,
                          text=True, check=False)  # fmt: skip
    __import__("os").close(writer)
    assert done.returncode == 141 and done.stderr == ""


# ---------------------------------------------------------------- smaller things


def test_model_files_that_are_folders_damaged_or_code_are_named_for_what_they_are(tmp_path):
    import torch

    folder = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder; give a .pt checkpoint or an .onnx model" in one_line(folder)
    torch.save({"format": 1, "model": {"w": torch.zeros(1000)}}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    damaged = runner.invoke(app, ["export", str(tmp_path / "cut.pt")])
    assert damaged.exit_code == 2 and "not a cifarcli checkpoint, or a damaged one (" in one_line(damaged)
    assert "(RuntimeError)" not in damaged.stderr
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    code = runner.invoke(app, ["export", str(tmp_path / "module.pt")])
    assert code.exit_code == 2
    assert "refused: loading it would run code (torch.nn.modules.linear.Linear)" in one_line(code)
    predicted = runner.invoke(app, ["predict", str(tmp_path), "--model", str(tmp_path / "whole.pt")])
    assert "a checkpoint of `cifar train` exports to one with `cifar export" in one_line(predicted)


def test_counts_of_one_are_singular():
    from cifarcli.report import plural

    assert [plural(1, "epoch"), plural(2, "epoch"), plural(4.5, "epoch"), plural(1000, "image")] == [
        "1 epoch", "2 epochs", "4.5 epochs", "1,000 images",
    ]  # fmt: skip


def test_listing_reports_its_count_as_it_grows(tmp_path):
    from cifarcli.sources import LISTING_REPORT_EVERY, discover_images

    for index in range(2 * LISTING_REPORT_EVERY + 5):
        (tmp_path / f"{index:05d}.png").touch()
    heard = []
    files, _ = discover_images([str(tmp_path)], on_found=lambda count, finished: heard.append((count, finished)))
    expected = [(LISTING_REPORT_EVERY, False), (2 * LISTING_REPORT_EVERY, False), (len(files), True)]
    assert heard == expected and len(files) == 2 * LISTING_REPORT_EVERY + 5


@pytest.mark.parametrize(
    ("command", "where"),
    [
        (["evaluate", "default", "--data", "{folder}"], ("cifarcli.evaluate", "evaluate")),
        (["export", "{tmp}/last.pt"], ("cifarcli.classifier", "TorchClassifier")),
    ],
)
def test_ctrl_c_in_evaluate_and_export_says_what_stays_and_exits_130(
    command, where, image_folder, cache_dir, tmp_path, monkeypatch
):
    import importlib
    from types import SimpleNamespace

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the work

    module, name = where
    stand_in = SimpleNamespace(from_checkpoint=interrupted) if name == "TorchClassifier" else interrupted
    monkeypatch.setattr(importlib.import_module(module), name, stand_in)
    result = runner.invoke(app, [part.format(folder=image_folder, tmp=tmp_path) for part in command])
    assert result.exit_code == 130 and "interrupted; no file is left half-written" in result.stderr


def test_an_output_with_a_header_alone_holds_no_rows_and_is_replaced(pictures, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("path,label,confidence,error\n")  # as a run stopped before its first row leaves it
    assert runner.invoke(app, ["predict", str(pictures), "-o", str(rows)]).exit_code == 0
    assert len(rows.read_text().splitlines()) == 4
    for name, text in (("own.csv", "my,own,data\n"), ("own.json", "[1, 2, 3]\n")):  # not ours: kept
        (tmp_path / name).write_text(text)
        kept = runner.invoke(app, ["predict", str(pictures), "-o", str(tmp_path / name)])
        assert kept.exit_code == 2 and (tmp_path / name).read_text() == text
    alone = runner.invoke(app, ["predict", str(pictures), "--overwrite"])
    assert alone.exit_code == 2 and "--overwrite: give the --output file to replace" in one_line(alone)


def test_the_resume_command_after_a_stop_continues_rather_than_overwrites(pictures, tmp_path):
    from cifarcli.predict import PredictionRun, Summary
    from cifarcli.rows import RowWriter

    writer = RowWriter(tmp_path / "rows.csv", 1, overwrite=True)
    run = PredictionRun(tmp_path / "m.onnx", None, [], None, writer, 1, 0.0)
    hint = run.interrupted_hint(Summary(), ["predict", str(pictures), "-o", str(tmp_path / "rows.csv"), "--overwrite"])
    writer.close()
    assert hint.endswith(f"continue with: cifar predict {pictures} -o {tmp_path / 'rows.csv'} --resume")


def test_the_most_confused_pairs_are_mistakes_only():
    from cifarcli.evaluate import most_confused_pairs

    confusion = np.array([[20, 3, 0], [0, 20, 0], [1, 0, 20]])
    pairs = most_confused_pairs(confusion, ["a", "b", "c"])
    assert pairs == [{"true": "a", "predicted": "b", "count": 3}, {"true": "c", "predicted": "a", "count": 1}]
