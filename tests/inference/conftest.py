"""Tiny training runs shared by the tests of ``python -m xtc_ext.predict`` and ``python -m xtc_ext.export``.

The runs use stand-in models (tests/tiny_models.py, plus :class:`GatedTinyMTCP`, whose evaluation graph holds the
fused ``sigmoid_gate`` and a coherence loss like MT-CP's CFM) on the frames fixture at 32x64, so their checkpoints
are kilobytes and the exports compile in seconds.
"""

import pytest
import torch.nn.functional as F
from torch import nn

from fixtures import write_frames
from python_models import MTCPOutput
from tiny_models import WIDTH, TinyEncoder, use_tiny_models
from xtc_ext import ops
from xtc_ext import train as train_mod
from xtc_ext.recipes import MTCPRecipe

SIZE = (32, 64)


class GatedTinyMTCP(nn.Module):
    """MTCP's interface with a CFM-like gate (``ops.sigmoid_gate``) and coherence loss (``ops.cosine_similarity_loss``)
    computed in ``forward`` even at evaluation, as the real MT-CP does."""

    def __init__(self, task_channels) -> None:
        super().__init__()
        self.task_channels = dict(task_channels)
        self.tasks = tuple(task_channels)
        self.encoder = TinyEncoder()
        self.gate = nn.Conv2d(WIDTH, WIDTH, 1)
        self.heads = nn.ModuleDict({t: nn.Conv2d(WIDTH, c, 1) for t, c in task_channels.items()})
        self.feature_channels = {t: WIDTH for t in task_channels}

    def forward(self, x):
        f = self.encoder(x)
        gated = ops.sigmoid_gate(f, self.gate(f))
        coherence = ops.cosine_similarity_loss(f, gated)
        predictions = {t: h(F.avg_pool2d(gated, 2).repeat_interleave(2, -1).repeat_interleave(2, -2))
                       for t, h in self.heads.items()}
        return MTCPOutput(predictions, {t: [] for t in self.tasks}, coherence, {t: gated for t in self.tasks})


def _gated_build_model(self):
    return GatedTinyMTCP(self.task_channels)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """``{"root": frames fixture, "xtasc": last.pt, "mtcp": last.pt}`` of 1-epoch tiny runs; the tiny models stay
    patched into the recipes for the module's tests, and only for them (a wider scope, e.g. "package", is the
    whole session under ``--import-mode=importlib`` without ``__init__.py``: the patch leaked into later tests)."""
    base = tmp_path_factory.mktemp("inference_runs")
    root = base / "frames"
    write_frames(root)
    common = ["--dataset", "frames", "--data-root", str(root), "--size", *map(str, SIZE), "--epochs", "1",
              "--batch-size", "3", "--no-progress", "--no-tensorboard", "--num-figures", "0", "--amp", "none"]
    with pytest.MonkeyPatch.context() as mp:
        use_tiny_models(mp)
        train_mod.main(common + ["--output-dir", str(base / "xtasc")])
        mp.setattr(MTCPRecipe, "build_model", _gated_build_model)
        train_mod.main(common + ["--model", "mtcp", "--output-dir", str(base / "mtcp")])
        yield {"root": root, "xtasc": base / "xtasc" / "last.pt", "mtcp": base / "mtcp" / "last.pt"}


@pytest.fixture
def gated_graph_ops():
    """The ``torch.ops.xtc_ext`` ops of an ExportedProgram's graph."""
    def names(program):
        return sorted({str(n.target) for n in program.graph.nodes if str(n.target).startswith("xtc_ext.")})

    return names


