"""Training-only regularizers that plug into any host implementing the task-feature interface.

- :mod:`xtc_ext.regularizers.contrastive`: :class:`CrossTaskContrastive`, the cross-task contrastive
  regularizer of Yang, Ye, Xu, "Contrastive Multi-Task Dense Prediction", AAAI 2023
  (``docs/contrastive.md``).
- :mod:`xtc_ext.regularizers.sampling`: its positive/negative criteria and triplet sampler.
- :mod:`xtc_ext.regularizers.figures`: :func:`save_distance_figure`, the anchor-distance figure.

The host exposes per-task pre-head feature maps (``model.feature_channels``, ``model(x).features``;
:mod:`python_models.interface`); the regularizer's projectors are not part of the host, so the
evaluated and exported model is the host alone.
"""

from .contrastive import (
    MINING,
    ContrastiveOutput,
    CrossTaskContrastive,
    Projector,
    embedding_distance,
    triplet_margin_loss,
)
from .figures import DistanceFigure, save_distance_figure
from .sampling import DEPTH_CRITERIA, SOURCE_KINDS, Criterion, SourceGrid, Triplets

__all__ = [
    "CrossTaskContrastive",
    "ContrastiveOutput",
    "Projector",
    "MINING",
    "SOURCE_KINDS",
    "DEPTH_CRITERIA",
    "Criterion",
    "SourceGrid",
    "Triplets",
    "triplet_margin_loss",
    "embedding_distance",
    "save_distance_figure",
    "DistanceFigure",
]
