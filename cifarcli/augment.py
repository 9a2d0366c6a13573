"""Augmentation on whole batches, on the device that holds the training images.

The random draws of an epoch (order, flips, crop offsets) come from the CPU generator in a fixed
order, so a seed augments alike on any device; the crops and flips then run where the images are.
Only train.py imports this module, so torch is imported at the top.
"""

import numpy as np
import torch

from cifarcli.recipes import Recipe


def reflect_pad(images: np.ndarray, pad: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H+2p, W+2p) uint8, padded once per run, not per step."""
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else images
    return np.ascontiguousarray(padded.transpose(0, 3, 1, 2))


def crop_size(epoch: int, full_size: int, recipe: Recipe) -> int:
    """The size an epoch trains at. Progressive resizing: the recipe's stages, ((size, epochs),
    ...), train the first epochs at smaller sizes, whose steps cost less (benchmarks/training.py
    prices them); then the images' own size. A stage no smaller than the images trains at their
    size."""
    stage_end = 0.0
    for size, epochs in recipe.crops:
        stage_end += epochs
        if epoch < stage_end:
            return min(size, full_size)
    return full_size


def flip_masks(policy: str, flip_base, epoch: int, generator):
    """Which images an epoch mirrors. "alternating" (airbench): a fixed random half in even
    epochs, the other half in odd ones, so every image is seen both ways; "random"; "none"."""
    if policy == "alternating":
        return flip_base ^ bool(epoch % 2)
    if policy == "random":
        return torch.rand(len(flip_base), generator=generator) < 0.5
    return torch.zeros_like(flip_base)


def draw_crop_offsets(padded, size: int, steps: int, batch_size: int, generator):
    """The random crop offsets of an epoch's steps, (steps, 2, batch_size): each step's rows (dy)
    then columns (dx), drawn in that order. None when the padded images are no larger than size."""
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
    batch = padded[indices]
    if offsets is not None:
        n, device = len(indices), padded.device
        rows = offsets[0].view(n, 1, 1, 1) + torch.arange(size, device=device).view(1, 1, size, 1)
        cols = offsets[1].view(n, 1, 1, 1) + torch.arange(size, device=device).view(1, 1, 1, size)
        channels = torch.arange(padded.shape[1], device=device).view(1, -1, 1, 1)
        batch = batch[torch.arange(n, device=device).view(n, 1, 1, 1), channels, rows, cols]
    return torch.where(flip_mask.view(-1, 1, 1, 1), batch.flip(3), batch)


def scaled(inputs, size: int):
    """Float (B, 3, H, W) images scaled to size x size (recipe.progressive "resize"), antialiased."""
    if inputs.shape[-1] == size:
        return inputs
    return torch.nn.functional.interpolate(inputs, size=(size, size), mode="bilinear", antialias=True)


def epoch_draws(
    padded, flip_base, recipe: Recipe, epoch: int, size: int, steps: int, batch_size: int, generator, weights=None
):
    """An epoch's random order, flips and crop offsets, drawn on the CPU generator in that order
    and moved to the images' device at once: (order, flips, offsets per step or None); order and
    flips are per position in the epoch. With per-image weights the order draws as many images
    with replacement, by those weights, and each draw is flipped at random: an image drawn many
    times is seen both ways."""
    count = len(flip_base)
    if weights is None:
        order = torch.randperm(count, generator=generator)
        flips = flip_masks(recipe.flip, flip_base, epoch, generator)[order]
    else:
        order = torch.multinomial(weights, count, replacement=True, generator=generator)
        flips = flip_masks("random" if recipe.flip != "none" else "none", flip_base, epoch, generator)
    offsets = draw_crop_offsets(padded, size, steps, batch_size, generator)
    device = padded.device
    offsets = offsets.to(device) if offsets is not None else [None] * steps
    return order.to(device), flips.to(device), offsets
