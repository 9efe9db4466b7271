"""XTasC-Net loss (Eqs. 8, 11-15), its options and the Base ST-Net loss: fused vs eager, masking,
detach, variants, formulas. Task weighting (Eq. 16) is tested in test_weighting.py."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from python_models.xtasc_net import XTasCOutput
from xtc_ext.losses.xtasc import (
    DEPTH_LOSSES,
    XTasCLoss,
    hard_pseudo_labels,
    masked_depth_loss,
    single_task_loss,
)


def _outputs(seed, N=2, C=5, H=8, W=12, transfer=True):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    out = XTasCOutput(mk(N, C, H, W), mk(N, 1, H, W), mk(N, C, H, W) if transfer else None,
                      mk(N, 1, H, W) if transfer else None)
    seg = torch.randint(-1, C, (N, H, W), generator=g)
    depth = torch.rand(N, 1, H, W, generator=g) * 5
    depth[depth < 1] = 0  # invalid pixels
    return out, seg, depth


def _valid_mask(depth, seed):
    """A validity mask that differs from ``depth > 0``: some target-0 pixels valid, some others not."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(depth.shape, generator=g) < 0.7)


def _grads(out, value):
    tensors = [t for t in out if t is not None]
    return torch.autograd.grad(value, tensors, allow_unused=True)


def _assert_grads_close(ga_all, gb_all):
    for ga, gb in zip(ga_all, gb_all):
        if ga is None or gb is None:
            assert ga is None and gb is None or float((ga if gb is None else gb).abs().max()) == 0.0
        else:
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lam", [0.0, 1e-4, 0.3])
def test_fused_matches_eager(seed, lam):
    out, seg, depth = _outputs(seed)
    fused = XTasCLoss(lam, lam, impl="fused")(out, seg, depth)
    eager = XTasCLoss(lam, lam, impl="eager")(out, seg, depth)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = torch.tensor([0.7, 1.9])
    _assert_grads_close(_grads(out, (fused.groups * w).sum()), _grads(out, (eager.groups * w).sum()))


OPTIONS = list(itertools.product(["xtasc", "align"], ["soft", "hard"], DEPTH_LOSSES, [False, True]))


@pytest.mark.parametrize("variant,seg_cons,lp,with_valid", OPTIONS)
def test_fused_matches_eager_every_option(variant, seg_cons, lp, with_valid):
    out, seg, depth = _outputs(7)
    valid = _valid_mask(depth, 7) if with_valid else None
    kw = dict(variant=variant, seg_consistency=seg_cons, depth_loss=lp)
    fused = XTasCLoss(0.2, 0.3, impl="fused", **kw)(out, seg, depth, depth_valid=valid)
    eager = XTasCLoss(0.2, 0.3, impl="eager", **kw)(out, seg, depth, depth_valid=valid)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(float(t.detach()) > 0 for t in fused[:4])
    w = torch.tensor([1.3, 0.6])
    _assert_grads_close(_grads(out, (fused.groups * w).sum()), _grads(out, (eager.groups * w).sum()))


def test_group_composition_and_direct_terms():
    out, seg, depth = _outputs(3)
    lam = 0.25
    t = XTasCLoss(lam, lam)(out, seg, depth)
    valid = seg != -1
    ce = F.cross_entropy(out.seg_logits, seg, ignore_index=-1)
    l1 = ((out.depth - depth).abs() * (depth > 0)).sum() / (depth > 0).sum()
    torch.testing.assert_close(t.seg, ce)
    torch.testing.assert_close(t.depth, l1)
    # seg group holds the seg->depth consistency, depth group the depth->seg consistency (§1.3).
    torch.testing.assert_close(t.groups[0], (1 - lam) * t.seg + lam * t.depth_consistency)
    torch.testing.assert_close(t.groups[1], (1 - lam) * t.depth + lam * t.seg_consistency)
    assert valid.any() and t.seg_consistency > 0 and t.depth_consistency > 0


