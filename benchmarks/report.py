"""Write BENCHMARKS.md, and README.md's performance table, from the rows in benchmarks/results/.

    python benchmarks/report.py            # rewrite both files
    python benchmarks/report.py --check    # exit 1 if either differs from what the rows give

The page is benchmarks/page.md with each {{name}} replaced by the table TABLES[name] makes: one
generic table() over the items a table shows and its columns (header, cell of an item). Each
table shows the latest figures of each machine kind (a CPU model with the instruction sets that
change the answers, or a GPU); the rows keep the history. Training figures are the runs of the
newest `code` (package source) of each model, machine kind and precision: mean ± standard
deviation over its runs. Nothing here measures anything.
"""

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README_START, README_END = "<!-- performance:start -->", "<!-- performance:end -->"
sys.path.insert(0, str(ROOT))


def load(suite: str) -> list[dict]:
    path = RESULTS / f"{suite}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def machine_kind(machine: dict) -> str:
    """A machine's kind as the tables name it: the GPU, or the CPU and its strongest instructions."""
    if "gpu" in machine:
        return machine["gpu"]
    name = machine["cpu"].replace("(R)", "").replace(" Processor", "").strip()
    isa = set(machine["isa"])
    if "amx" in isa:
        features = "AMX"
    elif "avx512_bf16" in isa:
        features = "AVX512_BF16, VNNI" if "avx512_vnni" in isa else "AVX512_BF16"
    else:
        features = "AVX2 only" if "avx2" in isa else "no AVX2"
    return f"{name}, {features}"


def latest(rows: list[dict]) -> "dict | None":
    """The newest row (by date; of equal dates, the last written)."""
    return max(enumerate(rows), key=lambda pair: (pair[1]["date"], pair[0]))[1] if rows else None


def by(rows: list[dict], *keys) -> dict:
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(machine_kind(row["machine"]) if key == "kind" else row.get(key) for key in keys)].append(row)
    return groups


def newest_each(rows: list[dict], *keys) -> list[dict]:
    """The newest row of each group, the groups in order."""
    return [latest(group) for _, group in sorted(by(rows, *keys).items())]


def percent(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def number(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def mean_sd(values: list, shown=percent) -> str:
    """Mean ± one standard deviation (in points for percentages)."""
    values = [value for value in values if value is not None]
    if len(values) < 2:
        return shown(values[0]) if values else "—"
    sd = statistics.stdev(values)
    return f"{shown(statistics.mean(values))} ± " + (f"{sd * 100:.2f}" if shown is percent else number(sd))


def mean_count(values: list) -> str:
    return f"{statistics.mean(values):.2f} ({len(values)})" if values else "—"


def table(items: list, columns: list) -> list[str]:
    """A Markdown table: one row per item, one cell per (header, cell of an item) column."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(cell(item)) for _, cell in columns) + " |" for item in items]


def of(runs: list[dict], key: str) -> list:
    return [run.get(key) for run in runs]


# ---------------------------------------------------------------- training


def training_groups() -> dict:
    """(model, machine kind, precision) -> the runs of its newest code, the model's own recipe."""
    from cifarcli.models import REGISTRY

    runs = [row for row in load("training") + load("versus_airbench") if row.get("kind") == "run"]
    groups = {}
    for key, rows in by([row for row in runs if not row.get("variant")], "model", "kind", "precision").items():
        groups[key] = [row for row in rows if row["code"] == latest(rows)["code"]]
    order = {model: index for index, model in enumerate(REGISTRY)}
    return dict(sorted(groups.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1], item[0][2])))


