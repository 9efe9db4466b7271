"""One evaluator for every multi-task model: the meter of each task plus the mean loss of each task.

:class:`MultiTaskEvaluator` is what the evaluation loop (:func:`xtc_ext.engine.evaluation.evaluate`) feeds
batch by batch with a model's predictions and the batch's targets, both keyed by the registered task names
(:mod:`xtc_ext.tasks`: ``semseg``, ``depth``, ``normals``, ``sal``, ``human_parts``); it needs no knowledge of
the model. Each task's meter is its spec's meter kind (:data:`METERS`), its result keys the meter's keys that
the spec reports, with the spec's ``metric_prefix``.

Metric names of :meth:`MultiTaskEvaluator.compute` for the built-in tasks (fractions unless stated):

========  ==========================================================================================
task      keys
========  ==========================================================================================
semseg    ``mIoU``, ``pixel_acc``, ``iou_per_class`` (list)
human     ``parts_mIoU``, ``parts_pixel_acc``
depth     ``abs_err`` (depth unit), ``rel_err`` (ratio), ``rmse`` (depth unit)
normals   ``normals_mean``, ``normals_median``, ``normals_rmse`` (degrees), ``normals_11.25``,
          ``normals_22.5``, ``normals_30`` (percent of valid pixels)
sal       ``sal_maxF``, ``sal_mIoU`` (max-mIoU over thresholds)
========  ==========================================================================================

plus one mean loss per task (the key given in ``loss_keys``, default ``<task>_loss``), their sum ``loss``
(unweighted: the ``--select-by loss`` criterion) and ``num_samples``. Losses are batch means averaged with
the batch sizes as weights, accumulated in float64 on the device (no host synchronisation per batch).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from xtc_ext.metrics.meters import DepthMeter, NormalsMeter, SaliencyMeter, SegmentationMeter
from xtc_ext.tasks import TaskSpec, get_task

__all__ = ["MultiTaskEvaluator", "METERS"]

LossFn = Callable[[str, Tensor, Mapping[str, Tensor]], Tensor]

METERS: Dict[str, Callable[[TaskSpec, int, Optional[float]], Any]] = {
    "segmentation": lambda spec, channels, _: SegmentationMeter(int(channels), int(spec.void)),
    "depth": lambda spec, channels, depth_min_prediction: DepthMeter(depth_min_prediction),
    "normals": lambda spec, channels, _: NormalsMeter(),
    "saliency": lambda spec, channels, _: SaliencyMeter(),
}
"""Meter kind (:data:`xtc_ext.tasks.METER_KINDS`) -> ``factory(spec, channels, depth_min_prediction)``: the
segmentation meter over ``channels`` classes with the task's void label, the depth meter, the normals meter,
the saliency meter."""


class MultiTaskEvaluator:
    """Accumulate the metrics and mean losses of a multi-task model over a dataset.

    Args:
        task_channels: registered task name -> output channels (semseg / human_parts: classes), in the
            order the metrics are reported.
        loss_fn: ``loss_fn(task, prediction, targets) -> scalar tensor``, the task's unweighted training
            loss of one batch (a mean over its valid pixels); ``None``: no losses.
        loss_keys: task -> name of its mean loss in the result (default ``f"{task}_loss"``).
        depth_min_prediction: :class:`~xtc_ext.metrics.meters.DepthMeter` ``min_prediction`` (MT-CP runs:
            1e-9, Vandenhende's RMSE convention; ``None``: raw predictions).

    Raises:
        ValueError: an unknown task name (the known ones listed), a task without a meter, or an empty
            ``task_channels``.
    """

    def __init__(self, task_channels: Mapping[str, int], loss_fn: Optional[LossFn] = None, *,
                 loss_keys: Optional[Mapping[str, str]] = None, depth_min_prediction: Optional[float] = None) -> None:
        if not task_channels:
            raise ValueError("MultiTaskEvaluator: task_channels is empty")
        self.specs = {t: get_task(t) for t in task_channels}
        no_meter = [t for t, spec in self.specs.items() if spec.meter is None]
        if no_meter:
            raise ValueError(f"MultiTaskEvaluator: task {no_meter[0]!r} has no meter (no evaluation)")
        self.tasks = tuple(task_channels)
        self.loss_fn = loss_fn
        self.loss_keys = {t: (loss_keys or {}).get(t, f"{t}_loss") for t in self.tasks}
        self.meters: Dict[str, Any] = {t: METERS[self.specs[t].meter](self.specs[t], channels, depth_min_prediction)
                                       for t, channels in task_channels.items()}
        self._loss_sums: Optional[Tensor] = None
        self.num_samples = 0

    @torch.no_grad()
    def update(self, predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        """Accumulate one batch.

        Args:
            predictions: task -> prediction ``[N, C_t, H, W]`` (any float dtype; evaluated in float32).
            targets: task -> target as the task's meter and loss expect (semseg / human_parts ``[N, H, W]``
                int64; depth ``[N, 1, H, W]``; normals ``[N, 3, H, W]``; sal ``[N, 1, H, W]``), plus any
                extra entries ``loss_fn`` needs (e.g. ``depth_valid``).

        Raises:
            KeyError: a task missing from ``predictions`` or ``targets``; the meters' ValueErrors.
        """
        n = None
        losses: List[Tensor] = []
        for t in self.tasks:
            if t not in predictions or t not in targets:
                raise KeyError(f"MultiTaskEvaluator: task {t!r} missing from the predictions or the targets")
            pred = predictions[t].float()
            self.meters[t].update(pred, targets[t])
            n = pred.shape[0]
            if self.loss_fn is not None:
                losses.append(self.loss_fn(t, pred, targets).detach().to(torch.float64))
        if losses:
            batch = torch.stack(losses) * n
            self._loss_sums = batch if self._loss_sums is None else self._loss_sums + batch
        self.num_samples += int(n or 0)

    def all_reduce(self, device: torch.device) -> None:
        """Sum every meter, the loss sums and the sample count over the ranks of the default process group
        (no-op without one), so that each rank's :meth:`compute` gives the metrics of the whole dataset
        (evaluation data sharded without padding: every sample counted once)."""
        for meter in self.meters.values():
            meter.all_reduce(device)
        if not (dist.is_available() and dist.is_initialized()):
            return
        sums = self._loss_sums if self._loss_sums is not None else torch.zeros(
            len(self.tasks), dtype=torch.float64, device=device)
        count = torch.tensor([float(self.num_samples)], dtype=torch.float64, device=sums.device)
        payload = torch.cat([sums, count])
        dist.all_reduce(payload)
        self._loss_sums, self.num_samples = payload[:-1], int(payload[-1].item())

    def compute(self) -> Dict[str, Any]:
        """The metrics (module docstring), as Python floats; NaN metrics for tasks without valid pixels."""
        out: Dict[str, Any] = {}
        for t in self.tasks:
            m, spec = self.meters[t].compute(), self.specs[t]
            keys = m if spec.reported is None else spec.reported
            out.update({spec.metric_prefix + k: m[k] for k in keys})
        if self.loss_fn is not None:
            count = max(self.num_samples, 1)
            sums = self._loss_sums.tolist() if self._loss_sums is not None else [0.0] * len(self.tasks)
            means = [s / count for s in sums]
            out.update({self.loss_keys[t]: v for t, v in zip(self.tasks, means)})
            out["loss"] = float(sum(means))
        out["num_samples"] = self.num_samples
        return out
