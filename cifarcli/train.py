"""The training loop: setup, then one epoch at a time, then finish.

    train(dataset, model_name, recipe, context) -> TrainResult

`setup()` builds the model, its optimizers, its loss (balance.py) and the training images on the
device for a RunContext (run.py); `run_epoch()` takes an epoch's steps; `record_epoch()` scores it
(scoring.py) and saves it; `finish()` gives the result. A run's settings are its Recipe; progress
goes to an `events` object (report.py draws it), so this module knows nothing of the terminal."""

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cifarcli import __version__, scoring, stops
from cifarcli.augment import augment_batch, crop_size, epoch_draws, reflect_pad, scaled
from cifarcli.balance import balanced_loss, class_counts, resolve_balance, sampling_weights
from cifarcli.checkpoint import ModelInfo, materialize
from cifarcli.data import Dataset, describe
from cifarcli.distributed import broadcast_tensors, check_identical_weights, sum_across, wrap_model
from cifarcli.errors import CifarError
from cifarcli.evaluate import per_class_metrics, recall_summary
from cifarcli.events import SilentEvents, TrainResult
from cifarcli.findings import exclusion_record
from cifarcli.models import channel_mean_std, get_model_entry, whitening_layer
from cifarcli.optim import LOOKAHEAD_EVERY, Lookahead, lr_factor, make_optimizers
from cifarcli.recipes import Recipe
from cifarcli.run import RunContext, process_settings
from cifarcli.run_folder import BEST, LAST, ResumableRun, check_same_run
from cifarcli.small_map_conv import use_matrix_products

GPU_STEPS_PER_REPORT = 10  # steps between progress reports on a GPU, where each report waits for the device


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
    loss: object  # (logits, targets) -> the mean training loss, balanced as the recipe says (balance.py)

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
    draw_weights: "torch.Tensor | None"  # per image, on the CPU: epochs draw by them ("resample"), else a permutation


@dataclass
class Progress:
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    best_acc: float = -1.0  # the best history row's test_acc: which epoch best.pt holds
    best_epoch: int = 0
    final_tta_acc: "float | None" = None  # exact, with TTA, scored with the last epoch
    final_confusion: "list[list[int]] | None" = None  # exact, plain, scored with the last epoch


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
    balance_note: str  # the balance and why, for the first line; "" on balanced data trained alike


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
        events.start(context, model_name, schedule.epochs, schedule.steps_per_epoch, training.balance_note)
        for epoch in range(len(training.progress.history), schedule.epochs):
            steps = min(schedule.steps_per_epoch, schedule.total_steps - epoch * schedule.steps_per_epoch)
            events.epoch_start(epoch + 1, steps)
            record_epoch(training, epoch, *run_epoch(training, epoch, steps, events), events)
        return finish(training)


