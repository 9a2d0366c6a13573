"""A 3x3 convolution whose weight gradient on all but the largest feature maps is computed as
matrix products, (output gradient)^T @ im2col(input) summed over groups of images, and whose
forward pass and input gradient on the smallest maps are matrix products too.

In bf16 training on a CPU (oneDNN, batch 2000), oneDNN computes the weight gradient slowly on
small maps; in paired training steps the matrix products made the default's steps faster up to
SMALL_MAP px and slower on the first block's larger maps, and the same held for the forward pass
and input gradient up to TINY_MAP px. Summing the weight gradient over products of
IMAGES_PER_PRODUCT images keeps each im2col in the cache. Before a 2x2 max-pool, a convolution on
an odd map computes only the rows and columns the pool reads, the same numbers out of the pool
(not on the first block's maps, where the padding copy it needs cost more). Each choice and its
paired-step figure is a line of docs/decisions.md. Everywhere else, and in fp32 (where the matrix
products were slower), evaluation and export, the convolution is nn.Conv2d's own. Only models.py
imports this module, inside its builders, so torch is imported at the top.
"""

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 15  # pixels: the largest map on which the weight gradient's matrix product won
TINY_MAP = 5  # pixels: the largest map on which the forward's and input gradient's won too
IMAGES_PER_PRODUCT = 64  # images per matrix product of the weight gradient: its im2col stays in the cache
SAME = (1, 1, 1, 1)  # F.pad's (left, right, top, bottom): padding 1 all round, the output the input's size


def pooled_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """The padding of a 3x3 convolution whose output a 2x2 max-pool (floor mode) reads: on an odd
    map the pool never reads the last row and column, so they are not computed (no padding below
    and to the right). The rows and columns computed are the same numbers as with SAME."""
    return (1, 1 - width % 2, 1, 1 - height % 2)


def im2col_3x3(x_nhwc, padding=SAME):
    """(N, H, W, C) -> (N*H'*W', 9*C): each output pixel's 3x3 neighbourhood, zero-padded, in
    (dy, dx, c) order; H' and W' are the output's size with that padding."""
    left, right, top, bottom = padding
    padded = F.pad(x_nhwc, (0, 0, left, right, top, bottom))
    n, h, w, c = padded.shape[0], padded.shape[1] - 2, padded.shape[2] - 2, padded.shape[3]
    s = padded.stride()
    neighbourhoods = padded.as_strided((n, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return neighbourhoods.reshape(n * h * w, 9 * c)


def weight_gradient_by_matmul(x_nhwc, grad_nhwc, padding=SAME):
    """The weight gradient (out, in, 3, 3) of a 3x3 convolution, stride 1, with `padding`, from its
    input (N, H, W, in) and output gradient (N, H', W', out), summed in float32 over products of
    IMAGES_PER_PRODUCT images: their im2col stays in the cache, where the whole batch's went
    through memory at a few GB/s."""
    in_channels, out_channels = x_nhwc.shape[-1], grad_nhwc.shape[-1]
    grad_weight = torch.zeros(out_channels, 9 * in_channels, dtype=torch.float32, device=x_nhwc.device)
    for start in range(0, len(x_nhwc), IMAGES_PER_PRODUCT):
        images = slice(start, start + IMAGES_PER_PRODUCT)
        grad_rows = grad_nhwc[images].reshape(-1, out_channels)  # (images*H'*W', out)
        grad_weight += grad_rows.t() @ im2col_3x3(x_nhwc[images], padding)  # (out, 9*in)
    return grad_weight.to(x_nhwc.dtype).view(out_channels, 3, 3, in_channels).permute(0, 3, 1, 2)


def conv_by_matmul(x, weight, padding=SAME):
    """conv2d(F.pad(x, padding), weight) as one matrix product on channels_last tensors:
    (N, in, H, W) -> (N, out, H', W'), channels_last."""
    left, right, top, bottom = padding
    n, _, h, w = x.shape
    h, w = h + top + bottom - 2, w + left + right - 2
    columns = im2col_3x3(x.permute(0, 2, 3, 1), padding)  # (N*H'*W', 9*in)
    out = columns @ weight.permute(0, 2, 3, 1).reshape(len(weight), -1).t()  # (N*H'*W', out)
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def input_gradient_by_matmul(grad_out, weight):
    """The input gradient of a 3x3 convolution, stride 1, padding 1 (see same_size_gradient): the
    convolution of the output gradient with the filters mirrored and their channel axes swapped."""
    return conv_by_matmul(grad_out, weight.flip(2, 3).transpose(0, 1))


def same_size_gradient(grad_out, padding):
    """The output gradient of a convolution with `padding`, zero-extended to the input's size:
    the rows and columns not computed contribute nothing, so the input gradient is then the
    padding-1 convolution's."""
    if padding == SAME:
        return grad_out
    _, right, _, bottom = padding
    extended = F.pad(grad_out, (0, 1 - right, 0, 1 - bottom))
    return extended.contiguous(memory_format=torch.channels_last)


def padded_conv2d(x, weight, padding):
    """conv2d(F.pad(x, padding), weight), without the copy when the padding is SAME."""
    if padding == SAME:
        return F.conv2d(x, weight, padding=1)
    return F.conv2d(F.pad(x, padding), weight)


class SmallMapConv(torch.autograd.Function):
    """conv2d(F.pad(x, padding), weight), with the weight gradient as (output gradient)^T @ im2col(x);
    on tiny maps the forward pass and the input gradient are matrix products too, elsewhere
    oneDNN's."""

    @staticmethod
    def forward(ctx, x, weight, padding, tiny: bool):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.tiny = padding, tiny
        return conv_by_matmul(x, weight, padding) if tiny else padded_conv2d(x, weight, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_same = same_size_gradient(grad_out, ctx.padding)
            if ctx.tiny:
                grad_x = input_gradient_by_matmul(grad_same, weight)
            else:
                mask = [True, False, False]
                grad_x = torch.ops.aten.convolution_backward(
                    grad_same, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
                )[0]
        x_nhwc, grad_nhwc = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)
        return grad_x, weight_gradient_by_matmul(x_nhwc, grad_nhwc, ctx.padding), None, None


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(cin, cout, 3, padding=1, bias=False), the same parameters and state dict. With
    pooled=True a 2x2 max-pool must read the output: in bf16 training on a small odd map, the
    output then lacks the last row and column, which the pool would drop. The matrix products
    run only in a model that use_matrix_products() switched on, and only while it trains."""

    def __init__(self, in_channels: int, out_channels: int, pooled: bool = False):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)
        self.pooled = pooled  # a 2x2 max-pool reads the output
        self.by_matrix_products = False  # bf16 training on a CPU: set by use_matrix_products

    def forward(self, x):
        size = max(x.shape[-2:])
        if self.by_matrix_products and self.training and torch.is_grad_enabled() and size <= SMALL_MAP:
            padding = pooled_padding(*x.shape[-2:]) if self.pooled else SAME
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            return SmallMapConv.apply(x, self.weight.to(torch.bfloat16), padding, size <= TINY_MAP)
        return super().forward(x)


def use_matrix_products(model, enabled: bool) -> None:
    """Switch the matrix-product path of every Conv3x3 in the model: for bf16 training on a CPU."""
    for module in model.modules():
        if isinstance(module, Conv3x3):
            module.by_matrix_products = enabled
