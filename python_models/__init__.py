"""Model definitions for xtc_ext: XTasC-Net and its building blocks (no training or data code)."""

from .resnet import ResNetEncoder
from .xtasc_net import BaseSTNet, TaskTransferNet, UNetDecoder, XTasCNet, XTasCOutput

__all__ = [
    "XTasCNet",
    "XTasCOutput",
    "BaseSTNet",
    "ResNetEncoder",
    "UNetDecoder",
    "TaskTransferNet",
]
