"""A training recipe: every setting of a run besides the data and the network, and its rules.

Each registered network carries its tuned Recipe (models.py); CLI options and `cifar train --set
FIELD=VALUE` override fields; config.json and the model card hold it as JSON, in today's fields
(upgrade_recipe_fields reads older files' fields). Imports no torch.
"""

import json
import math
from dataclasses import asdict, dataclass, fields, replace

from cifarcli.balance import BALANCES
from cifarcli.errors import CifarError


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run besides the data. CLI flags override fields
    (`cifar train --set FIELD=VALUE` any of them)."""

    epochs: float  # passes over the training split; a fraction trains part of the last one
    batch_size: int
    lr: float  # peak learning rate of SGD with the mean loss over the batch
    momentum: float  # Nesterov
    weight_decay: float  # in PyTorch's terms (multiplied by lr at each step)
    label_smoothing: float
    lr_start: float  # fraction of the peak lr at step 0
    lr_peak_at: float  # fraction of the steps where the lr peaks
    lr_end: float  # fraction of the peak lr at the last step
    bias_lr_scale: float = 1.0  # BatchNorm biases learn this much faster (airbench: 64)
    translate: int = 2  # random translation in pixels, reflect padding
    flip: str = "alternating"  # "alternating" (each image both ways), "random" or "none"
    lookahead: bool = False  # airbench's lookahead towards an EMA of the weights
    tta: int = 2  # test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-pixel translations
    whiten_bias_epochs: float = 0.0  # the whitening layer's bias trains this long, then freezes
    # Progressive resizing: ((size, epochs), ...) trains the first epochs at these sizes, in order,
    # then the rest at the images' size; () trains at the images' size throughout.
    crops: tuple = ()
    progressive: str = "crop"  # how: "crop" (random crops at the images' scale) or "resize" (whole images, smaller)
    optimizer: str = "sgd"  # "sgd", or "muon": Muon for the convolution filters, SGD for the rest
    muon_lr: float = 0.0  # Muon's step, relative to the filters' norm
    muon_momentum: float = 0.0  # Muon's Nesterov momentum
    balance: str = "auto"  # making up for rare classes (balance.py); a run records what auto resolved to
    seed: int = 0

    def __post_init__(self):
        """Every field's rule (RECIPE_RULES), checked whatever set it: the registry, an option,
        --set or config.json; a bad value is refused before a run folder is taken."""
        for name, (allowed, choose) in RECIPE_RULES.items():
            value = getattr(self, name)
            if (isinstance(value, float) and not math.isfinite(value)) or not allowed(value):
                shown = ",".join(f"{size}:{epochs:g}" for size, epochs in value) if name == "crops" else value
                raise CifarError(f"--set {name}={shown}: choose {choose}")

    def override(self, **values) -> "Recipe":
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise CifarError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        if values.get("crops") is not None:  # JSON (config.json, metadata) gives lists
            values["crops"] = tuple((int(size), float(epochs)) for size, epochs in values["crops"])
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict:
        """The recipe in its JSON form (crops as lists), as config.json and checkpoints hold it."""
        return json.loads(json.dumps(asdict(self)))


# Each recipe field's rule: a test of its value, and what to choose instead.
RECIPE_RULES = {
    "epochs": (lambda v: v > 0, "a number of epochs above 0, such as 10"),
    "batch_size": (lambda v: v >= 1, "a batch size of at least 1"),
    "lr": (lambda v: v >= 0, "a learning rate of 0 or more"),
    "momentum": (lambda v: 0 <= v < 1, "a momentum from 0 up to (not including) 1"),
    "weight_decay": (lambda v: v >= 0, "a weight decay of 0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a label smoothing from 0 up to (not including) 1, such as 0.1"),
    "lr_start": (lambda v: v >= 0, "a fraction of the peak learning rate, 0 or more"),
    "lr_peak_at": (lambda v: 0 <= v <= 1, "a fraction of the steps from 0 to 1"),
    "lr_end": (lambda v: v >= 0, "a fraction of the peak learning rate, 0 or more"),
    "bias_lr_scale": (lambda v: v > 0, "a scale above 0"),
    "translate": (lambda v: v >= 0, "a translation of 0 or more pixels"),
    "flip": (lambda v: v in ("alternating", "random", "none"), "alternating, random or none"),
    "tta": (lambda v: v in (0, 1, 2), "0 (none), 1 (mirror) or 2 (mirror and translations)"),
    "whiten_bias_epochs": (lambda v: v >= 0, "0 or more epochs"),
    "crops": (
        lambda v: all(size >= 1 and epochs > 0 for size, epochs in v),
        "SIZE:EPOCHS stages with sizes of at least 1 px and epochs above 0, such as 16:2,24:3",
    ),
    "progressive": (lambda v: v in ("crop", "resize"), "crop or resize"),
    "optimizer": (lambda v: v in ("sgd", "muon"), "sgd or muon"),
    "muon_lr": (lambda v: v >= 0, "a step of 0 or more"),
    "muon_momentum": (lambda v: 0 <= v < 1, "a momentum from 0 up to (not including) 1"),
    "balance": (lambda v: v in BALANCES, ", ".join(BALANCES[:-1]) + " or " + BALANCES[-1]),
    "seed": (lambda v: isinstance(v, int), "an integer"),
}


def upgrade_recipe_fields(recorded: dict) -> dict:
    """A recipe as files of older schemas hold it, in today's fields: one small-crop stage
    (small_crop, small_crop_epochs) became the crop stages ((size, epochs), ...); a recipe
    without a balance trained every image alike ("none")."""
    upgraded = {"balance": "none", **recorded}
    size, epochs = upgraded.pop("small_crop", None), upgraded.pop("small_crop_epochs", None)
    if "crops" not in upgraded:
        upgraded["crops"] = [[size, epochs]] if size and epochs else []
    return upgraded


def parse_recipe_settings(settings: list[str]) -> dict:
    """`--set FIELD=VALUE` texts -> recipe overrides, each value read as its field's type:
    numbers, true/false, names, and crops as SIZE:EPOCHS pairs ("16:2,24:3"; "" for none)."""
    types = {f.name: f.type for f in fields(Recipe)}
    values = {}
    for setting in settings:
        name, equals, text = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or name not in types:
            known = ", ".join(types)
            raise CifarError(f"--set {setting}: give FIELD=VALUE with a recipe field ({known})")
        kind = types[name]
        try:
            if kind is tuple:
                pairs = [pair.split(":") for pair in text.split(",") if pair.strip()]
                values[name] = tuple((int(size), float(epochs)) for size, epochs in pairs)
            elif kind is bool:
                values[name] = {"true": True, "1": True, "false": False, "0": False}[text.strip().lower()]
            else:
                values[name] = kind(text)
        except (ValueError, KeyError):
            example = {tuple: "16:2,24:3", bool: "true or false", int: "an integer", float: "a number"}
            raise CifarError(f"--set {setting}: {name} takes {example.get(kind, 'a name')}") from None
        if isinstance(values[name], float) and not math.isfinite(values[name]):
            raise CifarError(f"--set {setting}: {name} takes a finite number")
    return values
