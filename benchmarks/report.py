"""Write BENCHMARKS.md, and README.md's performance table, from the rows in benchmarks/results/.

    python benchmarks/report.py            # rewrite both files
    python benchmarks/report.py --check    # exit 1 if either differs from what the rows give

Each table shows the latest figures of each machine kind (a CPU model with the instruction sets
that change the answers, or a GPU); the rows keep the history. Training figures are the runs of
the newest `code` (package source) of each model, machine kind and precision: mean ± standard
deviation over its runs. Nothing here measures anything.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README_START, README_END = "<!-- performance:start -->", "<!-- performance:end -->"


# ---------------------------------------------------------------- reading rows


def load(suite: str) -> list[dict]:
    path = RESULTS / f"{suite}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


# ---------------------------------------------------------------- formatting


def percent(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def mean_sd(values: list, as_percent: bool = True) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return "—"
    shown = percent if as_percent else (lambda value: f"{value:,.0f}")
    if len(values) == 1:
        return shown(values[0])
    sd = statistics.stdev(values)
    return f"{shown(statistics.mean(values))} ± " + (f"{sd * 100:.2f}" if as_percent else f"{sd:,.0f}")


def number(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


# ---------------------------------------------------------------- the tables


def training_groups() -> dict:
    """(model, machine kind, precision) -> the runs of its newest code, the model's own recipe."""
    runs = [row for row in load("training") + load("versus_airbench") if row.get("kind") == "run"]
    groups = {}
    for key, rows in by([row for row in runs if not row.get("variant")], "model", "kind", "precision").items():
        newest = latest(rows)["code"]
        groups[key] = [row for row in rows if row["code"] == newest]
    sys.path.insert(0, str(ROOT))
    from cifarcli.models import REGISTRY

    order = {model: index for index, model in enumerate(REGISTRY)}  # the registry's order
    return dict(sorted(groups.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1], item[0][2])))


def training_table() -> list[str]:
    header = ["model", "machine", "precision", "runs (seeds)", "test acc", "with TTA", "training s", "wall s",
              "train s ÷ airbench94", "wall s ÷ airbench94", "code, dates"]  # fmt: skip
    rows = []
    for (model, kind, precision), runs in training_groups().items():
        seeds = sorted({run["seed"] for run in runs})
        ratios = [run["ratio"] for run in runs if run.get("ratio") is not None]
        waits = [run["wall_s"] / run["airbench94_s"] for run in runs if run.get("airbench94_s") and run.get("wall_s")]
        dates = sorted({run["date"] for run in runs})
        rows.append([
            f"`{model}`", kind, precision, f"{len(runs)} ({', '.join(map(str, seeds))})",
            mean_sd([run.get("test_acc") for run in runs]), mean_sd([run.get("test_acc_tta") for run in runs]),
            mean_sd([run.get("train_s") for run in runs], as_percent=False),
            mean_sd([run.get("wall_s") for run in runs], as_percent=False),
            f"{statistics.mean(ratios):.2f} ({len(ratios)})" if ratios else "—",
            f"{statistics.mean(waits):.2f} ({len(waits)})" if waits else "—",
            f"{runs[0]['code']}, {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else ""),
        ])  # fmt: skip
    return table(header, rows)


def step_costs(kind: str, model: str, precision: str) -> dict:
    """Crop size -> milliseconds per step, from the newest step-cost run on this kind."""
    steps = [row for row in load("training") if row.get("kind") == "step" and machine_kind(row["machine"]) == kind]
    steps = [row for row in steps if row["model"] == model and row["precision"] == precision]
    if not steps:
        return {}
    newest = latest(steps)
    return {row["size"]: row["ms_per_step"] for row in steps if row["command"] == newest["command"]
            and row["date"] == newest["date"] and row["commit"] == newest["commit"]}  # fmt: skip


def recipe_cost(model: str, variant: "str | None", costs: dict) -> "float | None":
    """Seconds-per-image units of a recipe: the sum over its epochs of each epoch's step cost."""
    sys.path.insert(0, str(ROOT))
    from cifarcli.errors import CifarError
    from cifarcli.models import get_model_entry
    from cifarcli.recipes import parse_recipe_settings

    try:
        recipe = get_model_entry(model).recipe.override(**parse_recipe_settings((variant or "").split()))
    except CifarError:
        return None  # a variant described in words, not as --set fields
    full = max(costs)
    total, done = 0.0, 0.0
    for size, epochs in recipe.crops:
        if size not in costs:
            return None
        total, done = total + epochs * costs[min(size, full)], done + epochs
    return total + max(0.0, recipe.epochs - done) * costs[full]


