"""The benchmark results: every row says when, where and on what code it was measured, and the
committed BENCHMARKS.md and README performance table are what the generator writes from them."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_result_row_has_a_date_commit_machine_and_command():
    rows = 0
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            row = json.loads(line)
            where = f"{path.name}:{number}"
            assert len(row["date"]) == 10 and row["date"][4] == "-", where
            assert len(row["commit"].rstrip("+")) >= 7, where
            machine = row["machine"]
            assert "gpu" in machine or {"cpu", "cores", "isa"} <= set(machine), where
            assert row["command"], where
            rows += 1
    assert rows > 0


def test_benchmarks_md_and_the_readme_table_are_what_the_rows_give():
    check = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
