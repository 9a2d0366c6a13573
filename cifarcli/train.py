"""The training loop: batch augmentation, progressive crops, optimizer steps, per-epoch test, TTA.

Read top to bottom: choose the device, build the model, then one plain loop over epochs and
steps. Everything a run needs is in its Recipe (models.py); everything it writes goes to
its run folder through `RunFiles`. Progress goes to an `events` object (report.py draws it),
so this module knows nothing of the terminal.
"""

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarcli import __version__
from cifarcli.checkpoint import ModelInfo, atomic_write, load_checkpoint, materialize, save_checkpoint
from cifarcli.classifier import TorchClassifier, predict_in_batches
from cifarcli.data import Dataset, describe
from cifarcli.distributed import Ranks, broadcast_tensors, check_identical_weights, sum_across, wrap_model
from cifarcli.errors import CifarError
from cifarcli.evaluate import cross_entropy
from cifarcli.models import Recipe, get_model_entry
from cifarcli.optim import LOOKAHEAD_EVERY, Lookahead, lr_factor, make_optimizers

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s"]
EVAL_BATCH = 1000
SINGLE_PROCESS = Ranks()


class TrainingInterrupted(Exception):
    """Raised by a signal handler; last.pt holds the last completed epoch."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


# ---------------------------------------------------------------- device and precision


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def choose_device(requested: str, processes_here: int = 1):
    """(device, autocast dtype or None). bf16 only where the hardware runs it natively:
    emulated bf16 on CPUs without it is 9-16x slower than fp32. The cores are shared among the
    training processes on this machine."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise CifarError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise CifarError("--device mps: Apple's MPS backend is not available; use --device cpu or auto")
        return "mps", None
    if requested == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes_here))
        return "cpu", torch.bfloat16 if cpu_has_native_bf16() else None
    raise CifarError(f"--device {requested}: choose auto, cpu, cuda or mps")


def keep_freed_memory_in_process() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the kernel.

    A training step allocates and frees the same activations, hundreds of MB each at batch 2000.
    By default glibc maps blocks that large afresh and unmaps them on free, so every step
    page-faults them in again: airbench94's network trained at 148 img/s, and at 222 img/s with
    this (benchmarks/step_speed.py, BENCHMARKS.md). Not glibc: nothing to do.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)  # large blocks come from the heap, which is kept ...
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # ... rather than trimmed after each free
    libc.mallopt(m_arena_max, 1)  # one heap, so the intra-op threads reuse the same memory


# ---------------------------------------------------------------- augmentation on whole batches


def reflect_pad(images: np.ndarray, pad: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H+2p, W+2p) uint8, padded once per run, not per step."""
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else images
    return np.ascontiguousarray(padded.transpose(0, 3, 1, 2))


def augment_batch(padded, indices, size, flip_mask, generator):
    """Random crop of size x size pixels (a translation when the padded images are only a few
    pixels larger) and horizontal flip for one batch.

    padded: uint8 (N, 3, H, W) tensor with H, W >= size; returns uint8 (B, 3, size, size).
    """
    import torch

    batch = padded[indices]
    spare_rows, spare_cols = padded.shape[2] - size, padded.shape[3] - size
    if spare_rows or spare_cols:
        n = len(indices)
        dy = torch.randint(0, spare_rows + 1, (n, 1, 1, 1), generator=generator)
        dx = torch.randint(0, spare_cols + 1, (n, 1, 1, 1), generator=generator)
        rows = dy + torch.arange(size).view(1, 1, size, 1)
        cols = dx + torch.arange(size).view(1, 1, 1, size)
        batch = batch[torch.arange(n).view(n, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
    return torch.where(flip_mask.view(-1, 1, 1, 1), batch.flip(3), batch)


def crop_size(epoch: int, full_size: int, recipe: Recipe) -> int:
    """Progressive resizing by cropping: the first small_crop_epochs train on random
    small_crop-pixel crops, at the full images' scale, so those steps cost (small/full)^2.
    Images no larger than small_crop train at their full size throughout."""
    if 0 < recipe.small_crop < full_size and epoch < recipe.small_crop_epochs:
        return recipe.small_crop
    return full_size


# ---------------------------------------------------------------- the run folder


def new_run_dir(out: Path, name: str) -> Path:
    """runs/train/<name>, or <name>2, <name>3, ... when it exists (as Ultralytics does)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise CifarError(f"--name {name}: give a plain folder name; use --out to choose where runs go")
    try:
        out.mkdir(parents=True, exist_ok=True)
        candidate, number = out / name, 1
        while candidate.exists():
            number += 1
            candidate = out / f"{name}{number}"
        candidate.mkdir()
    except OSError as error:
        raise CifarError(f"--out {out}: cannot create a run folder there ({error.strerror})") from None
    return candidate


