"""Training losses of the methods, computed with the fused ops (:mod:`xtc_ext.ops`) or their eager references.

- :mod:`xtc_ext.losses.xtasc`: XTasC-Net (cross-task consistency, paper Eqs. 8, 11-16), Align-Net and the
  Base ST-Net single-task loss.
- :mod:`xtc_ext.losses.mtcp`: MT-CP (paper §3.5 Eq. 7, §4.2): per-task losses, intermediate (trace-back)
  supervision and the coherence loss, combined by a task weighting (LPS by default).
- :mod:`xtc_ext.losses.common`: the ``--loss-impl`` choices and argument checks shared by both.
"""

from xtc_ext.losses.common import LOSS_IMPLS
from xtc_ext.losses.mtcp import LOSSES, NORMALS_KINDS, MTCPLoss, MTCPLossTerms, task_loss
from xtc_ext.losses.xtasc import (
    DEPTH_LOSSES,
    SEG_CONSISTENCY,
    VARIANTS,
    XTasCLoss,
    XTasCLossTerms,
    hard_pseudo_labels,
    masked_depth_loss,
    single_task_loss,
)

__all__ = [
    "LOSS_IMPLS",
    "LOSSES",
    "NORMALS_KINDS",
    "MTCPLoss",
    "MTCPLossTerms",
    "task_loss",
    "DEPTH_LOSSES",
    "SEG_CONSISTENCY",
    "VARIANTS",
    "XTasCLoss",
    "XTasCLossTerms",
    "hard_pseudo_labels",
    "masked_depth_loss",
    "single_task_loss",
]
