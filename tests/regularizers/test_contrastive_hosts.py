"""The contrastive regularizer on the real hosts' features, and its anchor-distance figure.

Small hosts (XTasC-Net ResNet-18, MT-CP resnet18_fpn) at 64x64: the regularizer consumes
``model(x).features``, its gradient reaches the decoders and the encoder (never the prediction heads),
and its projectors are not part of the host (parameter count unchanged).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from python_models import MTCP, XTasCNet
from xtc_ext.regularizers import CrossTaskContrastive, save_distance_figure
from xtc_ext.tasks import get_task


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _labels(tasks, n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    make = {
        "semseg": lambda: torch.randint(-1, 5, (n, h, w), generator=g),
        "human_parts": lambda: torch.randint(-1, 3, (n, h, w), generator=g),
        "sal": lambda: (torch.rand(n, 1, h, w, generator=g) > 0.5).float(),
        "depth": lambda: torch.rand(n, 1, h, w, generator=g) * 9 + 0.5,
        "normals": lambda: torch.randn(n, 3, h, w, generator=g),
    }
    return {t: make[t]() for t in tasks}


def test_xtasc_features_feed_the_regularizer():
    torch.manual_seed(0)
    model = XTasCNet(5, encoder_depth=18)
    count = _n_params(model)
    reg = CrossTaskContrastive(model.feature_channels, {t: get_task(t).contrastive_kind for t in ("semseg", "depth")},
                               anchors=32)
    out = model(torch.randn(2, 3, 64, 64))
    res = reg(out.features, _labels(("semseg", "depth"), 2, (64, 64)), generator=torch.Generator().manual_seed(0))
    assert res.sources == {"semseg": "depth", "depth": "semseg"}  # each target's only source
    res.loss.backward()
    assert torch.isfinite(res.loss) and res.loss.item() > 0
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.seg_decoder.block5.conv3[0].weight.grad.abs().sum() > 0
    assert model.depth_decoder.block5.conv3[0].weight.grad.abs().sum() > 0
    assert model.seg_decoder.head.weight.grad is None and model.depth_decoder.head.weight.grad is None
    assert _n_params(model) == count
    model_params = {id(p) for p in model.parameters()}
    assert not any(id(p) in model_params for p in reg.parameters())


@pytest.mark.parametrize(
    "tasks", [{"semseg": 5, "depth": 1, "normals": 3}, {"semseg": 5, "human_parts": 3, "sal": 1}]
)
def test_mtcp_features_feed_the_regularizer(tasks):
    torch.manual_seed(0)
    model = MTCP(tasks, backbone="resnet18_fpn", embed_dim=16)
    count = _n_params(model)
    reg = CrossTaskContrastive(model.feature_channels, {t: get_task(t).contrastive_kind for t in tasks}, anchors=24,
                               mining="semihard", semihard_pool=32)
    out = model(torch.randn(2, 3, 64, 64))
    labels = _labels(tasks, 2, (64, 64))  # labels at 64x64, features at 16x16: nearest neighbour
    res = reg(out.features, labels, generator=torch.Generator().manual_seed(1))
    res.loss.backward()
    assert torch.isfinite(res.loss)
    for t in tasks:
        assert res.sources[t] != t
        assert int(res.num_triplets[t]) > 0
        assert model.srms[t].steps[-1].out_conv.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.heads[t].parameters())
    assert model.backbone.encoder.conv1.weight.grad.abs().sum() > 0
    assert _n_params(model) == count


def test_distance_figure_is_written_and_reproducible(tmp_path):
    torch.manual_seed(0)
    model = XTasCNet(5, encoder_depth=18).eval()
    reg = CrossTaskContrastive(model.feature_channels, {"semseg": "categorical", "depth": "depth"}, anchors=16)
    with torch.no_grad():
        feats = {t: f[:1] for t, f in model(torch.randn(2, 3, 64, 64)).features.items()}
    labels = {t: v[:1] for t, v in _labels(("semseg", "depth"), 2, (64, 64)).items()}
    state = {k: v.clone() for k, v in reg.state_dict().items()}
    first = save_distance_figure(reg, feats, labels, tmp_path / "before" / "semseg.png", target="semseg")
    second = save_distance_figure(reg, feats, labels, tmp_path / "after.png", target="semseg")
    assert first.source == "depth" and first.anchor == second.anchor
    assert first.mean_positive == second.mean_positive and first.num_negative == second.num_negative
    assert first.num_positive > 0 and first.num_negative > 0
    assert 0.0 <= first.mean_positive <= 2.0 and 0.0 <= first.mean_negative <= 2.0
    with Image.open(first.path) as img:
        assert img.format == "PNG" and img.size[0] > 600
    assert reg.training  # mode restored, running statistics untouched
    assert all(torch.equal(v, reg.state_dict()[k]) for k, v in state.items())
    third = save_distance_figure(reg, feats, labels, tmp_path / "anchor.png", target="depth", anchor=(3, 4))
    assert third.anchor == (3, 4) and third.source == "semseg"


def test_distance_figure_errors(tmp_path):
    reg = CrossTaskContrastive({"semseg": 4, "depth": 4}, {"semseg": "categorical", "depth": "depth"}, anchors=4)
    feats = {"semseg": torch.randn(1, 4, 6, 6), "depth": torch.randn(1, 4, 6, 6)}
    labels = {"semseg": torch.randint(0, 3, (1, 6, 6)), "depth": torch.rand(1, 1, 6, 6) + 0.5}
    with pytest.raises(ValueError, match="target"):
        save_distance_figure(reg, feats, labels, tmp_path / "x.png", target="normals")
    with pytest.raises(ValueError, match="source"):
        save_distance_figure(reg, feats, labels, tmp_path / "x.png", target="semseg", source="semseg")
    with pytest.raises(ValueError, match="one image"):
        save_distance_figure(reg, {"semseg": torch.randn(2, 4, 6, 6)}, labels, tmp_path / "x.png")
    with pytest.raises(ValueError, match="anchor"):
        save_distance_figure(reg, feats, labels, tmp_path / "x.png", anchor=(6, 0))
    void = {"semseg": labels["semseg"], "depth": torch.zeros(1, 1, 6, 6)}
    with pytest.raises(ValueError, match="no valid pixel"):
        save_distance_figure(reg, feats, void, tmp_path / "x.png", target="semseg")
    assert not (tmp_path / "x.png").exists()