def setup(context: RunContext, dataset: Dataset, model_name: str, recipe: Recipe, resume=None) -> Training:
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    entry = get_model_entry(model_name)

    # 1. Model. Pixels become float only here; mean/std live inside the model. "auto" balance resolves here.
    train_split, size = dataset.train, dataset.train.images.shape[1]
    counts = class_counts(train_split.labels, len(dataset.classes))
    balance, balance_note = resolve_balance(recipe.balance, counts)
    recipe = recipe.override(balance=balance)
    mean, std = channel_mean_std(train_split.images)
    info = ModelInfo(
        model_name,
        dataset.classes,
        size,
        mean,
        std,
        recipe.to_dict(),
        precision=context.precision,
        val_fraction=dataset.val_fraction,
        excluded=exclusion_record(dataset.excluded),
        train_counts=counts,
    )
    model = entry.build(len(dataset.classes), tuple(mean), tuple(std))
    materialize(model, size)
    if entry.prepare:
        entry.prepare(model, train_split.images)
    model = model.to(context.device, memory_format=torch.channels_last)
    use_matrix_products(model, context.matrix_product_convolutions)

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
    epochs = math.ceil(total_steps / steps_per_epoch)
    schedule = Schedule(batch_size, steps_per_epoch, total_steps, epochs, whiten_bias_steps)

    # 3. Optimizers, and the training images on the device.
    learner = Learner(
        model=model,
        network=wrap_model(model, context.device, context.ranks),
        optimizers=make_optimizers(model, recipe),
        lookahead=Lookahead(model) if recipe.lookahead else None,
        scaler=torch.amp.GradScaler(context.device_type) if context.precision == "fp16" else None,
        loss=balanced_loss(balance, counts, recipe.label_smoothing, context.device),
    )
    images = Images(
        padded=torch.from_numpy(reflect_pad(train_split.images, recipe.translate)).to(context.device),
        labels=torch.from_numpy(train_split.labels).to(context.device),
        # Alternating flip (airbench): a random half is mirrored in even epochs, the other half in odd.
        flip_base=torch.rand(len(train_split), generator=generator) < 0.5,
        generator=generator,
        draw_weights=sampling_weights(balance, train_split.labels, counts),
    )
    epoch_test = dataset.test.sample(scoring.EPOCH_TEST_IMAGES)
    training = Training(context, dataset, recipe, info, schedule, learner, images, epoch_test, Progress(), balance_note)
    if resume is not None:
        restore(training, resume)
    context.folder.write_config(run_config(training))
    context.folder.write_held_out(dataset.held_out)
    context.folder.write_excluded(dataset.excluded)
    return training


def run_epoch(training: Training, epoch: int, steps: int, events) -> tuple[float, int, int, float]:
    """The steps of one epoch: (summed loss, correct, images seen, seconds), over all processes."""
    t, context, recipe = training, training.context, training.recipe
    learner, images, schedule, ranks = t.learner, t.images, t.schedule, context.ranks
    learner.model.train()
    size = crop_size(epoch, t.info.input_size, recipe)
    crop = size if recipe.progressive == "crop" else t.info.input_size  # "resize" scales whole images down
    draws = (images.padded, images.flip_base, recipe, epoch, crop, steps, schedule.batch_size, images.generator)
    order, flips, offsets = epoch_draws(*draws, images.draw_weights)
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
        batch = slice(step * schedule.batch_size, (step + 1) * schedule.batch_size)  # positions in the epoch
        indices = order[batch]
        # Every rank augments the whole global batch alike, then keeps its shard.
        inputs = augment_batch(images.padded, indices, crop, flips[batch], offsets[step])
        inputs, indices = inputs[ranks.rank :: ranks.world], indices[ranks.rank :: ranks.world]
        inputs = scaled(inputs.float().div_(255), size).contiguous(memory_format=torch.channels_last)  # in [0, 1]
        targets = images.labels[indices]  # (B,)
        dtype = context.autocast_dtype
        with torch.autocast(context.device_type, dtype=dtype, enabled=dtype is not None):
            logits = learner.network(inputs).float()  # (B, classes)
        loss = learner.loss(logits, targets)
        learner.model.zero_grad(set_to_none=True)
        step_optimizers(learner, loss)
        if learner.lookahead and (global_step + 1) % LOOKAHEAD_EVERY == 0:
            learner.lookahead.update(0.95**LOOKAHEAD_EVERY * ((global_step + 1) / schedule.total_steps) ** 3)
        loss_sum += loss.detach().double() * len(indices)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(indices)
        if (step + 1) % report_every == 0 or step + 1 == steps:  # a non-finite loss stops the run here
            running_loss, rate = scoring.finite_loss(loss_sum.item() / seen, epoch, step), seen * ranks.world
            events.step(step + 1, running_loss, correct.item() / seen, rate / (time.perf_counter() - started))
    if learner.lookahead and epoch == schedule.epochs - 1:
        learner.lookahead.update(1.0)  # end on the average (airbench)
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = sum_across([loss_sum.item(), correct.item(), seen], ranks)
    broadcast_tensors([*learner.model.buffers(), *(learner.lookahead.average if learner.lookahead else [])], ranks)
    return loss_sum, int(correct), int(seen), seconds


