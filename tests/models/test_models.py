"""Tests for python_models (XTasC-Net architecture, paper §IV-A, the authors' model/xtask_ts.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from python_models import (
    BaseSTNet,
    ResNetEncoder,
    TaskTransferNet,
    UNetDecoder,
    XTasCNet,
    XTasCOutput,
)
from python_models.xtasc_net import ConvBlock


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------
# Parameter counts (verified against the authors' code, model/xtask_ts.py)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, expected",
    [
        (18, 11_176_512),
        (34, 21_284_672),
        (50, 23_508_032),
        # torchvision totals 44,549,160 / 60,192,808 minus fc (2048*1000 + 1000)
        (101, 42_500_160),
        (152, 58_143_808),
    ],
)
def test_resnet_encoder_param_count(depth, expected):
    assert n_params(ResNetEncoder(depth)) == expected


@pytest.mark.parametrize(
    "depth, num_classes, expected",
    [
        (34, 7, 31_553_344),
        (34, 13, 31_557_952),
        (34, 19, 31_562_560),
        (18, 7, 21_445_184),
        (50, 7, 40_412_224),
    ],
)
def test_xtasc_param_count(depth, num_classes, expected):
    assert n_params(XTasCNet(num_classes, encoder_depth=depth)) == expected


def test_xtasc_param_count_components_r34_c7():
    m = XTasCNet(7, encoder_depth=34)
    assert n_params(m.seg_decoder) == 3_250_688
    assert n_params(m.depth_decoder) == 3_249_920
    assert n_params(m.seg_to_depth) == 1_885_568
    assert n_params(m.depth_to_seg) == 1_882_496


def test_xtasc_without_transfer_param_count():
    m = XTasCNet(7, encoder_depth=34, with_transfer=False)
    assert m.seg_to_depth is None and m.depth_to_seg is None
    assert n_params(m) == 27_785_280


def test_ttnet_batch_norm_adds_5632():
    base = n_params(XTasCNet(7, with_transfer=True))
    bn = XTasCNet(7, ttnet_batch_norm=True)
    assert n_params(bn) - base == 5_632
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in bn.seg_to_depth.modules())


def test_wider_ttnet_param_count():
    m = XTasCNet(7, wider_ttnet=True)
    assert n_params(m.seg_to_depth) + n_params(m.depth_to_seg) == 15_056_384


def test_base_st_net_param_counts():
    assert n_params(BaseSTNet("semseg", 7)) == 21_284_672 + 3_250_688
    assert n_params(BaseSTNet("depth")) == 21_284_672 + 3_249_920


# ---------------------------------------------------------------------------------------
# Encoder: names, stages, init, torchvision state-dict loading
# ---------------------------------------------------------------------------------------


def _expected_torchvision_keys(layers, bottleneck):
    """torchvision resnet state-dict keys (minus fc), built from the naming scheme."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn}
    n_conv = 3 if bottleneck else 2
    for li, nblocks in enumerate(layers, start=1):
        for b in range(nblocks):
            p = f"layer{li}.{b}."
            for c in range(1, n_conv + 1):
                keys.add(p + f"conv{c}.weight")
                keys |= {p + f"bn{c}.{s}" for s in bn}
            if b == 0 and (li > 1 or bottleneck):
                keys.add(p + "downsample.0.weight")
                keys |= {p + f"downsample.1.{s}" for s in bn}
    return keys


def test_resnet34_state_dict_keys_match_torchvision():
    keys = set(ResNetEncoder(34).state_dict().keys())
    # torchvision resnet34 has 218 state-dict entries, 2 of which are fc.*
    assert len(keys) == 216
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.2.conv2.weight",
        "layer3.5.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.2.bn2.num_batches_tracked",
    ]:
        assert k in keys, k
    assert "layer1.0.downsample.0.weight" not in keys
    assert not any(k.startswith(("fc.", "avgpool")) for k in keys)
    assert keys == _expected_torchvision_keys((3, 4, 6, 3), bottleneck=False)


