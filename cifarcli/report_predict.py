"""Terminal output of `cifar predict` (report.py's consoles and conventions): a live bar of the
images predicted and failed, then the rows, the counts per class, the failures and the totals."""

from rich.markup import escape
from rich.progress import TextColumn

from cifarcli.report import RateColumn, new_progress, out, plural, table_of


class PredictDisplay:  # a live bar of the images predicted and failed
    def __init__(self, total: int):
        self.progress = new_progress(RateColumn(), TextColumn("{task.fields[failed]} failed"))
        self.task = self.progress.add_task("predicting", total=total, failed=0)

    def __enter__(self):
        self.progress.start()
        return self

    def advance(self, summary) -> None:
        self.progress.update(self.task, completed=summary.images, failed=summary.failed)

    def __exit__(self, *exc):
        self.progress.stop()


def show_predictions(summary, top_k: int, output) -> None:
    shown = f" (first {len(summary.rows)} of {summary.images:,})" if summary.images > len(summary.rows) else ""
    table = table_of(f"Predictions{shown}", "path|class|confidence>" + (f"|top {top_k}" if top_k > 1 else ""))
    table.columns[0].overflow = "fold"  # a long path wraps whole rather than losing its end
    for row in summary.rows:
        cells = [
            escape(row.path),
            escape(row.label) if row.label else "[red]failed[/]",
            f"{row.confidence:.1%}" if row.label else f"[red]{escape(row.error)}[/]",
        ]
        if top_k > 1:
            cells.append(escape(", ".join(f"{label} {p:.0%}" for label, p in row.top_k)))
        table.add_row(*cells)
    out.print(table)
    if summary.images > len(summary.rows):
        counts = table_of("Per class", "class|images>")
        for label, count in summary.counts.most_common():
            counts.add_row(escape(label), f"{count:,}")
        out.print(counts)
    if summary.failures:
        out.print(f"[red]failed[/] ({summary.failed:,}):", highlight=False)
        for row in summary.failures:
            out.print(escape(f"  {row.path}: {row.error}"), highlight=False, soft_wrap=True)
        if summary.failed > len(summary.failures):
            where = f"every failed row, with its error, is in {output}" if output else "--output FILE lists them all"
            out.print(escape(f"  ... and {summary.failed - len(summary.failures):,} more; {where}"), highlight=False)
    totals = summary.totals()
    out.print(
        f"{plural(totals['images'], 'image')}, {totals['predicted']:,} predicted ({totals['unsure']:,} unsure), "
        f"{totals['failed']:,} failed, {totals['seconds']:.2f} s, {totals['images_per_s']:,.0f} images/s"
        + escape(f"; rows in {output}" if output else ""),
        highlight=False,
    )
