"""Optimizers and the learning-rate schedule: SGD with airbench's parameter groups, Muon for
convolution filters, and airbench's lookahead.

Every parameter group carries a `base_lr`; the training loop sets `lr = base_lr * lr_factor`
on every group of every optimizer at each step. Only train.py imports this module, so torch is
imported at the top.
"""

import torch

from cifarcli.recipes import Recipe

LOOKAHEAD_EVERY = 5  # steps between lookahead pulls (airbench)
NEWTON_SCHULZ_STEPS = 3  # airbench94_muon's choice: enough for CIFAR-size filter banks


def lr_factor(step: int, total_steps: int, recipe: Recipe) -> float:
    """Piecewise linear: lr_start -> 1 at lr_peak_at of the steps -> lr_end at the last step."""
    progress = step / max(1, total_steps)
    if progress < recipe.lr_peak_at:
        return recipe.lr_start + (1 - recipe.lr_start) * progress / recipe.lr_peak_at
    return 1 + (recipe.lr_end - 1) * (progress - recipe.lr_peak_at) / max(1e-9, 1 - recipe.lr_peak_at)


def make_optimizers(model, recipe: Recipe) -> list:
    """SGD with Nesterov momentum for everything, or (optimizer "muon") Muon for the trainable
    convolution filters and SGD for the rest. BatchNorm biases learn bias_lr_scale times faster
    with weight decay scaled down by the same factor, so their decay per step is unchanged."""
    filters, norm_biases, others = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and name == "bias":
                norm_biases.append(param)
            elif recipe.optimizer == "muon" and param.ndim == 4:
                filters.append(param)
            else:
                others.append(param)
    groups = [{"params": others, "lr": recipe.lr, "weight_decay": recipe.weight_decay}]
    if norm_biases:
        scale = recipe.bias_lr_scale
        groups.append({"params": norm_biases, "lr": recipe.lr * scale, "weight_decay": recipe.weight_decay / scale})
    optimizers = [torch.optim.SGD(groups, momentum=recipe.momentum, nesterov=recipe.momentum > 0)]
    if filters:
        optimizers.append(Muon(filters, lr=recipe.muon_lr, momentum=recipe.muon_momentum))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def orthogonalize(matrix, steps: int = NEWTON_SCHULZ_STEPS):
    """Push all singular values of a matrix towards 1 (keeping its singular vectors) with a
    quintic Newton-Schulz iteration whose coefficients favour speed over exact convergence
    (Keller Jordan's Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix / (matrix.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    wide = x.T if x.shape[0] > x.shape[1] else x  # iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = wide @ wide.T
        wide = a * wide + (b * gram + c * gram @ gram) @ wide
    return wide.T if x.shape[0] > x.shape[1] else wide


class Muon(torch.optim.Optimizer):
    """Nesterov momentum whose update, per filter bank (out channels x the rest), is
    orthogonalized; the weights are rescaled to norm sqrt(out channels) before each step, so
    the learning rate sets the relative size of the change (airbench94_muon)."""

    def __init__(self, params, lr: float, momentum: float):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(param.grad)
                update = param.grad.add(buffer, alpha=group["momentum"])
                param.mul_(len(param) ** 0.5 / param.norm())
                param.add_(orthogonalize(update.reshape(len(param), -1).float()).view_as(param), alpha=-group["lr"])


class Lookahead:
    """airbench's lookahead: every few steps pull the weights to an EMA of themselves, with a
    decay that grows as (progress)^3, and end on the average."""

    def __init__(self, model):
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average = [t.detach().clone() for t in self.tensors]

    def load(self, average: list) -> None:
        for mine, saved in zip(self.average, average, strict=True):
            mine.copy_(saved)

    def update(self, decay: float) -> None:
        for average, tensor in zip(self.average, self.tensors, strict=True):
            average.lerp_(tensor, 1 - decay)
            tensor.copy_(average)
