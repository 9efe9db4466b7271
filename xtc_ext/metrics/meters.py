"""Dataset-level evaluation meters: semantic segmentation / human parts, depth, surface normals, saliency.

Every meter accumulates on the device of the tensors it is given (CPU or CUDA), uses no Python loop over
pixels and does no host synchronisation in ``update`` (on CUDA); values are copied to the host only in
``compute()``. The conventions (docs/fidelity.md, "Metrics"; the XTasC-Net authors' code averages per-image
or per-batch scores instead):

* Segmentation: mIoU and pixel accuracy from one **dataset-level** confusion matrix (MTAN 2020 /
  Vandenhende et al. convention): IoU_c = TP / (TP + FP + FN), mIoU = mean over classes whose union is
  non-zero.
* Depth: errors **pooled over all valid pixels** of the dataset (target > 0): abs_err = mean |p - t|
  (metres), rel_err = mean |p - t| / t (a ratio, not a percentage, as in the XTasC-Net code),
  rmse = sqrt(mean (p - t)^2) (metres), no 6.55 m cap. For MT-CP runs the RMSE follows Vandenhende et al.'s
  evaluation (which MT-CP reports): predictions <= 0 are set to 1e-9 first (``DepthMeter(min_prediction=1e-9)``).
* Surface normals (:class:`NormalsMeter`): angular error pooled over all valid pixels (Vandenhende et al. /
  ASTMT ``eval_normals``, the MT-CP evaluation): mean ("mErr" of MT-CP Table 1), median, rmse in degrees and
  % within 11.25/22.5/30 degrees.
* Saliency (:class:`SaliencyMeter`): maxF and max-mIoU over thresholds from per-image precision, recall and
  Jaccard averaged over images (Vandenhende ``eval_sal``).
* Human parts: ``SegmentationMeter(7, ignore_index=-1)``, the same dataset-level confusion-matrix mIoU as
  semantic segmentation (6 parts + background). Images without part annotations have an all -1 target and
  contribute no pixel (the "only images with part annotations" rule of the MT-CP ``eval_human_parts``).
  ``SegmentationMeter`` averages IoU over classes with a non-zero union, while the MT-CP evaluation
  averages over all classes (absent ones count 0); on a full validation set every class is present and the
  two agree.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist

__all__ = ["SegmentationMeter", "DepthMeter", "NormalsMeter", "SaliencyMeter"]


class _Meter:
    """What every meter shares: its state tensors are sums, so a distributed evaluation adds them up."""

    def _init_state(self, device: torch.device) -> List[torch.Tensor]:
        """Allocate the zero state on ``device`` if no update has; return the state tensors."""
        raise NotImplementedError

    def all_reduce(self, device: torch.device) -> None:
        """Sum the state over the ranks of the default process group (no-op without one), after every rank's
        updates; a rank without any update contributes zeros allocated on ``device``. Every rank then
        computes the metrics of the whole dataset."""
        state = self._init_state(device)
        if dist.is_available() and dist.is_initialized():
            for t in state:
                dist.all_reduce(t)


class SegmentationMeter(_Meter):
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
    computed with the dataset-level convention (MTAN 2020, Vandenhende et al.;
    the XTasC-Net authors' code averages per image: docs/fidelity.md, "Metrics").
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

        self._init_state(target.device)
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

    def _init_state(self, device: torch.device) -> List[torch.Tensor]:
        if self._conf is None:
            C = self.num_classes
            self._conf = torch.zeros(C * C + 1, dtype=torch.int64, device=device)
            self._n_bad = torch.zeros((), dtype=torch.int64, device=device)
        return [self._conf, self._n_bad]


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


def _check_pair(name: str, pred: torch.Tensor, target: torch.Tensor, channels: int) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(f"{name}: pred and target must be torch tensors")
    if pred.dim() != 4 or pred.shape[1] != channels:
        raise ValueError(f"{name}: pred must be [N,{channels},H,W], got shape {tuple(pred.shape)}")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"{name}: pred shape {tuple(pred.shape)} does not match target shape "
                         f"{tuple(target.shape)}")
    if not pred.is_floating_point() or not target.is_floating_point():
        raise ValueError(f"{name}: pred and target must be floating tensors, got {pred.dtype} and "
                         f"{target.dtype}")


class DepthMeter(_Meter):
    """Pooled depth-error meter over valid pixels (target > 0).

    ``update(pred, target)``: float tensors ``[N,1,H,W]`` of equal shape, depth in
    metres (or any consistent unit). Pixels with ``target > 0`` are valid
    (0 = invalid; NaN targets are also excluded). The sums of |p-t|, |p-t|/t,
    (p-t)^2 and the valid-pixel count are accumulated in float64 / int64 on the
    device of the first update, without host synchronisation.

    ``compute()`` -> ``{"abs_err": metres, "rel_err": ratio (not percent),
    "rmse": metres}``, each pooled over all valid pixels seen (NaN if none).

    Args:
        min_prediction: if given, predictions below it are raised to it before the
            squared error of the RMSE (Vandenhende et al.'s evaluation, reported by
            MT-CP, uses ``1e-9``: "only positive depth values are possible");
            ``None`` (default, the XTasC-Net convention) leaves them. The absolute
            and relative errors always use the raw prediction.

    Raises:
        ValueError: non-tensor inputs, shapes not ``[N,1,H,W]`` or not equal,
            non-floating dtypes; a non-finite ``min_prediction``.

    Source: Abs / Rel error of the XTasC-Net paper §V-A (its authors' code averages
    per batch; this meter pools per dataset, docs/fidelity.md "Metrics") plus a true RMSE.
    """

    def __init__(self, min_prediction: Optional[float] = None) -> None:
        if min_prediction is not None and not math.isfinite(min_prediction):
            raise ValueError(f"min_prediction must be a finite number or None, got {min_prediction!r}")
        self.min_prediction = None if min_prediction is None else float(min_prediction)
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated sums."""
        self._sums: Optional[torch.Tensor] = None  # float64 [3]: abs, rel, sq
        self._count: Optional[torch.Tensor] = None  # int64 scalar

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch; see the class docstring."""
        _check_pair("DepthMeter", pred, target, 1)
        self._init_state(target.device)
        dev = self._sums.device
        dtype = torch.promote_types(torch.promote_types(target.dtype, pred.dtype), torch.float32)
        t = target.to(device=dev, dtype=dtype)
        p = pred.to(device=dev, dtype=dtype)
        valid = t > 0
        diff = torch.where(valid, p - t, torch.zeros_like(t))
        absd = diff.abs()
        rel = absd / torch.where(valid, t, torch.ones_like(t))
        if self.min_prediction is not None:
            diff = torch.where(valid, p.clamp(min=self.min_prediction) - t, torch.zeros_like(t))
        sums = torch.stack([
            absd.sum(dtype=torch.float64),
            rel.sum(dtype=torch.float64),
            (diff.to(torch.float64) ** 2).sum(),
        ])
        self._sums += sums
        self._count += valid.sum()

    def _init_state(self, device: torch.device) -> List[torch.Tensor]:
        if self._sums is None:
            self._sums = torch.zeros(3, dtype=torch.float64, device=device)
            self._count = torch.zeros((), dtype=torch.int64, device=device)
        return [self._sums, self._count]


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


class NormalsMeter(_Meter):
    """Angular error of surface normals, pooled over all valid pixels of the dataset (degrees).

    ``update(pred, target)``:
        * ``pred``: float ``[N,3,H,W]`` predicted normals, any length (unit-normalised inside; a zero
          vector has angle 90 degrees to everything, as ``arccos(0)`` in Vandenhende's evaluation).
        * ``target``: float ``[N,3,H,W]`` ground-truth normals (unit vectors; normalised inside too,
          as in Vandenhende's ``eval_normals``); the zero vector marks an invalid pixel.

    Per valid pixel the angle ``atan2(|p x t|, p . t)`` in degrees, in [0, 180] (equal to
    ``arccos(p . t)`` for unit vectors, but accurate for small angles also in float32). Computed in
    float32 (float64 for float64 inputs) on the device of the first update; no host synchronisation in
    ``update``. The sums of the angles and of their squares (float64), the count and the counts below
    11.25, 22.5 and 30 degrees (int64, strict ``<`` as in Vandenhende's code) are exact. The **median** needs
    every angle: instead of storing them, a histogram of ``num_bins`` equal bins over [0, 180] degrees
    (default 18000, i.e. 0.01-degree bins; int64 on the device, 144 KB) is kept, and the median is the
    midpoint of the bin holding the middle angle (the mean of the two middle ones for an even count),
    so it is within half a bin (0.005 degrees by default) of the exact median.

    ``compute()`` -> ``{"mean", "median", "rmse"}`` in degrees and ``{"11.25", "22.5", "30"}`` in
    percent of valid pixels (0-100), python floats, NaN if no valid pixel was seen. ``"mean"`` is the
    mErr of MT-CP Table 1.

    Args:
        num_bins: histogram bins over [0, 180] degrees for the median (>= 1).

    Raises:
        ValueError: bad ``num_bins``; (update) non-tensor inputs, shapes not ``[N,3,H,W]`` or not
            equal, non-floating dtypes.

    Source: Vandenhende et al. / ASTMT ``evaluation/eval_normals.py`` (the MT-CP evaluation; that code
    also quantises predictions to 8-bit PNGs, which is not reproduced here).
    """

    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self, num_bins: int = 18000) -> None:
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
        self.num_bins = num_bins
        self.bin_width = 180.0 / num_bins
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated statistics."""
        self._hist: Optional[torch.Tensor] = None  # int64 [num_bins + 1], last bin = discarded
        self._sums: Optional[torch.Tensor] = None  # float64 [2]: sum angle, sum angle^2
        self._counts: Optional[torch.Tensor] = None  # int64 [4]: valid, <11.25, <22.5, <30

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch; see the class docstring for shapes and errors."""
        _check_pair("NormalsMeter", pred, target, 3)
        self._init_state(target.device)
        dev = self._hist.device
        dtype = torch.promote_types(torch.promote_types(target.dtype, pred.dtype), torch.float32)
        t_raw = target.to(device=dev, dtype=dtype)
        p_raw = pred.to(device=dev, dtype=dtype)
        valid = (t_raw != 0).any(dim=1)  # [N,H,W]
        p = torch.nn.functional.normalize(p_raw, dim=1, eps=1e-12)
        t = torch.nn.functional.normalize(t_raw, dim=1, eps=1e-12)
        dot = (p * t).sum(dim=1)
        cross = torch.linalg.vector_norm(torch.linalg.cross(p, t, dim=1), dim=1)
        angle = torch.rad2deg(torch.atan2(cross, dot))  # atan2(0, 0) = 0 ...
        zero_pred = (p_raw == 0).all(dim=1)
        angle = torch.where(zero_pred, torch.full_like(angle, 90.0), angle)  # ... but arccos(0) = 90
        counted = valid & torch.isfinite(angle)
        a = torch.where(counted, angle, torch.zeros_like(angle)).to(torch.float64)
        self._sums += torch.stack([a.sum(), (a * a).sum()])
        self._counts += torch.stack([counted.sum()] + [(counted & (angle < th)).sum()
                                                      for th in self.THRESHOLDS])
        idx = torch.floor(a / self.bin_width).to(torch.int64).clamp_(0, self.num_bins - 1)
        idx = torch.where(counted, idx, torch.full_like(idx, self.num_bins)).reshape(-1)
        self._hist.scatter_add_(0, idx, torch.ones_like(idx))

    def _init_state(self, device: torch.device) -> List[torch.Tensor]:
        if self._hist is None:
            self._hist = torch.zeros(self.num_bins + 1, dtype=torch.int64, device=device)
            self._sums = torch.zeros(2, dtype=torch.float64, device=device)
            self._counts = torch.zeros(4, dtype=torch.int64, device=device)
        return [self._hist, self._sums, self._counts]


    @property
    def count(self) -> int:
        """Number of valid pixels accumulated so far (host sync)."""
        return 0 if self._counts is None else int(self._counts[0].item())

    @property
    def histogram(self) -> torch.Tensor:
        """int64 ``[num_bins]`` counts of the angles per bin (bin i covers
        ``[i, i + 1) * 180 / num_bins`` degrees; 180 itself falls in the last bin)."""
        if self._hist is None:
            return torch.zeros(self.num_bins, dtype=torch.int64)
        return self._hist[: self.num_bins]

    def compute(self) -> Dict[str, float]:
        """Return ``{"mean", "median", "rmse"}`` (degrees) and ``{"11.25", "22.5", "30"}`` (percent),
        NaN if no valid pixel was seen."""
        keys = ("mean", "median", "rmse") + tuple(f"{th:g}" for th in self.THRESHOLDS)
        n = self.count
        if n == 0:
            return {k: math.nan for k in keys}
        s = self._sums.detach().cpu().tolist()
        c = self._counts.detach().cpu().tolist()
        cum = torch.cumsum(self.histogram.detach().cpu(), 0)
        ks = torch.tensor([(n - 1) // 2, n // 2], dtype=torch.int64)
        bins = torch.searchsorted(cum, ks, right=True).clamp(max=self.num_bins - 1)
        median = float((bins.double() + 0.5).mean()) * self.bin_width
        out = {"mean": s[0] / n, "median": median, "rmse": math.sqrt(s[1] / n)}
        for key, k in zip(keys[3:], c[1:]):
            out[key] = 100.0 * k / n
        return out


class SaliencyMeter(_Meter):
    """Saliency maxF and max mIoU over binarisation thresholds (Vandenhende / ASTMT ``eval_sal``).

    For every image and threshold ``tau``: the prediction mask ``prob > tau``, compared in float32 (below),
    against the ground truth
    ``target >= 0.5`` over the image's valid pixels (``target >= 0``; -1 = ignored, the "void pixels"
    of Vandenhende's code), with ``tp, fp, fn`` counted there:
    ``precision = tp / (tp + fp + 1e-12)``, ``recall = tp / (tp + fn + 1e-12)`` and
    ``IoU = tp / (tp + fp + fn)`` (1 when the ground truth and the prediction are both empty).
    These are **averaged over images** per threshold (images without any valid pixel are skipped; the
    reference code has no ignored pixels and counts every image); then ``F(tau) = 2 P R / (P + R + 1e-12)``
    of the averages, ``maxF = max_tau F(tau)`` and ``mIoU = max_tau mean IoU(tau)``.

    ``update(pred, target)``:
        * ``pred``: float ``[N,1,H,W]`` logits (``from_logits=True``, the default: ``sigmoid`` is
          applied) or probabilities in [0, 1].
        * ``target``: float ``[N,1,H,W]`` saliency in [0, 1] (binary in practice), -1 = ignored.

    Per-image statistics are computed on the device of the first update (``[N, thresholds, H*W]``
    comparisons at once) and summed in float64 there; no host synchronisation in ``update``.

    ``compute()`` -> ``{"maxF", "mIoU"}`` (fractions in [0, 1]; MT-CP Table 2 reports 100 x maxF)
    plus per-threshold lists ``"F"``, ``"precision"``, ``"recall"``, ``"IoU"`` and ``"thresholds"``;
    NaN (empty lists kept at their length, NaN values) if no image was seen.

    Args:
        thresholds: 1-D thresholds on the probability (default 15 thresholds ``linspace(0.2, 0.9, 15)``,
            built in float64 as Vandenhende's NumPy ``linspace`` and reported so). The comparison
            ``prob > tau`` is made in **float32**, the probability and the threshold both rounded to float32,
            as in the authors' runs: there ``eval_sal`` compares a float32 array with the float64 NumPy
            scalar threshold, which NumPy 1.x (the papers' NumPy) computes in float32 (docs/fidelity.md,
            "Metrics": a probability k/255 equal to a threshold, e.g. 153/255 and 0.6, is not above it).
        from_logits: apply ``sigmoid`` to ``pred``.

    Raises:
        ValueError: empty, non-1-D or non-finite thresholds; (update) non-tensor inputs, shapes not
            ``[N,1,H,W]`` or not equal, non-floating dtypes.

    ``mIoU`` is the "max-mIoU" of Vandenhende's ``calculate_multi_task_performance``, the saliency metric
    of the multi-task performance Delta_MTL on PASCAL-Context (docs/fidelity.md, "Metrics").

    Source: Vandenhende et al. ``evaluation/eval_sal.py`` and ``jaccard.py`` (from ASTMT), used by
    MT-CP. The MT-CP evaluation reads the probabilities back from 8-bit PNGs (a quantisation of at most
    1/255 that is not reproduced here).
    """

    def __init__(self, thresholds: Optional[Union[torch.Tensor, Sequence[float]]] = None,
                 from_logits: bool = True) -> None:
        th = torch.linspace(0.2, 0.9, 15, dtype=torch.float64) if thresholds is None else thresholds
        th = torch.as_tensor(th).detach().to("cpu", torch.float64)
        if th.dim() != 1 or th.numel() == 0 or not bool(torch.isfinite(th).all()):
            raise ValueError(f"thresholds must be a non-empty 1-D sequence of finite values, got {th}")
        self.thresholds = th
        self.from_logits = bool(from_logits)
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated sums."""
        self._sums: Optional[torch.Tensor] = None  # float64 [3, K]: precision, recall, IoU
        self._images: Optional[torch.Tensor] = None  # int64 scalar
        self._th_dev: Optional[torch.Tensor] = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch; see the class docstring for shapes and errors."""
        _check_pair("SaliencyMeter", pred, target, 1)
        self._init_state(target.device)
        dev = self._sums.device
        N = pred.shape[0]
        p = pred.to(dev).reshape(N, -1).to(torch.promote_types(pred.dtype, torch.float32))
        if self.from_logits:
            p = torch.sigmoid(p)
        p = p.to(torch.float32)  # the authors' float32 prediction (docs/fidelity.md, "Metrics")
        t = target.to(dev).reshape(N, -1)
        valid = t >= 0
        gt = valid & (t >= 0.5)
        above = (p[:, None, :] > self._th_dev[None, :, None]) & valid[:, None, :]  # float32 with float32
        tp = (above & gt[:, None, :]).sum(-1).to(torch.float64)  # [N, K]
        fp = above.sum(-1).to(torch.float64) - tp
        fn = gt.sum(-1, keepdim=True).to(torch.float64) - tp
        precision = tp / (tp + fp + 1e-12)
        recall = tp / (tp + fn + 1e-12)
        union = tp + fp + fn
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.ones_like(union))
        has = valid.any(-1).to(torch.float64)[:, None]  # images with at least one valid pixel
        self._sums += torch.stack([(precision * has).sum(0), (recall * has).sum(0), (iou * has).sum(0)])
        self._images += valid.any(-1).sum()

    def _init_state(self, device: torch.device) -> List[torch.Tensor]:
        if self._sums is None:
            self._sums = torch.zeros(3, self.thresholds.numel(), dtype=torch.float64, device=device)
            self._images = torch.zeros((), dtype=torch.int64, device=device)
            self._th_dev = self.thresholds.to(device, torch.float32)
        return [self._sums, self._images]


    @property
    def count(self) -> int:
        """Number of images accumulated so far (host sync)."""
        return 0 if self._images is None else int(self._images.item())

    def compute(self) -> Dict[str, Union[float, List[float]]]:
        """Return ``{"maxF", "mIoU", "F", "precision", "recall", "IoU", "thresholds"}`` (see the
        class docstring); NaN values if no image was seen."""
        K = self.thresholds.numel()
        n = self.count
        thresholds = [float(v) for v in self.thresholds]
        if n == 0:
            nan = [math.nan] * K
            return {"maxF": math.nan, "mIoU": math.nan, "F": nan, "precision": list(nan),
                    "recall": list(nan), "IoU": list(nan), "thresholds": thresholds}
        prec, rec, iou = (self._sums.detach().cpu() / n).unbind(0)
        f = 2 * prec * rec / (prec + rec + 1e-12)
        return {"maxF": float(f.max()), "mIoU": float(iou.max()), "F": f.tolist(),
                "precision": prec.tolist(), "recall": rec.tolist(), "IoU": iou.tolist(),
                "thresholds": thresholds}