def test_resnet50_state_dict_keys_match_torchvision():
    keys = set(ResNetEncoder(50).state_dict().keys())
    assert keys == _expected_torchvision_keys((3, 4, 6, 3), bottleneck=True)
    assert "layer1.0.downsample.1.weight" in keys and "layer4.2.conv3.weight" in keys
    # torchvision resnet50: 161 parameters minus fc.weight/fc.bias
    assert len(list(ResNetEncoder(50).parameters())) == 159


@pytest.mark.parametrize(
    "depth, channels",
    [(18, [64, 64, 128, 256, 512]), (34, [64, 64, 128, 256, 512]), (50, [64, 256, 512, 1024, 2048])],
)
def test_encoder_stage_shapes(depth, channels):
    enc = ResNetEncoder(depth).eval()
    assert enc.channels == channels
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 96))
    assert len(feats) == 5
    for i, (f, c) in enumerate(zip(feats, channels)):
        assert tuple(f.shape) == (1, c, 64 // 2 ** (i + 1), 96 // 2 ** (i + 1))


def test_encoder_stage0_is_relu_bn_conv():
    torch.manual_seed(0)
    enc = ResNetEncoder(18).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        enc0, enc1 = enc(x)[:2]
        ref0 = F.relu(enc.bn1(enc.conv1(x)))
        ref1 = enc.layer1(F.max_pool2d(ref0, 3, 2, 1))
    torch.testing.assert_close(enc0, ref0)
    torch.testing.assert_close(enc1, ref1)


def test_encoder_default_init_is_torchvision():
    torch.manual_seed(0)
    enc = ResNetEncoder(34)
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_ch * k * k))
    w = enc.layer3[0].conv1.weight
    expected = math.sqrt(2.0 / (256 * 9))
    assert abs(w.std().item() / expected - 1) < 0.05
    w1 = enc.conv1.weight
    assert abs(w1.std().item() / math.sqrt(2.0 / (64 * 49)) - 1) < 0.05
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, torch.nn.Conv2d):
            assert m.bias is None


def test_invalid_depth_raises():
    with pytest.raises(ValueError, match=r"35.*18, 34, 50, 101, 152"):
        ResNetEncoder(35)
    with pytest.raises(ValueError, match="35"):
        XTasCNet(7, encoder_depth=35)


def test_load_torchvision_state_dict_roundtrip():
    torch.manual_seed(0)
    src = ResNetEncoder(18)
    for m in src.modules():  # make BN buffers non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["fc.weight"] = torch.randn(1000, 512)
    sd["fc.bias"] = torch.randn(1000)
    dst = ResNetEncoder(18)
    dst.load_torchvision_state_dict(sd)
    dst_sd = dst.state_dict()
    assert set(dst_sd) == set(sd) - {"fc.weight", "fc.bias"}
    for k, v in dst_sd.items():
        assert torch.equal(v, sd[k]), k


def test_load_torchvision_state_dict_without_num_batches_tracked():
    src = ResNetEncoder(18)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = ResNetEncoder(18)
    dst.load_torchvision_state_dict(sd)
    torch.testing.assert_close(dst.layer2[0].conv1.weight, src.layer2[0].conv1.weight)


def test_load_torchvision_state_dict_errors():
    enc = ResNetEncoder(18)
    sd = dict(enc.state_dict())
    del sd["layer1.0.conv1.weight"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"layer1\.0\.conv1\.weight.*layer5\.0\.conv1\.weight"):
        enc.load_torchvision_state_dict(sd)
    with pytest.raises(RuntimeError):  # R34 dict into R18 encoder: unexpected layer*.2 keys
        enc.load_torchvision_state_dict(ResNetEncoder(34).state_dict())


# ---------------------------------------------------------------------------------------
# Decoder / TTNet building blocks
# ---------------------------------------------------------------------------------------


def test_conv_block_structure_and_upsample():
    torch.manual_seed(0)
    blk = ConvBlock(5, 6).eval()
    convs = [m for m in blk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.bias is not None) for c in convs] == [
        (5, 128, (3, 3), (1, 1), True),
        (128, 128, (3, 3), (1, 1), True),
        (128, 6, (3, 3), (1, 1), True),
    ]
    x = torch.randn(2, 5, 4, 6)
    with torch.no_grad():
        y = blk(x)
        ref = F.interpolate(blk.conv3(blk.conv2(blk.conv1(x))), scale_factor=2, mode="bilinear", align_corners=True)
    assert y.shape == (2, 6, 8, 12)
    torch.testing.assert_close(y, ref)


