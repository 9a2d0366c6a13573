"""A 3x3 convolution whose weight gradient on small feature maps is one matrix product.

On a CPU with bf16, oneDNN computes the weight gradient of a 3x3 convolution slowly when the map
is small: for the last block of airbench's network at batch 2000 (maps of 2, 3 and 5 pixels) it
took 1.7-6x as long as multiplying the output gradient by the im2col'd input, while on maps of
7 pixels and more oneDNN was as fast or faster (BENCHMARKS.md, "Where a training step's time
goes"). So only the weight gradient, only on small maps, only in bf16 training on the CPU takes
the matrix product; the forward pass, the input gradient, fp32, evaluation and export are
nn.Conv2d's own. Only models.py imports this module, inside its builders, so torch is imported
at the top.
"""

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 5  # pixels: the largest map on which the matrix product won


def im2col_3x3(x_nhwc):
    """(N, H, W, C) -> (N*H*W, 9*C): each pixel's 3x3 neighbourhood, zero-padded, in (dy, dx, c) order."""
    n, h, w, c = x_nhwc.shape
    padded = F.pad(x_nhwc, (0, 0, 1, 1, 1, 1))
    s = padded.stride()
    neighbourhoods = padded.as_strided((n, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return neighbourhoods.reshape(n * h * w, 9 * c)


class WeightGradientByMatmul(torch.autograd.Function):
    """F.conv2d(x, weight, padding=1) forward; backward: oneDNN's input gradient, and the weight
    gradient as (output gradient)^T @ im2col(x)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            mask = [True, False, False]
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )[0]
        out_channels, in_channels = weight.shape[:2]
        grad_rows = grad_out.permute(0, 2, 3, 1).reshape(-1, out_channels)  # (N*H*W, out)
        grad_weight = grad_rows.t() @ im2col_3x3(x.permute(0, 2, 3, 1))  # (out, 9*in)
        return grad_x, grad_weight.view(out_channels, 3, 3, in_channels).permute(0, 3, 1, 2)


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(cin, cout, 3, padding=1, bias=False), the same parameters and state dict."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x):
        if self.training and torch.is_grad_enabled() and max(x.shape[-2:]) <= SMALL_MAP and bf16_autocast(x):
            return WeightGradientByMatmul.apply(x.to(torch.bfloat16), self.weight.to(torch.bfloat16))
        return super().forward(x)


def bf16_autocast(x) -> bool:
    on_cpu = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    return on_cpu and torch.get_autocast_dtype("cpu") == torch.bfloat16
