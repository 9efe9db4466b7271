"""ResNet encoders (ResNet-18/34/50/101/152) written without torchvision.

The modules reproduce torchvision's ``torchvision.models.resnet`` layer for
layer, with IDENTICAL parameter and buffer names (``conv1``, ``bn1``,
``layer1`` .. ``layer4`` with ``N.conv1/bn1/conv2/bn2[/conv3/bn3]`` and
``N.downsample.0/1``), so a torchvision state dict can be loaded directly once
its ``fc.*`` entries are dropped.  The classification head (``avgpool`` and
``fc``) is not built.

XTasC-Net uses this network as its shared encoder and splits it into five
stages (paper §IV-A; authors' ``model/xtask_ts.py`` ``_load_encoder``;
``docs/fidelity.md`` section "XTasC-Net model", encoder).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNetEncoder", "RESNET_DEPTHS"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (torchvision ``conv3x3``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (torchvision ``conv1x1``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two-conv residual block of ResNet-18/34 (torchvision ``BasicBlock``).

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)`` where
    ``identity = downsample(x)`` when a downsample module is given, else ``x``.

    Args:
        inplanes: input channels ``C_in``.
        planes: output channels ``C_out`` (``expansion`` = 1).
        stride: stride of ``conv1`` (1 or 2).
        downsample: optional ``Sequential(conv1x1(stride), BatchNorm2d)``
            projecting the identity to ``[N, C_out, H/stride, W/stride]``.

    Shapes: ``x`` float ``[N, C_in, H, W]`` -> ``[N, C_out, ceil(H/stride), ceil(W/stride)]``,
    same dtype.

    Source: He et al. 2016; torchvision ``resnet.py`` ``BasicBlock``.
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block; see the class docstring for shapes."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """Three-conv bottleneck block of ResNet-50/101/152 (torchvision ``Bottleneck``, "v1.5").

    1x1 (``planes``) -> 3x3 with the stride (``planes``) -> 1x1 (``planes * 4``),
    each followed by BatchNorm; ReLU after the first two and after the residual
    addition.  The stride sits on the 3x3 conv as in torchvision.

    Args:
        inplanes: input channels ``C_in``.
        planes: bottleneck width; output channels are ``planes * expansion`` (= 4 * planes).
        stride: stride of ``conv2`` (1 or 2).
        downsample: optional projection of the identity (``Sequential(conv1x1, BatchNorm2d)``).

    Shapes: ``x`` float ``[N, C_in, H, W]`` -> ``[N, 4*planes, ceil(H/stride), ceil(W/stride)]``.

    Source: He et al. 2016; torchvision ``resnet.py`` ``Bottleneck``.
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        width = planes  # groups=1, base_width=64 in every torchvision ResNet used here
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block; see the class docstring for shapes."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


_Block = Union[Type[BasicBlock], Type[Bottleneck]]

#: depth -> (block type, number of blocks in layer1..layer4), as in torchvision.
RESNET_DEPTHS: Dict[int, Tuple[_Block, Tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNetEncoder(nn.Module):
    """torchvision-compatible ResNet trunk returning five feature stages.

    Parameter/buffer names equal torchvision's ``resnet{depth}`` minus ``fc.*``
    (there is no ``avgpool``/``fc``).  Initialisation equals torchvision's
    default: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for every
    conv, BatchNorm weight 1 and bias 0 (``zero_init_residual=False``).

    Args:
        depth: one of 18, 34, 50, 101, 152.

    Attributes:
        depth: the ResNet depth.
        channels: list of the channel counts of the five returned stages,
            ``[64, 64, 128, 256, 512]`` for depth 18/34 and
            ``[64, 256, 512, 1024, 2048]`` for depth >= 50.

    Forward:
        ``x``: float tensor ``[N, 3, H, W]`` (normalised RGB image, any float dtype).
        Returns a tuple of five float tensors (same dtype as ``x``):

        - ``enc0 = relu(bn1(conv1(x)))``: ``[N, 64, H/2, W/2]``
        - ``enc1 = layer1(maxpool(enc0))``: ``[N, channels[1], H/4, W/4]``
        - ``enc2 = layer2(enc1)``: ``[N, channels[2], H/8, W/8]``
        - ``enc3 = layer3(enc2)``: ``[N, channels[3], H/16, W/16]``
        - ``enc4 = layer4(enc3)``: ``[N, channels[4], H/32, W/32]``

        (sizes are exact when H and W are divisible by 32; otherwise each
        stride-2 step rounds up.)

    Raises:
        ValueError: unsupported ``depth`` (message names the value and the
            allowed ones); in ``forward``, ``x`` not 4-D or not 3 channels.

    Source: paper §IV-A; authors' ``model/xtask_ts.py`` ``_load_encoder``
    (splits torchvision's ResNet the same way); ``docs/fidelity.md`` section
    "XTasC-Net model".
    """

    def __init__(self, depth: int = 34) -> None:
        super().__init__()
        if isinstance(depth, bool) or depth not in RESNET_DEPTHS:
            raise ValueError(
                f"unsupported ResNet depth {depth!r}; allowed depths are {sorted(RESNET_DEPTHS)}"
            )
        block, layers = RESNET_DEPTHS[depth]
        self.depth: int = int(depth)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        e = block.expansion
        self.channels: List[int] = [64, 64 * e, 128 * e, 256 * e, 512 * e]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: _Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return ``(enc0, enc1, enc2, enc3, enc4)``; see the class docstring."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"ResNetEncoder expects a 4-D input [N, 3, H, W], got shape {tuple(x.shape)}"
            )
        enc0 = self.relu(self.bn1(self.conv1(x)))
        enc1 = self.layer1(self.maxpool(enc0))
        enc2 = self.layer2(enc1)
        enc3 = self.layer3(enc2)
        enc4 = self.layer4(enc3)
        return enc0, enc1, enc2, enc3, enc4

    def load_torchvision_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a torchvision ``resnet{depth}`` state dict (e.g. ImageNet weights).

        ``fc.weight``/``fc.bias`` (any ``fc.*`` key) are dropped.  A leading
        ``module.`` prefix is NOT stripped.  BatchNorm ``num_batches_tracked``
        buffers absent from old checkpoints (torchvision's ``*.pth`` files
        predate that buffer) are filled with 0, as ``torch.nn.BatchNorm2d``
        does itself; every other key must match exactly (strict).

        Args:
            state_dict: mapping of torchvision parameter/buffer names to tensors
                (float32 parameters, int64 ``num_batches_tracked``).

        Raises:
            RuntimeError: when keys are missing or unexpected (the message lists
                both sets) or when a tensor shape differs (raised by
                ``nn.Module.load_state_dict``; e.g. a ResNet-50 dict loaded into a
                ResNet-34 encoder).

        Source: authors' ``_load_encoder`` in ``model/xtask_ts.py`` (their
        ``--use_pretrain`` loads torchvision ImageNet weights); ``docs/fidelity.md``
        section "XTasC-Net model", encoder.
        """
        filtered: Dict[str, Tensor] = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        own = self.state_dict()
        for k in own:
            if k.endswith("num_batches_tracked") and k not in filtered:
                filtered[k] = torch.zeros_like(own[k])
        missing = sorted(set(own) - set(filtered))
        unexpected = sorted(set(filtered) - set(own))
        if missing or unexpected:
            raise RuntimeError(
                f"state dict does not match ResNetEncoder(depth={self.depth}): "
                f"missing keys ({len(missing)}): {missing}; unexpected keys ({len(unexpected)}): {unexpected}"
            )
        self.load_state_dict(filtered, strict=True)
