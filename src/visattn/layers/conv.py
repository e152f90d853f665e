"""Convolution pieces: TensorFlow-style "same" convolution and pooling, squeeze-excite, pre-activation MBConv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Proxy

from .amp import amp_conv2d, amp_linear
from .drop import DropPath
from .fused import conv_act, fast_inference, linear_act, linear_add
from .partition import is_symbolic

__all__ = ["same_padding", "Conv1x1", "SameConv2d", "SameAvgPool2d", "SqueezeExcite", "MBConv"]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis: output = ceil(size / stride), extra pad after.

    Integer arithmetic only, so a symbolic size (torch.export) gives a symbolic amount rather than a guard.
    """
    total = ((size + stride - 1) // stride - 1) * stride + (kernel - 1) * dilation + 1 - size
    if not is_symbolic(total):
        total = max(total, 0)
    elif kernel < stride:  # with kernel >= stride the amount is never negative
        total = torch.sym_max(total, 0)
    return total // 2, total - total // 2


class Conv1x1(nn.Conv2d):
    """1x1 convolution that runs as a matrix multiply on channels-last (NHWC-strided) maps.

    Same parameters and state-dict shape as ``nn.Conv2d(in, out, 1)``. On CPU, PyTorch sends 1x1 convolutions on
    channels-last tensors to its slow im2col path; ``F.linear`` over the (free) NHWC view is a single GEMM.
    """

    def __init__(self, in_chs: int, out_chs: int, *, bias: bool = True):
        super().__init__(in_chs, out_chs, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with(x, self.weight, self.bias)

    def forward_with(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution with explicit (e.g. BatchNorm-folded) parameters."""
        # torch.fx symbolic tracing cannot see the layout; the convolution computes the same for either
        if not isinstance(x, Proxy) and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = amp_linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)  # (B, H, W, out)
            return y.permute(0, 3, 1, 2)                               # (B, out, H, W), NHWC memory
        return amp_conv2d(x, weight, bias)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, so ported TF weights give TF outputs.

    With stride 1 and an odd kernel the padding is symmetric and static (plain ``padding=k//2``). With stride 2 it
    depends on the input size (for a 3x3 kernel: (0, 1) on even sizes, (1, 1) on odd ones), so it is computed per call
    and applied with ``F.pad`` only when asymmetric.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, *, groups: int = 1,
                 bias: bool = True):
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2 if static else 0,
                         groups=groups, bias=bias)
        self.dynamic_pad = not static

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with(x, self.weight, self.bias)

    def forward_with(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution with explicit (e.g. BatchNorm-folded) parameters."""
        s = self.stride[0]
        if not self.dynamic_pad:
            return amp_conv2d(x, weight, bias, s, self.padding, 1, self.groups)
        k = self.kernel_size[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        if not is_symbolic(top, left) and top == bottom and left == right:
            return amp_conv2d(x, weight, bias, s, (top, left), 1, self.groups)
        return amp_conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, s, 0, 1, self.groups)


class SameAvgPool2d(nn.Module):
    """2x2 stride-2 average pooling with TF "SAME" padding: odd sizes round up and the average skips the padding.

    Deviation from timm: timm's ``AvgPool2dSame`` zero-pads first and so counts the padding in the average; TF
    (``tf.keras.layers.AveragePooling2D(padding='same')``, used by google-research/maxvit) does not. The two agree on
    even sizes, the only ones timm's MaxViT accepts.
    """

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        if is_symbolic(H, W):
            # Traced for any size (torch.export): ceil_mode's output-size rule would guard on the size. Repeating the
            # last row / column up to an even size gives the same means (in a 2x2 window every copy sits next to its
            # original, so the window mean is the mean of its real pixels) and the conv branch's symbolic size.
            x = F.pad(x, (0, (W + 1) // 2 * 2 - W, 0, (H + 1) // 2 * 2 - H), mode="replicate")
            return F.avg_pool2d(x, 2, 2)
        return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(act(fc1(mean_hw(x)))))."""

    def __init__(self, channels: int, reduced: int, *, act_layer: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)

    def gate(self, x: Tensor) -> Tensor:
        """The per-channel scale, (B, C, 1, 1)."""
        s = x.mean((2, 3), keepdim=True)                               # (B, C, 1, 1)
        s = self.act(amp_conv2d(s, self.fc1.weight, self.fc1.bias))
        return amp_conv2d(s, self.fc2.weight, self.fc2.bias).sigmoid()


class MBConv(nn.Module):
    """Pre-activation inverted residual block (MobileNetV2 with SE) as used by MaxViT (paper Eq. 1 and 2).

    x + proj1x1(SE(act(BN(dw3x3(act(BN(conv1x1(BN(x))))))))). With ``stride=2`` the depthwise conv strides and the
    shortcut is 2x2 average pooling followed by a 1x1 conv when the width changes.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: 1 or 2.
        expand_ratio: hidden width = ``expand_ratio * out_chs`` (MaxViT expands the output width).
        se_ratio: SE bottleneck = ``se_ratio * out_chs``.
        act_layer: activation after the two inner BatchNorms.
        bn_eps: BatchNorm epsilon (TF default 1e-3 in MaxViT).
        bn_momentum: PyTorch momentum (TF decay 0.99 is momentum 0.01).
        drop_path: stochastic depth of the residual branch.
    """

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, expand_ratio: float = 4.0,
                 se_ratio: float = 0.25, act_layer: type[nn.Module] = nn.GELU, bn_eps: float = 1e-3,
                 bn_momentum: float = 0.01, drop_path: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        mid = int(out_chs * expand_ratio)
        if stride == 2:
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("pool", SameAvgPool2d())
            self.shortcut.add_module("expand", Conv1x1(in_chs, out_chs) if in_chs != out_chs else nn.Identity())
        elif in_chs != out_chs:
            raise ValueError(f"MBConv with stride 1 keeps the width (got {in_chs} -> {out_chs})")
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = nn.BatchNorm2d(in_chs, eps=bn_eps, momentum=bn_momentum)
        self.conv1_1x1 = Conv1x1(in_chs, mid, bias=False)
        self.norm1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self.act1 = act_layer()
        self.conv2_kxk = SameConv2d(mid, mid, 3, stride, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self.act2 = act_layer()
        self.se = SqueezeExcite(mid, int(out_chs * se_ratio))
        self.conv3_1x1 = Conv1x1(mid, out_chs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        shortcut = self.shortcut(x)
        if fast_inference(x, self) and x.is_contiguous(memory_format=torch.channels_last):
            return self._forward_inference(x, shortcut)
        if self.training:
            x = self.act1(self.norm1(self.conv1_1x1(self.pre_norm(x))))
            x = self.act2(self.norm2(self.conv2_kxk(x)))
        else:
            x = self._forward_folded(x)
        x = self.conv3_1x1(self.se(x))
        return self.drop_path(x) + shortcut

    def _forward_inference(self, x: Tensor, shortcut: Tensor) -> Tensor:
        # Eval + no autograd on an NHWC-strided map: BatchNorms folded, both activations fused into their oneDNN
        # matmul / convolution, SE scaling in place, and the shortcut added in the last matmul's epilogue.
        conv = self.conv2_kxk
        H, W = x.shape[-2:]
        top, bottom = same_padding(H, conv.kernel_size[0], conv.stride[0])
        left, right = same_padding(W, conv.kernel_size[1], conv.stride[1])
        asymmetric = top != bottom or left != right
        if asymmetric:
            # Pad the narrow input instead of the 4x-wide hidden map (a fresh 50 MB buffer and a copy at batch 4);
            # the 1x1 conv maps the padding to nonzero values, so the border is zeroed again after it.
            x = F.pad(x, (left, right, top, bottom))
        s0, t0 = _bn_affine(self.pre_norm)
        s1, t1 = _bn_affine(self.norm1)
        w1 = self.conv1_1x1.weight.flatten(1)                          # (mid, in)
        h = linear_act(x.permute(0, 2, 3, 1), self.conv1_1x1, self.act1, weight=s1[:, None] * w1 * s0[None, :],
                       bias=s1 * (w1 @ t0) + t1)                       # (B, Hp, Wp, mid)
        if asymmetric:
            h[:, :top].zero_()
            h[:, top + H:].zero_()
            h[:, :, :left].zero_()
            h[:, :, left + W:].zero_()
            top = left = 0
        s2, t2 = _bn_affine(self.norm2)
        h = conv_act(h.permute(0, 3, 1, 2), conv, self.act2, weight=conv.weight * s2.view(-1, 1, 1, 1), bias=t2,
                     padding=(top, left))                              # (B, mid, H', W'), NHWC memory
        h = h.mul_(self.se.gate(h))
        out = linear_add(h.permute(0, 2, 3, 1), self.conv3_1x1, shortcut.permute(0, 2, 3, 1))  # (B, H', W', out)
        return out.permute(0, 3, 1, 2)                                 # (B, out, H', W'), NHWC memory

    def _forward_folded(self, x: Tensor) -> Tensor:
        # In eval the three BatchNorms are affine maps; folding them into the 1x1 and depthwise convs saves three
        # passes over the 4x-wide hidden map. Exact up to float rounding: the BN before the 1x1 conv meets no padding,
        # and the other two follow their convs.
        s0, t0 = _bn_affine(self.pre_norm)
        s1, t1 = _bn_affine(self.norm1)
        w1 = self.conv1_1x1.weight.flatten(1)                          # (mid, in)
        weight = (s1[:, None] * w1 * s0[None, :]).view_as(self.conv1_1x1.weight)
        bias = s1 * (w1 @ t0) + t1
        x = self.act1(self.conv1_1x1.forward_with(x, weight, bias))
        s2, t2 = _bn_affine(self.norm2)
        x = self.conv2_kxk.forward_with(x, self.conv2_kxk.weight * s2.view(-1, 1, 1, 1), t2)
        return self.act2(x)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift, per channel."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale
