"""What `cifar check` finds, and findings.csv, the file it writes them to.

A finding is one problem of one file: its kind (KINDS), the problem within the kind, a score
(within a kind, higher is more likely a real problem), and where it applies the related file
(a duplicate's twin) and the given and suggested labels. findings.csv lists them kind by kind,
most likely first; `cifar train --exclude findings.csv` trains without the files it names.
"""

import csv
import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from cifarcli.errors import CifarError

KINDS = ("files", "structure", "duplicates", "label issues")
COLUMNS = ("path", "kind", "problem", "score", "related", "given", "suggested", "detail")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    problem: str  # what is wrong, e.g. "truncated", "leak", "likely mislabelled"
    path: str  # the file, as a path inside the data source ("" for a whole class or split)
    score: float = 1.0
    related: str = ""
    given: str = ""
    suggested: str = ""
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def ordered(findings: list[Finding]) -> list[Finding]:
    """Kind by kind in KINDS' order, each kind's most likely first."""
    return sorted(findings, key=lambda finding: (KINDS.index(finding.kind), -finding.score, finding.path))


def findings_csv(findings: list[Finding]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for finding in ordered(findings):
        writer.writerow({**finding.to_dict(), "score": round(finding.score, 4)})
    return text.getvalue()


def read_exclusions(path: Path) -> list[str]:
    """The paths a list names: a findings.csv (its path column) or a text file of one path per
    line (# comments and blank lines ignored)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CifarError(
            f"--exclude {path}: cannot read it ({error}); give a findings.csv or a list of paths"
        ) from None
    if text.startswith(",".join(COLUMNS[:2])):
        paths = [row["path"] for row in csv.DictReader(io.StringIO(text)) if row["path"]]
    else:
        paths = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not paths:
        raise CifarError(f"--exclude {path}: names no files; give a findings.csv of `cifar check` or one path a line")
    return sorted(set(paths))


def exclusion_record(excluded: list[str]) -> dict:
    """What a run folder and a model card record of the files --exclude left out: how many, and
    the SHA-256 of their sorted paths (the list itself is the run folder's excluded.txt)."""
    if not excluded:
        return {}
    digest = hashlib.sha256("\n".join(sorted(excluded)).encode()).hexdigest()
    return {"files": len(excluded), "sha256": digest}
