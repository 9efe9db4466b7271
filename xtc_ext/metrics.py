"""Dataset-level evaluation meters for semantic segmentation and depth.

Both meters accumulate on the device of the tensors they are given (CPU or CUDA),
use no Python loops over pixels and do no host synchronisation in ``update``
(on CUDA); values are copied to the host only in ``compute()``.

Conventions (documented deviations from the XTasC-Net evaluation code, which
averages per-image / per-batch scores, reference-implementations §1.5):

* Segmentation: mIoU and pixel accuracy from one **dataset-level** confusion
  matrix (MTAN 2020 / Vandenhende et al. convention): IoU_c = TP / (TP + FP + FN),
  mIoU = mean over classes whose union is non-zero.
* Depth: errors **pooled over all valid pixels** of the dataset (target > 0):
  abs_err = mean |p - t| (metres), rel_err = mean |p - t| / t (a ratio, not a
  percentage, as in the XTasC-Net code), rmse = sqrt(mean (p - t)^2) (metres).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Union

import torch

__all__ = ["SegmentationMeter", "DepthMeter"]


class SegmentationMeter:
    """Confusion-matrix meter for semantic segmentation.

    Args:
        num_classes: number of classes C (>= 1).
        ignore_index: target value excluded from every statistic (default -1).

    ``update(pred, target)``:
        * ``pred``: logits / scores, float ``[N,C,H,W]`` (argmax over dim 1), or
          predicted labels, integer ``[N,H,W]`` in [0, C).
        * ``target``: integer ``[N,H,W]`` in [0, C) or ``ignore_index``.

    The C x C int64 confusion matrix (rows = ground truth, cols = prediction)
    lives on the device of the first update and excludes ignore pixels.

    Raises:
        ValueError: bad ``num_classes``; bad shapes or dtypes in ``update``; a
            target value outside [0, C) other than ``ignore_index``, or a predicted
            label outside [0, C). For CPU tensors this is raised by ``update``.
            For CUDA tensors the check would need a host sync, so offending pixels
            are counted on the device (and excluded from the matrix) and
            ``compute()`` raises instead.

    Source: mIoU / pixel accuracy as reported in the XTasC-Net paper §V-A,
    computed with the dataset-level convention (MTAN 2020, Vandenhende et al.);
    see reference-implementations §1.5 for the per-image variant in the
    XTasC-Net code.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated confusion matrix."""
        self._conf: Optional[torch.Tensor] = None  # (C*C + 1,) int64, last bin = discarded
        self._n_bad: Optional[torch.Tensor] = None  # int64 scalar, invalid labels seen

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch; see the class docstring for shapes and errors."""
        C = self.num_classes
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise ValueError("pred and target must be torch tensors")
        if target.dim() != 3:
            raise ValueError(f"target must be [N,H,W], got shape {tuple(target.shape)}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must be an integer tensor, got {target.dtype}")
        if pred.dim() == 4:
            if not pred.is_floating_point():
                raise ValueError(f"4-D pred must be float logits [N,C,H,W], got {pred.dtype}")
            if pred.shape[1] != C:
                raise ValueError(f"logits have {pred.shape[1]} channels, expected num_classes={C}")
            if (pred.shape[0],) + tuple(pred.shape[2:]) != tuple(target.shape):
                raise ValueError(f"logits shape {tuple(pred.shape)} does not match target shape "
                                 f"{tuple(target.shape)}")
            labels = pred.argmax(dim=1)
        elif pred.dim() == 3:
            if pred.is_floating_point() or pred.is_complex() or pred.dtype == torch.bool:
                raise ValueError(f"3-D pred must be integer labels [N,H,W], got {pred.dtype}")
            if tuple(pred.shape) != tuple(target.shape):
                raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape "
                                 f"{tuple(target.shape)}")
            labels = pred
        else:
            raise ValueError(f"pred must be logits [N,C,H,W] or labels [N,H,W], got shape "
                             f"{tuple(pred.shape)}")

        if self._conf is None:
            self._conf = torch.zeros(C * C + 1, dtype=torch.int64, device=target.device)
            self._n_bad = torch.zeros((), dtype=torch.int64, device=target.device)
        dev = self._conf.device
        t = target.to(device=dev, dtype=torch.int64).reshape(-1)
        p = labels.to(device=dev, dtype=torch.int64).reshape(-1)

        not_ignored = t != self.ignore_index
        t_ok = (t >= 0) & (t < C)
        p_ok = (p >= 0) & (p < C)
        bad = not_ignored & ~(t_ok & p_ok)
        if dev.type == "cpu":
            if bool(bad.any()):
                if bool((not_ignored & ~t_ok).any()):
                    v = int(t[not_ignored & ~t_ok][0])
                    raise ValueError(f"target contains value {v} outside [0, {C}) that is not "
                                     f"ignore_index={self.ignore_index}")
                v = int(p[not_ignored & ~p_ok][0])
                raise ValueError(f"prediction contains label {v} outside [0, {C})")
        else:
            self._n_bad += bad.sum()
        valid = not_ignored & t_ok & p_ok
        idx = torch.where(valid, t * C + p, torch.full_like(t, C * C))
        self._conf.scatter_add_(0, idx, torch.ones_like(idx))

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """Accumulated int64 ``[C, C]`` confusion matrix (rows gt, cols pred), on the
        accumulation device (zeros on CPU before the first update)."""
        C = self.num_classes
        if self._conf is None:
            return torch.zeros(C, C, dtype=torch.int64)
        return self._conf[: C * C].view(C, C)

    def compute(self) -> Dict[str, Union[float, List[float]]]:
        """Return ``{"mIoU", "pixel_acc", "iou_per_class"}``.

        * ``iou_per_class``: list of C python floats, TP / (TP + FP + FN), NaN for
          classes absent from both ground truth and prediction.
        * ``mIoU``: nan-mean of ``iou_per_class`` (classes with non-zero union), in [0, 1].
        * ``pixel_acc``: trace / total over non-ignored pixels, in [0, 1].

        With no valid pixels, all values are NaN.

        Raises:
            ValueError: if invalid labels were seen during CUDA updates.
        """
        C = self.num_classes
        if self._n_bad is not None and int(self._n_bad.item()) > 0:
            raise ValueError(f"{int(self._n_bad.item())} pixels had a target outside [0, {C}) "
                             f"(not ignore_index={self.ignore_index}) or a predicted label "
                             f"outside [0, {C})")
        conf = self.confusion_matrix.detach().to("cpu", torch.float64)
        tp = torch.diagonal(conf)
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        total = float(conf.sum())
        n_present = int((union > 0).sum())
        miou = float(iou[union > 0].mean()) if n_present > 0 else math.nan
        acc = float(tp.sum()) / total if total > 0 else math.nan
        return {"mIoU": miou, "pixel_acc": acc, "iou_per_class": [float(v) for v in iou]}


