"""The task-feature interface of multi-task hosts: per-task pre-head feature maps.

A training-only component that works on a host's task representations (the cross-task contrastive
regularizer, ``docs/contrastive.md``) needs, per task, the feature map that feeds the task's final
prediction layer.  Every multi-task model of this package exposes it the same way:

- the model has an attribute ``feature_channels: Dict[str, int]`` (task name -> channels ``C_t``);
- the output of ``forward`` has a field ``features: Optional[Dict[str, Tensor]]``, filled by the
  forward: task name -> float ``[N, C_t, h_t, w_t]`` (the dtype of the computation, e.g. bfloat16
  under autocast), the map whose only consumer in the model is the task's prediction head, not
  detached (a gradient on it reaches the decoder and the encoder).

The maps are references to tensors the forward computes anyway: exposing them adds no computation,
no parameter and changes no output.  Holding the output keeps them alive; drop ``out.features``
(or the output) early where memory matters.

Task names are the ones the model was built with: the registered task names of ``xtc_ext/tasks.py``
(``"semseg"``, ``"depth"``, ``"normals"``, ``"sal"``, ``"human_parts"``, ...; models do not import that
registry, the recipes that build them do).  Implementations here:

- :class:`~python_models.xtasc_net.XTasCNet`: ``"semseg"`` and ``"depth"``, the last 128-channel
  U-Net decoder map before ``head`` (input resolution).
- :class:`~python_models.mtcp.MTCP`: each task of ``tasks``, the input of ``heads[t]`` (the SRM's
  last ``z`` at H/4, or the fused map without SRM), ``embed_dim`` channels.

A future model implements the interface by setting ``feature_channels`` in its constructor and
returning an output (a NamedTuple, dataclass or any object) with a ``features`` attribute;
:class:`TaskFeatureHost` and :class:`TaskFeatureOutput` are the structural types to check it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["TaskFeatureHost", "TaskFeatureOutput"]


@runtime_checkable
class TaskFeatureOutput(Protocol):
    """A model output carrying per-task pre-head feature maps.

    Attributes:
        features: task name -> float ``[N, C_t, h_t, w_t]``, or ``None`` when the output was built
            without them.
    """

    features: Optional[Dict[str, Tensor]]


@runtime_checkable
class TaskFeatureHost(Protocol):
    """A multi-task model implementing the task-feature interface (see the module docstring).

    Attributes:
        feature_channels: task name -> ``C_t``, the channels of ``forward(x).features[task]``.

    ``forward(x, ...)`` returns a :class:`TaskFeatureOutput` whose ``features`` has exactly the
    keys of ``feature_channels``.  ``isinstance(model, TaskFeatureHost)`` checks only that the
    attribute exists (``typing.runtime_checkable``).
    """

    feature_channels: Dict[str, int]

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> TaskFeatureOutput:
        """Run the model on ``x`` ``[N, 3, H, W]``."""
        ...
