"""The XTasC-Net training loss (paper Eqs. 11-16), computed with the fused ops or the eager references."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from xtc_ext import ops, reference

LOSS_IMPLS = {"fused": ops, "eager": reference}
"""``--loss-impl`` choices: modules with the same op functions and signatures."""


class XTasCLossTerms(NamedTuple):
    """The four loss terms (float32 scalars) and the two task-group losses.

    ``seg``: direct CE (Eq. 12); ``depth``: direct masked L1 in metres (Eq. 14);
    ``depth_consistency``: seg->depth transfer vs detached direct depth (Eq. 15);
    ``seg_consistency``: depth->seg transfer vs detached direct segmentation (Eq. 13);
    ``groups``: ``[L_seg_group, L_depth_group]`` of Eq. 11, float32 ``[2]``.
    """

    seg: Tensor
    depth: Tensor
    depth_consistency: Tensor
    seg_consistency: Tensor
    groups: Tensor


class XTasCLoss:
    """Per-task losses of XTasC-Net with cross-task consistency (paper Eq. 11).

    ``L_seg_group = (1 - lam_seg) * CE(seg, y) + lam_seg * L1(depth_transfer, sg(depth))`` and
    ``L_depth_group = (1 - lam_depth) * L1(depth, z) + lam_depth * SoftCE(seg_transfer, sg(seg))``.
    Each group holds the consistency loss of the transfer network fed by that task's prediction,
    as in the authors' code (reference-implementations.md §1.3; the paper's second argument
    ``y_t`` of Eq. 11 reads as a typo for ``y_s``). The consistency targets are the detached
    direct predictions; the segmentation consistency uses the soft target of Eq. 13. Invalid
    pixels are masked everywhere (paper §V-A): depth 0 in the depth terms, ``ignore_index`` in the
    segmentation terms; means run over valid pixels. With ``lam = 0`` (Base MT-Net) or a model
    without transfer networks, the consistency terms are 0.

    Args:
        lam_seg, lam_depth: lambda_t in [0, 1] (paper: 1e-4 for NYUv2, 0.01 for Cityscapes).
        ignore_index: label of void pixels in the segmentation target.
        impl: "fused" (xtc_ext.ops) or "eager" (xtc_ext.reference).

    Raises:
        ValueError: lambda outside [0, 1] or unknown ``impl``.
    """

    def __init__(self, lam_seg: float, lam_depth: float, ignore_index: int = -1, impl: str = "fused") -> None:
        for name, lam in (("lam_seg", lam_seg), ("lam_depth", lam_depth)):
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {lam}")
        if impl not in LOSS_IMPLS:
            raise ValueError(f"unknown loss impl {impl!r}; choose one of {sorted(LOSS_IMPLS)}")
        self.lam_seg, self.lam_depth = lam_seg, lam_depth
        self.ignore_index = ignore_index
        self.ops = LOSS_IMPLS[impl]

    def __call__(self, out, seg_target: Tensor, depth_target: Tensor) -> XTasCLossTerms:
        """Compute the terms for one batch.

        Args:
            out: model output with ``seg_logits [N,C,H,W]``, ``depth [N,1,H,W]`` (metres),
                ``seg_transfer`` and ``depth_transfer`` (same shapes, or None).
            seg_target: ``[N,H,W]`` int64 labels (``ignore_index`` = void).
            depth_target: ``[N,1,H,W]`` float depth in metres, 0 = invalid.
        """
        seg = self.ops.masked_cross_entropy(out.seg_logits, seg_target, self.ignore_index)
        depth_target = depth_target.to(out.depth.dtype)
        depth = self.ops.masked_l1_loss(out.depth, depth_target, invalid_value=0.0)
        zero = seg.new_zeros(())
        depth_cons = seg_cons = zero
        if out.depth_transfer is not None and self.lam_seg > 0:
            depth_cons = self.ops.masked_l1_loss(
                out.depth_transfer, out.depth.detach(), mask=depth_target > 0, invalid_value=None
            )
        if out.seg_transfer is not None and self.lam_depth > 0:
            seg_cons = self.ops.soft_cross_entropy(
                out.seg_transfer, out.seg_logits.detach(), mask=seg_target != self.ignore_index
            )
        groups = torch.stack(
            [
                (1 - self.lam_seg) * seg + self.lam_seg * depth_cons,
                (1 - self.lam_depth) * depth + self.lam_depth * seg_cons,
            ]
        )
        return XTasCLossTerms(seg, depth, depth_cons, seg_cons, groups)