def training_table() -> list[str]:
    def dates(runs):
        days = sorted({run["date"] for run in runs})
        return f"{runs[0]['code']}, {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else "")

    def waits(runs):
        return [run["wall_s"] / run["airbench94_s"] for run in runs if run.get("airbench94_s") and run.get("wall_s")]

    return table(list(training_groups().items()), [
        ("model", lambda item: f"`{item[0][0]}`"), ("machine", lambda item: item[0][1]),
        ("precision", lambda item: item[0][2]),
        ("runs (seeds)", lambda item: f"{len(item[1])} ({', '.join(map(str, sorted(set(of(item[1], 'seed')))))})"),
        ("test acc", lambda item: mean_sd(of(item[1], "test_acc"))),
        ("with TTA", lambda item: mean_sd(of(item[1], "test_acc_tta"))),
        ("training s", lambda item: mean_sd(of(item[1], "train_s"), number)),
        ("wall s", lambda item: mean_sd(of(item[1], "wall_s"), number)),
        ("train s ÷ airbench94", lambda item: mean_count([ratio for ratio in of(item[1], "ratio") if ratio])),
        ("wall s ÷ airbench94", lambda item: mean_count(waits(item[1]))), ("code, dates", lambda item: dates(item[1])),
    ])  # fmt: skip


def step_costs(kind: str, model: str, precision: str) -> dict:
    """Crop size -> milliseconds per step, from the newest step-cost run on this kind."""
    steps = [row for row in load("training") if row.get("kind") == "step" and machine_kind(row["machine"]) == kind]
    steps = [row for row in steps if row["model"] == model and row["precision"] == precision]
    newest = latest(steps)
    same_run = [row for row in steps if newest and (row["command"], row["date"], row["commit"]) == (
        newest["command"], newest["date"], newest["commit"])]  # fmt: skip
    return {row["size"]: row["ms_per_step"] for row in same_run}


def recipe_cost(model: str, variant: "str | None", costs: dict) -> "float | None":
    """Seconds-per-image units of a recipe: the sum over its epochs of each epoch's step cost."""
    from cifarcli.errors import CifarError
    from cifarcli.models import get_model_entry
    from cifarcli.recipes import parse_recipe_settings

    try:
        recipe = get_model_entry(model).recipe.override(**parse_recipe_settings((variant or "").split()))
    except CifarError:
        return None  # a variant described in words, not as --set fields
    if not costs or any(size not in costs for size, _ in recipe.crops):
        return None
    done = sum(epochs for _, epochs in recipe.crops)
    crops = sum(epochs * costs[size] for size, epochs in recipe.crops)
    return crops + max(0.0, recipe.epochs - done) * costs[max(costs)]


def candidates_table() -> list[str]:
    runs = [row for row in load("training") if row.get("kind") == "run" and row.get("variant")]

    def relative_cost(key):
        model, variant, kind, precision = key
        costs = step_costs(kind, model, precision)
        cost, own = recipe_cost(model, variant, costs), recipe_cost(model, None, costs)
        return f"{cost / own:.2f}" if cost and own else "—"

    return table(list(by(runs, "model", "variant", "kind", "precision").items()), [
        ("model", lambda item: f"`{item[0][0]}`"), ("variant", lambda item: item[0][1]),
        ("machine", lambda item: f"{item[0][2]} ({item[0][3]})"), ("runs", lambda item: len(item[1])),
        ("cost ÷ the recipe's own", lambda item: relative_cost(item[0])),
        ("test acc", lambda item: mean_sd(of(item[1], "test_acc"))),
        ("with TTA", lambda item: mean_sd(of(item[1], "test_acc_tta"))),
    ])  # fmt: skip


def step_cost_table() -> list[str]:
    steps = [row for row in load("training") if row.get("kind") == "step"]
    items = []
    for (kind, model, precision), group in by(steps, "kind", "model", "precision").items():
        costs = step_costs(kind, model, precision)
        items.append((model, kind, precision, costs, latest([row for row in group if row["size"] == max(costs)])))

    def by_size(costs):
        return "; ".join(
            f"{size} px: {ms:,.0f} ms ({ms / costs[max(costs)]:.2f})" for size, ms in sorted(costs.items())
        )

    def achieved(row):
        return (
            f"{row['step_gflops_per_s']:,} of {row['matmul_gflops_per_s']:,}" if row.get("matmul_gflops_per_s") else "—"
        )

    return table(items, [
        ("model", lambda item: f"`{item[0]}`"), ("machine", lambda item: f"{item[1]} ({item[2]})"),
        ("batch", lambda item: item[4]["batch_size"]),
        ("ms per step by crop size (÷ whole images)", lambda item: by_size(item[3])),
        ("GFLOP/s: whole-image step of a large matrix product", lambda item: achieved(item[4])),
    ])  # fmt: skip