def test_soft_consistency_formula():
    out, seg, depth = _outputs(8)
    t = XTasCLoss(0.5, 0.5)(out, seg, depth)
    keep = seg != -1
    q = F.softmax(out.seg_logits.detach(), 1)
    per = -(q * F.log_softmax(out.seg_transfer, 1)).sum(1)
    torch.testing.assert_close(t.seg_consistency, per[keep].mean())
    dv = depth > 0
    torch.testing.assert_close(t.depth_consistency, (out.depth_transfer - out.depth)[dv].abs().mean())


def test_consistency_targets_are_detached_and_masked():
    out, seg, depth = _outputs(4)
    for seg_cons in ("soft", "hard"):
        t = XTasCLoss(0.5, 0.5, seg_consistency=seg_cons)(out, seg, depth)
        g_seg, g_depth, g_seg_t, g_depth_t = _grads(out, t.depth_consistency + t.seg_consistency)
        assert g_seg is None and g_depth is None  # stop-gradient on the direct predictions
        assert g_seg_t.abs().sum() > 0 and g_depth_t.abs().sum() > 0
        # void segmentation pixels and invalid depth pixels get no consistency gradient
        assert float(g_seg_t.permute(1, 0, 2, 3)[:, seg == -1].abs().max()) == 0.0
        assert float(g_depth_t[depth == 0].abs().max()) == 0.0


def test_hard_pseudo_labels_equal_argmax():
    out, seg, depth = _outputs(9)
    pseudo = hard_pseudo_labels(out.seg_logits, seg, -1)
    assert pseudo.dtype == torch.int64 and pseudo.shape == seg.shape
    am = out.seg_logits.detach().argmax(1)
    assert torch.equal(pseudo[seg != -1], am[seg != -1])
    assert bool((pseudo[seg == -1] == -1).all())
    # the hard consistency term is CE against those labels over the non-void pixels, no smoothing
    for impl in ("fused", "eager"):
        t = XTasCLoss(0.5, 0.5, seg_consistency="hard", impl=impl)(out, seg, depth)
        keep = seg != -1
        expected = F.cross_entropy(out.seg_transfer.permute(0, 2, 3, 1)[keep], am[keep])
        torch.testing.assert_close(t.seg_consistency, expected)
    # large ignore_index (Cityscapes 250) works: void pixels become 250, not a class index
    seg250 = torch.where(seg == -1, torch.full_like(seg, 250), seg)
    t250 = XTasCLoss(0.5, 0.5, ignore_index=250, seg_consistency="hard")(out, seg250, depth)
    torch.testing.assert_close(t250.seg_consistency, t.seg_consistency)


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_align_uses_ground_truth(impl):
    out, seg, depth = _outputs(10)
    crit = XTasCLoss(0.4, 0.6, variant="align", impl=impl)
    t = crit(out, seg, depth)
    dv = depth > 0
    torch.testing.assert_close(t.seg_consistency, F.cross_entropy(out.seg_transfer, seg, ignore_index=-1))
    torch.testing.assert_close(t.depth_consistency, (out.depth_transfer - depth)[dv].abs().mean())
    # changing the direct predictions changes the direct terms, not the transfer terms
    g = torch.Generator().manual_seed(11)
    other = out._replace(seg_logits=torch.randn(out.seg_logits.shape, generator=g),
                         depth=torch.randn(out.depth.shape, generator=g))
    t2 = crit(other, seg, depth)
    assert torch.equal(t2.seg_consistency, t.seg_consistency)
    assert torch.equal(t2.depth_consistency, t.depth_consistency)
    assert not torch.equal(t2.seg, t.seg) and not torch.equal(t2.depth, t.depth)
    # and the transfer terms send no gradient to the direct predictions
    g_seg, g_depth, g_seg_t, g_depth_t = _grads(out, t.seg_consistency + t.depth_consistency)
    assert g_seg is None and g_depth is None
    assert g_seg_t.abs().sum() > 0 and g_depth_t.abs().sum() > 0
    # the xtasc variant, by contrast, depends on the direct predictions
    x1 = XTasCLoss(0.4, 0.6, impl=impl)(out, seg, depth)
    x2 = XTasCLoss(0.4, 0.6, impl=impl)(other, seg, depth)
    assert not torch.equal(x1.seg_consistency, x2.seg_consistency)


