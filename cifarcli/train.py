"""The training loop: batch augmentation, progressive crops, optimizer steps, per-epoch test, TTA.

Read top to bottom: `setup()` builds the model, optimizers and data tensors for a RunContext
(run.py: device, precision, processes, run folder), `run_epoch()` takes the steps of one epoch,
`record_epoch()` scores and saves it, and `finish()` scores the final weights. Everything a run
needs is in its Recipe (models.py). Progress goes to an `events` object (report.py draws it),
so this module knows nothing of the terminal.

Scoring is split by purpose. Each epoch's test figure is an estimate for the user to watch:
EPOCH_TEST_IMAGES test images in the training precision, 1-3% of an epoch's time. The
result (the last epoch's plain and TTA figures, and best.pt's) is exact: the whole test split
in fp32, whatever the training precision, so that `cifar evaluate` of a checkpoint and of its
ONNX export reproduce it to the digit. Each history row says which it is.
"""

import csv
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cifarcli import __version__
from cifarcli.checkpoint import ModelInfo, atomic_write, load_checkpoint, materialize, save_checkpoint
from cifarcli.classifier import (
    EVAL_BATCH,
    TorchClassifier,
    predict_in_batches,
    predict_plain_and_tta_in_batches,
)
from cifarcli.data import Dataset, describe
from cifarcli.distributed import broadcast_tensors, check_identical_weights, sum_across, wrap_model
from cifarcli.errors import CifarError
from cifarcli.evaluate import accuracy, cross_entropy, evaluate, pyplot, save_figure
from cifarcli.models import Recipe, get_model_entry
from cifarcli.optim import LOOKAHEAD_EVERY, Lookahead, lr_factor, make_optimizers
from cifarcli.run import RunContext, process_settings

HELD_OUT_FILE = "held_out.txt"  # a class-folder source's test files, one path inside the source a line
# A fixed sample of the test split scores the epochs before the last: scoring the whole test
# split in fp32 after every epoch made the wait after training a large part of the run.
EPOCH_TEST_IMAGES = 2000
GPU_STEPS_PER_REPORT = 10  # steps between progress reports on a GPU, where each report waits for the device
HISTORY_FIELDS = [
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_images", "scored_in", "lr", "seconds",
    "images_per_s",
]  # fmt: skip


# ---------------------------------------------------------------- augmentation on whole batches


def reflect_pad(images: np.ndarray, pad: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H+2p, W+2p) uint8, padded once per run, not per step."""
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else images
    return np.ascontiguousarray(padded.transpose(0, 3, 1, 2))


def draw_crop_offsets(padded, size: int, steps: int, batch_size: int, generator):
    """The random crop offsets of an epoch's steps, (steps, 2, batch_size): each step's rows (dy)
    then columns (dx), drawn in that order. None when the padded images are no larger than size."""
    import torch

    spare_rows, spare_cols = padded.shape[2] - size, padded.shape[3] - size
    if not (spare_rows or spare_cols):
        return None

    def draw(spare):
        return torch.randint(0, spare + 1, (batch_size,), generator=generator)

    return torch.stack([torch.stack([draw(spare_rows), draw(spare_cols)]) for _ in range(steps)])


def augment_batch(padded, indices, size, flip_mask, offsets):
    """Random crop of size x size pixels (a translation when the padded images are only a few
    pixels larger) and horizontal flip for one batch, on the device that holds the images.

    padded: uint8 (N, 3, H, W) tensor with H, W >= size; offsets: (2, B) from draw_crop_offsets,
    or None; returns uint8 (B, 3, size, size).
    """
    import torch

    batch = padded[indices]
    if offsets is not None:
        n, device = len(indices), padded.device
        rows = offsets[0].view(n, 1, 1, 1) + torch.arange(size, device=device).view(1, 1, size, 1)
        cols = offsets[1].view(n, 1, 1, 1) + torch.arange(size, device=device).view(1, 1, 1, size)
        channels = torch.arange(padded.shape[1], device=device).view(1, -1, 1, 1)
        batch = batch[torch.arange(n, device=device).view(n, 1, 1, 1), channels, rows, cols]
    return torch.where(flip_mask.view(-1, 1, 1, 1), batch.flip(3), batch)


def crop_size(epoch: int, full_size: int, recipe: Recipe) -> int:
    """Progressive resizing by cropping: the recipe's crop stages, ((size, epochs), ...), train
    the first epochs on random crops at the full images' scale, whose steps cost less than whole
    images' (benchmarks/training.py prices them); then whole images. A crop no smaller than the
    images trains at their full size."""
    stage_end = 0.0
    for size, epochs in recipe.crops:
        stage_end += epochs
        if epoch < stage_end:
            return min(size, full_size)
    return full_size


def channel_mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1] units, to 4 places, exact,
    from 256-bin histograms counted by torch on the uint8 values: every run waits for this at its
    start, and float64 statistics or numpy's bincount (which copies to int64 first) take seconds."""
    import torch

    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for channel in range(images.shape[-1]):
        plane = np.ascontiguousarray(images[..., channel]).ravel()  # a writable copy, whatever the input
        counts = torch.bincount(torch.from_numpy(plane), minlength=256).numpy()
        channel_mean = (counts * values).sum() / counts.sum()
        mean.append(channel_mean)
        std.append(np.sqrt((counts * (values - channel_mean) ** 2).sum() / counts.sum()))
    return (np.array(mean) / 255).round(4).tolist(), (np.array(std) / 255).round(4).tolist()


