"""A 3x3 convolution whose weight gradient on all but the largest feature maps is one matrix
product, (output gradient)^T @ im2col(input).

In bf16 training on a CPU (oneDNN with AMX, batch 2000), oneDNN computes that gradient slowly on
small maps. In the default's training steps, timed in pairs against oneDNN throughout, taking
the matrix product on maps up to 15 px made the 24 and 32 px steps 1.15x and 1.18x faster
(medians of 16 pairs; up to 5 px: 1.33x and 1.05x), while adding the first block's 23 and 31 px
maps made them slower again (BENCHMARKS.md, "Where a training step's time goes"). Only the
weight gradient takes the matrix product; the forward pass, the input gradient, fp32,
evaluation and export are nn.Conv2d's own. Only models.py imports this module, inside its
builders, so torch is imported at the top.
"""

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 15  # pixels: the largest map on which the matrix product won


def im2col_3x3(x_nhwc):
    """(N, H, W, C) -> (N*H*W, 9*C): each pixel's 3x3 neighbourhood, zero-padded, in (dy, dx, c) order."""
    n, h, w, c = x_nhwc.shape
    padded = F.pad(x_nhwc, (0, 0, 1, 1, 1, 1))
    s = padded.stride()
    neighbourhoods = padded.as_strided((n, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return neighbourhoods.reshape(n * h * w, 9 * c)


def weight_gradient_by_matmul(x_nhwc, grad_nhwc):
    """The weight gradient (out, in, 3, 3) of a 3x3 convolution, stride 1, padding 1, from its
    input (N, H, W, in) and output gradient (N, H, W, out)."""
    in_channels, out_channels = x_nhwc.shape[-1], grad_nhwc.shape[-1]
    grad_rows = grad_nhwc.reshape(-1, out_channels)  # (N*H*W, out)
    grad_weight = grad_rows.t() @ im2col_3x3(x_nhwc)  # (out, 9*in)
    return grad_weight.view(out_channels, 3, 3, in_channels).permute(0, 3, 1, 2)


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
        return grad_x, weight_gradient_by_matmul(x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1))


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