# e = pred - target on the valid pixels; the last pixel is invalid (target 0) and huge.
_PRED = [0.5, 2.0, -3.0, 1.2, 100.0]
_TARGET = [1.0, 0.5, 1.0, 1.2, 0.0]
_E = [-0.5, 1.5, -4.0, 0.0]
_HAND = {
    "l1": sum(abs(e) for e in _E) / 4,
    "mse": sum(e * e for e in _E) / 4,
    "logl1": sum(math.log(1 + abs(e)) for e in _E) / 4,
    "smoothl1": (0.5 * 0.25 + (1.5 - 0.5) + (4.0 - 0.5) + 0.0) / 4,
}
# d/dpred of the per-pixel loss, divided by the 4 valid pixels
_HAND_GRAD = {
    "l1": [-1, 1, -1, 0],
    "mse": [2 * e for e in _E],
    "logl1": [math.copysign(1, e) / (1 + abs(e)) if e else 0.0 for e in _E],
    "smoothl1": [-0.5, 1.0, -1.0, 0.0],
}


@pytest.mark.parametrize("lp", DEPTH_LOSSES)
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_depth_loss_formulas_against_hand_values(lp, impl):
    pred = torch.tensor(_PRED).view(1, 1, 1, 5).requires_grad_()
    target = torch.tensor(_TARGET).view(1, 1, 1, 5)
    value = masked_depth_loss(pred, target, target > 0, lp, impl)
    assert value.dtype == torch.float32 and value.shape == ()
    assert value.item() == pytest.approx(_HAND[lp], rel=1e-6)
    (grad,) = torch.autograd.grad(value, pred)
    assert grad.flatten().tolist() == pytest.approx([g / 4 for g in _HAND_GRAD[lp]] + [0.0], abs=1e-7)
    # the same through XTasCLoss(depth_loss=...) and single_task_loss
    out = XTasCOutput(torch.zeros(1, 3, 1, 5), pred, None, None)
    seg = torch.zeros(1, 1, 5, dtype=torch.long)
    assert XTasCLoss(0.0, 0.0, depth_loss=lp, impl=impl)(out, seg, target).depth.item() == pytest.approx(_HAND[lp])
    st = single_task_loss("depth", pred, None, target, depth_loss=lp, impl=impl)
    assert st.item() == pytest.approx(_HAND[lp], rel=1e-6)
    # no valid pixel: 0 with zero gradient, not NaN
    empty = masked_depth_loss(pred, target, torch.zeros_like(target, dtype=torch.bool), lp, impl)
    assert empty.item() == 0.0
    assert float(torch.autograd.grad(empty, pred)[0].abs().max()) == 0.0


@pytest.mark.parametrize("lp", DEPTH_LOSSES)
def test_depth_loss_applies_to_direct_term_only(lp):
    out, seg, depth = _outputs(12)
    t = XTasCLoss(0.3, 0.3, depth_loss=lp)(out, seg, depth)
    l1 = XTasCLoss(0.3, 0.3, depth_loss="l1")(out, seg, depth)
    torch.testing.assert_close(t.depth_consistency, l1.depth_consistency)  # Eq. 15 stays L1
    torch.testing.assert_close(t.depth, masked_depth_loss(out.depth, depth, depth > 0, lp))
    for variant in ("xtasc", "align"):
        a = XTasCLoss(0.3, 0.3, depth_loss=lp, variant=variant)(out, seg, depth)
        b = XTasCLoss(0.3, 0.3, depth_loss="l1", variant=variant)(out, seg, depth)
        torch.testing.assert_close(a.depth_consistency, b.depth_consistency)


