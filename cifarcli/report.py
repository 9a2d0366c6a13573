"""All terminal output: rich tables and progress bars, plain lines when not on a terminal.

Results go to stdout; progress, notes and errors go to stderr. Rich honours NO_COLOR itself;
bars are drawn only when stderr is a terminal, so logs get one plain line per epoch instead.
"""

import contextlib
import json
import math

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from cifarcli.balance import shows_per_class

out = Console()
err = Console(stderr=True)


# Names reach the terminal escaped (paths, classes, errors, "cifarcli[train]"): rich reads "[bold]x" as markup.


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A plain line on stderr (never markup)."""
    err.print(escape(message), highlight=False, soft_wrap=True)


def notes(messages: list[str]) -> None:
    for message in messages:
        note(message)


def print_json(value) -> None:
    """Standard JSON on stdout, nothing else there: a figure that does not exist (NaN) is null."""

    def finite(item):
        if isinstance(item, float):
            return item if math.isfinite(item) else None
        if isinstance(item, dict):
            return {key: finite(inner) for key, inner in item.items()}
        return [finite(inner) for inner in item] if isinstance(item, list | tuple) else item

    print(json.dumps(finite(value), indent=2, allow_nan=False))


def plural(count: float, noun: str) -> str:
    """'1 epoch', '2 epochs', '4.5 epochs', '1,000 images'."""
    number = f"{count:,}" if isinstance(count, int) else f"{count:g}"
    return f"{number} {noun}" if count == 1 else f"{number} {noun}s"


class RateColumn(ProgressColumn):
    """Items per second, from rich's own speed estimate."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s")


def new_progress(*extra_columns) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )


@contextlib.contextmanager
def progress_callback():
    """Yields on_progress(description, done, total) that drives one bar per description (total
    None: not known yet)."""
    with new_progress(RateColumn()) as progress:
        tasks = {}

        def on_progress(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = progress.add_task(description, total=total)
            progress.update(tasks[description], completed=done, total=total)

        yield on_progress


# ---------------------------------------------------------------- training


class TrainDisplay:
    """The training events (events.py): a line per epoch, with a live bar for the epoch under way on a terminal."""

    def __init__(self):
        self.progress = None
        self.task = None

    def start(self, context, model_name, epochs, steps_per_epoch, balance_note):
        balance = f"; {escape(balance_note)}" if balance_note else ""
        err.print(
            f"training [bold]{escape(model_name)}[/] for {plural(epochs, 'epoch')} on {escape(context.describe())} -> "
            f"{escape(str(context.folder.path))}{balance}; each epoch's test accuracy is a quick estimate, the last "
            "epoch's exact (fp32, whole test split)",
            highlight=False,
            soft_wrap=True,
        )
        self.epochs, self.per_class = epochs, bool(balance_note)
        self.progress = new_progress(
            TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}  {task.fields[rate]:.0f} img/s")
        )
        self.progress.start()

    def epoch_start(self, epoch, steps):
        self.task = self.progress.add_task(f"epoch {epoch}/{self.epochs}", total=steps, loss=0.0, acc=0.0, rate=0.0)

    def step(self, step, loss, acc, images_per_s):
        self.progress.update(self.task, completed=step, loss=loss, acc=acc, rate=images_per_s)

    def epoch_end(self, row):
        line = (
            f"epoch {row['epoch']}/{self.epochs}  "
            f"train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
            f"test_loss {row['test_loss']:.4f}  test_acc {row['test_acc']:.4f} ({scored_on(row)})  "
            + (escape(f"balanced_acc {row['balanced_acc']:.4f}  worst {row['worst_class']} {row['worst_recall']:.4f}  ")
               if self.per_class and row["worst_class"] is not None else "")
            + f"{row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
        )  # fmt: skip
        err.print(line, highlight=False, soft_wrap=True)  # on a terminal, above the live bars: it stays on screen

    def close(self):
        if self.progress:
            self.progress.stop()