def step_optimizers(learner: Learner, loss) -> None:
    """Backward and one step of every optimizer; with fp16, through a gradient scaler so that
    small gradients do not underflow to zero."""
    scaler = learner.scaler
    (scaler.scale(loss) if scaler else loss).backward()
    for optimizer in learner.optimizers:
        scaler.step(optimizer) if scaler else optimizer.step()
    if scaler:
        scaler.update()


def record_epoch(training: Training, epoch: int, loss_sum: float, correct: int, seen: int, seconds: float, events):
    """Score the epoch's weights (an estimate; after the last epoch, the exact figures), append
    the history row, save last.pt and, on a better test figure, best.pt, and tell the events."""
    t, context, progress, test = training, training.context, training.progress, training.dataset.test
    model, final = t.learner.model, epoch == t.schedule.epochs - 1
    progress.train_seconds += seconds
    if final:
        test_columns, progress.final_tta_acc, progress.final_confusion = scoring.exact(
            model, t.info, test, context.device, t.recipe.tta
        )
    else:
        test_columns = scoring.estimate(model, t.info, t.epoch_test, context)
    train_columns = {"epoch": epoch + 1, "train_loss": round(loss_sum / seen, 5), "train_acc": round(correct / seen, 5)}
    timing = {"lr": round(t.learner.param_groups[0]["lr"], 6), "seconds": round(seconds, 2)}
    row = {**train_columns, **test_columns, **timing, "images_per_s": round(seen / seconds, 1)}
    metrics = scoring.checkpoint_metrics(row, len(test))
    if final:
        metrics |= {"test_acc_tta": round(progress.final_tta_acc, 5), "tta": t.recipe.tta}
        metrics["train_seconds"] = round(progress.train_seconds, 1)
    described = t.info.measured(epoch + 1, **metrics)
    # A stop waits until the epoch is in history.csv, last.pt and every tracker: resume starts after it.
    with stops.deferred():
        progress.history.append(row)
        context.folder.write_history(progress.history)
        context.folder.save_checkpoint(LAST, model, described, training_state(t))
        if row["test_acc"] > progress.best_acc:
            progress.best_acc, progress.best_epoch = row["test_acc"], epoch + 1
            context.folder.save_checkpoint(BEST, model, described)
        events.epoch_end(row)


def finish(training: Training) -> TrainResult:
    """The result: the last weights' exact figures, scored with the last epoch. When an earlier
    epoch's estimate made it best.pt, best.pt is scored exactly here and saved with those figures."""
    t, folder, progress = training, training.context.folder, training.progress
    if folder.writes and not scoring.is_exact(progress.history[progress.best_epoch - 1], len(t.dataset.test)):
        scoring.rescore_exactly(folder, t.learner.model, t.info, progress.best_epoch, t.dataset.test, t.context.device)
    check_identical_weights(t.learner.model, t.context.ranks)
    folder.plot_curves(progress.history)
    if progress.final_confusion is None:  # resumed after the last epoch: score it once more
        _, _, progress.final_confusion = scoring.exact(t.learner.model, t.info, t.dataset.test, t.context.device, 0)
    figures = (progress.history[-1]["test_acc"], round(progress.final_tta_acc, 5), t.recipe.tta)
    run = (progress.train_seconds, t.context.precision, folder.written())
    classes, confusion = t.dataset.classes, progress.final_confusion
    per_class = per_class_metrics(np.array(confusion), classes)
    result = (folder.path, t.info.model, progress.history, *figures, *run, classes, confusion, per_class)
    return TrainResult(*result, t.recipe.balance, t.info.train_counts, **recall_summary(per_class))


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
        if learner.lookahead:
            learner.lookahead.load(saved["lookahead"])
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
    return {
        "model": training.info.model,
        "recipe": training.recipe.to_dict(),
        "data": {**describe(training.dataset), "excluded": exclusion_record(training.dataset.excluded) or None},
        **training.context.to_config(),
        "epoch_test_images": len(training.epoch_test),  # each epoch's estimate, in the training precision
        "result_scored_in": "fp32",  # the last epoch's figures and best.pt's: the whole test split
        "cifarcli": __version__,
    }
