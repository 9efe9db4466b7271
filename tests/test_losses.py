"""XTasC-Net loss (Eqs. 11-15) and task weighting (Eq. 16): fused vs eager, masking, detach, formulas."""

import math

import pytest
import torch

from python_models.xtasc_net import XTasCOutput
from xtc_ext.losses import XTasCLoss
from xtc_ext.weighting import EqualWeighting, UncertaintyWeighting, build_weighting


def _outputs(seed, N=2, C=5, H=8, W=12, transfer=True):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    out = XTasCOutput(mk(N, C, H, W), mk(N, 1, H, W), mk(N, C, H, W) if transfer else None,
                      mk(N, 1, H, W) if transfer else None)
    seg = torch.randint(-1, C, (N, H, W), generator=g)
    depth = torch.rand(N, 1, H, W, generator=g) * 5
    depth[depth < 1] = 0  # invalid pixels
    return out, seg, depth


def _grads(out, value):
    tensors = [t for t in out if t is not None]
    return torch.autograd.grad(value, tensors, allow_unused=True)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lam", [0.0, 1e-4, 0.3])
def test_fused_matches_eager(seed, lam):
    out, seg, depth = _outputs(seed)
    fused = XTasCLoss(lam, lam, impl="fused")(out, seg, depth)
    eager = XTasCLoss(lam, lam, impl="eager")(out, seg, depth)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = torch.tensor([0.7, 1.9])
    for ga, gb in zip(_grads(out, (fused.groups * w).sum()), _grads(out, (eager.groups * w).sum())):
        if ga is None or gb is None:
            assert ga is None and gb is None or float((ga if gb is None else gb).abs().max()) == 0.0
        else:
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_group_composition_and_direct_terms():
    out, seg, depth = _outputs(3)
    lam = 0.25
    t = XTasCLoss(lam, lam)(out, seg, depth)
    valid = seg != -1
    ce = torch.nn.functional.cross_entropy(out.seg_logits, seg, ignore_index=-1)
    l1 = ((out.depth - depth).abs() * (depth > 0)).sum() / (depth > 0).sum()
    torch.testing.assert_close(t.seg, ce)
    torch.testing.assert_close(t.depth, l1)
    # seg group holds the seg->depth consistency, depth group the depth->seg consistency (§1.3).
    torch.testing.assert_close(t.groups[0], (1 - lam) * t.seg + lam * t.depth_consistency)
    torch.testing.assert_close(t.groups[1], (1 - lam) * t.depth + lam * t.seg_consistency)
    assert valid.any() and t.seg_consistency > 0 and t.depth_consistency > 0


def test_consistency_targets_are_detached_and_masked():
    out, seg, depth = _outputs(4)
    t = XTasCLoss(0.5, 0.5)(out, seg, depth)
    g_seg, g_depth, g_seg_t, g_depth_t = _grads(out, t.depth_consistency + t.seg_consistency)
    assert g_seg is None and g_depth is None  # stop-gradient on the direct predictions
    assert g_seg_t.abs().sum() > 0 and g_depth_t.abs().sum() > 0
    # void segmentation pixels and invalid depth pixels get no consistency gradient
    assert float(g_seg_t.permute(1, 0, 2, 3)[:, seg == -1].abs().max()) == 0.0
    assert float(g_depth_t[depth == 0].abs().max()) == 0.0


def test_base_mt_net_without_transfer_outputs():
    out, seg, depth = _outputs(5, transfer=False)
    t = XTasCLoss(0.0, 0.0)(out, seg, depth)
    assert float(t.seg_consistency) == 0.0 and float(t.depth_consistency) == 0.0
    torch.testing.assert_close(t.groups, torch.stack([t.seg, t.depth]))


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="lam_seg"):
        XTasCLoss(1.5, 0.1)
    with pytest.raises(ValueError, match="impl"):
        XTasCLoss(0.1, 0.1, impl="triton")


def test_uncertainty_weighting_formula_and_gradient():
    w = UncertaintyWeighting(2)
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.3, -0.7]))
    losses = torch.tensor([1.2, 0.4], requires_grad=True)
    total = w(losses)
    s = [0.3, -0.7]
    expected = sum(L / (2 * math.exp(si)) + si / 2 for L, si in zip([1.2, 0.4], s))
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds (L e^{-s}/2 + s/2) = -L e^{-s}/2 + 1/2
    expected_grad = [-L * math.exp(-si) / 2 + 0.5 for L, si in zip([1.2, 0.4], s)]
    assert w.log_vars.grad.tolist() == pytest.approx(expected_grad, rel=1e-5)
    assert w.weights().tolist() == pytest.approx([0.5 * math.exp(-si) for si in s], rel=1e-6)
    # state travels with the module
    w2 = build_weighting("uncertainty", 2)
    w2.load_state_dict(w.state_dict())
    assert torch.equal(w2.log_vars, w.log_vars)


def test_equal_weighting_and_errors():
    losses = torch.tensor([0.5, 2.0])
    assert EqualWeighting(2)(losses).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="shape"):
        EqualWeighting(2)(torch.ones(3))
    with pytest.raises(ValueError, match="unknown weighting"):
        build_weighting("gradnorm-typo", 2)