def test_decoder_and_ttnet_init_xavier():
    torch.manual_seed(0)
    m = XTasCNet(7)
    for sub in (m.seg_decoder, m.depth_decoder, m.seg_to_depth, m.depth_to_seg):
        for mod in sub.modules():
            if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
                assert torch.all(mod.bias == 0)
            if isinstance(mod, torch.nn.BatchNorm2d):
                assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    w = m.seg_decoder.block2.conv2[0].weight  # 128 -> 128, 3x3
    expected = math.sqrt(2.0 / (128 * 9 + 128 * 9))
    assert abs(w.std().item() / expected - 1) < 0.05
    # final 1x1 convs have no bias
    assert m.seg_decoder.head.bias is None and m.seg_to_depth.final_conv.bias is None
    # encoder keeps torchvision (kaiming fan_out) init, not xavier
    w_enc = m.encoder.layer3[0].conv2.weight
    assert abs(w_enc.std().item() / math.sqrt(2.0 / (256 * 9)) - 1) < 0.05


def test_unet_decoder_shape_and_validation():
    dec = UNetDecoder([64, 64, 128, 256, 512], 3).eval()
    # image 32x64 -> enc0 16x32 ... enc4 1x2
    feats = [torch.randn(1, c, 32 // 2 ** (i + 1), 64 // 2 ** (i + 1)) for i, c in enumerate([64, 64, 128, 256, 512])]
    with torch.no_grad():
        out = dec(feats)
    assert out.shape == (1, 3, 32, 64)
    with pytest.raises(ValueError):
        dec(feats[:4])


def test_ttnet_shapes_log_softmax_and_validation():
    torch.manual_seed(0)
    s2d = TaskTransferNet(5, 1, log_softmax_input=True).eval()
    d2s = TaskTransferNet(1, 5).eval()
    x = torch.randn(2, 5, 16, 24)
    with torch.no_grad():
        y = s2d(x)
        assert y.shape == (2, 1, 16, 24)
        # log_softmax input => invariant to adding a per-pixel constant to the logits
        torch.testing.assert_close(s2d(x + 3.0), y, rtol=1e-4, atol=1e-5)
        d = torch.rand(2, 1, 16, 24) * 10
        z = d2s(d)
        assert z.shape == (2, 5, 16, 24)
        assert not torch.allclose(d2s(d + 3.0), z)
    with pytest.raises(ValueError, match="12x24"):
        s2d(torch.randn(1, 5, 12, 24))
    with pytest.raises(ValueError):
        s2d(torch.randn(1, 4, 16, 24))
    convs = [m for m in s2d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (5, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
        (256, 128), (128, 128), (256, 64), (64, 64), (128, 64), (64, 64), (64, 1),
    ]


# ---------------------------------------------------------------------------------------
# Full model forward
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return XTasCNet(7, encoder_depth=18)


def test_xtasc_output_shapes(small_model):
    x = torch.randn(2, 3, 64, 96)
    out = small_model(x)
    assert isinstance(out, XTasCOutput)
    assert out.seg_logits.shape == (2, 7, 64, 96)
    assert out.depth.shape == (2, 1, 64, 96)
    assert out.seg_transfer.shape == (2, 7, 64, 96)
    assert out.depth_transfer.shape == (2, 1, 64, 96)
    assert all(t.dtype == torch.float32 for t in out[:4])


def test_xtasc_transfer_wiring_eval(small_model):
    small_model.eval()
    try:
        with torch.no_grad():
            out = small_model(torch.randn(1, 3, 32, 64))
            torch.testing.assert_close(out.depth_transfer, small_model.seg_to_depth(out.seg_logits))
            torch.testing.assert_close(
                out.depth_transfer,
                small_model.seg_to_depth.final_conv(
                    _ttnet_body(small_model.seg_to_depth, F.log_softmax(out.seg_logits, dim=1))
                ),
            )
            torch.testing.assert_close(out.seg_transfer, small_model.depth_to_seg(out.depth))
    finally:
        small_model.train()


def _ttnet_body(tt, x):
    e1 = tt.enc1(x)
    e2 = tt.enc2(e1)
    e3 = tt.enc3(e2)
    u = tt.dec1(e3)
    u = tt.dec2(torch.cat((u, e2), 1))
    return tt.dec3(torch.cat((u, e1), 1))


def test_direct_only_and_no_transfer():
    torch.manual_seed(0)
    m = XTasCNet(5, encoder_depth=18)
    out = m(torch.randn(2, 3, 32, 32), direct_only=True)
    assert out.seg_transfer is None and out.depth_transfer is None
    assert out.seg_logits.shape == (2, 5, 32, 32) and out.depth.shape == (2, 1, 32, 32)
    m2 = XTasCNet(5, encoder_depth=18, with_transfer=False)
    out2 = m2(torch.randn(2, 3, 32, 32))
    assert out2.seg_transfer is None and out2.depth_transfer is None


def test_gradient_flows_from_depth_transfer_to_encoder_and_seg_decoder(small_model):
    small_model.zero_grad(set_to_none=True)
    out = small_model(torch.randn(2, 3, 32, 32))
    out.depth_transfer.sum().backward()
    g_enc = small_model.encoder.conv1.weight.grad
    assert g_enc is not None and g_enc.abs().sum() > 0
    g_seg = small_model.seg_decoder.head.weight.grad
    assert g_seg is not None and g_seg.abs().sum() > 0
    # depth_transfer does not depend on the depth decoder or the other TTNet
    assert small_model.depth_decoder.head.weight.grad is None
    assert small_model.depth_to_seg.final_conv.weight.grad is None
    small_model.zero_grad(set_to_none=True)


def test_gradient_flows_from_seg_transfer_to_depth_decoder(small_model):
    small_model.zero_grad(set_to_none=True)
    out = small_model(torch.randn(2, 3, 32, 32))
    out.seg_transfer.sum().backward()
    assert small_model.depth_decoder.head.weight.grad.abs().sum() > 0
    assert small_model.encoder.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert small_model.seg_decoder.head.weight.grad is None
    small_model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 48, 64), "48x64"),
        ((1, 3, 64, 70), "64x70"),
        ((1, 4, 64, 64), "channels"),
        ((3, 64, 64), "4-D"),
    ],
)
def test_bad_input_raises(small_model, shape, match):
    with pytest.raises(ValueError, match=match):
        small_model(torch.randn(*shape))


