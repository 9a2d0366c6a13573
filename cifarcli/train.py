"""The training loop: setup, then one epoch at a time, then finish.

    train(dataset, model_name, recipe, context) -> TrainResult

`setup()` builds the model, its optimizers and the training images on the device for a
RunContext (run.py: device, precision, processes, threads, run folder); `run_epoch()` takes the
steps of one epoch; `record_epoch()` scores it and saves it; `finish()` gives the result.
Everything a run needs is in its Recipe (models.py); progress goes to an `events` object
(report.py draws it), so this module knows nothing of the terminal.

Scoring is split by purpose. Each epoch's test figure is an estimate to watch: a fixed sample of
EPOCH_TEST_IMAGES test images in the training precision. The result (the last epoch's plain and
TTA figures, and best.pt's) is exact: the whole test split in fp32, whatever the training
precision, so that `cifar evaluate` of a checkpoint and of its ONNX export reproduce it to the
digit. Each history row says which it is.
"""

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifarcli import __version__
from cifarcli.augment import augment_batch, crop_size, epoch_draws, reflect_pad
from cifarcli.checkpoint import ModelInfo, load_checkpoint, materialize
from cifarcli.classifier import EVAL_BATCH, TorchClassifier, predict_in_batches, predict_plain_and_tta_in_batches
from cifarcli.data import Dataset, describe
from cifarcli.distributed import broadcast_tensors, check_identical_weights, sum_across, wrap_model
from cifarcli.errors import CifarError
from cifarcli.evaluate import accuracy, cross_entropy
from cifarcli.models import Recipe, get_model_entry, whitening_layer
from cifarcli.optim import LOOKAHEAD_EVERY, Lookahead, lr_factor, make_optimizers
from cifarcli.run import RunContext, process_settings
from cifarcli.run_folder import BEST, LAST, ResumableRun, check_same_run
from cifarcli.small_map_conv import use_matrix_products

EPOCH_TEST_IMAGES = 2000  # the estimate's sample: a few per cent of an epoch's time
GPU_STEPS_PER_REPORT = 10  # steps between progress reports on a GPU, where each report waits for the device


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
    written: list[str]  # the run folder's files


@dataclass(frozen=True)
class Schedule:
    batch_size: int  # global, over all processes
    steps_per_epoch: int
    total_steps: int  # a fractional epoch count trains part of the last epoch
    epochs: int
    whiten_bias_steps: int  # steps before the whitening bias freezes (-1: no whitening layer)


@dataclass
class Learner:
    model: torch.nn.Module
    network: torch.nn.Module  # DDP around the model under torchrun, else the model itself
    optimizers: list
    lookahead: "Lookahead | None"
    scaler: "torch.amp.GradScaler | None"  # fp16 only

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]


@dataclass
class Images:
    """The training split on the training device, and the generator of every random draw."""

    padded: torch.Tensor  # uint8 (N, 3, H+2p, W+2p), reflect-padded once
    labels: torch.Tensor  # int64 (N,)
    flip_base: torch.Tensor  # bool (N,): which images the alternating flip mirrors in even epochs
    generator: torch.Generator  # on the CPU: order, augmentation and flips


@dataclass
class Progress:
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    best_acc: float = -1.0  # the best history row's test_acc: which epoch best.pt holds
    best_epoch: int = 0
    final_tta_acc: "float | None" = None  # exact, with TTA, scored with the last epoch


@dataclass
class Training:
    context: RunContext
    dataset: Dataset
    recipe: Recipe
    info: ModelInfo  # the model's description, without metrics
    schedule: Schedule
    learner: Learner
    images: Images
    epoch_test: object  # the Split of test images that the estimates use
    progress: Progress


def train(
    dataset: Dataset,
    model_name: str,
    recipe: Recipe,
    context: RunContext,
    events=None,
    resume: "ResumableRun | None" = None,
) -> TrainResult:
    """Train and write the run folder. Under torchrun every rank trains its shard of each global
    batch and only rank 0 shows progress and writes files."""
    events = events if events and context.ranks.is_main else SilentEvents()
    with process_settings(context):
        training = setup(context, dataset, model_name, recipe, resume)
        schedule = training.schedule
        events.start(context, model_name, schedule.epochs, schedule.steps_per_epoch)
        for epoch in range(len(training.progress.history), schedule.epochs):
            steps = min(schedule.steps_per_epoch, schedule.total_steps - epoch * schedule.steps_per_epoch)
            events.epoch_start(epoch + 1, steps)
            events.epoch_end(record_epoch(training, epoch, *run_epoch(training, epoch, steps, events)))
        return finish(training)


