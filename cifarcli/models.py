"""The model registry: networks by name, each with its own tuned default recipe.

Every network takes float32 NCHW pixels in [0, 1] and normalises inside itself (mean and std
are buffers), so training, evaluation, ONNX export and prediction share one input contract.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

from cifarcli.errors import CifarError
from cifarcli.recipes import Recipe


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable  # build(num_classes, mean, std) -> torch.nn.Module
    recipe: Recipe
    description: str
    prepare: "Callable | None" = None  # prepare(model, train uint8 images): data-dependent init


REGISTRY: dict[str, ModelEntry] = {}
DEFAULT_MODEL = "airbench-cpu"


def register_model(name: str, recipe: Recipe, description: str, prepare=None):
    def add(build):
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        REGISTRY[name] = ModelEntry(name, build, recipe, description, prepare)
        return build

    return add


def get_model_entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CifarError(f"--model {name}: unknown model; {hint}known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def create_model(name: str, num_classes: int, mean, std):
    return get_model_entry(name).build(num_classes, tuple(mean), tuple(std))


def check_input_sizes(name: str, recipe: Recipe, image_size: int, num_classes: int) -> None:
    """Refuse a recipe whose crop stages give images the network cannot take (a kernel larger
    than its input, a dense layer of another width): one image through it at each size."""
    import torch

    model = create_model(name, num_classes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    for size in sorted({min(size, image_size) for size, _ in recipe.crops} | {image_size}):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except RuntimeError:
            stages = ",".join(f"{stage}:{epochs:g}" for stage, epochs in recipe.crops)
            where = f"--set crops={stages}" if size < image_size else f"--data (images of {size} px)"
            raise CifarError(f"{where}: {name} cannot take {size} px images; choose larger crops or no crops") from None


# ---------------------------------------------------------------- building blocks
# torch is imported inside the builders so that listing models stays instant.


def normalize_layer(mean, std):
    import torch
    from torch import nn

    class Normalize(nn.Module):
        """(x - mean) / std with the data's statistics as buffers, so exports carry them."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    return Normalize()


def channel_mean_std(images) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1] units, to 4 places, exact,
    from 256-bin histograms counted by torch on the uint8 values: every run waits for this at its
    start, and float64 statistics or numpy's bincount (which copies to int64 first) take seconds."""
    import numpy as np
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


# ---------------------------------------------------------------- the Keras tutorial's CNN


