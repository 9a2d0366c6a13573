"""What `cifar check --out DIR` writes: findings.csv (findings.py's format) and a picture per
kind that pictures help: duplicates.png (each twin beside the other) and label_issues.png (each
image with its given and suggested class). Drawn with Pillow, so they need no extra."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cifarcli.checkpoint import atomic_write, check_can_write
from cifarcli.errors import CifarError
from cifarcli.findings import findings_csv

FINDINGS_FILE = "findings.csv"
PICTURES = {"duplicates": "duplicates.png", "label issues": "label_issues.png"}
SHOWN = 24  # most likely findings drawn per picture
SCALE = 3  # each image drawn this many times its size
COLUMNS = 4
CAPTION_HEIGHT = 50


def cell(finding, pixels: dict) -> Image.Image:
    """One finding: its image (and its twin's), with two caption lines."""
    images = [pixels[path] for path in (finding.path, finding.related) if path in pixels]
    size = images[0].shape[0] * SCALE
    drawn = Image.new("RGB", (2 * size + 4, size + CAPTION_HEIGHT), "white")
    for place, image in enumerate(images):
        drawn.paste(Image.fromarray(np.asarray(image)).resize((size, size), Image.NEAREST), (place * (size + 4), 0))
    name = finding.path.rsplit("/", 1)[-1][:28]
    if finding.kind == "label issues":
        caption = [name, f"given {finding.given}, p = {1 - finding.score:.2f}", f"likely {finding.suggested}"]
    else:
        caption = [name, f"{finding.problem}, {finding.score:.2f}", f"{finding.given} / {finding.suggested}"]
    ImageDraw.Draw(drawn).multiline_text(
        (2, size + 2), "\n".join(caption), fill="black", font=ImageFont.load_default(11)
    )
    return drawn


def picture(findings: list, pixels: dict) -> "Image.Image | None":
    cells = [cell(finding, pixels) for finding in findings[:SHOWN] if finding.path in pixels]
    if not cells:
        return None
    width, height = cells[0].size
    rows = -(-len(cells) // COLUMNS)
    canvas = Image.new("RGB", (COLUMNS * (width + 8), rows * (height + 8)), "white")
    for index, drawn in enumerate(cells):
        canvas.paste(drawn, ((index % COLUMNS) * (width + 8), (index // COLUMNS) * (height + 8)))
    return canvas


def check_outputs_writable(folder: "Path | None") -> None:
    """Before the check: --out's files could be written (nothing to check without --out)."""
    if folder is not None:
        if Path(folder).exists() and not Path(folder).is_dir():
            raise CifarError(f"--out {folder}: is a file; give a folder for findings.csv and the pictures")
        check_can_write(Path(folder) / FINDINGS_FILE)


def write_check_outputs(report, folder: Path) -> list[Path]:
    """findings.csv and the pictures, each written whole (atomic_write); the files written."""
    folder = Path(folder)
    text = findings_csv(report.findings)
    atomic_write(folder / FINDINGS_FILE, lambda file: file.write(text.encode()))
    written = [folder / FINDINGS_FILE]
    for kind, name in PICTURES.items():
        found = sorted((f for f in report.findings if f.kind == kind), key=lambda finding: -finding.score)
        drawn = picture(found, report.pixels)
        if drawn is not None:
            atomic_write(folder / name, lambda file, drawn=drawn: drawn.save(file, format="PNG"))
            written.append(folder / name)
    return written