def setup(context: RunContext, dataset: Dataset, model_name: str, recipe: Recipe, resume=None) -> Training:
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
    use_matrix_products(model, context.matrix_product_convolutions)
    info = ModelInfo(
        model_name, dataset.classes, size, mean, std, recipe.to_dict(), precision=context.precision,
        val_fraction=dataset.val_fraction,
    )  # fmt: skip

    # 2. Steps and schedule. A fractional epoch count trains part of the last epoch.
    batch_size = min(recipe.batch_size, len(train_split))
    if batch_size % context.ranks.world:
        raise CifarError(
            f"--batch-size {batch_size}: each of the {context.ranks.world} processes takes an equal share of the "
            f"global batch; choose a multiple of {context.ranks.world}"
        )
    steps_per_epoch = len(train_split) // batch_size
    total_steps = math.ceil(recipe.epochs * steps_per_epoch)
    whiten_bias_steps = round(recipe.whiten_bias_epochs * steps_per_epoch) if entry.prepare else -1
    schedule = Schedule(batch_size, steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch),
                        whiten_bias_steps)  # fmt: skip

    # 3. Optimizers, and the training images on the device.
    learner = Learner(
        model=model,
        network=wrap_model(model, context.device, context.ranks),
        optimizers=make_optimizers(model, recipe),
        lookahead=Lookahead(model) if recipe.lookahead else None,
        scaler=torch.amp.GradScaler(context.device_type) if context.precision == "fp16" else None,
    )
    images = Images(
        padded=torch.from_numpy(reflect_pad(train_split.images, recipe.translate)).to(context.device),
        labels=torch.from_numpy(train_split.labels).to(context.device),
        # Alternating flip (airbench): a random half is mirrored in even epochs, the other half in odd.
        flip_base=torch.rand(len(train_split), generator=generator) < 0.5,
        generator=generator,
    )
    training = Training(context, dataset, recipe, info, schedule, learner, images,
                        dataset.test.sample(EPOCH_TEST_IMAGES), Progress())  # fmt: skip
    if resume is not None:
        restore(training, resume)
    context.folder.write_config(run_config(training))
    if dataset.held_out:
        context.folder.write_held_out(dataset.held_out)
    return training


def run_epoch(training: Training, epoch: int, steps: int, events) -> tuple[float, int, int, float]:
    """The steps of one epoch: (summed loss, correct, images seen, seconds), over all processes."""
    t, context, recipe = training, training.context, training.recipe
    learner, images, schedule, ranks = t.learner, t.images, t.schedule, context.ranks
    learner.model.train()
    size = crop_size(epoch, t.info.input_size, recipe)
    order, flips, offsets = epoch_draws(images.padded, images.flip_base, recipe, epoch, size, steps,
                                        schedule.batch_size, images.generator)  # fmt: skip
    # Reading the running sums makes the host wait for the device: on a GPU, every few steps.
    report_every = 1 if context.device_type == "cpu" else GPU_STEPS_PER_REPORT
    started, seen = time.perf_counter(), 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=context.device)
    correct = torch.zeros((), dtype=torch.int64, device=context.device)
    for step in range(steps):
        global_step = epoch * schedule.steps_per_epoch + step
        if 0 <= schedule.whiten_bias_steps <= global_step:  # <=: a run resumed past that step too
            whitening_layer(learner.model).bias.requires_grad_(False)
        for group in learner.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(global_step, schedule.total_steps, recipe)
        indices = order[step * schedule.batch_size : (step + 1) * schedule.batch_size]
        # Every rank augments the whole global batch alike, then keeps its shard.
        inputs = augment_batch(images.padded, indices, size, flips[indices], offsets[step])
        inputs, indices = inputs[ranks.rank :: ranks.world], indices[ranks.rank :: ranks.world]
        inputs = inputs.float().div_(255).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W) in [0, 1]
        targets = images.labels[indices]  # (B,)
        dtype = context.autocast_dtype
        with torch.autocast(context.device_type, dtype=dtype, enabled=dtype is not None):
            logits = learner.network(inputs).float()  # (B, classes)
        loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
        learner.model.zero_grad(set_to_none=True)
        step_optimizers(learner, loss)
        if learner.lookahead and (global_step + 1) % LOOKAHEAD_EVERY == 0:
            learner.lookahead.update(0.95**LOOKAHEAD_EVERY * ((global_step + 1) / schedule.total_steps) ** 3)
        loss_sum += loss.detach().double() * len(indices)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(indices)
        if (step + 1) % report_every == 0 or step + 1 == steps:
            rate = seen * ranks.world / (time.perf_counter() - started)
            events.step(step + 1, loss_sum.item() / seen, correct.item() / seen, rate)
    if learner.lookahead and epoch == schedule.epochs - 1:
        learner.lookahead.update(1.0)  # end on the average (airbench)
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = sum_across([loss_sum.item(), correct.item(), seen], ranks)
    broadcast_tensors([*learner.model.buffers(), *(learner.lookahead.average if learner.lookahead else [])], ranks)
    return loss_sum, int(correct), int(seen), seconds