# ---------------------------------------------------------------- inference


def scaling_table() -> list[str]:
    """Per machine kind, the newest scaling run: threads against Dask worker processes."""
    scaling = [row for row in load("predict") if row.get("kind") == "scaling"]
    items = []
    for newest in newest_each(scaling, "kind"):
        same_run = [row for row in scaling if (row["commit"], row["date"]) == (newest["commit"], newest["date"])]
        threads = {row["workers"]: row["images_per_s"] for row in same_run if row["mode"] == "threads"}
        items += [(row, row["images_per_s"] / threads[row["workers"]] if row["workers"] in threads else None)
                  for row in same_run]  # fmt: skip
    return table(items, [
        ("machine", lambda item: machine_kind(item[0]["machine"])), ("date", lambda item: item[0]["date"]),
        ("how", lambda item: item[0]["mode"]), ("workers", lambda item: item[0]["workers"]),
        ("files", lambda item: f"{item[0]['files']:,}"), ("images/s", lambda item: number(item[0]["images_per_s"])),
        ("per core", lambda item: number(item[0]["images_per_s_per_core"])),
        ("÷ threads", lambda item: f"{item[1]:.2f}" if item[1] else "—"),
        ("same rows", lambda item: "yes" if item[0].get("same_rows_as_threads") else "no"),
    ])  # fmt: skip


def pair(key: str, shown):
    """A column of an fp32 figure and its INT8 counterpart, "fp32 / int8"."""
    return lambda row: f"{shown(row.get(f'fp32_{key}'))} / {shown(row.get(f'int8_{key}'))}"


def export_table() -> list[str]:
    """Per machine kind, its newest export of a checkpoint to fp32 and INT8."""
    rate = pair("ort_images_per_s", number)
    return table(newest_each([row for row in load("export") if row.get("kind") == "export"], "kind"), [
        ("machine", lambda row: machine_kind(row["machine"])), ("checkpoint", lambda row: f"`{row['checkpoint']}`"),
        ("date", lambda row: row["date"]), ("MB fp32 / INT8", pair("mb", lambda value: number(value, 2))),
        ("test acc fp32 / INT8", pair("test_acc", percent)), ("with TTA fp32 / INT8", pair("test_acc_tta", percent)),
        ("ONNX Runtime images/s fp32 / INT8", lambda row: f"{rate(row)} ({row['int8_speedup']:.2f}x)"),
    ])  # fmt: skip


def predict_table() -> list[str]:
    """Per machine kind and model file, the newest whole-command figures and ratios to Ultralytics."""
    versus = load("versus_ultralytics")

    def ratios(row):
        ours = [other for other in versus if machine_kind(other["machine"]) == machine_kind(row["machine"])
                and other["model"] == row["model"]]  # fmt: skip
        cifar = latest([other for other in ours if "CIFAR" in other["corpus"]])
        photos = latest([other for other in ours if "photos" in other["corpus"]])
        shown = " / ".join(f"{other['ratio']:.1f}x" if other else "—" for other in (cifar, photos))
        return shown + (f" ({cifar['date']})" if cifar else "")

    return table(newest_each([row for row in load("predict") if row.get("kind") == "speed"], "kind", "model"), [
        ("machine", lambda row: machine_kind(row["machine"])), ("file", lambda row: f"`{row['model']}`"),
        ("date", lambda row: row["date"]), ("images/s, 10,000 JPEGs", lambda row: number(row["images_per_s_10k"])),
        ("100,000 files", lambda row: number(row.get("images_per_s_100k"))),
        ("peak RSS MB 10k / 100k", lambda row: f"{row['peak_rss_mb_10k']} / {row['peak_rss_mb_100k']}"),
        ("ratio to Ultralytics: CIFAR / photos (date)", ratios),
    ])  # fmt: skip


