"""XTasC-Net (Cross-Task Consistency Network) and its single-task baseline.

Reproduces the architecture of the authors' code (akarimoon/xtask_mt, commit
``167ee59``: ``model/xtask_ts.py`` and ``model/transfer_net.py``), described in
the paper (Nakano et al., "Cross-Task Consistency Learning Framework for
Multi-Task Learning", §IV-A and Fig. 2); differences are listed in
``docs/fidelity.md`` section "XTasC-Net model":

- a shared torchvision-style ResNet encoder (:class:`~python_models.resnet.ResNetEncoder`),
- one U-Net decoder per task (:class:`UNetDecoder`, the authors' ``DecoderSequential``),
- two task-transfer networks (:class:`TaskTransferNet`, the authors'
  ``TaskTransferNetWithSkipCN``): segmentation -> depth and depth -> segmentation.

Module names differ from the authors' (``encoder`` instead of
``pretrained_encoder``, ``seg_decoder`` instead of ``decoder_segmt`` ...), so
their checkpoints do not load by name; layer structure, order, widths and
parameter counts are the same.
"""

from __future__ import annotations

import numbers
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import ResNetEncoder

__all__ = [
    "ConvBlock",
    "UNetDecoder",
    "TTDown",
    "TTUp",
    "TaskTransferNet",
    "XTasCOutput",
    "XTasCNet",
    "BaseSTNet",
]

_TASKS = ("semseg", "depth")


def _init_xavier(module: nn.Module) -> None:
    """Authors' ``_init_weights``: xavier_normal_ conv weights, zero conv biases, BN weight 1 / bias 0.

    Source: authors' ``_init_weights`` of ``XTaskTSNet`` in ``model/xtask_ts.py``.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_image(x: Tensor, multiple: int, who: str, channels: Optional[int] = 3) -> None:
    """Validate a ``[N, C, H, W]`` floating tensor whose H and W are multiples of ``multiple``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{who} expects a 4-D input [N, C, H, W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{who} expects {channels} input channels, got shape {tuple(x.shape)}"
        )
    h, w = x.shape[-2], x.shape[-1]  # not int(): torch.export keeps H and W dynamic
    if h % multiple or w % multiple or h == 0 or w == 0:
        raise ValueError(
            f"{who}: input height and width must be positive multiples of {multiple}, got {h}x{w}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating-point input, got dtype {x.dtype}")


# --------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Decoder block: three (3x3 conv + BN + ReLU) layers, then bilinear x2 upsampling.

    Layers: ``conv1 = Sequential(Conv2d(in, mid, 3, padding=1, bias=True),
    BatchNorm2d(mid), ReLU)``, ``conv2`` (mid -> mid, same form), ``conv3``
    (mid -> out, same form), then ``F.interpolate(scale_factor=2,
    mode="bilinear", align_corners=True)``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        mid_channels: width of the first two convs (128 in XTasC-Net).

    Shapes: float ``[N, C_in, H, W]`` -> ``[N, C_out, 2H, 2W]``, same dtype.

    Init: xavier_normal_ conv weights, zero biases, BN weight 1 / bias 0.

    Source: paper §IV-A ("3 layers of 3x3 conv + BN + ReLU ... upsampled by 2");
    authors' ``ConvBlock`` in ``model/xtask_ts.py``.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, mid_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.conv3 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        _init_xavier(self)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C_in, H, W]`` -> ``[N, C_out, 2H, 2W]``."""
        out = self.conv3(self.conv2(self.conv1(x)))
        return F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=True)


