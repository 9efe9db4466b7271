"""Model definitions for xtc_ext: XTasC-Net, MT-CP and their building blocks (no training or data code).

Task-feature interface (:mod:`python_models.interface`): every multi-task model exposes its per-task
pre-head feature maps, the maps that feed each task's final prediction layer, for training-only
components such as the cross-task contrastive regularizer (``docs/contrastive.md``):

- ``model.feature_channels``: ``Dict[str, int]``, task name (the registered names of
  ``xtc_ext/tasks.py``: ``"semseg"``, ``"depth"``, ``"normals"``, ``"sal"``, ``"human_parts"``) -> channels ``C_t``;
- ``model(x).features``: ``Dict[str, Tensor]``, task name -> ``[N, C_t, h_t, w_t]``, references to
  tensors the forward computes anyway (no extra computation, outputs and parameters unchanged).

:class:`XTasCNet` (``"semseg"``, ``"depth"``: 128 channels at the input resolution) and :class:`MTCP`
(each of its tasks: ``embed_dim`` channels at H/4) implement it; :class:`TaskFeatureHost` is the
structural type a future model satisfies.
"""

from .interface import TaskFeatureHost, TaskFeatureOutput
from .mtcp import MTCP, FPN, Mask2FormerBackbone, MTCPOutput, ResNet50FPN, ResNetFPN
from .mtcp_blocks import (
    CBAM,
    CoherenceFusionModule,
    DynamicFPN,
    PredictionHead,
    SpatialRefinementModule,
    SwinPyramid,
    TaskDecoder,
)
from .resnet import ResNetEncoder
from .xtasc_net import BaseSTNet, TaskTransferNet, UNetDecoder, XTasCNet, XTasCOutput

__all__ = [
    "TaskFeatureHost",
    "TaskFeatureOutput",
    "XTasCNet",
    "XTasCOutput",
    "BaseSTNet",
    "ResNetEncoder",
    "UNetDecoder",
    "TaskTransferNet",
    "MTCP",
    "MTCPOutput",
    "ResNetFPN",
    "ResNet50FPN",
    "FPN",
    "Mask2FormerBackbone",
    "CBAM",
    "SwinPyramid",
    "DynamicFPN",
    "TaskDecoder",
    "CoherenceFusionModule",
    "SpatialRefinementModule",
    "PredictionHead",
]