def test_bad_input_raises_base_st_net():
    m = BaseSTNet("depth", encoder_depth=18)
    with pytest.raises(ValueError, match="33x64"):
        m(torch.randn(1, 3, 33, 64))


def test_base_st_net_forward_and_validation():
    torch.manual_seed(0)
    seg = BaseSTNet("semseg", 4, encoder_depth=18)
    dep = BaseSTNet("depth", None, encoder_depth=18)
    x = torch.randn(2, 3, 32, 64)
    assert seg(x).shape == (2, 4, 32, 64)
    assert dep(x).shape == (2, 1, 32, 64)
    with pytest.raises(ValueError, match="normals"):
        BaseSTNet("normals", 4)
    with pytest.raises(ValueError):
        BaseSTNet("semseg", None)
    with pytest.raises(ValueError):
        BaseSTNet("depth", 7)


def test_invalid_num_classes():
    with pytest.raises(ValueError):
        XTasCNet(1)
    with pytest.raises(ValueError):
        XTasCNet(True)


def test_ttdown_pools_after_convs_and_ttup_upsamples_first():
    from python_models.xtasc_net import TTDown, TTUp

    torch.manual_seed(0)
    down, up = TTDown(3, 8).eval(), TTUp(8, 4).eval()
    x = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(down(x), F.max_pool2d(down.conv2(down.conv1(x)), 2, 2))
        y = torch.randn(1, 8, 4, 6)
        ref = up.conv2(up.conv1(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)))
        torch.testing.assert_close(up(y), ref)
    assert up(y).shape == (1, 4, 8, 12)


def test_output_field_names():
    assert XTasCOutput._fields == ("seg_logits", "depth", "seg_transfer", "depth_transfer", "features")