def fastest_ultralytics(row: dict) -> float:
    """Ultralytics' fastest setup's images/s in a versus_ultralytics row (older rows name two setups by key)."""
    rates = row.get("ultralytics_images_per_s") or {
        key: row[key] for key in ("ultralytics_224_images_per_s", "ultralytics_32_images_per_s") if row.get(key)
    }
    return max(rates.values())


def stages_table() -> list[str]:
    """Per machine kind and corpus, the newest comparison's stages: decoding alone and the model
    alone on every core, against the whole command and Ultralytics' fastest setup."""
    versus = [row for row in load("versus_ultralytics") if row.get("ort_images_per_s")]
    for row in versus:
        row["files_kind"] = "CIFAR JPEGs" if "CIFAR" in row["corpus"] else "photos"
    return table(newest_each(versus, "kind", "files_kind"), [
        ("machine", lambda row: machine_kind(row["machine"])), ("files", lambda row: row["files_kind"]),
        ("date", lambda row: row["date"]), ("cifar predict images/s", lambda row: number(row["cifar_images_per_s"])),
        ("decoding alone", lambda row: number(row["decode_images_per_s"])),
        ("model alone", lambda row: number(row["ort_images_per_s"])),
        ("Ultralytics' fastest", lambda row: number(fastest_ultralytics(row))),
        ("ratio", lambda row: f"{row['ratio']:.1f}x"),
        ("ratio at the model's own rate", lambda row: f"{row['ort_images_per_s'] / fastest_ultralytics(row):.1f}x"),
    ])  # fmt: skip


def portability_table() -> list[str]:
    rows = load("portability")
    if not rows:
        return []
    newest = latest(rows)["date"]
    rows = [row for row in rows if row["date"] == newest]
    runtimes = {row["runtime"]: row.get("runtime_version") for row in rows}
    cells = defaultdict(dict)
    for row in rows:
        cells[row["file"]][row["runtime"]] = (
            f"loads, agrees {row['agreement']:.1%}" if row["loads"] else "does not load"
        )
    columns = [("file", lambda file: f"`{file}`")] + [
        (f"{runtime} ({version})", lambda file, runtime=runtime: cells[file].get(runtime, "—"))
        for runtime, version in runtimes.items()
    ]
    note = f"{machine_kind(rows[0]['machine'])}, {newest}; agreement: top-1 against the installed ONNX Runtime"
    return [*table(list(cells), columns), "", f"{note} on {rows[0].get('images_compared', 1000):,} test images."]


def startup_table() -> list[str]:
    installs = [row for row in load("install") if row.get("kind") == "inference_install"]
    return table([latest(group) for group in by(installs, "kind").values()], [
        ("machine", lambda row: machine_kind(row["machine"])), ("date", lambda row: row["date"]),
        ("inference-only install MB", lambda row: number(row.get("megabytes"))),
        ("torch in it", lambda row: "yes" if row.get("torch_installed") else "no"),
        ("`cifar --help` s", lambda row: number(row.get("help_s"), 2)),
        ("`cifar predict` one image s", lambda row: number(row.get("predict_one_image_s"), 2)),
    ])  # fmt: skip


