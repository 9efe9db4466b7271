"""Model definitions for xtc_ext: XTasC-Net, MT-CP and their building blocks (no training or data code)."""

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
