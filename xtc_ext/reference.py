"""Eager PyTorch references of the fused ops, with the same signatures and semantics.

They are what the fused kernels are tested against and what ``--loss-impl eager`` trains with.
All compute in float32 (float64 for float64 inputs) and return a float32 (float64) loss; the
mean runs over valid pixels (elements for :func:`masked_l1_loss`) of the whole batch and is 0,
not NaN, when its denominator is 0 (nothing valid, or class weights summing to 0). Shapes follow
PyTorch (``docs/ops.md``): classes/channels in dim 1 (dim 0 of a 1-D input), the other dims are pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_REDUCTIONS = ("none", "mean", "sum")


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _safe_mean(total: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """total / denom, and 0 (with zero gradient) where denom is 0."""
    nonzero = denom != 0
    return torch.where(nonzero, total / torch.where(nonzero, denom, torch.ones_like(denom)), torch.zeros_like(total))


def _reduce(per: torch.Tensor, valid: torch.Tensor, reduction: str, op: str) -> torch.Tensor:
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        return _safe_mean(per.sum(), valid.sum().to(per.dtype))
    raise ValueError(f"{op}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _class_dim(x: torch.Tensor) -> int:
    return 1 if x.dim() >= 2 else 0


def _pixel_mask(mask: torch.Tensor | None, input_rank: int, cdim: int, op: str) -> torch.Tensor | None:
    """A mask of the pixel shape or with size 1 in the class dim, as bool of the pixel shape."""
    if mask is None:
        return None
    if mask.dim() == input_rank and input_rank > 0:
        if mask.shape[cdim] != 1:
            raise ValueError(f"{op}: mask must have size 1 in dim {cdim} when it keeps it, got {tuple(mask.shape)}")
        mask = mask.squeeze(cdim)
    return mask != 0


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -1,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eager reference of :func:`xtc_ext.ops.masked_cross_entropy` (``F.cross_entropy`` per pixel).

    Raises:
        ValueError: a target class index outside ``[0, C)`` that is not ``ignore_index``.
    """
    C = logits.shape[_class_dim(logits)] if logits.dim() > 0 else 0
    if C < 1:
        raise ValueError(f"masked_cross_entropy: logits must have at least one class, got {tuple(logits.shape)}")
    t = target.long()
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= C))
    if bool(bad.any()):
        raise ValueError(
            f"masked_cross_entropy: target contains class index {int(t[bad].flatten()[0])}, outside [0, {C}) "
            f"and not ignore_index ({ignore_index})"
        )
    z = _acc(logits)
    w = None if weight is None else weight.to(z.dtype)
    per = F.cross_entropy(
        z, t, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    per = torch.where(valid, per, torch.zeros((), dtype=z.dtype))
    if reduction != "mean":
        return _reduce(per, valid, reduction, "masked_cross_entropy")
    weights = valid.to(z.dtype) if w is None else torch.where(valid, w[torch.where(valid, t, 0)], 0)
    return _safe_mean(per.sum(), weights.sum())


def masked_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    invalid_value: float | None = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eager reference of :func:`xtc_ext.ops.masked_l1_loss` (abs difference, masked mean over elements).

    Raises:
        ValueError: a NaN ``invalid_value`` (NaN equals no target).
    """
    if invalid_value is not None and math.isnan(invalid_value):
        raise ValueError("masked_l1_loss: invalid_value must not be NaN (NaN equals no target; exclude NaN targets "
                         "with mask=)")
    p, t = _acc(pred), _acc(target)
    valid = torch.ones_like(t, dtype=torch.bool)
    if invalid_value is not None:
        valid = valid & (target != invalid_value)
    cdim = _class_dim(pred)
    m = _pixel_mask(mask, pred.dim(), cdim, "masked_l1_loss")
    if m is not None:
        valid = valid & (m.unsqueeze(cdim) if pred.dim() > 0 else m)
    per = torch.where(valid, (p - t).abs(), torch.zeros((), dtype=p.dtype))
    return _reduce(per, valid, reduction, "masked_l1_loss")


def soft_cross_entropy(
    logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Eager reference of :func:`xtc_ext.ops.soft_cross_entropy` (XTasC-Net Eq. 13, target detached)."""
    cdim = _class_dim(logits)
    q = F.softmax(_acc(target_logits.detach()), dim=cdim)
    per = -(q * F.log_softmax(_acc(logits), dim=cdim)).sum(dim=cdim)
    m = _pixel_mask(mask, logits.dim(), cdim, "soft_cross_entropy")
    valid = torch.ones_like(per, dtype=torch.bool) if m is None else m
    return _reduce(per * valid, valid, reduction, "soft_cross_entropy")


def cosine_similarity_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    """Eager reference of :func:`xtc_ext.ops.cosine_similarity_loss` (``1 - F.cosine_similarity`` over ``dim``)."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    if not (eps > 0 and torch.tensor(eps, dtype=acc).item() > 0):  # the op's rule: docs/ops.md, "Reductions"
        raise ValueError(f"cosine_similarity_loss: eps must be > 0 in the accumulation type ({acc}), got {eps}")
    per = 1 - F.cosine_similarity(_acc(a), _acc(b), dim=dim, eps=eps)
    rank = max(a.dim(), b.dim())
    m = _pixel_mask(mask, rank, dim % max(rank, 1), "cosine_similarity_loss")
    valid = torch.ones_like(per, dtype=torch.bool) if m is None else m
    per = torch.where(valid, per, torch.zeros((), dtype=per.dtype))
    return _reduce(per, valid, reduction, "cosine_similarity_loss")


def sigmoid_gate(x: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """Eager reference of :func:`xtc_ext.ops.sigmoid_gate` (``x * sigmoid(gate_logits)``, in x's dtype)."""
    return (_acc(x) * torch.sigmoid(_acc(gate_logits))).to(x.dtype)