class DepthMeter:
    """Pooled depth-error meter over valid pixels (target > 0).

    ``update(pred, target)``: float tensors ``[N,1,H,W]`` of equal shape, depth in
    metres (or any consistent unit). Pixels with ``target > 0`` are valid
    (0 = invalid; NaN targets are also excluded). The sums of |p-t|, |p-t|/t,
    (p-t)^2 and the valid-pixel count are accumulated in float64 / int64 on the
    device of the first update, without host synchronisation.

    ``compute()`` -> ``{"abs_err": metres, "rel_err": ratio (not percent),
    "rmse": metres}``, each pooled over all valid pixels seen (NaN if none).

    Raises:
        ValueError: non-tensor inputs, shapes not ``[N,1,H,W]`` or not equal,
            non-floating dtypes.

    Source: Abs / Rel error of the XTasC-Net paper §V-A (reference-implementations
    §1.5; the code averages per batch, this meter pools per dataset) plus a true RMSE.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated sums."""
        self._sums: Optional[torch.Tensor] = None  # float64 [3]: abs, rel, sq
        self._count: Optional[torch.Tensor] = None  # int64 scalar

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch; see the class docstring."""
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise ValueError("pred and target must be torch tensors")
        if pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"pred must be [N,1,H,W], got shape {tuple(pred.shape)}")
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape "
                             f"{tuple(target.shape)}")
        if not pred.is_floating_point() or not target.is_floating_point():
            raise ValueError(f"pred and target must be floating tensors, got {pred.dtype} and "
                             f"{target.dtype}")
        if self._sums is None:
            self._sums = torch.zeros(3, dtype=torch.float64, device=target.device)
            self._count = torch.zeros((), dtype=torch.int64, device=target.device)
        dev = self._sums.device
        dtype = torch.promote_types(torch.promote_types(target.dtype, pred.dtype), torch.float32)
        t = target.to(device=dev, dtype=dtype)
        p = pred.to(device=dev, dtype=dtype)
        valid = t > 0
        diff = torch.where(valid, p - t, torch.zeros_like(t))
        absd = diff.abs()
        rel = absd / torch.where(valid, t, torch.ones_like(t))
        sums = torch.stack([
            absd.sum(dtype=torch.float64),
            rel.sum(dtype=torch.float64),
            (diff.to(torch.float64) ** 2).sum(),
        ])
        self._sums += sums
        self._count += valid.sum()

    @property
    def count(self) -> int:
        """Number of valid pixels accumulated so far (host sync)."""
        return 0 if self._count is None else int(self._count.item())

    def compute(self) -> Dict[str, float]:
        """Return ``{"abs_err", "rel_err", "rmse"}`` as python floats (NaN if no
        valid pixel was seen)."""
        n = self.count
        if n == 0:
            return {"abs_err": math.nan, "rel_err": math.nan, "rmse": math.nan}
        s = self._sums.detach().cpu().tolist()
        return {"abs_err": s[0] / n, "rel_err": s[1] / n, "rmse": math.sqrt(s[2] / n)}