@register_model(
    "tutorial",
    Recipe(
        epochs=4.5,  # the fewest that reached the tutorial's accuracy on every seed tried (docs/decisions.md)
        batch_size=256,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        label_smoothing=0.1,
        lr_start=0.1,
        lr_peak_at=0.25,
        lr_end=0.0,
        translate=2,
        flip="alternating",
        tta=2,
    ),
    "the Keras CIFAR-10 tutorial's CNN: conv32-pool-conv64-pool-conv64-dense64",
)
def tutorial(num_classes, mean, std):
    from torch import nn

    return nn.Sequential(
        normalize_layer(mean, std),
        nn.Conv2d(3, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(64),  # 1024 inputs at 32x32; lazy so any input size works
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


# ---------------------------------------------------------------- airbench-style networks


def airbench_net(num_classes, mean, std, widths, activation="gelu"):
    """Keller Jordan's airbench94 shape: a frozen 2x2 whitening stem, then three blocks of
    conv -> max-pool -> BatchNorm -> act -> conv -> BatchNorm -> act, a global max-pool and a
    bias-free linear head whose logits are scaled by 1/9."""
    import torch
    from torch import nn

    from cifarcli.small_map_conv import Conv3x3

    act = {"gelu": nn.GELU, "relu": nn.ReLU}[activation]

    def batch_norm(channels):
        # airbench: momentum 0.6 in the "keep" sense, weights frozen at 1, only biases learn.
        norm = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
        norm.weight.requires_grad = False
        return norm

    def conv(cin, cout, pooled=False):
        layer = Conv3x3(cin, cout, pooled)
        with torch.no_grad():  # identity (Dirac) init on the first cin filters
            nn.init.dirac_(layer.weight[:cin])
        return layer

    def block(cin, cout):
        pooled_conv = conv(cin, cout, pooled=True)  # only what the max-pool after it reads (training)
        return nn.Sequential(
            pooled_conv, nn.MaxPool2d(2), batch_norm(cout), act(), conv(cout, cout), batch_norm(cout), act()
        )

    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    whiten.weight.requires_grad = False
    head = nn.Linear(widths[2], num_classes, bias=False)
    return nn.Sequential(
        normalize_layer(mean, std),
        whiten,
        act(),
        block(24, widths[0]),
        block(widths[0], widths[1]),
        block(widths[1], widths[2]),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        head,
        scale_logits(1 / 9),
    )


def scale_logits(factor):
    from torch import nn

    class ScaleLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    return ScaleLogits()


def whitening_layer(model):
    return model[1]


def init_whitening(model, images, count: int = 5000, eps: float = 5e-4) -> None:
    """Set the frozen 2x2 stem to whiten patches: the eigenvectors of the covariance of the
    2x2 patches of `count` training images, scaled by 1/sqrt(eigenvalue + eps), both signs."""
    import torch

    layer = whitening_layer(model)
    pixels = torch.from_numpy(images[:count]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        normalized = model[0](pixels)  # (N, 3, H, W)
        k = layer.kernel_size[0]
        patches = normalized.unfold(2, k, 1).unfold(3, k, 1)  # (N, 3, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
        filters = filters.reshape(-1, 3, k, k).float()
        layer.weight.copy_(torch.cat([filters, -filters]))


AIRBENCH94_RECIPE = Recipe(
    # airbench94's decoupled hyperparameters (lr 11.5 and weight decay 0.0153 per 1024 examples,
    # summed loss) restated for PyTorch's SGD on the mean loss: lr = 11.5 / (1 + 1/(1-0.85)),
    # weight_decay = 0.0153 / (1 + 1/(1-0.85)) / lr.
    epochs=9.9,
    batch_size=1024,
    lr=11.5 / (1 + 1 / (1 - 0.85)),
    momentum=0.85,
    weight_decay=0.0153 / 11.5,
    label_smoothing=0.2,
    lr_start=0.2,
    lr_peak_at=0.23,
    lr_end=0.07,
    bias_lr_scale=64.0,
    translate=2,
    flip="alternating",
    lookahead=True,
    tta=2,
    whiten_bias_epochs=3,
)


@register_model(
    "airbench94",
    AIRBENCH94_RECIPE,
    "airbench94 (Keller Jordan): whitened stem, blocks 64/256/256, GELU; 94% on GPU CIFAR-10",
    prepare=init_whitening,
)
def airbench94(num_classes, mean, std):
    return airbench_net(num_classes, mean, std, widths=(64, 256, 256))


# airbench94_muon (Keller Jordan) restated in this package's terms: mean loss, logits scaled by
# 1/9 instead of 1/256 (so its head lr 0.67 per summed loss of 2000 becomes 0.67 * 2000 * (9/256)^2),
# BatchNorm biases 64x that, weight decay 0.004 per step, lr falling linearly to 0, no lookahead.
MUON_HEAD_LR = 0.67 * 2000 * (9 / 256) ** 2
AIRBENCH_CPU_RECIPE = replace(
    AIRBENCH94_RECIPE,
    epochs=10,
    batch_size=2000,
    lr=MUON_HEAD_LR,
    weight_decay=0.004 / MUON_HEAD_LR,
    lr_start=1.0,
    lr_peak_at=0.0,
    lr_end=0.0,
    lookahead=False,
    optimizer="muon",
    muon_lr=0.24,
    muon_momentum=0.6,
    crops=((24, 5),),
)


register_model(
    "airbench-cpu",
    AIRBENCH_CPU_RECIPE,
    "airbench94's network, CPU recipe: Muon, 10 epochs, the first 5 on cheaper 24px crops",
    prepare=init_whitening,
)(airbench94)  # the same network as airbench94, with its own recipe


@register_model(
    "airbench-narrow",
    replace(AIRBENCH94_RECIPE, epochs=18),
    "airbench94 with blocks 64/128/256: faster training and a smaller, faster export",
    prepare=init_whitening,
)
def airbench_narrow(num_classes, mean, std):
    return airbench_net(num_classes, mean, std, widths=(64, 128, 256))


def describe_model(name: str, num_classes: int = 10, input_size: int = 32) -> dict:
    """Name, parameter count, forward FLOPs per image (2 x multiply-adds of convs and linears)."""
    import torch
    from torch import nn

    entry = get_model_entry(name)
    model = entry.build(num_classes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        macs.append(output[0].numel() * per_output)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    return {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": round(2 * sum(macs) / 1e9, 4),
        "epochs": entry.recipe.epochs,
        "description": entry.description,
        "default": name == DEFAULT_MODEL,
    }