class UNetDecoder(nn.Module):
    """U-Net style task decoder with five :class:`ConvBlock` s and a 1x1 output conv.

    With encoder stages ``enc0..enc4`` (channels ``e0..e4``, resolutions
    H/2 .. H/32) and ``m = mid_channels``::

        d4  = block1(enc4)                 # in e4,      out [N, m, H/16, W/16]
        d3  = block2(cat[d4, enc3])        # in m + e3,  out [N, m, H/8,  W/8]
        d2  = block3(cat[d3, enc2])        # in m + e2,  out [N, m, H/4,  W/4]
        d1  = block4(cat[d2, enc1])        # in m + e1,  out [N, m, H/2,  W/2]
        d0  = block5(cat[d1, enc0])        # in m + e0,  out [N, m, H,    W]
        out = head(d0)                     # Conv2d(m, out_channels, 1, bias=False)

    Args:
        encoder_channels: the five stage widths ``[e0, e1, e2, e3, e4]``
            (``ResNetEncoder.channels``).
        out_channels: number of output maps (number of classes for segmentation,
            1 for depth).
        mid_channels: decoder width (128 in XTasC-Net).

    Forward:
        ``features``: sequence of five float tensors as returned by
        :class:`~python_models.resnet.ResNetEncoder` (``enc0`` first).
        Returns a float tensor ``[N, out_channels, H, W]`` at the input-image
        resolution with no activation (segmentation logits, or linear depth in
        metres — it may be negative).  ``forward(f) == head(decode(f))``:
        :meth:`decode` returns the pre-head map ``d0`` ``[N, mid_channels, H, W]``.

    Raises:
        ValueError: ``features`` does not hold exactly five tensors; bad
            constructor arguments.

    Init: xavier_normal_ conv weights, zero biases, BN weight 1 / bias 0.

    Source: paper §IV-A; authors' ``DecoderSequential`` and the forward of ``XTaskTSNet``
    in ``model/xtask_ts.py``.
    """

    def __init__(
        self, encoder_channels: Sequence[int], out_channels: int, mid_channels: int = 128
    ) -> None:
        super().__init__()
        enc = [int(c) for c in encoder_channels]
        if len(enc) != 5:
            raise ValueError(f"encoder_channels must list 5 stage widths, got {list(encoder_channels)}")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        self.encoder_channels = enc
        self.out_channels = int(out_channels)
        self.mid_channels = int(mid_channels)
        m = self.mid_channels
        self.block1 = ConvBlock(enc[4], m, m)
        self.block2 = ConvBlock(m + enc[3], m, m)
        self.block3 = ConvBlock(m + enc[2], m, m)
        self.block4 = ConvBlock(m + enc[1], m, m)
        self.block5 = ConvBlock(m + enc[0], m, m)
        self.head = nn.Conv2d(m, self.out_channels, kernel_size=1, bias=False)
        _init_xavier(self)

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Decode ``(enc0, ..., enc4)`` into the pre-head map ``d0`` ``[N, mid_channels, H, W]``.

        ``d0`` is the input of :attr:`head`: the task feature map that XTasC-Net exposes in
        :attr:`XTasCOutput.features`.

        Raises:
            ValueError: ``features`` does not hold exactly five tensors.
        """
        if len(features) != 5:
            raise ValueError(f"UNetDecoder expects 5 encoder stages, got {len(features)}")
        enc0, enc1, enc2, enc3, enc4 = features
        d = self.block1(enc4)
        d = self.block2(torch.cat((d, enc3), dim=1))
        d = self.block3(torch.cat((d, enc2), dim=1))
        d = self.block4(torch.cat((d, enc1), dim=1))
        return self.block5(torch.cat((d, enc0), dim=1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode ``(enc0, ..., enc4)`` into ``[N, out_channels, H, W]`` (``head(decode(features))``)."""
        return self.head(self.decode(features))


# --------------------------------------------------------------------------------------
# Task-transfer network
# --------------------------------------------------------------------------------------


def _single_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Authors' ``SingleConvBlock``: Conv2d(3x3, padding 1, bias) [+ BN] + ReLU."""
    layers: list = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TTDown(nn.Module):
    """TTNet contracting block: two (3x3 conv [+BN] + ReLU), THEN 2x2 max-pool stride 2.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out`` (both convs output ``C_out``).
        batch_norm: insert BatchNorm2d between each conv and its ReLU.

    Shapes: float ``[N, C_in, H, W]`` -> ``[N, C_out, H/2, W/2]`` (H, W even).

    Source: paper §IV-A; authors' ``TTDown`` in ``model/transfer_net.py``.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = _single_conv(in_channels, out_channels, batch_norm)
        self.conv2 = _single_conv(out_channels, out_channels, batch_norm)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C_in, H, W]`` -> ``[N, C_out, H/2, W/2]``."""
        return self.pool(self.conv2(self.conv1(x)))


class TTUp(nn.Module):
    """TTNet expansive block: bilinear x2 upsample (align_corners=True) FIRST, then two (3x3 conv [+BN] + ReLU).

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out`` (both convs output ``C_out``).
        batch_norm: insert BatchNorm2d between each conv and its ReLU.

    Shapes: float ``[N, C_in, H, W]`` -> ``[N, C_out, 2H, 2W]``.

    Source: paper §IV-A; authors' ``TTUp`` in ``model/transfer_net.py``; ``docs/fidelity.md``
    section "XTasC-Net model" (TTNet expansive blocks upsample first).
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = _single_conv(in_channels, out_channels, batch_norm)
        self.conv2 = _single_conv(out_channels, out_channels, batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C_in, H, W]`` -> ``[N, C_out, 2H, 2W]``."""
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.conv2(self.conv1(x))


