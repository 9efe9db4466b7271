"""Tests for the MT-CP model (python_models/mtcp.py, python_models/mtcp_blocks.py).

Paper §3.1-3.4; docs/fidelity.md, "MT-CP model".  Everything runs on CPU with tiny
inputs; only the NYUD shape test keeps the full width (embed_dim 256).
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import xtc_ext.ops
from python_models import (
    CBAM,
    MTCP,
    CoherenceFusionModule,
    DynamicFPN,
    MTCPOutput,
    ResNet50FPN,
    ResNetEncoder,
    SpatialRefinementModule,
    SwinPyramid,
)
from python_models.mtcp_blocks import SwinBlock, shifted_window_mask

NYUD = {"semseg": 40, "depth": 1, "normals": 3}
PASCAL = {"semseg": 21, "human_parts": 7, "sal": 1}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small_model(tasks=NYUD, **kw) -> MTCP:
    kw.setdefault("embed_dim", 16)
    kw.setdefault("backbone", "resnet18_fpn")
    return MTCP(tasks, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Many tiny ops: with OpenMP threads on a shared, loaded CPU, spin-waiting makes them 10-100x
    # slower than one thread.  Restored after this module.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def nyud_full():
    torch.manual_seed(0)
    return MTCP(NYUD)


# --------------------------------------------------------------------------------------------
# Shapes


def test_output_shapes_nyud_full_width(nyud_full):
    model = nyud_full
    # exact parameter count of the NYUD model: any change to the architecture shows here
    assert n_params(model) == 106_809_358
    x = torch.randn(2, 3, 32, 64)
    out = model(x)
    assert isinstance(out, MTCPOutput)
    assert list(out.predictions) == list(NYUD)
    for t, c in NYUD.items():
        assert out.predictions[t].shape == (2, c, 32, 64)
        assert len(out.intermediate[t]) == 2
        for p in out.intermediate[t]:
            assert p.shape == (2, c, 32, 64)
            assert torch.isfinite(p).all()
        assert torch.isfinite(out.predictions[t]).all()
    assert out.coherence_loss.shape == () and out.coherence_loss.dtype == torch.float32
    assert 0.0 <= out.coherence_loss.item() <= 6.0


def test_output_shapes_pascal_and_internal_resolutions():
    model = small_model(PASCAL, embed_dim=32)
    seen = {}
    model.intermediate_heads["sal"][0].register_forward_pre_hook(lambda m, a: seen.__setitem__("z0", a[0].shape))
    model.intermediate_heads["sal"][1].register_forward_pre_hook(lambda m, a: seen.__setitem__("z1", a[0].shape))
    model.heads["sal"].register_forward_pre_hook(lambda m, a: seen.__setitem__("z2", a[0].shape))
    model.decoders["sal"].register_forward_hook(
        lambda m, a, o: seen.__setitem__("reps", [r.shape for r in o[1]] + [o[0].shape])
    )
    out = model(torch.randn(2, 3, 64, 128))
    for t, c in PASCAL.items():
        assert out.predictions[t].shape == (2, c, 64, 128)
        assert [p.shape for p in out.intermediate[t]] == [(2, c, 64, 128)] * 2
    # R0 @ H/4 (C), R1 @ H/8 (2C), R2 @ H/16 (4C); E_t @ H/4
    assert seen["reps"] == [(2, 32, 16, 32), (2, 64, 8, 16), (2, 128, 4, 8), (2, 32, 16, 32)]
    # intermediate heads on z0 (H/16) and z1 (H/8), final head on z2 (H/4)
    assert seen["z0"] == (2, 32, 4, 8) and seen["z1"] == (2, 32, 8, 16) and seen["z2"] == (2, 32, 16, 32)


def test_bad_input_sizes_raise():
    model = small_model()
    for shape in [(1, 3, 63, 64), (1, 3, 48, 64), (1, 3, 64, 80), (1, 3, 0, 64)]:
        with pytest.raises(ValueError, match="multiples of 32"):
            model(torch.randn(*shape))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError):
        model(torch.randn(3, 64, 64))
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.int64))


def test_constructor_errors():
    with pytest.raises(ValueError, match="two tasks"):
        MTCP({"semseg": 40}, backbone="resnet18_fpn", embed_dim=16)
    MTCP({"semseg": 40}, backbone="resnet18_fpn", embed_dim=16, use_cfm=False)  # fine
    with pytest.raises(ValueError, match="backbone"):
        MTCP(NYUD, backbone="vit")
    with pytest.raises(ValueError, match="coherence"):
        MTCP(NYUD, backbone="resnet18_fpn", embed_dim=16, coherence="cosine")
    with pytest.raises(ValueError, match="divisible"):
        MTCP(NYUD, backbone="resnet18_fpn", embed_dim=16, num_heads=(3, 2, 2))
    with pytest.raises(ValueError):
        MTCP({}, backbone="resnet18_fpn")
    with pytest.raises(ValueError):
        MTCP({"semseg": 0, "depth": 1})


# --------------------------------------------------------------------------------------------
# Ablations


def _capture(module, store, key, pre=True):
    if pre:
        return module.register_forward_pre_hook(lambda m, a: store.__setitem__(key, a))
    return module.register_forward_hook(lambda m, a, o: store.__setitem__(key, o))


def test_without_cfm_uses_decoder_output_and_zero_coherence():
    model = small_model(use_cfm=False)
    assert not hasattr(model, "cfms")
    assert all("cfms" not in k for k in model.state_dict())
    seen = {}
    for t in NYUD:
        _capture(model.decoders[t], seen, ("E", t), pre=False)
        _capture(model.srms[t], seen, ("srm_in", t))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.coherence_loss.item() == 0.0 and out.coherence_loss.dtype == torch.float32
    for t in NYUD:
        assert seen[("srm_in", t)][0] is seen[("E", t)][0]  # X_t = E_t
        assert len(out.intermediate[t]) == 2


def test_without_srm_no_intermediates_and_head_on_cfm_output():
    model = small_model(use_srm=False)
    assert not hasattr(model, "srms") and not hasattr(model, "intermediate_heads")
    seen = {}
    for t in NYUD:
        _capture(model.cfms[t], seen, ("X", t), pre=False)
        _capture(model.heads[t], seen, ("head_in", t))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.coherence_loss.item() > 0
    for t, c in NYUD.items():
        assert out.intermediate[t] == []
        assert out.predictions[t].shape == (2, c, 64, 64)
        assert seen[("head_in", t)][0] is seen[("X", t)][0]


def test_without_cfm_and_srm():
    model = small_model(use_cfm=False, use_srm=False)
    seen = {}
    for t in NYUD:
        _capture(model.decoders[t], seen, ("E", t), pre=False)
        _capture(model.heads[t], seen, ("head_in", t))
    out = model(torch.randn(1, 3, 64, 64))
    assert out.coherence_loss.item() == 0.0
    for t in NYUD:
        assert out.intermediate[t] == []
        assert seen[("head_in", t)][0] is seen[("E", t)][0]


def test_coherence_none_keeps_cfm_without_loss():
    model = small_model(coherence="none")
    assert hasattr(model, "cfms")
    out = model(torch.randn(2, 3, 64, 64))
    assert out.coherence_loss.item() == 0.0


# --------------------------------------------------------------------------------------------
# Gradients


def test_gradients_reach_backbone_from_every_head_and_the_coherence_loss():
    model = small_model()
    out = model(torch.randn(2, 3, 64, 64))
    stem = model.backbone.encoder.conv1.weight
    fpn = model.backbone.fpn.layer_blocks[0][0].weight
    terms = {f"pred:{t}": out.predictions[t].square().mean() for t in NYUD}
    terms.update({f"inter{k}:{t}": out.intermediate[t][k].square().mean() for t in NYUD for k in range(2)})
    terms["coherence"] = out.coherence_loss
    for name, term in terms.items():
        g_stem, g_fpn = torch.autograd.grad(term, [stem, fpn], retain_graph=True)
        assert g_stem.abs().sum() > 0, name
        assert g_fpn.abs().sum() > 0, name
    # through the CFM a task's prediction also trains the OTHER tasks' decoders (auxiliaries)
    other = model.decoders["depth"].dfpn.out_conv.weight
    (g,) = torch.autograd.grad(out.predictions["semseg"].square().mean(), [other], retain_graph=True)
    assert g.abs().sum() > 0
    # the coherence loss reaches the CFM gates and the DFPN fusion weights
    params = [model.cfms["semseg"].gates[0].weight, model.decoders["normals"].dfpn.fusion_weights]
    for g in torch.autograd.grad(out.coherence_loss, params, retain_graph=True):
        assert g.abs().sum() > 0


def test_without_cfm_tasks_are_isolated():
    model = small_model(use_cfm=False)
    out = model(torch.randn(2, 3, 64, 64))
    other = model.decoders["depth"].dfpn.out_conv.weight
    (g,) = torch.autograd.grad(out.predictions["semseg"].sum(), [other], allow_unused=True)
    assert g is None


# --------------------------------------------------------------------------------------------
# CFM


def _naive_attention(q, k, v, scale):
    # q, k: [N, C, h, w]; v: [N, Cv, h, w]
    Q = q.flatten(2).transpose(1, 2)
    K = k.flatten(2).transpose(1, 2)
    V = v.flatten(2).transpose(1, 2)
    P = torch.softmax(Q @ K.transpose(1, 2) * scale, dim=-1)
    return (P @ V).transpose(1, 2).reshape(v.shape)


def test_cfm_affinity_equals_naive_softmax_qkt_v():
    cfm = CoherenceFusionModule(dim=8, num_aux=2).double()
    a = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    v = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    ref = _naive_attention(a, a, v, 1 / math.sqrt(8))
    torch.testing.assert_close(cfm.affinity_merge(a, v), ref)
    cfm_code = CoherenceFusionModule(dim=8, num_aux=2, affinity_scale=1.0).double()  # authors': no 1/sqrt(d)
    torch.testing.assert_close(cfm_code.affinity_merge(a, v), _naive_attention(a, a, v, 1.0))


def test_cfm_forward_equals_naive_composition():
    cfm = CoherenceFusionModule(dim=16, num_aux=2).double().eval()
    for bn in (cfm.main_bn, cfm.aux_bn, cfm.out_bn):  # non-trivial BN statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    e = torch.randn(2, 16, 4, 6, dtype=torch.float64)
    aux = [torch.randn(2, 16, 4, 6, dtype=torch.float64) for _ in range(2)]
    x, loss = cfm(e, aux)
    gated = [a * torch.sigmoid(g(a)) for g, a in zip(cfm.gates, aux)]
    m = F.relu(cfm.main_bn(cfm.main_cbam(e)))
    a = F.relu(cfm.aux_bn(cfm.aux_cbam(cfm.aux_proj(torch.cat(gated, 1)))))
    ref_loss = (1 - F.cosine_similarity(m, a, dim=1, eps=1e-8)).mean()
    ref_x = cfm.out_bn(cfm.out_cbam(_naive_attention(a, a, m, 1 / 4)))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(x, ref_x)
    assert x.shape == e.shape
    with pytest.raises(ValueError):
        cfm(e, aux[:1])
    with pytest.raises(ValueError):
        cfm(e, [aux[0], aux[1][:, :, :2]])
    cfm_res = CoherenceFusionModule(dim=16, num_aux=2, residual=True).double().eval()
    cfm_res.load_state_dict(cfm.state_dict())
    torch.testing.assert_close(cfm_res(e, aux)[0], x + e)


def test_cfm_nyud_resolution_uses_fused_sdpa_without_n_by_n(monkeypatch):
    # 480x640 input -> CFM at H/4 = 120x160 = 19,200 tokens; an N x N fp32 matrix would be 1.47 GB.
    from torch.profiler import ProfilerActivity, profile

    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(q, k, v, *args, **kwargs):
        calls.append(tuple(q.shape))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    cfm = CoherenceFusionModule(dim=8, num_aux=2).eval()
    h, w = 120, 160
    n = h * w
    e = torch.randn(1, 8, h, w)
    aux = [torch.randn(1, 8, h, w), torch.randn(1, 8, h, w)]
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        x, loss = cfm(e, aux)
    assert calls == [(1, 1, n, 8)]
    assert x.shape == (1, 8, h, w) and torch.isfinite(x).all() and torch.isfinite(loss)
    events = list(prof.events())
    names = {ev.name for ev in events}
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    biggest = max(ev.cpu_memory_usage for ev in events)
    assert biggest < n * n * 4 // 64, biggest
    # training mode (BN batch statistics, gradients): the fused kernel and its backward as well
    cfm.train()
    small = [torch.randn(1, 8, 30, 40, requires_grad=True) for _ in range(3)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        x, loss = cfm(small[0], small[1:])
        (x.square().mean() + loss).backward()
    names = {ev.name for ev in prof.events()}
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in names
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in small)


def test_sigmoid_gate_and_cosine_loss_go_through_xtc_ext_ops(monkeypatch):
    counts = {"gate": 0, "cos": 0}
    real_gate, real_cos = xtc_ext.ops.sigmoid_gate, xtc_ext.ops.cosine_similarity_loss

    def gate(x, g):
        counts["gate"] += 1
        return real_gate(x, g)

    def cos(a, b, *args, **kwargs):
        counts["cos"] += 1
        return real_cos(a, b, *args, **kwargs)

    monkeypatch.setattr(xtc_ext.ops, "sigmoid_gate", gate)
    monkeypatch.setattr(xtc_ext.ops, "cosine_similarity_loss", cos)
    model = small_model()
    model(torch.randn(1, 3, 64, 64))
    assert counts == {"gate": 3 * 2, "cos": 3}


# --------------------------------------------------------------------------------------------
# Windowed attention


def _dense_swin_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """SwinBlock written as one dense masked attention over all (padded, rolled) tokens."""
    B, H, W, C = x.shape
    ws, s, nh = block.window_size, block.shift, block.attn.num_heads
    xn = F.pad(block.norm1(x), (0, 0, 0, (-W) % ws, 0, (-H) % ws))
    Hp, Wp = xn.shape[1:3]
    xr = torch.roll(xn, (-s, -s), (1, 2))
    r, c = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    r, c = r.flatten(), c.flatten()
    win = (r // ws) * (Wp // ws) + c // ws

    def region(i, n):
        return torch.where(i < n - ws, 0, torch.where(i < n - s, 1, 2)) if s > 0 else torch.zeros_like(i)

    label = region(r, Hp) * 3 + region(c, Wp)
    dr = (r % ws)[:, None] - (r % ws)[None, :]
    dc = (c % ws)[:, None] - (c % ws)[None, :]
    bias = block.attn.relative_position_bias_table[(dr + ws - 1) * (2 * ws - 1) + (dc + ws - 1)]  # L, L, nh
    extra = torch.zeros(Hp * Wp, Hp * Wp, dtype=x.dtype)
    extra[label[:, None] != label[None, :]] = -100.0
    extra[win[:, None] != win[None, :]] = float("-inf")
    tokens = xr.reshape(B, Hp * Wp, C)
    qkv = block.attn.qkv(tokens).reshape(B, -1, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = q @ k.transpose(-1, -2) / math.sqrt(C // nh) + bias.permute(2, 0, 1) + extra
    o = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(B, Hp, Wp, C)
    o = torch.roll(block.attn.proj(o), (s, s), (1, 2))[:, :H, :W]
    y = x + o
    return y + block.mlp(block.norm2(y))


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(6, 9), (8, 8), (3, 2)])
def test_swin_block_padding_and_shift_match_dense_reference(shift, size):
    block = SwinBlock(dim=8, num_heads=2, window_size=4, shift=shift).double()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x), _dense_swin_block(block, x))


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(14, 14, 7, 3)
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # top-left window: one region
    assert (mask[3] != 0).any() and set(mask.unique().tolist()) == {-100.0, 0.0}


def test_swin_pyramid_shapes_on_sizes_not_divisible_by_window():
    pyr = SwinPyramid(embed_dim=16, depths=(1, 2, 1), num_heads=(2, 2, 2), window_size=7)
    assert pyr.layers[1].blocks[1].shift == 3 and pyr.layers[1].blocks[0].shift == 0
    assert pyr.layers[2].downsample is None and pyr.layers[0].downsample is not None
    reps = pyr(torch.randn(2, 16, 10, 13))
    assert [tuple(r.shape) for r in reps] == [(2, 16, 10, 13), (2, 32, 5, 7), (2, 64, 3, 4)]
    names = dict(pyr.named_parameters())
    assert "layers.0.downsample.reduction.weight" in names and "norm2.weight" in names
    assert names["layers.0.downsample.reduction.weight"].shape == (32, 64)
    assert "layers.0.downsample.reduction.bias" not in names


# --------------------------------------------------------------------------------------------
# CBAM, DFPN, SRM


def test_cbam_shapes_and_math():
    x = torch.randn(2, 32, 5, 7)
    cbam = CBAM(32)
    y = cbam(x)
    assert y.shape == x.shape
    ca = torch.sigmoid(cbam.mlp(x.mean((2, 3))) + cbam.mlp(x.amax((2, 3))))[:, :, None, None]
    xc = x * ca
    sa = torch.sigmoid(cbam.spatial_conv(torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)))
    torch.testing.assert_close(y, xc * sa)
    assert cbam.mlp[0].out_features == 2 and cbam.spatial_conv.kernel_size == (7, 7)
    assert CBAM(3)(torch.randn(1, 3, 4, 4)).shape == (1, 3, 4, 4)  # hidden width clamps to 1
    assert CBAM(8, spatial_kernel=1).spatial_conv.kernel_size == (1, 1)
    with pytest.raises(ValueError):
        CBAM(8, spatial_kernel=4)


def test_dfpn_learned_fusion_weights():
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    dfpn = DynamicFPN([8, 16, 32], 8)
    out = dfpn(feats)
    assert out.shape == (2, 8, 16, 16)
    (g,) = torch.autograd.grad(out.square().mean(), [dfpn.fusion_weights])
    assert g.shape == (2, 2) and (g != 0).all()
    # "sum" is the authors' plain top-down sum
    code = DynamicFPN([8, 16, 32], 8, fusion="sum")
    code.load_state_dict(dfpn.state_dict())
    lat = [conv(f) for conv, f in zip(code.lateral_convs, feats)]
    f = lat[2]
    for i in (1, 0):
        f = F.interpolate(f, size=lat[i].shape[-2:], mode="nearest") + lat[i]
    torch.testing.assert_close(code(feats), code.out_conv(f))
    w = DynamicFPN([8, 16], 8, fusion="softmax").normalized_weights()
    torch.testing.assert_close(w, torch.full((1, 2), 0.5))
    with pytest.raises(ValueError):
        DynamicFPN([8], 8, fusion="bifpn")


def test_srm_chain_shapes_and_no_unused_branch():
    srm = SpatialRefinementModule(16, [16, 32, 64])
    assert [s.carry for s in srm.steps] == [True, True, False]
    assert not hasattr(srm.steps[2], "carry_conv")
    assert srm.steps[0].out_conv.in_channels == 16 + 64  # SPF(C, 4C)
    assert srm.steps[1].out_conv.in_channels == 64 + 32  # SPF(4C, 2C)
    assert srm.steps[2].out_conv.in_channels == 32 + 16  # SPF(2C, C)
    x = torch.randn(2, 16, 16, 16)
    reps = [torch.randn(2, 16, 16, 16), torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)]
    zs = srm(x, reps)
    assert [tuple(z.shape) for z in zs] == [(2, 16, 4, 4), (2, 16, 8, 8), (2, 16, 16, 16)]
    assert all((z >= 0).all() for z in zs)  # ReLU outputs
    with pytest.raises(ValueError):
        srm(x, reps[:2])


# --------------------------------------------------------------------------------------------
# Backbones


def test_resnet50_fpn_names_and_shape():
    bb = ResNet50FPN()
    keys = set(bb.state_dict())
    assert "encoder.layer4.2.conv3.weight" in keys
    assert "encoder.conv1.weight" in keys and "encoder.layer1.0.downsample.1.running_var" in keys
    assert {f"fpn.inner_blocks.{i}.0.weight" for i in range(4)} <= keys
    assert "fpn.layer_blocks.0.0.weight" in keys
    assert n_params(bb.encoder) == n_params(ResNetEncoder(50)) == 23_508_032
    # torchvision names: the encoder accepts a ResNet state dict by name
    bb.encoder.load_state_dict(ResNetEncoder(50).state_dict())
    y = bb(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 256, 16, 24)


def test_mtcp_parameter_names_include_torchvision_encoder(nyud_full):
    keys = set(nyud_full.state_dict())
    assert "backbone.encoder.layer4.2.conv3.weight" in keys
    assert "decoders.semseg.transformer.layers.1.blocks.1.attn.relative_position_bias_table" in keys
    assert "decoders.depth.dfpn.fusion_weights" in keys
    assert "cfms.normals.gates.1.weight" in keys
    assert "srms.semseg.steps.0.pred_cbam.mlp.0.weight" in keys
    assert "intermediate_heads.depth.1.3.weight" in keys


def test_mask2former_without_transformers_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="transformers"):
        MTCP(NYUD, backbone="mask2former", mask2former_path="/nonexistent")


class _FakeMask2Former(torch.nn.Module):
    loaded = []

    def __init__(self, d=16, q=5):
        super().__init__()
        self.config = types.SimpleNamespace(mask_feature_size=d)
        self.proj = torch.nn.Conv2d(3, d, 4, stride=4)
        self.masks = torch.nn.Conv2d(3, q, 4, stride=4)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.loaded.append((path, kwargs))
        return cls()

    def forward(self, pixel_values):
        return types.SimpleNamespace(
            pixel_decoder_last_hidden_state=self.proj(pixel_values),
            masks_queries_logits=self.masks(pixel_values),
            class_queries_logits=None,
        )


def test_mask2former_backbone_error_paths_and_projection(monkeypatch, tmp_path):
    fake = types.ModuleType("transformers")
    fake.Mask2FormerForUniversalSegmentation = _FakeMask2Former
    monkeypatch.setitem(sys.modules, "transformers", fake)
    with pytest.raises(FileNotFoundError, match="mask2former_path"):
        MTCP(NYUD, backbone="mask2former", mask2former_path=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        MTCP(NYUD, backbone="mask2former")
    with pytest.raises(ValueError, match="embed_dim"):
        MTCP(NYUD, backbone="mask2former", mask2former_path=str(tmp_path), embed_dim=32)
    model = MTCP(NYUD, backbone="mask2former", mask2former_path=str(tmp_path), embed_dim=16)
    assert _FakeMask2Former.loaded[-1] == (str(tmp_path), {"local_files_only": True})
    x = torch.randn(2, 3, 64, 64)
    inner = model.backbone.model(x)
    feats, masks = inner.pixel_decoder_last_hidden_state, inner.masks_queries_logits
    # paper: masks (sigmoid) times pixel embeddings, summed over instances
    torch.testing.assert_close(model.backbone(x), feats * torch.sigmoid(masks).sum(1, keepdim=True))
    model.backbone.projection = "code"  # authors' einsum on raw logits
    torch.testing.assert_close(model.backbone(x), feats * masks.sum(1, keepdim=True))
    out = model(x)
    assert out.predictions["normals"].shape == (2, 3, 64, 64)