def step_optimizers(learner: Learner, loss) -> None:
    """Backward and one step of every optimizer; with fp16, through a gradient scaler so that
    small gradients do not underflow to zero."""
    if learner.scaler is None:
        loss.backward()
        for optimizer in learner.optimizers:
            optimizer.step()
        return
    learner.scaler.scale(loss).backward()
    for optimizer in learner.optimizers:
        learner.scaler.step(optimizer)
    learner.scaler.update()


def record_epoch(training: Training, epoch: int, loss_sum: float, correct: int, seen: int, seconds: float) -> dict:
    """Score the epoch's weights (an estimate; after the last epoch, the exact figures), append
    the history row, save last.pt and, on a better test figure, best.pt."""
    t, folder, progress = training, training.context.folder, training.progress
    progress.train_seconds += seconds
    row = {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / seen, 5),
        "train_acc": round(correct / seen, 5),
        **score_epoch(t, final=epoch == t.schedule.epochs - 1),
        "lr": round(t.learner.param_groups[0]["lr"], 6),
        "seconds": round(seconds, 2),
        "images_per_s": round(seen / seconds, 1),
    }
    progress.history.append(row)
    folder.write_history(progress.history)
    described = t.info.measured(epoch + 1, **epoch_metrics(t, row))
    folder.save_checkpoint(LAST, t.learner.model, described, training_state(t))
    if row["test_acc"] > progress.best_acc:
        progress.best_acc, progress.best_epoch = row["test_acc"], epoch + 1
        folder.save_checkpoint(BEST, t.learner.model, described)
    return row


def score_epoch(training: Training, final: bool) -> dict:
    """The test figures of a history row: an estimate after most epochs; after the last, the
    exact plain figure, with the TTA figure from the same pass (the plain view is TTA's first)."""
    t, test = training, training.dataset.test
    if final:
        scorer = TorchClassifier(t.learner.model, t.info, "training", t.context.device)
        plain, tta = predict_plain_and_tta_in_batches(scorer, test.images, EVAL_BATCH, t.recipe.tta)
        t.progress.final_tta_acc = accuracy(tta, test.labels)
        labels, scored_in = test.labels, "fp32"
    else:
        estimator = TorchClassifier(t.learner.model, t.info, "training", t.context.device, t.context.autocast_dtype)
        plain = predict_in_batches(estimator, t.epoch_test.images, EVAL_BATCH)
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


def epoch_metrics(training: Training, row: dict) -> dict:
    """What a checkpoint records of its history row: an estimate under its own names."""
    if not is_exact(row, len(training.dataset.test)):
        return {"estimated_test_acc": row["test_acc"], "estimated_on": f"{row['test_images']} test images in "
                f"{row['scored_in']}"}  # fmt: skip
    metrics = {"test_acc": row["test_acc"], "test_loss": row["test_loss"]}
    if row["epoch"] == training.schedule.epochs:
        progress = training.progress
        tta = {"test_acc_tta": round(progress.final_tta_acc, 5), "tta": training.recipe.tta}
        metrics |= {**tta, "train_seconds": round(progress.train_seconds, 1)}
    return metrics