class TaskTransferNet(nn.Module):
    """Task-transfer network (TTNet): a small U-Net mapping one task's prediction to the other's.

    This is the authors' ``TaskTransferNetWithSkipCN``.  With widths
    ``(w1, w2, w3) = (64, 128, 256)`` (doubled to ``(128, 256, 512)`` when
    ``wider=True``)::

        x   = log_softmax(x, dim=1)        # only if log_softmax_input=True
        e1  = enc1(x)                      # TTDown(C_in -> w1):    H/2
        e2  = enc2(e1)                     # TTDown(w1 -> w2):      H/4
        e3  = enc3(e2)                     # TTDown(w2 -> w3):      H/8
        u   = dec1(e3)                     # TTUp(w3 -> w2):        H/4
        u   = dec2(cat[u, e2])             # TTUp(2*w2 -> w1):      H/2
        u   = dec3(cat[u, e1])             # TTUp(2*w1 -> w1):      H
        out = final_conv(u)                # Conv2d(w1, C_out, 1, bias=False), no activation

    In XTasC-Net the segmentation -> depth TTNet is built with
    ``log_softmax_input=True`` (authors: ``if out_features == 1: x =
    LogSoftmax(dim=1)(x)``), so it is called with raw segmentation logits and
    sees log-probabilities; the depth -> segmentation TTNet receives the raw
    linear depth.  Nothing is detached.

    Args:
        in_channels: channels of the source prediction (C classes, or 1 for depth).
        out_channels: channels of the transferred prediction (1 for depth, or C classes).
        batch_norm: insert BatchNorm2d between every 3x3 conv and its ReLU
            (authors' ``--batch_norm``; default off). Adds ``2 * sum(widths of
            the 12 convs)`` parameters (2,816 at default widths).
        wider: double every width (authors' ``--wider_ttnet``).
        log_softmax_input: apply ``log_softmax(dim=1)`` to the input first.

    Forward:
        ``x``: float tensor ``[N, in_channels, H, W]``, H and W multiples of 8.
        Returns float ``[N, out_channels, H, W]``: segmentation logits
        (unnormalised) or linear depth in metres, same dtype as ``x``.

    Raises:
        ValueError: ``x`` not 4-D, wrong channel count, or H/W not positive multiples of 8.
        TypeError: non-floating input.

    Init: xavier_normal_ conv weights, zero biases, BN weight 1 / bias 0.

    Source: paper §IV-A ("TTNets ... 3 blocks of contracting path and 3 blocks of
    expansive path ... 64, 128, 256"); authors' ``TaskTransferNetWithSkipCN``
    (``model/transfer_net.py`` L98-142); ``docs/fidelity.md`` section "XTasC-Net model".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        batch_norm: bool = False,
        wider: bool = False,
        log_softmax_input: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}"
            )
        w1, w2, w3 = (128, 256, 512) if wider else (64, 128, 256)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.widths = (w1, w2, w3)
        self.batch_norm = bool(batch_norm)
        self.log_softmax_input = bool(log_softmax_input)
        self.enc1 = TTDown(self.in_channels, w1, batch_norm)
        self.enc2 = TTDown(w1, w2, batch_norm)
        self.enc3 = TTDown(w2, w3, batch_norm)
        self.dec1 = TTUp(w3, w2, batch_norm)
        self.dec2 = TTUp(w2 + w2, w1, batch_norm)
        self.dec3 = TTUp(w1 + w1, w1, batch_norm)
        self.final_conv = nn.Conv2d(w1, self.out_channels, kernel_size=1, bias=False)
        _init_xavier(self)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in_channels, H, W]`` -> ``[N, out_channels, H, W]``; see the class docstring."""
        _check_image(x, 8, "TaskTransferNet", channels=self.in_channels)
        if self.log_softmax_input:
            x = F.log_softmax(x, dim=1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        u = self.dec1(e3)
        u = self.dec2(torch.cat((u, e2), dim=1))
        u = self.dec3(torch.cat((u, e1), dim=1))
        return self.final_conv(u)


# --------------------------------------------------------------------------------------
# Full models
# --------------------------------------------------------------------------------------


class XTasCOutput(NamedTuple):
    """Outputs of :class:`XTasCNet` (float tensors, dtype of the input image).

    Fields:
        seg_logits: ``[N, C, H, W]`` direct segmentation logits (no softmax).
        depth: ``[N, 1, H, W]`` direct depth, linear, in metres, no activation
            (may be negative).
        seg_transfer: ``[N, C, H, W]`` logits ``depth_to_seg(depth)``, or ``None``
            (``direct_only=True`` or model built without TTNets).
        depth_transfer: ``[N, 1, H, W]`` linear depth (metres)
            ``seg_to_depth(log_softmax(seg_logits))``, or ``None``.
        features: the per-task pre-head feature maps (the task-feature interface,
            :class:`~python_models.interface.TaskFeatureHost`): ``{"semseg": d0_seg,
            "depth": d0_depth}``, each ``[N, 128, H, W]``, the last
            :class:`UNetDecoder` map before its 1x1 ``head`` (references to tensors the
            forward computes anyway; not detached).  ``None`` when the output is built
            by hand without them (the default).

    The positional order differs from the authors' tuple ``(seg, seg_t, dep, dep_t)``:
    here it is ``(seg_logits, depth, seg_transfer, depth_transfer, features)``; access by name.

    Source: authors' ``XTaskTSNet.forward`` in ``model/xtask_ts.py``.
    """

    seg_logits: Tensor
    depth: Tensor
    seg_transfer: Optional[Tensor]
    depth_transfer: Optional[Tensor]
    features: Optional[Dict[str, Tensor]] = None


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


class XTasCNet(nn.Module):
    """XTasC-Net: shared ResNet encoder, two U-Net decoders and two task-transfer networks.

    Args:
        num_classes: number of segmentation classes C (7 or 19 for Cityscapes,
            13 for NYUv2); int >= 2.
        encoder_depth: ResNet depth, one of 18, 34 (default), 50, 101, 152.
        with_transfer: build the two TTNets (``seg_to_depth``, ``depth_to_seg``);
            when False both are ``None`` and the transfer outputs are ``None``.
        ttnet_batch_norm: BatchNorm inside the TTNets (authors' ``--batch_norm``).
        wider_ttnet: double the TTNet widths (authors' ``--wider_ttnet``).

    Attributes:
        encoder: :class:`~python_models.resnet.ResNetEncoder` (torchvision default init).
        seg_decoder: :class:`UNetDecoder` with C outputs.
        depth_decoder: :class:`UNetDecoder` with 1 output.
        seg_to_depth: :class:`TaskTransferNet` (C -> 1, applies log_softmax to its
            input) or ``None``.
        depth_to_seg: :class:`TaskTransferNet` (1 -> C) or ``None``.
        feature_channels: ``{"semseg": 128, "depth": 128}``, the channels of
            :attr:`XTasCOutput.features` (task-feature interface).

    :meth:`shared_parameters` gives the last shared layer's weight (the task weightings' hook).

    Forward ``forward(x, direct_only=False)``:
        ``x``: float ``[N, 3, H, W]`` normalised RGB, H and W multiples of 32.
        Returns :class:`XTasCOutput` ``(seg_logits [N,C,H,W], depth [N,1,H,W],
        seg_transfer [N,C,H,W] | None, depth_transfer [N,1,H,W] | None,
        features {"semseg", "depth"} -> [N,128,H,W])``.
        Transfers are ``None`` when ``direct_only`` is True or the model has
        no TTNets.  TTNet inputs are not detached: transfer losses back-propagate
        through the TTNet into the source decoder and the encoder.

    Raises:
        ValueError: bad ``num_classes`` or ``encoder_depth``; input not 4-D,
            not 3 channels, or H/W not positive multiples of 32 (message names
            the size).
        TypeError: non-floating input.

    Parameter counts (checked in tests): R34/C=7 31,553,344; R34/C=13
    31,557,952; R34/C=19 31,562,560; R18/C=7 21,445,184; R50/C=7 40,412,224;
    R34/C=7 without TTNets 27,785,280.

    Source: paper §IV-A and Fig. 2 (the counts equal the paper's #P column);
    authors' ``XTaskTSNet`` in ``model/xtask_ts.py``; ``docs/fidelity.md`` section
    "XTasC-Net model".
    """

    def __init__(
        self,
        num_classes: int,
        encoder_depth: int = 34,
        with_transfer: bool = True,
        ttnet_batch_norm: bool = False,
        wider_ttnet: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.encoder = ResNetEncoder(encoder_depth)
        ch = self.encoder.channels
        self.seg_decoder = UNetDecoder(ch, self.num_classes, mid_channels=128)
        self.depth_decoder = UNetDecoder(ch, 1, mid_channels=128)
        self.feature_channels: Dict[str, int] = {
            "semseg": self.seg_decoder.mid_channels,
            "depth": self.depth_decoder.mid_channels,
        }
        self.seg_to_depth: Optional[TaskTransferNet]
        self.depth_to_seg: Optional[TaskTransferNet]
        if with_transfer:
            self.seg_to_depth = TaskTransferNet(
                self.num_classes, 1, batch_norm=ttnet_batch_norm, wider=wider_ttnet,
                log_softmax_input=True,
            )
            self.depth_to_seg = TaskTransferNet(
                1, self.num_classes, batch_norm=ttnet_batch_norm, wider=wider_ttnet,
                log_softmax_input=False,
            )
        else:
            self.seg_to_depth = None
            self.depth_to_seg = None

    @property
    def with_transfer(self) -> bool:
        """True when the model holds the two TTNets."""
        return self.seg_to_depth is not None

    def shared_parameters(self) -> List[nn.Parameter]:
        """The parameters a task weighting balances the task gradients at (the hook of
        :mod:`xtc_ext.weighting`): the weight of the encoder's last shared conv, ``layer4[-1].conv2`` of a
        BasicBlock ResNet-18/34, ``conv3`` of a Bottleneck ResNet-50+ (GradNorm's ``W``, Chen et al. §3: the
        last shared layer; the authors use ``conv2`` always, docs/fidelity.md "Task weighting")."""
        block = self.encoder.layer4[-1]
        return [(block.conv3 if hasattr(block, "conv3") else block.conv2).weight]

    def shared_module(self) -> nn.Module:
        """The module whose output is the shared representation every task head consumes: the encoder (its
        outputs, the five skip feature maps ``[N, C_i, H / 2^i, W / 2^i]``, feed both decoders). The
        Jacobian-descent weightings (``xtc_ext.weighting.jacobian``) take the task gradients there."""
        return self.encoder

    def forward(self, x: Tensor, direct_only: bool = False) -> XTasCOutput:
        """Run the model; see the class docstring for shapes, units and errors."""
        _check_image(x, 32, "XTasCNet", channels=3)
        feats = self.encoder(x)
        task_features = {"semseg": self.seg_decoder.decode(feats), "depth": self.depth_decoder.decode(feats)}
        seg = self.seg_decoder.head(task_features["semseg"])
        dep = self.depth_decoder.head(task_features["depth"])
        if direct_only or self.seg_to_depth is None or self.depth_to_seg is None:
            return XTasCOutput(seg, dep, None, None, task_features)
        dep_t = self.seg_to_depth(seg)  # log_softmax applied inside (log_softmax_input=True)
        seg_t = self.depth_to_seg(dep)
        return XTasCOutput(seg, dep, seg_t, dep_t, task_features)


class BaseSTNet(nn.Module):
    """Single-task baseline ("Base ST-Net"): ResNet encoder + one :class:`UNetDecoder`.

    Args:
        task: ``"semseg"`` (semantic segmentation) or ``"depth"``.
        num_classes: C (int >= 2) for segmentation; must be ``None`` (or 1) for depth.
        encoder_depth: ResNet depth, one of 18, 34 (default), 50, 101, 152.

    Attributes:
        task, out_channels, encoder (:class:`~python_models.resnet.ResNetEncoder`),
        decoder (:class:`UNetDecoder`).

    Forward:
        ``x``: float ``[N, 3, H, W]``, H and W multiples of 32.
        Returns ``[N, C, H, W]`` segmentation logits, or ``[N, 1, H, W]`` linear
        depth in metres (no activation).

    Raises:
        ValueError: unknown ``task``; ``num_classes`` invalid for the task;
            bad ``encoder_depth``; input not 4-D / not 3 channels / H or W not
            positive multiples of 32.
        TypeError: non-floating input.

    Source: paper §V-D (Base ST-Net); authors' ``BaseSTLNet`` in ``model/xtask_ts.py``,
    driven by ``main_stl.py``.
    """

    def __init__(self, task: str, num_classes: Optional[int] = None, encoder_depth: int = 34) -> None:
        super().__init__()
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if task == "semseg":
            out = _check_num_classes(num_classes)
        else:
            if num_classes not in (None, 1):
                raise ValueError(
                    f"num_classes must be None (or 1) for task 'depth', got {num_classes!r}"
                )
            out = 1
        self.task = task
        self.out_channels = out
        self.encoder = ResNetEncoder(encoder_depth)
        self.decoder = UNetDecoder(self.encoder.channels, out, mid_channels=128)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> ``[N, out_channels, H, W]``; see the class docstring."""
        _check_image(x, 32, "BaseSTNet", channels=3)
        return self.decoder(self.encoder(x))
