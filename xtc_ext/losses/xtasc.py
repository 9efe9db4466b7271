"""The XTasC-Net training loss (paper Eqs. 8, 11-16), computed with the fused ops or the eager references.

- :class:`XTasCLoss`: the two task-group losses of XTasC-Net (cross-task consistency, default) or of
  the Align-Net baseline (transfer networks against the ground truth), with the options of the
  authors' code (hard pseudo-labels, ``--lp`` direct depth loss) and an explicit depth validity mask.
- :func:`single_task_loss`: the loss of the Base ST-Net single-task baseline.
- :func:`masked_depth_loss`: the masked direct depth loss for every ``--lp`` choice.

Units: depth in metres (the loss of a depth term is in metres for ``"l1"``, square metres for
``"mse"``); cross-entropies in nats. All losses are float32 scalars (float64 for float64 inputs).
Source: XTasC-Net paper §III-A Eq. 8, §IV-B Eqs. 11-16; docs/fidelity.md, "XTasC-Net losses".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from xtc_ext.losses.common import LOSS_IMPLS, check_choice, to_accumulation

VARIANTS = ("xtasc", "align")
"""``XTasCLoss(variant=...)``: cross-task consistency (paper Eq. 11) or the Align-Net alignment loss (Eq. 8)."""

SEG_CONSISTENCY = ("soft", "hard")
"""``XTasCLoss(seg_consistency=...)``: soft target (paper Eq. 13) or argmax pseudo-labels (authors' code)."""

DEPTH_LOSSES = ("l1", "mse", "logl1", "smoothl1")
"""``--lp`` choices for the direct depth loss (authors' ``--lp {L1,MSE,logL1,smoothL1}``)."""

TASKS = ("semseg", "depth")
"""Tasks of :func:`single_task_loss` (the names of ``python_models.BaseSTNet.task``)."""


def _depth_valid(depth_target: Tensor, depth_valid: Tensor | None) -> Tensor:
    """Bool ``[N,1,H,W]`` validity: ``depth_valid`` when given (``[N,1,H,W]`` or ``[N,H,W]``, nonzero =
    valid), else ``depth_target > 0``."""
    if depth_valid is None:
        return depth_target > 0
    v = depth_valid.unsqueeze(1) if depth_valid.dim() == 3 else depth_valid
    if v.shape != depth_target.shape:
        raise ValueError(
            f"depth_valid must have shape {tuple(depth_target.shape)} (or without the channel dim), "
            f"got {tuple(depth_valid.shape)}"
        )
    if v.device != depth_target.device:
        raise RuntimeError(f"depth_valid is on {v.device}, depth_target on {depth_target.device}")
    return v if v.dtype == torch.bool else v != 0


def masked_depth_loss(
    pred: Tensor, target: Tensor, valid: Tensor, kind: str = "l1", impl: str = "fused"
) -> Tensor:
    """Masked mean of a per-pixel depth error over the valid pixels of the whole batch.

    With ``e = pred - target`` per valid pixel:

    - ``"l1"``: ``|e|`` (paper Eq. 14; the fused ``masked_l1_loss`` for ``impl="fused"``, its eager
      reference for ``"eager"``);
    - ``"mse"``: ``e^2``;
    - ``"logl1"``: ``log(1 + |e|)``;
    - ``"smoothl1"``: ``0.5 e^2`` if ``|e| < 1`` else ``|e| - 0.5`` (Huber, beta = 1).

    ``"mse"``, ``"logl1"`` and ``"smoothl1"`` have no fused op: they are eager PyTorch whatever
    ``impl`` says (computed in float32, float64 for float64 input). The authors' ``--lp`` losses
    average each image over its valid pixels and then average the images (NaN for an image without
    valid pixels); here the mean runs over the valid pixels of the batch, as in the fused ops, and
    is 0 (zero gradient) when no pixel is valid.

    Args:
        pred: ``[N, 1, H, W]`` float depth (metres).
        target: same shape and dtype (metres).
        valid: bool ``[N, 1, H, W]``, True = pixel counted.
        kind: one of ``DEPTH_LOSSES``.
        impl: ``"fused"`` or ``"eager"`` (only changes ``"l1"``).

    Returns:
        float32 (float64) scalar; gradient to ``pred`` (and ``target`` if it requires grad).

    Raises:
        ValueError: unknown ``kind`` or ``impl``; shapes that do not match.
    """
    check_choice("depth loss", kind, DEPTH_LOSSES)
    check_choice("loss impl", impl, LOSS_IMPLS)
    if kind == "l1":
        return LOSS_IMPLS[impl].masked_l1_loss(pred, target, mask=valid, invalid_value=None)
    if pred.shape != target.shape or valid.shape != pred.shape:
        raise ValueError(
            f"depth_loss: pred {tuple(pred.shape)}, target {tuple(target.shape)} and valid {tuple(valid.shape)} "
            "must have the same shape"
        )
    e = to_accumulation(pred) - to_accumulation(target)
    if kind == "mse":
        per = e * e
    elif kind == "logl1":
        per = torch.log1p(e.abs())
    else:
        per = F.smooth_l1_loss(e, torch.zeros_like(e), reduction="none", beta=1.0)
    per = torch.where(valid, per, torch.zeros((), dtype=per.dtype, device=per.device))
    return per.sum() / valid.sum().clamp(min=1).to(per.dtype)


class XTasCLossTerms(NamedTuple):
    """The four loss terms (float32 scalars) and the two task-group losses.

    ``seg``: direct CE (Eq. 12); ``depth``: direct depth loss (Eq. 14, or the ``depth_loss`` choice);
    ``depth_consistency``: the seg->depth transfer term: L1 against the detached direct depth (Eq. 15)
    or, for Align-Net, against the ground truth (Eq. 8);
    ``seg_consistency``: the depth->seg transfer term: CE against the detached direct segmentation
    (soft Eq. 13, or hard pseudo-labels) or, for Align-Net, against the ground-truth labels (Eq. 8);
    ``groups``: ``[L_seg_group, L_depth_group]`` of Eq. 11, float32 ``[2]``.
    """

    seg: Tensor
    depth: Tensor
    depth_consistency: Tensor
    seg_consistency: Tensor
    groups: Tensor


class XTasCLoss:
    """Per-task losses of XTasC-Net with cross-task consistency (paper Eq. 11), or of Align-Net.

    ``L_seg_group = (1 - lam_seg) * CE(seg, y) + lam_seg * l_{s->d}`` and
    ``L_depth_group = (1 - lam_depth) * l_depth(depth, z) + lam_depth * l_{d->s}``.
    Each group holds the transfer loss of the transfer network fed by that task's prediction,
    as in the authors' code (docs/fidelity.md, "XTasC-Net losses"; the paper's second argument
    ``y_t`` of Eq. 11 reads as a typo for ``y_s``). The transfer terms by ``variant``:

    - ``"xtasc"`` (default, cross-task consistency): ``l_{s->d} = L1(depth_transfer, sg(depth))``
      (Eq. 15) and ``l_{d->s} = SoftCE(seg_transfer, sg(seg))`` (Eq. 13, ``seg_consistency="soft"``)
      or ``CE(seg_transfer, argmax sg(seg))`` (``"hard"``: the authors' code, no label smoothing).
      The targets are the detached direct predictions.
    - ``"align"`` (Align-Net, Eq. 8 / the authors' ``method='xtc'``): the transfer outputs against
      the ground truth, ``l_{s->d} = L1(depth_transfer, z)`` and ``l_{d->s} = CE(seg_transfer, y)``.
      Eq. 8 writes squared L2 norms generically; the task losses (CE for labels, L1 for depth) are
      used as in the authors' code (which uses the ``--lp`` loss for the depth term; here it stays L1).
      The direct predictions do not enter these terms. ``seg_consistency`` is ignored.

    Invalid pixels are masked everywhere (paper §V-A; the authors' NYU code masks nothing): the
    depth terms use the depth validity mask (``depth_valid``, or ``depth_target > 0``), the
    segmentation terms skip ``ignore_index`` pixels (the hard pseudo-label of a void pixel is set
    to ``ignore_index``); means run over valid pixels of the batch (the authors' hard
    consistency divides by all pixels). With ``lam = 0`` (Base MT-Net) or a model without transfer
    networks, the transfer terms are 0.

    Args:
        lam_seg, lam_depth: lambda_t in [0, 1] (paper: 1e-4 for NYUv2, 0.01 for Cityscapes).
        ignore_index: label of void pixels in the segmentation target.
        impl: "fused" (xtc_ext.ops) or "eager" (xtc_ext.reference).
        variant: one of ``VARIANTS``: "xtasc" (default) or "align".
        seg_consistency: one of ``SEG_CONSISTENCY``: "soft" (default, Eq. 13) or "hard".
        depth_loss: one of ``DEPTH_LOSSES`` (``--lp``), the **direct** depth loss only; the depth
            transfer term stays L1 (Eq. 15). See :func:`masked_depth_loss`.

    Raises:
        ValueError: lambda outside [0, 1], or an unknown ``impl``, ``variant``, ``seg_consistency``
            or ``depth_loss``.
    """

    def __init__(
        self,
        lam_seg: float,
        lam_depth: float,
        ignore_index: int = -1,
        impl: str = "fused",
        variant: str = "xtasc",
        seg_consistency: str = "soft",
        depth_loss: str = "l1",
    ) -> None:
        for name, lam in (("lam_seg", lam_seg), ("lam_depth", lam_depth)):
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {lam}")
        check_choice("loss impl", impl, LOSS_IMPLS)
        check_choice("variant", variant, VARIANTS)
        check_choice("seg_consistency", seg_consistency, SEG_CONSISTENCY)
        check_choice("depth loss", depth_loss, DEPTH_LOSSES)
        self.lam_seg, self.lam_depth = lam_seg, lam_depth
        self.ignore_index = ignore_index
        self.impl = impl
        self.ops = LOSS_IMPLS[impl]
        self.variant = variant
        self.seg_consistency = seg_consistency
        self.depth_loss = depth_loss

    def __call__(
        self, out, seg_target: Tensor, depth_target: Tensor, depth_valid: Tensor | None = None
    ) -> XTasCLossTerms:
        """Compute the terms for one batch.

        Args:
            out: model output with ``seg_logits [N,C,H,W]``, ``depth [N,1,H,W]`` (metres),
                ``seg_transfer`` and ``depth_transfer`` (same shapes, or None).
            seg_target: ``[N,H,W]`` int64 labels (``ignore_index`` = void).
            depth_target: ``[N,1,H,W]`` float depth in metres.
            depth_valid: optional bool ``[N,1,H,W]`` (or ``[N,H,W]``; any dtype, nonzero = valid)
                depth validity; replaces the default rule ``depth_target > 0`` (e.g. Cityscapes
                pixels valid with target 0).

        Raises:
            ValueError / TypeError / RuntimeError: from the ops (shapes, dtypes, devices, label
                range); ValueError for a ``depth_valid`` of the wrong shape.
        """
        ops_ = self.ops
        depth_target = depth_target.to(out.depth.dtype)
        valid = _depth_valid(depth_target, depth_valid)
        seg = ops_.masked_cross_entropy(out.seg_logits, seg_target, self.ignore_index)
        depth = masked_depth_loss(out.depth, depth_target, valid, self.depth_loss, self.impl)
        zero = seg.new_zeros(())
        depth_cons = seg_cons = zero
        align = self.variant == "align"
        if out.depth_transfer is not None and self.lam_seg > 0:
            target = depth_target if align else out.depth.detach()
            depth_cons = ops_.masked_l1_loss(out.depth_transfer, target, mask=valid, invalid_value=None)
        if out.seg_transfer is not None and self.lam_depth > 0:
            if align:
                seg_cons = ops_.masked_cross_entropy(out.seg_transfer, seg_target, self.ignore_index)
            elif self.seg_consistency == "hard":
                pseudo = hard_pseudo_labels(out.seg_logits, seg_target, self.ignore_index)
                seg_cons = ops_.masked_cross_entropy(out.seg_transfer, pseudo, self.ignore_index)
            else:
                seg_cons = ops_.soft_cross_entropy(
                    out.seg_transfer, out.seg_logits.detach(), mask=seg_target != self.ignore_index
                )
        groups = torch.stack(
            [
                (1 - self.lam_seg) * seg + self.lam_seg * depth_cons,
                (1 - self.lam_depth) * depth + self.lam_depth * seg_cons,
            ]
        )
        return XTasCLossTerms(seg, depth, depth_cons, seg_cons, groups)


def hard_pseudo_labels(seg_logits: Tensor, seg_target: Tensor, ignore_index: int = -1) -> Tensor:
    """Argmax pseudo-labels of the detached direct logits, void where the ground truth is void.

    ``out[n,h,w] = argmax_c seg_logits[n,c,h,w]`` (first maximum on ties), or ``ignore_index`` where
    ``seg_target == ignore_index``. The authors' transferred-segmentation target
    (their ``LabelSmoothingLoss`` with smoothing 0; docs/fidelity.md, "XTasC-Net losses").

    Args:
        seg_logits: ``[N, C, H, W]`` float logits (no gradient flows through the result).
        seg_target: ``[N, H, W]`` int labels.
        ignore_index: void label.

    Returns:
        int64 ``[N, H, W]``.
    """
    pseudo = seg_logits.detach().argmax(dim=1)
    return torch.where(seg_target == ignore_index, torch.full_like(pseudo, ignore_index), pseudo)


def single_task_loss(
    task: str,
    pred: Tensor,
    seg_target: Tensor | None,
    depth_target: Tensor | None,
    depth_valid: Tensor | None = None,
    ignore_index: int = -1,
    depth_loss: str = "l1",
    impl: str = "fused",
) -> Tensor:
    """Loss of the Base ST-Net single-task baseline (``python_models.BaseSTNet``).

    ``"semseg"``: ``CE(pred, seg_target)`` over non-void pixels (paper Eq. 12).
    ``"depth"``: the direct depth loss ``depth_loss`` (paper Eq. 14 for ``"l1"``) over valid pixels
    (``depth_valid``, or ``depth_target > 0``). The authors' NYU single-task depth loss is unmasked
    ``nn.L1Loss`` (docs/fidelity.md, "XTasC-Net losses"); this masks, as the
    paper says and as :class:`XTasCLoss` does, so ST and MT losses are comparable.

    Args:
        task: ``"semseg"`` or ``"depth"`` (``TASKS``).
        pred: ``[N, C, H, W]`` logits, or ``[N, 1, H, W]`` depth in metres.
        seg_target: ``[N, H, W]`` int64 labels (may be None for depth).
        depth_target: ``[N, 1, H, W]`` float metres (may be None for semseg).
        depth_valid: optional ``[N, 1, H, W]`` (or ``[N, H, W]``) validity, nonzero = valid.
        ignore_index: void label.
        depth_loss: one of ``DEPTH_LOSSES``.
        impl: ``"fused"`` or ``"eager"``.

    Returns:
        float32 (float64) scalar.

    Raises:
        ValueError: unknown ``task``, ``depth_loss`` or ``impl``; the target of the task is None;
            the op errors (shapes, label range).
    """
    check_choice("task", task, TASKS)
    check_choice("loss impl", impl, LOSS_IMPLS)
    check_choice("depth loss", depth_loss, DEPTH_LOSSES)
    if task == "semseg":
        if seg_target is None:
            raise ValueError("single_task_loss: task 'semseg' needs seg_target")
        return LOSS_IMPLS[impl].masked_cross_entropy(pred, seg_target, ignore_index)
    if depth_target is None:
        raise ValueError("single_task_loss: task 'depth' needs depth_target")
    depth_target = depth_target.to(pred.dtype)
    return masked_depth_loss(pred, depth_target, _depth_valid(depth_target, depth_valid), depth_loss, impl)