def scored_on(row: dict) -> str:
    """How a history row's test figure was measured: '2,000 imgs, bf16'."""
    return f"{row['test_images']:,} imgs, {row['scored_in']}"


def show_training_result(result) -> None:
    columns = "epoch>|train loss>|train acc>|test loss>|test acc>|scored on>|lr>|seconds>|img/s>"
    table = table_of(f"Training: {escape(str(result.run_dir))}", columns)
    for row in result.history:
        table.add_row(
            str(row["epoch"]),
            f"{row['train_loss']:.4f}",
            f"{row['train_acc']:.2%}",
            f"{row['test_loss']:.4f}",
            f"{row['test_acc']:.2%}",
            scored_on(row),
            f"{row['lr']:.4g}",
            f"{row['seconds']:.1f}",
            f"{row['images_per_s']:.0f}",
        )
    out.print(table)
    out.print(
        f"final test accuracy {result.test_acc:.2%}, with TTA (level {result.tta}) {result.test_acc_tta:.2%} "
        f"(fp32); training {result.train_seconds:.0f} s in {result.precision}"
    )
    if result.worst_class is not None and shows_per_class(result.balance, result.train_counts):
        out.print(
            f"balanced accuracy {result.balanced_acc:.2%}, worst class {escape(result.worst_class)} "
            f"{result.worst_recall:.2%} recall; balance {result.balance}, training images per class "
            f"{min(result.train_counts):,} to {max(result.train_counts):,}",
            highlight=False,
        )
    out.print(escape(f"wrote {', '.join(result.written)} to {result.run_dir}"))


def table_of(title: str, columns: str) -> Table:
    """A table with these columns, "|"-separated; a name ending in ">" is right-aligned (figures)."""
    table = Table(title=title)
    for name in columns.split("|"):
        table.add_column(name.removesuffix(">"), justify="right" if name.endswith(">") else "left")
    return table


def show_models(rows: list[dict]) -> None:
    table = table_of("Models", "name|parameters>|GFLOPs/image>|epochs>|description")
    for row in rows:
        name = f"{row['name']} (default)" if row["default"] else row["name"]
        table.add_row(name, f"{row['parameters']:,}", f"{row['gflops']:.3f}", f"{row['epochs']:g}", row["description"])
    out.print(table)


# ---------------------------------------------------------------- evaluation


def show_evaluation_notes(evaluation, skipped) -> None:
    """What the figures leave out, and the pictures not drawn; on stderr, beside --json too."""
    for warning in evaluation.warnings:
        note(f"warning: {warning}")
    if skipped:
        note(f"skipped {', '.join(skipped)}: the pictures need matplotlib; pip install 'cifarcli[plots]'")


def show_evaluation(evaluation, written) -> None:
    tta = f", TTA level {evaluation.tta}" if evaluation.tta else ""
    out.print(
        f"[bold]{escape(str(evaluation.model))}[/] on the {evaluation.split} split of {escape(str(evaluation.data))} "
        f"({plural(evaluation.images, 'image')}{tta})",
        highlight=False,
    )
    out.print(
        f"accuracy [bold]{evaluation.accuracy:.2%}[/]  "
        + (
            f"balanced accuracy {evaluation.balanced_acc:.2%}  worst class {escape(evaluation.worst_class)} "
            f"{evaluation.worst_recall:.2%} recall  "
            if evaluation.worst_class is not None
            else ""
        )
        + f"loss {evaluation.loss:.4f}  calibration error (ECE) {evaluation.ece:.2%}"
    )
    table = table_of("Per class", "class|precision>|recall>|F1>|support>")
    for row in evaluation.per_class:
        figures = ["—" if row[key] is None else f"{row[key]:.3f}" for key in ("precision", "recall", "f1")]
        table.add_row(escape(row["name"]), *figures, str(row["support"]))
    averages = [f"{getattr(evaluation, f'macro_{key}') or 0:.3f}" for key in ("precision", "recall", "f1")]
    table.add_row("mean", *averages, str(evaluation.images), end_section=True)
    out.print(table)
    out.print(confusion_table(evaluation, out.width))
    pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in evaluation.most_confused)
    out.print(escape(f"most confused (true -> predicted): {pairs or 'none'}"))
    mistakes = ", ".join(
        f"#{m['index']} {m['true']} as {m['predicted']} ({m['confidence']:.0%})"
        for m in evaluation.confident_mistakes[:5]
    )
    out.print(escape(f"most confident mistakes (image index in the split): {mistakes or 'none'}"))
    for path in written:
        out.print(escape(f"wrote {path}"))