def finish(training: Training) -> TrainResult:
    """The result: the last weights' exact figures, scored with the last epoch. When an earlier
    epoch's estimate made it best.pt, best.pt is scored exactly here and saved with those figures."""
    t, folder, progress = training, training.context.folder, training.progress
    if folder.writes and not is_exact(progress.history[progress.best_epoch - 1], len(t.dataset.test)):
        score_best_exactly(folder, t.learner.model, t.info, progress.best_epoch, t.dataset, t.context.device)
    check_identical_weights(t.learner.model, t.context.ranks)
    folder.plot_curves(progress.history)
    last = progress.history[-1]
    return TrainResult(folder.path, t.info.model, progress.history, last["test_acc"],
                       round(progress.final_tta_acc, 5), t.recipe.tta, progress.train_seconds, t.context.precision,
                       folder.written())  # fmt: skip


def score_best_exactly(folder, model, info: ModelInfo, epoch: int, dataset: Dataset, device: str) -> None:
    """Load best.pt's weights into a copy of the model, score them on the whole test split in
    fp32, and save best.pt again with those figures in place of its estimate."""
    best = copy.deepcopy(model)
    best.load_state_dict(load_checkpoint(folder.file(BEST))["model"])
    plain = predict_in_batches(TorchClassifier(best, info, BEST, device), dataset.test.images, EVAL_BATCH)
    exact = {"test_acc": round(accuracy(plain, dataset.test.labels), 5),
             "test_loss": round(cross_entropy(plain, dataset.test.labels), 5)}  # fmt: skip
    folder.save_checkpoint(BEST, best, info.measured(epoch, **exact))


# ---------------------------------------------------------------- checkpoints and resume


def training_state(training: Training) -> dict:
    """What last.pt holds besides the weights, for --resume."""
    learner = training.learner
    return {
        "optimizers": [optimizer.state_dict() for optimizer in learner.optimizers],
        "generator": training.images.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "lookahead": learner.lookahead.average if learner.lookahead else [],
        "scaler": learner.scaler.state_dict() if learner.scaler else {},
    }


def restore(training: Training, resume: ResumableRun) -> None:
    """Continue from last.pt: weights, optimizer states, random generators, lookahead, history."""
    t, learner, state = training, training.learner, resume.checkpoint
    check_same_run(state["info"], t.info, resume.folder.file(LAST))
    saved = state["training"]
    try:
        learner.model.load_state_dict(state["model"])
        for optimizer, optimizer_state in zip(learner.optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        t.images.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        for average, value in zip(learner.lookahead.average if learner.lookahead else [], saved["lookahead"],
                                  strict=bool(learner.lookahead)):  # fmt: skip
            average.copy_(value)
        if learner.scaler:
            learner.scaler.load_state_dict(saved["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError):
        raise CifarError(
            f"--resume {resume.folder.path}: the training state in {LAST} does not fit this run; start a new run"
        ) from None
    progress = t.progress
    progress.history = list(resume.history)
    progress.train_seconds = sum(row["seconds"] for row in progress.history)
    if progress.history:
        best = max(progress.history, key=lambda row: row["test_acc"])  # the first of equals, as record_epoch keeps
        progress.best_acc, progress.best_epoch = best["test_acc"], best["epoch"]
    progress.final_tta_acc = state["info"].metrics.test_acc_tta  # saved with the last epoch


def run_config(training: Training) -> dict:
    """The resolved recipe, data and run context: what `--resume RUN_DIR` continues with."""
    context = training.context
    return {
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


def channel_mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1] units, to 4 places, exact,
    from 256-bin histograms counted by torch on the uint8 values: every run waits for this at its
    start, and float64 statistics or numpy's bincount (which copies to int64 first) take seconds."""
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for channel in range(images.shape[-1]):
        plane = np.ascontiguousarray(images[..., channel]).ravel()  # a writable copy, whatever the input
        counts = torch.bincount(torch.from_numpy(plane), minlength=256).numpy()
        channel_mean = (counts * values).sum() / counts.sum()
        mean.append(channel_mean)
        std.append(np.sqrt((counts * (values - channel_mean) ** 2).sum() / counts.sum()))
    return (np.array(mean) / 255).round(4).tolist(), (np.array(std) / 255).round(4).tolist()


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