# ---------------------------------------------------------------- the run folder


def write_history(path: Path, rows: list[dict]) -> None:
    def write(file):
        text = [",".join(HISTORY_FIELDS)] + [",".join(str(row[key]) for key in HISTORY_FIELDS) for row in rows]
        file.write(("\n".join(text) + "\n").encode())

    atomic_write(path, write)


def read_history(path: Path) -> list[dict]:
    parse = {"epoch": int, "test_images": int, "scored_in": str}
    with open(path, newline="") as file:
        return [{key: parse.get(key, float)(v) for key, v in row.items()} for row in csv.DictReader(file)]


def plot_curves(path: Path, rows: list[dict]) -> None:
    """Accuracy and test accuracy against epoch (as the Keras tutorial plots them), and loss."""
    epochs = [row["epoch"] for row in rows]
    figure, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_acc"] for row in rows], marker="o", label="accuracy")
    left.plot(epochs, [row["test_acc"] for row in rows], marker="o", label="test accuracy")
    left.set(xlabel="Epoch", ylabel="Accuracy", title="Accuracy")
    right.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="loss")
    right.plot(epochs, [row["test_loss"] for row in rows], marker="o", label="test loss")
    right.set(xlabel="Epoch", ylabel="Loss", title="Loss")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    save_figure(figure, path)


# ---------------------------------------------------------------- evaluation


def epoch_test_sample(split, count: int):
    """A fixed random sample of a split (all of it when it is small), in the split's order."""
    if len(split) <= count:
        return split
    picks = np.sort(np.random.default_rng(0).permutation(len(split))[:count])
    return replace(split, images=split.images[picks], labels=split.labels[picks])


def score_epoch(training: "Training", final: bool) -> dict:
    """The test figures of a history row: an estimate after most epochs; after the last, the
    exact plain figure, with the TTA figure from the same pass (the plain view is TTA's first)."""
    t, test = training, training.dataset.test
    if final:
        plain, tta = predict_plain_and_tta_in_batches(t.classifier, test.images, EVAL_BATCH, t.recipe.tta)
        t.final_tta_acc = accuracy(tta, test.labels)
        labels, scored_in = test.labels, "fp32"
    else:
        plain = predict_in_batches(t.estimator, t.epoch_test.images, EVAL_BATCH)
        labels, scored_in = t.epoch_test.labels, t.context.precision
    return {
        "test_loss": round(cross_entropy(plain, labels), 5),
        "test_acc": round(accuracy(plain, labels), 5),
        "test_images": len(labels),
        "scored_in": scored_in,
    }


