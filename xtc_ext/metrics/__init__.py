"""Evaluation metrics: dataset-level meters, the multi-task evaluator, and Δm against baselines.

- :mod:`xtc_ext.metrics.meters`: :class:`SegmentationMeter` (mIoU, pixel accuracy), :class:`DepthMeter`
  (abs/rel error, RMSE), :class:`NormalsMeter` (angular errors), :class:`SaliencyMeter` (maxF, max-mIoU).
- :mod:`xtc_ext.metrics.evaluator`: :class:`MultiTaskEvaluator`, one meter and one mean loss per task.
- :mod:`xtc_ext.metrics.delta`: :func:`delta_m` (XTasC-Net Eq. 17 / MT-CP Delta_MTL) and baseline files.
- :mod:`xtc_ext.metrics.table`: :func:`format_metrics_table`, markdown tables of results.
"""

from xtc_ext.metrics.delta import delta_m, delta_m_over, load_baselines, metrics_from_json
from xtc_ext.metrics.evaluator import METERS, MultiTaskEvaluator
from xtc_ext.metrics.meters import DepthMeter, NormalsMeter, SaliencyMeter, SegmentationMeter
from xtc_ext.metrics.table import format_metrics_table

__all__ = [
    "SegmentationMeter",
    "DepthMeter",
    "NormalsMeter",
    "SaliencyMeter",
    "MultiTaskEvaluator",
    "METERS",
    "delta_m",
    "delta_m_over",
    "load_baselines",
    "metrics_from_json",
    "format_metrics_table",
]