def check_table() -> list[str]:
    """Per machine kind, the newest `cifar check` of the shared copy, scored against the published lists."""
    leaks = lambda scores: f"{scores['recall_near']:.1%} / {scores['listed_share']:.1%} ({scores['flagged']:,})"  # noqa: E731
    return table(newest_each(load("check"), "kind"), [
        ("machine", lambda row: machine_kind(row["machine"])), ("date", lambda row: row["date"]),
        ("model", lambda row: f"`{row['model']}`"), ("files", lambda row: f"{row['files']:,}"),
        ("wall s", lambda row: number(row["wall_s"], 1)),
        ("leaks: recall / listed (flagged)", lambda row: leaks(row["leaks"])),
        ("pHash, best recall: recall / listed (flagged)",
         lambda row: leaks(max(row["phash_leaks"].values(), key=lambda scores: scores["recall_near"]))),
        ("test twins recall", lambda row: percent(row["test_twins_recall"])),
        ("wrong labels in top 300: ours / cleanlab", lambda row: f"{percent(row['label_errors_in_top'])} / "
         f"{percent(row['cleanlab_errors_in_top'])}"),
    ])  # fmt: skip


def serve_table() -> list[str]:
    """Per machine kind, the newest load test of `cifar serve`: each client count, then the soak."""
    items = []
    for row in newest_each(load("serve"), "kind"):
        items += [(row, clients, figures) for clients, figures in row["clients"].items()]

    def soak(row):
        figures = row["soak"]
        return (
            f"{figures['requests']:,} requests, {figures['status_5xx']} 5xx, {figures['error_rows']} error rows for "
            f"{figures['bad_sent']} bad files, RSS {figures['rss_mb_before']} -> {figures['rss_mb_after']} MB"
        )

    return table(items, [
        ("machine", lambda item: machine_kind(item[0]["machine"])), ("date", lambda item: item[0]["date"]),
        ("clients", lambda item: item[1]), ("images/s", lambda item: number(item[2]["images_per_s"])),
        ("÷ cifar predict", lambda item: f"{item[2]['ratio_to_predict']:.2f} of {item[0]['predict_images_per_s']:,}/s"),
        ("p50 / p99 ms", lambda item: f"{item[2]['p50_ms']:.1f} / {item[2]['p99_ms']:.1f}"),
        ("mean batch", lambda item: f"{item[2]['mean_batch']:.1f}"), ("soak", lambda item: soak(item[0])),
    ])  # fmt: skip


def long_tail_table() -> list[str]:
    """Per machine kind, CIFAR-10-LT split, recipe and balance: the runs of the newest code, beside
    the wall time of the newest default run on full CIFAR-10 of that kind (training.py)."""
    from cifarcli.models import DEFAULT_MODEL

    groups = by(load("long_tail"), "kind", "imbalance", "variant", "balance")
    items = [[row for row in rows if row["code"] == latest(rows)["code"]] for _, rows in sorted(groups.items())]
    defaults = {key[1]: latest(rows) for key, rows in training_groups().items() if key[0] == DEFAULT_MODEL}

    def wall(runs):  # a row timed beside other work says so ("disturbed"): its times compare with nothing
        return None if any(run.get("disturbed") for run in runs) else statistics.mean(of(runs, "wall_s"))

    def versus_default(runs):
        default = defaults.get(machine_kind(runs[0]["machine"]))
        return f"{wall(runs) / default['wall_s']:.2f}" if default and wall(runs) else "—"

    return table(items, [
        ("machine", lambda runs: machine_kind(runs[0]["machine"])), ("IF", lambda runs: f"{runs[0]['imbalance']:g}"),
        ("recipe (--set)", lambda runs: runs[0]["variant"] or "the model's own"),
        ("--balance", lambda runs: runs[0]["balance"] + (f" ({runs[0]['resolved']})" if runs[0]["balance"] == "auto"
                                                         else "")),
        ("seeds", lambda runs: len(runs)), ("test acc", lambda runs: mean_sd(of(runs, "test_acc"))),
        ("with TTA", lambda runs: mean_sd(of(runs, "test_acc_tta"))),
        ("rarest class recall", lambda runs: mean_sd(of(runs, "rarest_recall"))),
        ("worst class recall", lambda runs: mean_sd(of(runs, "worst_recall"))),
        ("wall s", lambda runs: mean_sd(of(runs, "wall_s"), number) if wall(runs) else "— (disturbed)"),
        ("÷ default's full run", versus_default),
    ])  # fmt: skip