def candidates_table() -> list[str]:
    runs = [row for row in load("training") if row.get("kind") == "run" and row.get("variant")]
    header = ["model", "variant", "machine", "runs", "cost ÷ the recipe's own", "test acc", "with TTA"]
    rows = []
    for (model, variant, kind, precision), group in by(runs, "model", "variant", "kind", "precision").items():
        costs = step_costs(kind, model, precision)
        cost, own = (recipe_cost(model, variant, costs), recipe_cost(model, None, costs)) if costs else (None, None)
        rows.append([
            f"`{model}`", variant, f"{kind} ({precision})", len(group),
            f"{cost / own:.2f}" if cost and own else "—",
            mean_sd([run.get("test_acc") for run in group]), mean_sd([run.get("test_acc_tta") for run in group]),
        ])  # fmt: skip
    return table(header, rows)


def step_cost_table() -> list[str]:
    steps = [row for row in load("training") if row.get("kind") == "step"]
    rows = []
    for (kind, model, precision), group in by(steps, "kind", "model", "precision").items():
        costs = step_costs(kind, model, precision)
        full = costs[max(costs)]
        cells = [f"{size} px: {ms:,.0f} ms ({ms / full:.2f})" for size, ms in sorted(costs.items())]
        newest = latest([row for row in group if row["size"] == max(costs)])
        achieved = "—"
        if newest.get("matmul_gflops_per_s"):
            achieved = f"{newest['step_gflops_per_s']:,} of {newest['matmul_gflops_per_s']:,}"
        rows.append([f"`{model}`", f"{kind} ({precision})", newest["batch_size"], "; ".join(cells), achieved])
    header = ["model", "machine", "batch", "ms per step by crop size (÷ whole images)",
              "GFLOP/s: whole-image step of a large matrix product"]  # fmt: skip
    return table(header, rows)


def scaling_table() -> list[str]:
    """Per machine kind, the newest scaling run: threads against Dask worker processes."""
    scaling = [row for row in load("predict") if row.get("kind") == "scaling"]
    rows = []
    for (kind,), group in sorted(by(scaling, "kind").items()):
        newest = latest(group)
        same_run = [row for row in group if row["commit"] == newest["commit"] and row["date"] == newest["date"]]
        threads = {row["workers"]: row["images_per_s"] for row in same_run if row["mode"] == "threads"}
        for row in same_run:
            versus = row["images_per_s"] / threads[row["workers"]] if row["workers"] in threads else None
            rates = [
                number(row["images_per_s"]),
                number(row["images_per_s_per_core"]),
                f"{versus:.2f}" if versus else "—",
            ]
            same = "yes" if row.get("same_rows_as_threads") else "no"
            rows.append([kind, row["date"], row["mode"], row["workers"], f"{row['files']:,}", *rates, same])
    header = ["machine", "date", "how", "workers", "files", "images/s", "per core", "÷ threads", "same rows"]
    return table(header, rows)


def pair(row: dict, key: str, shown) -> str:
    """An fp32 figure and its INT8 counterpart, "fp32 / int8"."""
    return f"{shown(row.get(f'fp32_{key}'))} / {shown(row.get(f'int8_{key}'))}"


def export_table() -> list[str]:
    """Per machine kind, its newest export of a checkpoint to fp32 and INT8."""
    exports = [row for row in load("export") if row.get("kind") == "export"]
    header = ["machine", "checkpoint", "date", "MB fp32 / INT8", "test acc fp32 / INT8", "with TTA fp32 / INT8",
              "ONNX Runtime images/s fp32 / INT8"]  # fmt: skip
    rows = []
    for (kind,), group in sorted(by(exports, "kind").items()):
        row = latest(group)
        rows.append([
            kind, f"`{row['checkpoint']}`", row["date"], pair(row, "mb", lambda value: number(value, 2)),
            pair(row, "test_acc", percent), pair(row, "test_acc_tta", percent),
            pair(row, "ort_images_per_s", number) + f" ({row['int8_speedup']:.2f}x)",
        ])  # fmt: skip
    return table(header, rows)