def is_exact(row: dict, test_images: int) -> bool:
    """Whether a history row's test figure is one `cifar evaluate` reproduces."""
    return row["test_images"] == test_images and row["scored_in"] == "fp32"


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    run_dir: Path
    model: str
    history: list[dict]
    test_acc: float  # final weights, no TTA, fp32
    test_acc_tta: float  # final weights, with the recipe's TTA, fp32
    tta: int
    train_seconds: float
    precision: str  # of the training steps


@dataclass
class Training:
    """Everything setup() builds for a run; the epochs advance it."""

    context: RunContext
    dataset: Dataset
    recipe: Recipe
    info: ModelInfo  # the model's description, without metrics
    model: object  # the torch module
    network: object  # DDP around the model under torchrun, else the model itself
    classifier: TorchClassifier  # scores the model in fp32: the exact figures
    estimator: TorchClassifier  # scores it in the training precision: each epoch's estimate
    epoch_test: object  # the Split of test images that the estimates use
    optimizers: list
    lookahead: "Lookahead | None"
    scaler: object  # torch.amp.GradScaler for fp16, else None
    generator: object  # torch.Generator: order, augmentation and flips
    padded: object  # uint8 (N, 3, H+2p, W+2p) training images, reflect-padded once, on the training device
    labels: object  # int64 (N,), on the training device
    flip_base: object  # bool (N,): which images the alternating flip mirrors in even epochs
    batch_size: int  # global, over all processes
    steps_per_epoch: int
    total_steps: int
    epochs: int
    whiten_bias_steps: int  # steps before the whitening bias freezes (-1: no whitening layer)
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    train_seconds: float = 0.0
    best_acc: float = -1.0  # the best history row's test_acc: which epoch best.pt holds
    best_epoch: int = 0
    final_tta_acc: "float | None" = None  # exact, with TTA, scored with the last epoch

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]


def train(
    dataset: Dataset,
    model_name: str,
    recipe: Recipe,
    context: RunContext,
    events=None,
    resume_from: "Path | None" = None,
) -> TrainResult:
    """Train and write the run folder. Under torchrun every rank trains its shard of each global
    batch and only rank 0 shows progress and writes files."""
    events = events if events and context.ranks.is_main else SilentEvents()
    with process_settings(context):
        training = setup(context, dataset, model_name, recipe, resume_from)
        events.start(context, model_name, training.epochs, training.steps_per_epoch)
        for epoch in range(training.start_epoch, training.epochs):
            steps = min(training.steps_per_epoch, training.total_steps - epoch * training.steps_per_epoch)
            events.epoch_start(epoch + 1, steps)
            events.epoch_end(record_epoch(training, epoch, *run_epoch(training, epoch, steps, events)))
        return finish(training)