def machines_table() -> list[str]:
    everything = [row for path in sorted(RESULTS.glob("*.jsonl")) for row in load(path.stem)]

    def described(machine):
        return machine.get("gpu") or f"{machine['cpu']}, {machine['cores']} cores, {', '.join(machine['isa'])}"

    def dates(group):
        days = sorted({row["date"] for row in group})
        return f"{days[0]} to {days[-1]}" if len(days) > 1 else days[0]

    return table(sorted(by(everything, "kind").items()), [
        ("machine kind", lambda item: item[0][0]), ("as reported", lambda item: described(item[1][0]["machine"])),
        ("result rows", lambda item: len(item[1])), ("dates", lambda item: dates(item[1])),
    ])  # fmt: skip


TABLES = {
    "machines": machines_table, "training": training_table, "candidates": candidates_table,
    "step_costs": step_cost_table, "export": export_table, "predict": predict_table, "scaling": scaling_table,
    "stages": stages_table, "portability": portability_table, "startup": startup_table, "check": check_table,
    "serve": serve_table, "long_tail": long_tail_table,
}  # fmt: skip


def benchmarks_page() -> str:
    template = (ROOT / "benchmarks" / "page.md").read_text()
    return re.sub(r"\{\{(\w+)\}\}", lambda match: "\n".join(TABLES[match.group(1)]()), template)


def readme_performance() -> str:
    """A few headline figures for README.md, each from the machine kind measured most recently."""
    items, groups = [], training_groups()
    for model in ("airbench-cpu", "tutorial"):
        runs = max((runs for key, runs in groups.items() if key[0] == model), key=lambda runs: latest(runs)["date"])
        ratios = [ratio for ratio in of(runs, "ratio") if ratio is not None]
        ratio = f"; {statistics.mean(ratios):.2f}x airbench94's training time" if ratios else ""
        count = f"{len(runs)} run" + ("s" if len(runs) > 1 else "")
        figure = f"{mean_sd(of(runs, 'test_acc_tta'))} with TTA ({count}); "
        figure += f"{mean_sd(of(runs, 'train_s'), number)} s of training in {runs[0]['precision']}{ratio}"
        items.append((f"`cifar train --model {model}`", runs[0]["machine"], figure))
    speed = latest([row for row in load("predict") if row.get("kind") == "speed"])
    figure = f"{speed['images_per_s_10k']:,} images/s with `{speed['model']}`, peak RSS {speed['peak_rss_mb_10k']} MB"
    items.append(("`cifar predict`, 10,000 CIFAR JPEGs", speed["machine"], figure))
    install = latest([row for row in load("install") if row.get("kind") == "inference_install"])
    items.append(("inference-only install", install["machine"], f"{install['megabytes']} MB, no torch"))
    columns = [("what", lambda item: item[0]), ("machine", lambda item: machine_kind(item[1])),
               ("figure", lambda item: item[2])]  # fmt: skip
    note = "\n\nEvery figure, the machines, and how to reproduce them: [BENCHMARKS.md](BENCHMARKS.md).\n"
    return "\n".join(table(items, columns)) + note


def with_readme_performance(readme: str) -> str:
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return readme[:start] + "\n" + readme_performance() + readme[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    expected = {ROOT / "BENCHMARKS.md": benchmarks_page(), readme: with_readme_performance(readme.read_text())}
    stale = [path.name for path, text in expected.items() if not path.exists() or path.read_text() != text]
    if args.check:
        if stale:
            raise SystemExit(f"out of date: {', '.join(stale)}; run python benchmarks/report.py")
        return
    for path, text in expected.items():
        path.write_text(text)
    print(f"wrote {', '.join(stale) or 'nothing (up to date)'}")


if __name__ == "__main__":
    main()