def predict_table() -> list[str]:
    """Per machine kind and model file, the newest whole-command figures."""
    speeds = [row for row in load("predict") if row.get("kind") == "speed"]
    versus = load("versus_ultralytics")
    header = ["machine", "file", "date", "images/s, 10,000 JPEGs", "100,000 files", "peak RSS MB 10k / 100k",
              "ratio to Ultralytics: CIFAR / photos (date)"]  # fmt: skip
    rows = []
    for (kind, file), group in sorted(by(speeds, "kind", "model").items()):
        row = latest(group)
        ours = [other for other in versus if machine_kind(other["machine"]) == kind and other["model"] == file]
        cifar = latest([other for other in ours if "CIFAR" in other["corpus"]])
        photos = latest([other for other in ours if "photos" in other["corpus"]])
        ratio = " / ".join(f"{other['ratio']:.1f}x" if other else "—" for other in (cifar, photos))
        rows.append([
            kind, f"`{file}`", row["date"], number(row["images_per_s_10k"]), number(row.get("images_per_s_100k")),
            f"{row['peak_rss_mb_10k']} / {row['peak_rss_mb_100k']}", ratio + (f" ({cifar['date']})" if cifar else ""),
        ])  # fmt: skip
    return table(header, rows)


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
    groups = defaultdict(list)
    for row in versus:
        groups[machine_kind(row["machine"]), "CIFAR JPEGs" if "CIFAR" in row["corpus"] else "photos"].append(row)
    rows = []
    for (kind, corpus), group in sorted(groups.items()):
        row = latest(group)
        theirs = fastest_ultralytics(row)
        rows.append([
            kind, corpus, row["date"], number(row["cifar_images_per_s"]), number(row["decode_images_per_s"]),
            number(row["ort_images_per_s"]), number(theirs), f"{row['ratio']:.1f}x",
            f"{row['ort_images_per_s'] / theirs:.1f}x",
        ])  # fmt: skip
    header = ["machine", "files", "date", "cifar predict images/s", "decoding alone", "model alone",
              "Ultralytics' fastest", "ratio", "ratio at the model's own rate"]  # fmt: skip
    return table(header, rows)


def portability_table() -> list[str]:
    rows = load("portability")
    if not rows:
        return []
    newest = latest(rows)["date"]
    rows = [row for row in rows if row["date"] == newest]
    runtimes = list(dict.fromkeys(row["runtime"] for row in rows))
    cells = defaultdict(dict)
    for row in rows:
        agreement = f"loads, agrees {row['agreement']:.1%}" if row["loads"] else "does not load"
        cells[row["file"]][row["runtime"]] = agreement
    versions = {row["runtime"]: row.get("runtime_version") for row in rows}
    header = ["file"] + [f"{runtime} ({versions[runtime]})" for runtime in runtimes]
    body = [[f"`{file}`"] + [cells[file].get(runtime, "—") for runtime in runtimes] for file in cells]
    note = f"{machine_kind(rows[0]['machine'])}, {newest}; agreement: top-1 against the installed ONNX Runtime"
    return [*table(header, body), "", f"{note} on {rows[0].get('images_compared', 1000):,} test images."]


def startup_table() -> list[str]:
    installs = [row for row in load("install") if row.get("kind") == "inference_install"]
    rows = []
    for (kind,), group in by(installs, "kind").items():
        row = latest(group)
        rows.append([kind, row["date"], number(row.get("megabytes")), "no" if not row.get("torch_installed") else "yes",
                     number(row.get("help_s"), 2), number(row.get("predict_one_image_s"), 2)])  # fmt: skip
    return table(["machine", "date", "inference-only install MB", "torch in it", "`cifar --help` s",
                  "`cifar predict` one image s"], rows)  # fmt: skip


def machines_table() -> list[str]:
    everything = [row for path in sorted(RESULTS.glob("*.jsonl")) for row in load(path.stem)]
    rows = []
    for (kind,), group in sorted(by(everything, "kind").items()):
        machine = group[0]["machine"]
        dates = sorted({row["date"] for row in group})
        described = machine.get("gpu") or f"{machine['cpu']}, {machine['cores']} cores, {', '.join(machine['isa'])}"
        rows.append([kind, described, len(group), f"{dates[0]} to {dates[-1]}" if len(dates) > 1 else dates[0]])
    return table(["machine kind", "as reported", "result rows", "dates"], rows)


REPRODUCE = [
    ("Training", "python benchmarks/training.py --model MODEL --seeds 0 1 2 [--precision P]"),
    ("Against airbench94", "python benchmarks/versus_airbench.py --reference PATH/airbench_reference.py --seed S"),
    ("Recipe candidates", "python benchmarks/training.py --seeds 0 1 --set FIELD=VALUE ...; "
                          "step costs: python benchmarks/training.py --step-cost"),
    ("Inference", "python benchmarks/export.py; python benchmarks/predict.py; "
                  "python benchmarks/versus_ultralytics.py --yolo ULTRALYTICS_VENV/bin/yolo"),
    ("Where the files load", "python benchmarks/portability.py"),
    ("Install and start", "python benchmarks/install.py"),
]  # fmt: skip