def setup(context: RunContext, dataset: Dataset, model_name: str, recipe: Recipe, resume_from=None) -> Training:
    import torch

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    entry = get_model_entry(model_name)

    # 1. Model. Pixels become float only here; mean/std live inside the model.
    train_split, size = dataset.train, dataset.train.images.shape[1]
    mean, std = channel_mean_std(train_split.images)
    model = entry.build(len(dataset.classes), tuple(mean), tuple(std))
    materialize(model, size)
    if entry.prepare:
        entry.prepare(model, train_split.images)
    model = model.to(context.device, memory_format=torch.channels_last)
    info = ModelInfo(
        model_name,
        dataset.classes,
        size,
        mean,
        std,
        recipe.to_dict(),
        precision=context.precision,
        val_fraction=dataset.val_fraction,
    )

    # 2. Steps and schedule. A fractional epoch count trains part of the last epoch.
    batch_size = min(recipe.batch_size, len(train_split))
    world = context.ranks.world
    if batch_size % world:
        raise CifarError(
            f"--batch-size {batch_size}: each of the {world} processes takes an equal share of the global batch; "
            f"choose a multiple of {world}"
        )
    steps_per_epoch = len(train_split) // batch_size
    total_steps = math.ceil(recipe.epochs * steps_per_epoch)
    training = Training(
        context=context,
        dataset=dataset,
        recipe=recipe,
        info=info,
        model=model,
        network=wrap_model(model, context.device, context.ranks),
        classifier=TorchClassifier(model, info, "training", context.device),
        estimator=TorchClassifier(model, info, "training", context.device, context.autocast_dtype),
        epoch_test=epoch_test_sample(dataset.test, EPOCH_TEST_IMAGES),
        optimizers=make_optimizers(model, recipe),
        lookahead=Lookahead(model) if recipe.lookahead else None,
        scaler=torch.amp.GradScaler(context.device_type) if context.precision == "fp16" else None,
        generator=generator,
        padded=torch.from_numpy(reflect_pad(train_split.images, recipe.translate)).to(context.device),
        labels=torch.from_numpy(train_split.labels).to(context.device),
        # Alternating flip (airbench): a random half is mirrored in even epochs, the other half in odd.
        flip_base=torch.rand(len(train_split), generator=generator) < 0.5,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=math.ceil(total_steps / steps_per_epoch),
        whiten_bias_steps=round(recipe.whiten_bias_epochs * steps_per_epoch) if entry.prepare else -1,
    )
    if resume_from is not None:
        restore(training, resume_from)
    if context.ranks.is_main:
        write_config(context.run_dir / "config.json", training)
        if dataset.held_out:
            held_out = "".join(f"{name}\n" for name in dataset.held_out).encode()
            atomic_write(context.run_dir / HELD_OUT_FILE, lambda file: file.write(held_out))
    return training


def run_epoch(training: Training, epoch: int, steps: int, events) -> tuple[float, int, int, float]:
    """The steps of one epoch: (summed loss, correct, images seen, seconds), over all processes."""
    import torch

    t, context, recipe = training, training.context, training.recipe
    ranks = context.ranks
    t.model.train()
    # The epoch's random draws on the CPU generator, then to the device at once: the steps then
    # run from data already there, with no copy from the host and no wait for one.
    order = torch.randperm(len(t.labels), generator=t.generator)
    flips = flip_masks(recipe.flip, t.flip_base, epoch, t.generator)
    epoch_size = crop_size(epoch, t.info.input_size, recipe)
    offsets = draw_crop_offsets(t.padded, epoch_size, steps, t.batch_size, t.generator)
    order, flips = order.to(context.device), flips.to(context.device)
    offsets = offsets.to(context.device) if offsets is not None else [None] * steps
    # Reading the running sums makes the host wait for the device: on a GPU, every few steps.
    report_every = 1 if context.device_type == "cpu" else GPU_STEPS_PER_REPORT
    started, seen = time.perf_counter(), 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=context.device)
    correct = torch.zeros((), dtype=torch.int64, device=context.device)
    for step in range(steps):
        global_step = epoch * t.steps_per_epoch + step
        if 0 <= t.whiten_bias_steps <= global_step:  # <=: a run resumed past that step too
            freeze_whitening_bias(t.model)
        for group in t.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(global_step, t.total_steps, recipe)
        indices = order[step * t.batch_size : (step + 1) * t.batch_size]
        # Every rank augments the whole global batch alike, then keeps its shard.
        inputs = augment_batch(t.padded, indices, epoch_size, flips[indices], offsets[step])
        inputs, indices = inputs[ranks.rank :: ranks.world], indices[ranks.rank :: ranks.world]
        inputs = inputs.float().div_(255).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W) in [0, 1]
        targets = t.labels[indices]  # (B,)
        dtype = context.autocast_dtype
        with torch.autocast(context.device_type, dtype=dtype, enabled=dtype is not None):
            logits = t.network(inputs).float()  # (B, classes)
        loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
        t.model.zero_grad(set_to_none=True)
        step_optimizers(t, loss)
        if t.lookahead and (global_step + 1) % LOOKAHEAD_EVERY == 0:
            t.lookahead.update(0.95**LOOKAHEAD_EVERY * ((global_step + 1) / t.total_steps) ** 3)
        loss_sum += loss.detach().double() * len(indices)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(indices)
        if (step + 1) % report_every == 0 or step + 1 == steps:
            rate = seen * ranks.world / (time.perf_counter() - started)
            events.step(step + 1, loss_sum.item() / seen, correct.item() / seen, rate)
    if t.lookahead and epoch == t.epochs - 1:
        t.lookahead.update(1.0)  # end on the average (airbench)
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = sum_across([loss_sum.item(), correct.item(), seen], ranks)
    broadcast_tensors([*t.model.buffers(), *(t.lookahead.average if t.lookahead else [])], ranks)
    return loss_sum, int(correct), int(seen), seconds