def write_history(path: Path, rows: list[dict]) -> None:
    def write(file):
        text = [",".join(HISTORY_FIELDS)] + [",".join(str(row[key]) for key in HISTORY_FIELDS) for row in rows]
        file.write(("\n".join(text) + "\n").encode())

    atomic_write(path, write)


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return [
            {key: (int(v) if key == "epoch" else float(v)) for key, v in row.items()} for row in csv.DictReader(file)
        ]


def plot_curves(path: Path, rows: list[dict]) -> None:
    """Accuracy and test accuracy against epoch (as the Keras tutorial plots them), and loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_acc"] for row in rows], marker="o", label="accuracy")
    left.plot(epochs, [row["test_acc"] for row in rows], marker="o", label="test accuracy")
    left.set(xlabel="Epoch", ylabel="Accuracy", title="Accuracy")
    right.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="loss")
    right.plot(epochs, [row["test_loss"] for row in rows], marker="o", label="test loss")
    right.set(xlabel="Epoch", ylabel="Loss", title="Loss")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)


# ---------------------------------------------------------------- evaluation


def score(classifier, split, tta: int) -> tuple[float, float]:
    """(loss, accuracy) of a classifier on a split."""
    logits = predict_in_batches(classifier, split.images, EVAL_BATCH, tta)
    return cross_entropy(logits, split.labels), float((logits.argmax(1) == split.labels).mean())


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    test_acc: float  # final weights, no TTA
    test_acc_tta: float  # final weights, with the recipe's TTA
    tta: int
    train_seconds: float


def train(
    dataset: Dataset,
    model_name: str,
    recipe: Recipe,
    run_dir: Path,
    device: str = "auto",
    events=None,
    resume_from: "Path | None" = None,
    ranks: Ranks = SINGLE_PROCESS,
) -> TrainResult:
    """Train and write the run folder. Under torchrun (ranks.active) every rank trains its
    shard of each global batch and only rank 0 shows progress and writes files."""
    import torch

    events = events if events and ranks.is_main else SilentEvents()
    device, autocast_dtype = choose_device(device, ranks.local_world)
    if device == "cpu":
        keep_freed_memory_in_process()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    entry = get_model_entry(model_name)

    # 1. Model. Pixels become float only here; mean/std live inside the model.
    train_split, size = dataset.train, dataset.train.images.shape[1]
    mean = (train_split.images.reshape(-1, 3).mean(0) / 255).round(4).tolist()
    std = (train_split.images.reshape(-1, 3).std(0) / 255).round(4).tolist()
    model = entry.build(len(dataset.classes), tuple(mean), tuple(std))
    materialize(model, size)
    if entry.prepare:
        entry.prepare(model, train_split.images)
    model = model.to(device, memory_format=torch.channels_last)
    info = ModelInfo(model_name, dataset.classes, size, mean, std, recipe.to_dict())
    classifier = TorchClassifier(model, info, "training", device, autocast_dtype)
    network = wrap_model(model, device, ranks)  # DDP under torchrun, else the model itself

    # 2. Steps, schedule, optimizer. A fractional epoch count trains part of the last epoch.
    batch_size = min(recipe.batch_size, len(train_split))
    steps_per_epoch = len(train_split) // batch_size
    total_steps = math.ceil(recipe.epochs * steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizers = make_optimizers(model, recipe)
    lookahead = Lookahead(model) if recipe.lookahead else None
    whiten_bias_steps = round(recipe.whiten_bias_epochs * steps_per_epoch)
    padded = torch.from_numpy(reflect_pad(train_split.images, recipe.translate))
    labels = torch.from_numpy(train_split.labels)
    # Alternating flip (airbench): a random half is mirrored in even epochs, the other half in odd.
    flip_base = torch.rand(len(train_split), generator=generator) < 0.5

    history, start_epoch, train_seconds = [], 0, 0.0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        check_resumable(state, info, resume_from)
        model.load_state_dict(state["model"])
        for optimizer, saved in zip(optimizers, state["training"]["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        generator.set_state(state["training"]["generator"])
        torch.set_rng_state(state["training"]["torch_rng"])
        if lookahead:
            for average, saved in zip(lookahead.average, state["training"]["lookahead"], strict=True):
                average.copy_(saved)
        history = read_history(run_dir / "history.csv")[: state["info"].epoch]
        start_epoch = state["info"].epoch
        train_seconds = sum(row["seconds"] for row in history)

    # After any resume: load_state_dict replaces the optimizers' group dicts.
    param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]

    def save(path: Path, epoch: int, metrics: dict, with_training_state: bool) -> None:
        training = None
        if with_training_state:
            training = {
                "optimizers": [optimizer.state_dict() for optimizer in optimizers],
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "lookahead": lookahead.average if lookahead else [],
            }
        described = ModelInfo(model_name, dataset.classes, size, mean, std, recipe.to_dict(), metrics, epoch)
        if ranks.is_main:
            save_checkpoint(path, model, described, training)

    if ranks.is_main:
        write_config(run_dir / "config.json", model_name, recipe, dataset, device, autocast_dtype, ranks.world)
    events.start(model_name, run_dir, epochs, steps_per_epoch, device, autocast_dtype)
    best_acc = max((row["test_acc"] for row in history), default=-1.0)

    # 3. The loop.
    for epoch in range(start_epoch, epochs):
        model.train()
        first_step = epoch * steps_per_epoch
        steps = min(steps_per_epoch, total_steps - first_step)
        order = torch.randperm(len(train_split), generator=generator)
        flips = flip_masks(recipe.flip, flip_base, epoch, generator)
        epoch_size = crop_size(epoch, size, recipe)
        events.epoch_start(epoch + 1, steps)
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for step in range(steps):
            global_step = first_step + step
            if entry.prepare and global_step >= whiten_bias_steps:  # >=: a resumed run too
                freeze_whitening_bias(model)
            for group in param_groups:
                group["lr"] = group["base_lr"] * lr_factor(global_step, total_steps, recipe)
            indices = order[step * batch_size : (step + 1) * batch_size]
            # Every rank augments the whole global batch alike, then keeps its shard.
            inputs = augment_batch(padded, indices, epoch_size, flips[indices], generator)
            inputs, indices = inputs[ranks.rank :: ranks.world], indices[ranks.rank :: ranks.world]
            inputs = inputs.to(device, non_blocking=True).float().div_(255)  # (B, 3, H, W) in [0, 1]
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            targets = labels[indices].to(device, non_blocking=True)  # (B,)
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = network(inputs).float()  # (B, classes)
            loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
            model.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            if lookahead and (global_step + 1) % LOOKAHEAD_EVERY == 0:
                lookahead.update(0.95**LOOKAHEAD_EVERY * ((global_step + 1) / total_steps) ** 3)
            loss_sum += loss.item() * len(indices)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(indices)
            elapsed = time.perf_counter() - started
            events.step(step + 1, loss_sum / seen, correct / seen, seen * ranks.world / elapsed)
        if lookahead and epoch == epochs - 1:
            lookahead.update(0.0)  # end on the average
        seconds = time.perf_counter() - started
        train_seconds += seconds
        loss_sum, correct, seen = sum_across([loss_sum, correct, seen], ranks)
        broadcast_tensors([*model.buffers(), *(lookahead.average if lookahead else [])], ranks)

        # 4. Evaluate the epoch's weights on the test split (without TTA) and save.
        test_loss, test_acc = score(classifier, dataset.test, tta=0)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum / seen, 5),
            "train_acc": round(correct / seen, 5),
            "test_loss": round(test_loss, 5),
            "test_acc": round(test_acc, 5),
            "lr": round(param_groups[0]["lr"], 6),
            "seconds": round(seconds, 2),
            "images_per_s": round(seen / seconds, 1),
        }
        history.append(row)
        if ranks.is_main:
            write_history(run_dir / "history.csv", history)
        metrics = {"test_acc": row["test_acc"], "test_loss": row["test_loss"], "epoch": epoch + 1}
        save(run_dir / "last.pt", epoch + 1, metrics, with_training_state=True)
        if test_acc > best_acc:
            best_acc = test_acc
            save(run_dir / "best.pt", epoch + 1, metrics, with_training_state=False)
        events.epoch_end(row)

    # 5. The final figure: the last weights, plain and with the recipe's TTA.
    final_acc = history[-1]["test_acc"]
    _, tta_acc = score(classifier, dataset.test, recipe.tta)
    metrics = {
        "test_acc": final_acc,
        "test_loss": history[-1]["test_loss"],
        "test_acc_tta": round(tta_acc, 5),
        "tta": recipe.tta,
        "epoch": epochs,
        "train_seconds": round(train_seconds, 1),
    }
    save(run_dir / "last.pt", epochs, metrics, with_training_state=True)
    if history[-1]["test_acc"] >= best_acc:
        save(run_dir / "best.pt", epochs, metrics, with_training_state=False)
    check_identical_weights(model, ranks)
    if ranks.is_main:
        plot_curves(run_dir / "curves.png", history)
    return TrainResult(run_dir, history, final_acc, round(tta_acc, 5), recipe.tta, train_seconds)


def flip_masks(policy: str, flip_base, epoch: int, generator):
    import torch

    if policy == "alternating":
        return flip_base ^ bool(epoch % 2)
    if policy == "random":
        return torch.rand(len(flip_base), generator=generator) < 0.5
    return torch.zeros_like(flip_base)


def freeze_whitening_bias(model) -> None:
    from cifarcli.models import whitening_layer

    whitening_layer(model).bias.requires_grad_(False)


def write_config(path: Path, model_name: str, recipe: Recipe, dataset: Dataset, device: str, autocast_dtype, processes):
    config = {
        "model": model_name,
        "recipe": recipe.to_dict(),
        "data": describe(dataset),
        "device": device,
        "processes": processes,
        "precision": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "float32",
        "cifarcli": __version__,
    }
    atomic_write(path, lambda file: file.write((json.dumps(config, indent=2) + "\n").encode()))


def check_resumable(state: dict, info: ModelInfo, path: Path) -> None:
    saved = state["info"]
    if "training" not in state:
        raise CifarError(f"--resume {path}: this checkpoint has no training state; resume from last.pt")
    if "optimizers" not in state["training"]:  # a single SGD "optimizer" before Muon came in
        raise CifarError(
            f"--resume {path}: saved by an earlier cifarcli whose training state cannot be continued; start a new run"
        )
    if saved.model != info.model or saved.recipe != info.recipe:
        raise CifarError(f"--resume {path}: the model or recipe differs from the checkpoint's; drop the overrides")
    if saved.classes != info.classes or saved.mean != info.mean or saved.std != info.std:
        raise CifarError(f"--resume {path}: the data differs from the checkpoint's; pass the same --data")


class SilentEvents:
    """The events interface that report.py implements; this one shows nothing."""

    def start(self, *args):
        pass

    def epoch_start(self, epoch, steps):
        pass

    def step(self, step, loss, acc, images_per_s):
        pass

    def epoch_end(self, row):
        pass