def benchmarks_page() -> str:
    sections = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/report.py` from the rows in `benchmarks/results/` (one JSON object "
        "per result: date, commit, machine, command, figures); edit the rows' scripts, not this page. Each "
        "table shows the latest figures of each machine kind; the rows keep every earlier one. Accuracies are "
        "the final weights' on the test split (CIFAR-10 as JPEGs), scored in fp32; ± is one standard "
        "deviation over the runs. Compare times only within a machine kind and as ratios measured back to "
        "back: these hosts' speed drifts by up to 2x within an hour.",
        "",
        "## Machines",
        "",
        *machines_table(),
        "",
        "## Training",
        "",
        "`cifar train` with each model's own recipe: the runs of its newest code. Training s is the epochs' "
        "training loops; wall s the whole command (the decode cache warm); train s ÷ airbench94 is the ratio to "
        "airbench94's own training time measured back to back, before and after (`versus_airbench.py`).",
        "",
        *training_table(),
        "",
        "## Recipe candidates",
        "",
        "Recipes tried with `--set` (and earlier variants described in words). The cost is the sum over the "
        "epochs of each epoch's step cost at its crop size (the step costs below, same machine kind), over the "
        "model's own recipe's.",
        "",
        *candidates_table(),
        "",
        *step_cost_table(),
        "",
        "## Export",
        "",
        "`cifar export --int8` of a checkpoint (`tools/default_model/model.pt` is the bundled models' source): "
        "sizes, test accuracy plain and with TTA, and ONNX Runtime alone at batch 256 on every core.",
        "",
        *export_table(),
        "",
        "## Predict",
        "",
        "Whole `cifar predict` commands, start included, with the bundled model `cifar predict` picks (or the one "
        "named): the 10,000 CIFAR test JPEGs, the same linked ten times, peak RSS; against Ultralytics' "
        "`yolo classify predict` on the CIFAR JPEGs and on photo-sized JPEGs, back to back.",
        "",
        *predict_table(),
        "",
        "How the whole command scales with workers on one machine: N threads of one process, against a Dask "
        "cluster of N single-thread worker processes (a real scheduler and workers; the client and scheduler "
        "share the cores), on the test JPEGs linked ten times (`predict.py --scaling`).",
        "",
        *scaling_table(),
        "",
        "Where the time goes: cifar predict's decoder alone and its model alone (ONNX Runtime on decoded "
        "images), each on every core, from the same comparison runs. The whole command cannot outrun the "
        "model alone, so the last column bounds the ratio to Ultralytics even with decoding free.",
        "",
        *stages_table(),
        "",
        "## Where the files load",
        "",
        *portability_table(),
        "",
        "## Install and start",
        "",
        *startup_table(),
        "",
        "## Reproduce",
        "",
        *table(["table", "command"], [[name, f"`{command}`"] for name, command in REPRODUCE]),
        "",
        "Then `python benchmarks/report.py` to rewrite this page; docs/design.md says more.",
    ]
    return "\n".join(sections) + "\n"


def readme_performance() -> str:
    """A few headline figures for README.md, each from the machine kind measured most recently."""
    lines = []
    groups = training_groups()
    for model in ("airbench-cpu", "tutorial"):
        runs = max((runs for key, runs in groups.items() if key[0] == model), key=lambda runs: latest(runs)["date"])
        kind, precision = machine_kind(runs[0]["machine"]), runs[0]["precision"]
        ratios = [run["ratio"] for run in runs if run.get("ratio") is not None]
        ratio = f"; {statistics.mean(ratios):.2f}x airbench94's training time" if ratios else ""
        train = mean_sd([run.get("train_s") for run in runs], as_percent=False)
        accuracy = mean_sd([run.get("test_acc_tta") for run in runs])
        count = f"{len(runs)} run" + ("s" if len(runs) > 1 else "")
        figure = f"{accuracy} with TTA ({count}); {train} s of training in {precision}{ratio}"
        lines.append([f"`cifar train --model {model}`", kind, figure])
    speed = latest([row for row in load("predict") if row.get("kind") == "speed"])
    figure = f"{speed['images_per_s_10k']:,} images/s with `{speed['model']}`, peak RSS {speed['peak_rss_mb_10k']} MB"
    lines.append(["`cifar predict`, 10,000 CIFAR JPEGs", machine_kind(speed["machine"]), figure])
    install = latest([row for row in load("install") if row.get("kind") == "inference_install"])
    lines.append(["inference-only install", machine_kind(install["machine"]), f"{install['megabytes']} MB, no torch"])
    note = "\n\nEvery figure, the machines, and how to reproduce them: [BENCHMARKS.md](BENCHMARKS.md).\n"
    return "\n".join(table(["what", "machine", "figure"], lines)) + note


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