def step_optimizers(training: Training, loss) -> None:
    """Backward and one step of every optimizer; with fp16, through a gradient scaler so that
    small gradients do not underflow to zero."""
    if training.scaler is None:
        loss.backward()
        for optimizer in training.optimizers:
            optimizer.step()
        return
    training.scaler.scale(loss).backward()
    for optimizer in training.optimizers:
        training.scaler.step(optimizer)
    training.scaler.update()


def record_epoch(training: Training, epoch: int, loss_sum: float, correct: int, seen: int, seconds: float) -> dict:
    """Score the epoch's weights (an estimate; after the last epoch, the exact figures), append
    the history row, save last.pt and, on a better test figure, best.pt."""
    t = training
    t.train_seconds += seconds
    row = {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / seen, 5),
        "train_acc": round(correct / seen, 5),
        **score_epoch(t, final=epoch == t.epochs - 1),
        "lr": round(t.param_groups[0]["lr"], 6),
        "seconds": round(seconds, 2),
        "images_per_s": round(seen / seconds, 1),
    }
    t.history.append(row)
    if t.context.ranks.is_main:
        write_history(t.context.run_dir / "history.csv", t.history)
    metrics = checkpoint_metrics(t, row)
    save(t, "last.pt", epoch + 1, metrics, with_training_state=True)
    if row["test_acc"] > t.best_acc:
        t.best_acc, t.best_epoch = row["test_acc"], epoch + 1
        save(t, "best.pt", epoch + 1, metrics, with_training_state=False)
    return row


def checkpoint_metrics(training: Training, row: dict) -> dict:
    """What a checkpoint records of its history row. Estimates go under their own names, so
    that nothing (an export's metadata, a reader of last.pt) takes one for a reproducible figure."""
    t = training
    if not is_exact(row, len(t.dataset.test)):
        estimated_on = f"{row['test_images']} test images in {row['scored_in']}"
        return {"epoch": row["epoch"], "estimated_test_acc": row["test_acc"], "estimated_on": estimated_on}
    metrics = {"test_acc": row["test_acc"], "test_loss": row["test_loss"], "epoch": row["epoch"]}
    if row["epoch"] == t.epochs:
        metrics |= {
            "test_acc_tta": round(t.final_tta_acc, 5),
            "tta": t.recipe.tta,
            "train_seconds": round(t.train_seconds, 1),
        }
    return metrics


def finish(training: Training) -> TrainResult:
    """The result: the last weights' exact figures, scored with the last epoch. When an earlier
    epoch's estimate beat them, best.pt holds that epoch and is scored exactly here."""
    t = training
    last = t.history[-1]
    best_row = t.history[t.best_epoch - 1]
    if t.context.ranks.is_main and not is_exact(best_row, len(t.dataset.test)):
        score_best_exactly(t.context.run_dir / "best.pt", t.dataset, t.context.device)
    check_identical_weights(t.model, t.context.ranks)
    if t.context.ranks.is_main:
        plot_curves(t.context.run_dir / "curves.png", t.history)
    return TrainResult(
        t.context.run_dir,
        t.info.model,
        t.history,
        last["test_acc"],
        round(t.final_tta_acc, 5),
        t.recipe.tta,
        t.train_seconds,
        t.context.precision,
    )


