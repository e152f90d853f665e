"""A bottleneck ResNet (He et al. 2016, arXiv 1512.03385) whose state-dict keys are torchvision's.

``ResNet(depths=(3, 4, 6, 3))`` is ResNet-50 and ``(3, 4, 23, 3)`` ResNet-101, torchvision's "v1.5" (the stride
sits on the 3x3 conv of a bottleneck), so ``resnet50-*.pth`` / ``resnet101-*.pth`` ImageNet checkpoints load
without renaming (``conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0/1, fc``). Dilation replaces the
stride of layer3 and/or layer4 as torchvision's ``replace_stride_with_dilation`` does: the first block of a
dilated stage keeps the previous dilation, the later blocks use the new one. Widths and the stem are parameters,
so tests can build a tiny network with the same code paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .model import run_blocks

__all__ = ["Bottleneck", "ResNet", "resnet_remap_state_dict"]


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), BatchNorm after each, residual, ReLU."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, *, stride: int = 1, dilation: int = 1, bn_eps: float = 1e-5):
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chs, eps=bn_eps))

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chs, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.relu(x + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet: stem (7x7 s2 conv, BN, ReLU, 3x3 s2 max pool) and four stages; optional classifier.

    Args:
        depths: blocks per stage (ResNet-50: 3, 4, 6, 3; ResNet-101: 3, 4, 23, 3).
        widths: bottleneck widths per stage (outputs are 4x): 64, 128, 256, 512 in torchvision.
        stem_width: channels of the 7x7 stem conv.
        in_chans: input channels.
        dilate: per stage 2..4 (three flags), replace that stage's stride by dilation (torchvision's
            ``replace_stride_with_dilation``); (False, True, True) gives output stride 8.
        num_classes: > 0 adds global average pooling and ``fc`` (torchvision's head); 0 for a feature extractor.
        bn_eps: BatchNorm epsilon (torchvision: 1e-5).
    """

    def __init__(self, *, depths: Sequence[int] = (3, 4, 6, 3), widths: Sequence[int] = (64, 128, 256, 512),
                 stem_width: int = 64, in_chans: int = 3, dilate: Sequence[bool] = (False, False, False),
                 num_classes: int = 0, bn_eps: float = 1e-5):
        super().__init__()
        if len(depths) != 4 or len(widths) != 4 or len(dilate) != 3:
            raise ValueError(f"ResNet needs 4 depths, 4 widths and 3 dilate flags, got {depths}, {widths}, {dilate}")
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_chs, dilation = stem_width, 1
        self.feature_info = []
        reduction = 4
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            first_dilation = dilation
            if i > 0 and dilate[i - 1]:
                dilation *= stride
                stride = 1
            reduction *= stride
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(in_chs, width, stride=stride if j == 0 else 1,
                                         dilation=first_dilation if j == 0 else dilation, bn_eps=bn_eps))
                in_chs = width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": f"layer{i + 1}"})
        self.num_features = in_chs
        self.num_classes = num_classes
        if num_classes > 0:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_chs, num_classes)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init: Kaiming-normal (fan_out, ReLU) convs, BatchNorm weight 1 / bias 0; not the
        # transformers' init_trunc_normal_, since torchvision's ImageNet ResNets were trained from this one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Outputs of layer1..layer4. Shape: (B, C, H, W) -> [(B, 4 * widths[i], H / r_i, W / r_i)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(4):
            x = run_blocks(getattr(self, f"layer{i + 1}"), x, self.grad_checkpointing)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, num_classes) with a classifier, else the layer4 map."""
        x = self.forward_intermediates(x)[-1]
        if self.num_classes > 0:
            return self.fc(torch.flatten(self.avgpool(x), 1))
        return x

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "ResNet") -> dict[str, Tensor]:
        """torchvision keys are this module's keys; a checkpoint's ``fc`` is dropped when the model has none."""
        return resnet_remap_state_dict(state_dict, model)


def resnet_remap_state_dict(state_dict: dict[str, Tensor], model: ResNet) -> dict[str, Tensor]:
    """Map a torchvision ResNet state dict onto ``model``: the keys are the same; ``fc.*`` is dropped when the
    model has no classifier (a feature extractor loading an ImageNet checkpoint)."""
    if model.num_classes > 0:
        return dict(state_dict)
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