def confusion_table(evaluation, width: int):
    """Counts shaded by their share of the row: the diagonal green, mistakes red. Columns are named
    by the first letters of each class; on a terminal too narrow for that, rows and columns are
    numbered and a legend names the classes, so that no name and no count is ever cut. When even
    numbered columns do not fit, the classes with the most mistakes are shown, and the legend says so."""
    names, confusion = evaluation.classes, evaluation.confusion
    digits = len(str(max(max(row) for row in confusion)))
    numbered = max(len("true \\ pred"), *map(len, names)) + len(names) * (max(5, digits) + 3) + 4 > width
    shown, cut = list(range(len(names))), ""
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    if numbered:
        table = Table(title="Confusion (rows: true, columns: predicted)", box=None, padding=(0, 0, 0, 1))
        label_width = len(str(len(names) - 1))
        fits = max(1, (width - label_width - 1) // (max(label_width, digits) + 1))
        if fits < len(names):
            mistakes = [sum(confusion[i]) + sum(row[i] for row in confusion) - 2 * confusion[i][i] for i in shown]
            shown = sorted(sorted(shown, key=lambda i: -mistakes[i])[:fits])
            cut = (
                f"; the {fits} classes with the most mistakes, of {len(names)}: the terminal is too narrow for "
                "all, and every class is in metrics.json and confusion.png (--out)"
            )
    table.add_column("true \\ pred" if not numbered else "", no_wrap=True)
    for index in shown:
        table.add_column(str(index) if numbered else escape(names[index][:5]), justify="right", no_wrap=True)
    for index in shown:
        row, total = confusion[index], max(1, sum(confusion[index]))
        cells = []
        for column in shown:
            share = row[column] / total
            if column == index:
                style = "bold green" if share > 0.5 else "green"
            else:
                style = "bold red" if share > 0.1 else "red" if share > 0.03 else "dim"
            cells.append(f"[{style}]{row[column]}[/]")
        table.add_row(str(index) if numbered else escape(names[index]), *cells)
    if not numbered:
        return table
    legend = Text("classes: " + ", ".join(f"{index}={names[index]}" for index in shown) + cut)
    return Group(table, legend)


# ---------------------------------------------------------------- export


def show_export(result) -> None:
    table = table_of(f"Export: {escape(str(result.path))}", "check|value>")
    table.add_row("file size", f"{result.size_bytes / 1e6:.2f} MB")
    table.add_row("opset / IR version", f"{result.opset} / {result.ir_version}")
    table.add_row("loads on", result.loads_on)
    table.add_row(f"images compared ({result.checked_on})", f"{result.images_checked:,}")
    table.add_row("max |logit difference| vs PyTorch", f"{result.max_abs_diff:.2e}")
    table.add_row("top-1 agreement", f"{result.agreement:.2%}")
    if result.calibration:
        c = result.calibration
        table.add_row(f"temperature (fitted on {c['fitted_on']})", f"{result.temperature:.3f}")
        table.add_row(
            "test calibration error (ECE), raw -> scaled", f"{c['test_ece']:.2%} -> {c['test_ece_scaled']:.2%}"
        )
    out.print(table)
    if result.int8:
        q = result.int8
        table = table_of(f"INT8: {escape(str(q['path']))}", "model>|size MB>|test accuracy>")
        for name, size in (("fp32", result.size_bytes), ("int8", q["size_bytes"])):
            table.add_row(name, f"{size / 1e6:.2f}", f"{q[f'{name}_test_acc']:.2%}")
        out.print(table)