def score_best_exactly(path: Path, dataset: Dataset, device: str) -> None:
    """Replace best.pt's estimate with its exact figures: those `cifar evaluate best.pt` gives."""
    best = TorchClassifier.from_checkpoint(path, device)
    exact = evaluate(best, dataset)
    metrics = {"test_acc": exact.accuracy, "test_loss": exact.loss, "epoch": best.info.epoch}
    save_checkpoint(path, best.model, ModelInfo(**{**best.info.to_dict(), "metrics": metrics}))


# ---------------------------------------------------------------- checkpoints and resume


def save(training: Training, name: str, epoch: int, metrics: dict, with_training_state: bool) -> None:
    import torch

    t = training
    if not t.context.ranks.is_main:
        return
    state = None
    if with_training_state:
        state = {
            "optimizers": [optimizer.state_dict() for optimizer in t.optimizers],
            "generator": t.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lookahead": t.lookahead.average if t.lookahead else [],
            "scaler": t.scaler.state_dict() if t.scaler else {},
        }
    described = ModelInfo(**{**t.info.to_dict(), "metrics": metrics, "epoch": epoch})
    save_checkpoint(t.context.run_dir / name, t.model, described, state)


def restore(training: Training, checkpoint: Path) -> None:
    """Continue from last.pt: weights, optimizer states, random generators, lookahead, history."""
    import torch

    t = training
    state = load_checkpoint(checkpoint)
    check_resumable(state, t.info, checkpoint)
    t.model.load_state_dict(state["model"])
    for optimizer, saved in zip(t.optimizers, state["training"]["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    t.generator.set_state(state["training"]["generator"])
    torch.set_rng_state(state["training"]["torch_rng"])
    if t.lookahead:
        for average, saved in zip(t.lookahead.average, state["training"]["lookahead"], strict=True):
            average.copy_(saved)
    if t.scaler:
        t.scaler.load_state_dict(state["training"]["scaler"])
    # history.csv may hold an epoch that last.pt does not (a kill between the two writes).
    t.start_epoch = state["info"].epoch
    t.history = read_history(t.context.run_dir / "history.csv")[: t.start_epoch]
    missing = [key for key in HISTORY_FIELDS if t.history and key not in t.history[0]]
    if missing:
        raise CifarError(
            f"--resume {checkpoint}: its history.csv, written by an earlier cifarcli, lacks {', '.join(missing)}; "
            "start a new run"
        )
    t.train_seconds = sum(row["seconds"] for row in t.history)
    if t.history:
        best = max(t.history, key=lambda row: row["test_acc"])  # the first of equals, as record_epoch keeps
        t.best_acc, t.best_epoch = best["test_acc"], best["epoch"]
    t.final_tta_acc = state["info"].metrics.get("test_acc_tta")  # saved with the last epoch


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
    if saved.precision != info.precision:
        raise CifarError(
            f"--resume {path}: the run trained in {saved.precision}, not {info.precision}; drop --precision"
        )
    if saved.classes != info.classes or saved.mean != info.mean or saved.std != info.std:
        raise CifarError(f"--resume {path}: the data differs from the checkpoint's; pass the same --data")


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


def write_config(path: Path, training: Training) -> None:
    """The resolved recipe, data and run context: what `--resume RUN_DIR` continues with."""
    context = training.context
    config = {
        "model": training.info.model,
        "recipe": training.recipe.to_dict(),
        "data": describe(training.dataset),
        "device": context.device,
        "precision": context.precision,
        "processes": context.ranks.world,
        "threads": context.threads,
        "epoch_test_images": len(training.epoch_test),  # each epoch's estimate, in the training precision
        "result_scored_in": "fp32",  # the last epoch's figures and best.pt's: the whole test split
        "cifarcli": __version__,
    }
    atomic_write(path, lambda file: file.write((json.dumps(config, indent=2) + "\n").encode()))


class SilentEvents:
    """The events interface that report.py implements; this one shows nothing."""

    def start(self, context, model_name, epochs, steps_per_epoch):
        pass

    def epoch_start(self, epoch, steps):
        pass

    def step(self, step, loss, acc, images_per_s):
        pass

    def epoch_end(self, row):
        pass
