"""What every benchmark script shares: where the data is, what a result row holds, the timers.

A result is one JSON object on one line of benchmarks/results/<suite>.jsonl: date, commit,
machine, command, then the figures (append_result). benchmarks/report.py turns the rows into
BENCHMARKS.md.
"""

import datetime
import json
import platform
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
PROBE = (
    "import resource, subprocess, sys, time; "
    "started = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True); "
    "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


RESULTS = ROOT / "benchmarks" / "results"
# The instruction sets that change the answers here: bf16 training (avx512_bf16, amx) and INT8
# inference (avx512_vnni, amx) run other kernels, and avx2 is the floor of every x86 kind seen.
INSTRUCTION_SETS = {"avx2": ("avx2",), "avx512_bf16": ("avx512_bf16",), "avx512_vnni": ("avx512_vnni",),
                    "amx": ("amx_bf16", "amx_int8", "amx_tile")}  # fmt: skip


def machine(gpu: "str | None" = None) -> dict:
    """What a result ran on: the CPU's model name, cores and instruction sets, or the GPU."""
    if gpu:
        return {"gpu": gpu}
    from cifarcli.hardware import cores, detected_cpu_flags  # the machine's own, never CIFARCLI_CPU_FLAGS

    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        lines = []
    default = platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), default)
    isa = [name_ for name_, needs in INSTRUCTION_SETS.items() if detected_cpu_flags() & set(needs)]
    return {"cpu": name, "cores": cores(), "isa": isa}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shown(path) -> str:
    """A path as a result row shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout.strip()


def commit() -> str:
    """The checked-out commit, with "+" when tracked files other than the results differ from it."""
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return git("rev-parse", "--short=7", "HEAD") + ("+" if changed else "")


def code_version() -> str:
    """The package's source tree at this commit, with "+" when it differs: results measured on the
    same package belong together, whatever else the commit changed."""
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "cifarcli")
    return git("rev-parse", "--short=7", "HEAD:cifarcli") + ("+" if changed else "")


def append_result(suite: str, command: str, figures: dict) -> dict:
    """Append one result to benchmarks/results/<suite>.jsonl: date, commit, machine, command,
    then the figures. Returns the row."""
    row = {"date": today(), "commit": commit(), "machine": machine(), "command": command, **figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{suite}.jsonl", "a") as file:
        file.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return row


def timed_cifar_train(command: list[str], data: str) -> tuple[dict, float, str]:
    """Run `cifar train ...` (a command without --name, --out and --json) into runs/bench with
    this interpreter: (its --json result, the command's wall seconds, the command as shown)."""
    full = [sys.executable, "-m", "cifarcli", *command[1:], "--name", "bench", "--out", str(ROOT / "runs" / "bench")]
    started = time.perf_counter()
    result = json.loads(subprocess.run([*full, "--json"], stdout=subprocess.PIPE, text=True, check=True).stdout)
    return result, time.perf_counter() - started, " ".join(command).replace(data, Path(data).name)


def today() -> str:
    return datetime.date.today().isoformat()


def unpack_test_split(archive: Path, folder: Path) -> Path:
    """The archive's test images, one folder per class, unpacked under folder; returns test/."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/test/" in m.name and m.isfile()]
        tar.extractall(folder, members=members, filter="data")
    return next(folder.rglob("test"))


def compile_package(root: Path = ROOT) -> None:
    """Byte-compile cifarcli under root, as `pip install` does for an installed copy. These
    machines set PYTHONDONTWRITEBYTECODE, so a checkout's package would otherwise be compiled from
    source at every start: about 20 ms of a one-image `cifar predict` that no user pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "cifarcli")], check=True)


def whole_command(
    command: list[str], environment: "dict | None" = None, cwd: "Path | None" = None
) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one command, run whole: interpreter start included.

    A small probe interpreter runs the command, so that its children's peak RSS is the command's
    alone (a child forked from this process would count this process's pages), and times it
    itself, so that the probe's own start is not in the wall time."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *command], stdout=subprocess.PIPE, text=True, check=True, env=environment, cwd=cwd
    )
    seconds, peak_kb = probe.stdout.split()
    return float(seconds), int(peak_kb) // 1024


def decode_images(files: list[Path], size: int, threads: int, batch_size: int = 256):
    """(decoded images, images/s) of cifar predict's decoder alone, each thread decoding whole
    batches as cifar predict's workers do."""
    import numpy as np

    from cifarcli.batches import decode
    from cifarcli.images import read_regular_file

    def decode_batch(batch):  # as a predict worker does: the bytes, then predict's decoding rules
        return [decode(read_regular_file(file), str(file), size) for file in batch]

    batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        decoded = pool.map(decode_batch, batches)
        images = np.stack([image for batch in decoded for image in batch])
    return images, len(files) / (time.perf_counter() - started)


def inference_rate(classifier, images, batch_size: int = 256, at_least: int = 2048, workers: int = 1) -> float:
    """Images/s of a classifier alone on already-decoded images, in full batches, cycling through
    them until at least `at_least` images ran, with `workers` threads calling it at once (as
    cifar predict's workers call one ONNX Runtime session)."""
    batches = [images[start : start + batch_size] for start in range(0, len(images) - batch_size + 1, batch_size)]
    classifier.predict_logits(batches[0])
    runs = max(len(batches), -(-at_least // batch_size))
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda index: classifier.predict_logits(batches[index % len(batches)]), range(runs)))
    return runs * batch_size / (time.perf_counter() - started)


def make_photos(test: Path, folder: Path, count: int) -> str:
    """count photo-like JPEGs under folder/<class>/, each an upscaled test image; returns a
    description of the corpus (sizes, bits per pixel). Long sides drawn around 430 px (one at
    2400x1600), sensor-like noise so that they compress like photos, a tenth progressive and a
    tenth stored turned with an EXIF orientation."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sources = sorted(test.rglob("*.jpg"))
    picks = rng.choice(len(sources), size=count, replace=False)
    long_sides = np.clip(np.exp(rng.normal(np.log(430), 0.5, count)), 200, 2400).astype(int)
    long_sides[0] = 2400
    bits, sides = [], []
    for index, (pick, long_side) in enumerate(zip(picks, long_sides, strict=True)):
        source = sources[pick]
        aspect = rng.choice([4 / 3, 3 / 2, 16 / 9]) if index else 3 / 2
        width, height = long_side, int(long_side / aspect)
        if index and rng.random() < 0.3:
            width, height = height, width
        pixels = np.asarray(Image.open(source).convert("RGB").resize((width, height), Image.BICUBIC), np.float32)
        pixels += rng.normal(0, 6, pixels.shape)  # sensor noise: flat upscales compress unlike photos
        photo = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        target = folder / source.parent.name / f"photo{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        kind = index % 10
        if kind == 1:
            photo.save(target, quality=90, progressive=True)
        elif kind == 2:
            exif = Image.Exif()
            exif[0x0112] = 6  # stored turned left; viewers (and cifar predict) turn it back
            photo.rotate(90, expand=True).save(target, quality=90, exif=exif)
        else:
            photo.save(target, quality=90)
        bits.append(target.stat().st_size * 8 / (width * height))
        sides.append(max(width, height))
    return (
        f"{count:,} photos, long side median {np.median(sides):.0f} px (largest 2400x1600), "
        f"{np.median(bits):.1f} bits per pixel (median)"
    )
