"""Tiny stand-ins of the project's models, for tests of the training program, the engine and the CLIs.

They have the real models' interfaces (outputs, attributes the recipes use, GradNorm's shared layer
``encoder.layer4[-1].conv2``) but a few thousand parameters, so a test run writes checkpoints of
kilobytes instead of hundreds of megabytes. The real architectures are tested in ``tests/models`` and,
built by the recipes, in ``tests/recipes``.
"""

from __future__ import annotations

import types
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from python_models import MTCPOutput, XTasCOutput
from xtc_ext.recipes import MTCPRecipe, XTasCRecipe

WIDTH = 8


class TinyEncoder(nn.Module):
    """A conv stem and one block whose ``conv2`` plays the encoder's last shared layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, padding=1)
        block = nn.Module()
        block.conv2 = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
        self.layer4 = nn.ModuleList([block])

    def forward(self, x):
        return F.relu(self.layer4[-1].conv2(F.relu(self.stem(x))))


class TinyXTasCNet(nn.Module):
    """XTasCNet's interface: ``forward(x, direct_only) -> XTasCOutput`` with the two transfer outputs."""

    def __init__(self, num_classes: int, with_transfer: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = TinyEncoder()
        self.seg_head = nn.Conv2d(WIDTH, num_classes, 1)
        self.depth_head = nn.Conv2d(WIDTH, 1, 1)
        self.seg_to_depth = nn.Conv2d(num_classes, 1, 1) if with_transfer else None
        self.depth_to_seg = nn.Conv2d(1, num_classes, 1) if with_transfer else None
        self.feature_channels = {"semseg": WIDTH, "depth": WIDTH}

    def shared_parameters(self):
        """GradNorm's shared layer, as XTasCNet's hook: the encoder's last conv."""
        return [self.encoder.layer4[-1].conv2.weight]

    def shared_module(self):
        """The shared representation's module, as XTasCNet's hook: the encoder."""
        return self.encoder

    def forward(self, x, direct_only: bool = False):
        f = self.encoder(x)
        seg, dep = self.seg_head(f), self.depth_head(f)
        features = {"semseg": f, "depth": f}
        if direct_only or self.seg_to_depth is None:
            return XTasCOutput(seg, dep, None, None, features)
        return XTasCOutput(seg, dep, self.depth_to_seg(dep), self.seg_to_depth(F.log_softmax(seg, dim=1)), features)


class TinySTNet(nn.Module):
    """BaseSTNet's interface: one task, ``forward(x) -> [N, C, H, W]``."""

    def __init__(self, task: str, num_classes: int) -> None:
        super().__init__()
        self.task = task
        self.encoder = TinyEncoder()
        self.head = nn.Conv2d(WIDTH, num_classes if task == "semseg" else 1, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


class TinyMTCP(nn.Module):
    """MTCP's interface: ``forward(x) -> MTCPOutput`` with one intermediate prediction per task (with SRM)
    and a coherence loss (with CFM); ``tasks``, ``task_channels``, ``use_cfm``, ``use_srm``."""

    def __init__(self, task_channels: Mapping[str, int], use_cfm: bool = True, use_srm: bool = True) -> None:
        super().__init__()
        self.task_channels: Dict[str, int] = dict(task_channels)
        self.tasks = tuple(task_channels)
        self.use_cfm, self.use_srm = use_cfm, use_srm
        self.encoder = TinyEncoder()
        self.heads = nn.ModuleDict({t: nn.Conv2d(WIDTH, c, 1) for t, c in task_channels.items()})
        self.inter = nn.ModuleDict({t: nn.Conv2d(WIDTH, c, 1) for t, c in task_channels.items()})
        self.feature_channels = {t: WIDTH for t in task_channels}

    def shared_module(self):
        """The shared representation's module, as MTCP's hook (there the backbone): the encoder."""
        return self.encoder

    def forward(self, x):
        f = self.encoder(x)
        predictions = {t: h(f) for t, h in self.heads.items()}
        intermediate = {t: [h(f)] if self.use_srm else [] for t, h in self.inter.items()}
        coherence = (1 - F.cosine_similarity(f, f.roll(1, dims=1), dim=1)).mean() if self.use_cfm else f.new_zeros(())
        return MTCPOutput(predictions, intermediate, coherence, {t: f for t in self.tasks})


def _xtasc_build_model(self):
    a = self.args
    if a.model == "stnet":
        return TinySTNet(a.task, int(a.classes))
    return TinyXTasCNet(int(a.classes), with_transfer=a.model in ("xtasc", "align") and a.lam > 0)


def _mtcp_build_model(self):
    return TinyMTCP(self.task_channels, use_cfm=bool(self.args.cfm) and len(self.tasks) > 1,
                    use_srm=bool(self.args.srm))


def use_tiny_models(monkeypatch) -> types.SimpleNamespace:
    """Make the recipes build the tiny stand-ins (for training and for evaluation) during one test."""
    monkeypatch.setattr(XTasCRecipe, "build_model", _xtasc_build_model)
    monkeypatch.setattr(MTCPRecipe, "build_model", _mtcp_build_model)
    return types.SimpleNamespace(xtasc=TinyXTasCNet, stnet=TinySTNet, mtcp=TinyMTCP)