@pytest.mark.parametrize("variant", ["xtasc", "align"])
def test_depth_valid_replaces_positive_rule(variant):
    out, seg, depth = _outputs(13)
    valid = _valid_mask(depth, 13)
    assert (valid & (depth == 0)).any() and (~valid & (depth > 0)).any()
    t = XTasCLoss(0.5, 0.5, variant=variant)(out, seg, depth, depth_valid=valid)
    torch.testing.assert_close(t.depth, (out.depth - depth)[valid].abs().mean())
    ref = depth if variant == "align" else out.depth.detach()
    torch.testing.assert_close(t.depth_consistency, (out.depth_transfer - ref)[valid].abs().mean())
    # [N,H,W] and non-bool masks are accepted; gradients vanish exactly off the mask
    t3 = XTasCLoss(0.5, 0.5, variant=variant)(out, seg, depth, depth_valid=valid[:, 0].float())
    torch.testing.assert_close(t3.groups, t.groups)
    _, g_depth, _, g_depth_t = _grads(out, t.depth + t.depth_consistency)
    assert float(g_depth[~valid].abs().max()) == 0.0 and float(g_depth_t[~valid].abs().max()) == 0.0
    assert g_depth[valid & (depth == 0)].abs().sum() > 0  # target-0 pixels marked valid are trained
    with pytest.raises(ValueError, match="depth_valid"):
        XTasCLoss(0.5, 0.5)(out, seg, depth, depth_valid=valid[:, :, :4])


def test_base_mt_net_without_transfer_outputs():
    out, seg, depth = _outputs(5, transfer=False)
    for kw in ({}, {"variant": "align"}, {"seg_consistency": "hard"}):
        t = XTasCLoss(0.0, 0.0, **kw)(out, seg, depth)
        assert float(t.seg_consistency) == 0.0 and float(t.depth_consistency) == 0.0
        torch.testing.assert_close(t.groups, torch.stack([t.seg, t.depth]))


@pytest.mark.parametrize("lp", DEPTH_LOSSES)
def test_single_task_loss(lp):
    out, seg, depth = _outputs(14)
    valid = _valid_mask(depth, 14)
    for impl in ("fused", "eager"):
        s = single_task_loss("semseg", out.seg_logits, seg, None, impl=impl)
        torch.testing.assert_close(s, F.cross_entropy(out.seg_logits, seg, ignore_index=-1))
        d = single_task_loss("depth", out.depth, None, depth, depth_loss=lp, impl=impl)
        torch.testing.assert_close(d, masked_depth_loss(out.depth, depth, depth > 0, lp, "eager"))
        dv = single_task_loss("depth", out.depth, None, depth, depth_valid=valid, depth_loss=lp, impl=impl)
        torch.testing.assert_close(dv, masked_depth_loss(out.depth, depth, valid, lp, "eager"))
    fused = single_task_loss("depth", out.depth, None, depth, depth_loss=lp, impl="fused")
    eager = single_task_loss("depth", out.depth, None, depth, depth_loss=lp, impl="eager")
    torch.testing.assert_close(torch.autograd.grad(fused, out.depth)[0], torch.autograd.grad(eager, out.depth)[0])
    seg250 = torch.where(seg == -1, torch.full_like(seg, 250), seg)
    s250 = single_task_loss("semseg", out.seg_logits, seg250, None, ignore_index=250)
    torch.testing.assert_close(s250, F.cross_entropy(out.seg_logits, seg, ignore_index=-1))


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="lam_seg"):
        XTasCLoss(1.5, 0.1)
    with pytest.raises(ValueError, match="impl"):
        XTasCLoss(0.1, 0.1, impl="triton")
    with pytest.raises(ValueError, match="variant"):
        XTasCLoss(0.1, 0.1, variant="xtc")
    with pytest.raises(ValueError, match="seg_consistency"):
        XTasCLoss(0.1, 0.1, seg_consistency="kl")
    with pytest.raises(ValueError, match="depth loss"):
        XTasCLoss(0.1, 0.1, depth_loss="L1")
    out, seg, depth = _outputs(15)
    with pytest.raises(ValueError, match="task"):
        single_task_loss("segmt", out.seg_logits, seg, depth)
    with pytest.raises(ValueError, match="seg_target"):
        single_task_loss("semseg", out.seg_logits, None, depth)
    with pytest.raises(ValueError, match="depth_target"):
        single_task_loss("depth", out.depth, seg, None)
    with pytest.raises(ValueError, match="depth loss"):
        masked_depth_loss(out.depth, depth, depth > 0, "ssim")
