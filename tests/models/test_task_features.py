"""The task-feature interface (python_models/interface.py): per-task pre-head feature maps.

Each host exposes, in ``out.features[task]``, the very tensor its prediction head consumes (checked by
identity with a forward pre-hook on the head), with ``model.feature_channels[task]`` channels; the
predictions are unchanged (recomputed by the pre-change path, compared bitwise).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from python_models import (
    MTCP,
    TaskFeatureHost,
    TaskFeatureOutput,
    XTasCNet,
    XTasCOutput,
    MTCPOutput,
)
from xtc_ext.tasks import task_names

NYUD = {"semseg": 40, "depth": 1, "normals": 3}
PASCAL = {"semseg": 21, "human_parts": 7, "sal": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _head_inputs(heads):
    """Register pre-hooks on ``heads`` (name -> module); return the dict they fill and the handles."""
    seen, handles = {}, []
    for name, head in heads.items():
        handles.append(head.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0])))
    return seen, handles


@pytest.fixture(scope="module")
def xtasc():
    torch.manual_seed(0)
    return XTasCNet(5, encoder_depth=18).eval()


@pytest.mark.parametrize("direct_only", [False, True])
def test_xtasc_features_are_the_head_inputs(xtasc, direct_only):
    assert isinstance(xtasc, TaskFeatureHost)
    assert xtasc.feature_channels == {"semseg": 128, "depth": 128}
    seen, handles = _head_inputs({"semseg": xtasc.seg_decoder.head, "depth": xtasc.depth_decoder.head})
    try:
        with torch.no_grad():
            out = xtasc(torch.randn(2, 3, 64, 96), direct_only=direct_only)
    finally:
        for h in handles:
            h.remove()
    assert isinstance(out, TaskFeatureOutput)
    assert list(out.features) == ["semseg", "depth"]
    for task, feat in out.features.items():
        assert feat is seen[task]  # a reference, not a recomputation
        assert feat.shape == (2, xtasc.feature_channels[task], 64, 96)
        assert feat.dtype == torch.float32
    assert set(out.features) <= set(task_names())


def test_xtasc_outputs_bitwise_unchanged(xtasc):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = xtasc(x)
        enc = xtasc.encoder(x)
        seg = xtasc.seg_decoder(enc)  # UNetDecoder.forward: head(decode(.))
        dep = xtasc.depth_decoder(enc)
        dep_t = xtasc.seg_to_depth(seg)
        seg_t = xtasc.depth_to_seg(dep)
    assert torch.equal(out.seg_logits, seg) and torch.equal(out.depth, dep)
    assert torch.equal(out.seg_transfer, seg_t) and torch.equal(out.depth_transfer, dep_t)


def test_xtasc_features_carry_gradient_to_the_encoder():
    torch.manual_seed(0)
    model = XTasCNet(3, encoder_depth=18, with_transfer=False)
    out = model(torch.randn(2, 3, 64, 64))
    out.features["depth"].square().mean().backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.depth_decoder.block1.conv1[0].weight.grad.abs().sum() > 0
    assert model.seg_decoder.block1.conv1[0].weight.grad is None  # the other task's decoder


def test_hand_built_outputs_keep_working_without_features():
    t = torch.zeros(1, 2, 1, 1)
    assert XTasCOutput(t, t, None, None).features is None
    assert MTCPOutput({}, {}, torch.zeros(())).features is None


@pytest.mark.parametrize(
    "tasks, kw",
    [
        (NYUD, {}),
        (PASCAL, {}),
        (NYUD, {"use_srm": False}),
        (NYUD, {"use_cfm": False, "use_srm": False}),
    ],
)
def test_mtcp_features_are_the_head_inputs(tasks, kw):
    torch.manual_seed(0)
    model = MTCP(tasks, backbone="resnet18_fpn", embed_dim=16, **kw).eval()
    assert isinstance(model, TaskFeatureHost)
    assert model.feature_channels == {t: 16 for t in tasks}
    seen, handles = _head_inputs(dict(model.heads.items()))
    try:
        with torch.no_grad():
            out = model(torch.randn(2, 3, 64, 96))
    finally:
        for h in handles:
            h.remove()
    assert list(out.features) == list(tasks)
    for task, feat in out.features.items():
        assert feat is seen[task]
        assert feat.shape == (2, 16, 16, 24)
        expected = F.interpolate(model.heads[task](feat), size=(64, 96), mode="bilinear", align_corners=False)
        assert torch.equal(out.predictions[task], expected)


def test_mtcp_features_carry_gradient_to_the_backbone():
    torch.manual_seed(0)
    model = MTCP(PASCAL, backbone="resnet18_fpn", embed_dim=16, use_cfm=False)
    out = model(torch.randn(2, 3, 64, 64))
    out.features["sal"].sum().backward()
    assert model.backbone.encoder.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.heads["sal"].parameters())  # upstream of the head only
