"""Task weighting: how per-task losses ``L_t`` become the training update (XTasC-Net paper Eq. 16).

Two families, one interface (:class:`Weighting`, one ``WEIGHTINGS`` registry, ``--weighting NAME``):

- :mod:`xtc_ext.weighting.classic`: loss weightings (equal, uncertainty, DWA, GradNorm, LPS) and the base
  class, the registry and :func:`build_weighting`;
- :mod:`xtc_ext.weighting.jacobian`: gradient-balancing and Jacobian-descent aggregators of TorchJD
  (UPGrad, MGDA, PCGrad, CAGrad, Nash-MTL, ...; docs/weighting.md), registered only by name when the
  optional dependency ``torchjd`` is missing (a run then stops with the install hint).

Every public name of both modules is importable from here (``from xtc_ext.weighting import GradNorm``).
"""

from xtc_ext.weighting.classic import (
    DWA,
    GRADNORM_OPTIMIZERS,
    LPS,
    LPS_ABLATIONS,
    WEIGHTINGS,
    EqualWeighting,
    GradNorm,
    SeparateGradNorm,
    UncertaintyWeighting,
    Weighting,
    build_weighting,
    weighting_classes,
)
from xtc_ext.weighting.jacobian import AGGREGATORS, JACOBIAN_MODES, JacobianWeighting

__all__ = [
    "AGGREGATORS", "DWA", "GRADNORM_OPTIMIZERS", "JACOBIAN_MODES", "LPS", "LPS_ABLATIONS", "WEIGHTINGS",
    "EqualWeighting", "GradNorm", "JacobianWeighting", "SeparateGradNorm", "UncertaintyWeighting", "Weighting",
    "build_weighting", "weighting_classes",
]
