"""Training on imbalanced classes: what makes up for a rare class, and when.

    resolve_balance(choice, counts) -> (balance, note)     "auto" decided by the class counts
    balanced_loss(balance, counts, label_smoothing, device) the training loss, as a function
    sampling_weights(balance, labels, counts)              per-image draw weights, or None

The choices (the recipe's `balance` field, `cifar train --balance`):
- "none": every image alike;
- "reweight": the loss weighs each class by the inverse of its effective number of images,
  (1 - beta^n) / (1 - beta) (Cui et al. 2019);
- "resample": each epoch draws its images with replacement, every class equally often;
- "logit-adjust": the loss adds tau * log(class prior) to the logits (Menon et al. 2021), so the
  model's own logits are those of a balanced prior: exports and predictions need nothing else.
  Label smoothing's uniform part is taken on the model's own logits: on the adjusted ones it
  would pull a common class's images towards the rare classes.
Imports torch only inside the functions that build tensors.
"""

import math

import numpy as np

BALANCES = ("auto", "none", "reweight", "resample", "logit-adjust")
AUTO_IMBALANCE = 3.0  # auto balances a training split whose largest class has this many times the smallest's images
AUTO_BALANCE = "logit-adjust"  # what auto picks there: the best on CIFAR-10-LT (BENCHMARKS.md)
EFFECTIVE_NUMBER_BETA = 0.9999  # Cui et al.'s choice for CIFAR-LT
LOGIT_ADJUST_TAU = 1.0  # Menon et al.'s choice


def class_counts(labels: np.ndarray, classes: int) -> list[int]:
    """Images per class in a split's labels."""
    return np.bincount(labels, minlength=classes).tolist()


def imbalance_ratio(counts: list[int]) -> float:
    """The largest class's images over the smallest's (a class without images counts as one)."""
    return max(counts) / max(min(counts), 1)


def resolve_balance(choice: str, counts: list[int]) -> tuple[str, str]:
    """(the balance a run trains with, a note of it and why): "auto" balances only a training
    split at least AUTO_IMBALANCE times imbalanced, so balanced data trains exactly as without it.
    The note is "" where balanced data trains every image alike."""
    ratio = imbalance_ratio(counts)
    balance = (AUTO_BALANCE if ratio >= AUTO_IMBALANCE else "none") if choice == "auto" else choice
    why = f"{'auto' if choice == 'auto' else 'chosen'}: largest class {ratio:.3g}x the smallest"
    return balance, f"balance {balance} ({why})" if shows_per_class(balance, counts) else ""


def shows_per_class(balance: str, counts: list[int]) -> bool:
    """Whether a run's display names its balance and shows per-class figures beside accuracy: a
    balance was chosen, or the split is one auto would balance."""
    return balance != "none" or imbalance_ratio(counts) >= AUTO_IMBALANCE


def class_weights(counts: list[int], beta: float = EFFECTIVE_NUMBER_BETA) -> np.ndarray:
    """Each class's loss weight, the inverse of its effective number of images, scaled to a
    mean of 1 over the classes so that the learning rate keeps its meaning."""
    effective = np.array([(1 - beta ** max(n, 1)) / (1 - beta) for n in counts])
    weights = 1 / effective
    return weights * len(counts) / weights.sum()


def balanced_loss(balance: str, counts: list[int], label_smoothing: float, device):
    """The training loss for a resolved balance: (logits, targets) -> mean loss."""
    import torch
    from torch.nn import functional

    if balance == "reweight":  # a mean over images, not over weights: shards of a batch add up to the batch
        weight = torch.tensor(class_weights(counts), dtype=torch.float32, device=device)
        return lambda logits, targets: (
            functional.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
            * weight[targets]
        ).mean()
    if balance == "logit-adjust":
        log_prior = torch.tensor([LOGIT_ADJUST_TAU * math.log(max(n, 1) / sum(counts)) for n in counts], device=device)

        def adjusted(logits, targets):  # label smoothing as PyTorch's, its uniform part on the model's own logits
            nll = functional.cross_entropy(logits + log_prior, targets)
            uniform = -functional.log_softmax(logits, 1).mean()
            return (1 - label_smoothing) * nll + label_smoothing * uniform

        return adjusted
    return lambda logits, targets: functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def sampling_weights(balance: str, labels: np.ndarray, counts: list[int]):
    """Per-image draw weights (a CPU tensor) for "resample": each class drawn equally often;
    None for the other choices, whose epochs take every image once."""
    import torch

    if balance != "resample":
        return None
    per_class = 1 / np.maximum(np.array(counts, dtype=np.float64), 1)
    return torch.from_numpy(per_class[labels])
