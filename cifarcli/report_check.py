"""Terminal output of `cifar check` (report.py's consoles and conventions): a summary table, one
row per problem found with its count and its most likely examples, and the class counts."""

from rich.markup import escape

from cifarcli.report import out, plural, table_of

EXAMPLES_SHOWN = 3  # most likely findings named per problem


def show_check(report, written: list) -> None:
    counts = report.counts()
    table = table_of(f"{report.files:,} files checked", "kind|problem|found>|most likely")
    for kind, problems in counts.items():
        if not problems:
            table.add_row(kind, "[green]none found[/]", "0", "")
        for problem, count in sorted(problems.items(), key=lambda item: -item[1]):
            examples = [f for f in report.findings if f.kind == kind and f.problem == problem]
            examples.sort(key=lambda finding: -finding.score)
            shown = [finding.path for finding in examples[:EXAMPLES_SHOWN]]
            table.add_row(kind, escape(problem), f"{count:,}", escape("\n".join(shown)))
    out.print(table)
    splits = sorted(report.class_counts)
    classes = sorted({label for by_class in report.class_counts.values() for label in by_class})
    if classes:
        columns = "|".join(["class", *[f"{split or 'images'}>" for split in splits]])
        class_table = table_of("Decodable images per class", columns)
        for label in classes:
            class_table.add_row(escape(label), *[f"{report.class_counts[split].get(label, 0):,}" for split in splits])
        out.print(class_table)
    total = sum(len(problems) and sum(problems.values()) for problems in counts.values())
    line = f"{plural(total, 'finding')} in {report.seconds:.1f} s with {report.model}"
    out.print(escape(line + (f"; wrote {', '.join(str(path) for path in written)}" if written else "")))
