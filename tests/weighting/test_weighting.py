"""Task weighting (XTasC-Net paper Eq. 16, App. C): equal, uncertainty, DWA, GradNorm.

Formulas against hand values, stop-gradients, checkpoint round trips on fresh instances, and
GradNorm's gradient routing (task weights only, no second-order term in the network), including
through the fused ops' double backward.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xtc_ext import ops, reference
from xtc_ext.weighting import (
    AGGREGATORS,
    DWA,
    WEIGHTINGS,
    EqualWeighting,
    GradNorm,
    LPS,
    LPS_ABLATIONS,
    UncertaintyWeighting,
    Weighting,
    build_weighting,
)

# ---------------------------------------------------------------------------------------------
# Equal and uncertainty weighting


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
    with pytest.raises(ValueError, match="num_tasks"):
        EqualWeighting(0)


@pytest.mark.parametrize("name", ["equal", "uncertainty"])
def test_epoch_end_is_a_no_op_by_default(name):
    w = build_weighting(name, 2)
    before = {k: v.clone() for k, v in w.state_dict().items()}
    weights = w.weights()
    assert w.epoch_end(torch.tensor([1.0, 2.0])) is None
    assert torch.equal(w.weights(), weights)
    assert all(torch.equal(before[k], v) for k, v in w.state_dict().items())
    assert Weighting.epoch_end is type(w).epoch_end


def test_registry_and_builder():
    jacobian = set(AGGREGATORS)  # TorchJD's aggregators (tests/weighting/test_torchjd.py)
    assert set(WEIGHTINGS) - jacobian == {"equal", "uncertainty", "dwa", "gradnorm", "lps", "lps-log", "lps-prio"}
    assert {"upgrad", "mgda", "pcgrad", "cagrad", "nash-mtl", "imtl-g", "aligned-mtl", "dualproj", "graddrop"} <= jacobian
    p = nn.Parameter(torch.ones(3))
    assert isinstance(build_weighting("equal", 2, shared_parameter=p), EqualWeighting)  # ignored there
    dwa = build_weighting("dwa", 3, temperature=1.0)
    assert isinstance(dwa, DWA) and dwa.temperature == 1.0
    gn = build_weighting("gradnorm", 2, shared_parameter=p, alpha=0.5)
    assert isinstance(gn, GradNorm) and gn.alpha == 0.5 and gn.shared_parameter is p
    with pytest.raises(ValueError, match="shared_parameter"):
        build_weighting("gradnorm", 2)
    with pytest.raises(TypeError):
        build_weighting("equal", 2, temperature=1.0)


# ---------------------------------------------------------------------------------------------
# DWA


def _dwa_hand(prev2, prev1, temp=2.0):
    r = [a / b for a, b in zip(prev1, prev2)]
    e = [math.exp(x / temp) for x in r]
    return [len(r) * x / sum(e) for x in e]


def test_dwa_weights_against_hand_values():
    dwa = DWA(3)
    means = [[2.0, 1.0, 4.0], [1.0, 0.9, 4.4], [0.5, 0.85, 3.0], [0.45, 0.5, 1.0]]
    losses = torch.tensor([0.7, 1.1, 2.0], requires_grad=True)
    expected = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]] + [_dwa_hand(means[i], means[i + 1]) for i in range(3)]
    for epoch in range(5):  # epoch t's weights come from the means of epochs t-1 and t-2
        assert dwa.weights().tolist() == pytest.approx(expected[epoch], rel=1e-6)
        assert dwa.weights().dtype == torch.float32
        total = dwa(losses)
        assert total.item() == pytest.approx(sum(w * L for w, L in zip(expected[epoch], [0.7, 1.1, 2.0])), rel=1e-6)
        (g,) = torch.autograd.grad(total, losses)  # sg(w): d total / d L_k = w_k
        assert g.tolist() == pytest.approx(expected[epoch], rel=1e-6)
        if epoch < len(means):
            dwa.epoch_end(torch.tensor(means[epoch]))
    assert sum(expected[-1]) == pytest.approx(3.0)
    assert list(dwa.parameters()) == []
    # temperature: larger is flatter
    hot = DWA(3, temperature=100.0)
    for m in means[:2]:
        hot.epoch_end(m)  # a plain list is accepted too
    assert hot.weights().tolist() == pytest.approx(_dwa_hand(means[0], means[1], 100.0), rel=1e-6)
    assert float((hot.weights() - 1).abs().max()) < float((dwa.weights() - 1).abs().max())


@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_dwa_state_dict_round_trip_on_a_fresh_instance(epochs):
    g = torch.Generator().manual_seed(epochs)
    means = torch.rand(epochs + 1, 2, generator=g) + 0.1
    a = DWA(2)
    for e in range(epochs):
        a.epoch_end(means[e])
    state = a.state_dict()
    assert set(state) == {"loss_history", "num_epochs"}
    b = build_weighting("dwa", 2)
    b.load_state_dict(state)
    assert torch.equal(a.weights(), b.weights()) and int(b.num_epochs) == epochs
    a.epoch_end(means[epochs])
    b.epoch_end(means[epochs])
    assert torch.equal(a.weights(), b.weights())


def test_dwa_errors():
    with pytest.raises(ValueError, match="temperature"):
        DWA(2, temperature=0.0)
    dwa = DWA(2)
    with pytest.raises(ValueError, match="shape"):
        dwa.epoch_end(torch.ones(3))
    for bad in ([1.0, 0.0], [1.0, float("nan")], [float("inf"), 1.0], [-1.0, 1.0]):
        with pytest.raises(ValueError, match="finite and > 0"):
            dwa.epoch_end(torch.tensor(bad))
    assert int(dwa.num_epochs) == 0  # rejected means leave no trace
    with pytest.raises(ValueError, match="shape"):
        dwa(torch.ones(3))


# ---------------------------------------------------------------------------------------------
# GradNorm


def _linear_problem(seed=0, D=4, H=3, B=6):
    """Tiny 2-task linear model: shared W [H, D], one linear head per task, MSE losses."""
    g = torch.Generator().manual_seed(seed)
    W = nn.Parameter(torch.randn(H, D, generator=g))
    heads = [nn.Parameter(torch.randn(1, H, generator=g)) for _ in range(2)]
    x = torch.randn(B, D, generator=g)
    ys = [torch.randn(B, 1, generator=g), 3 * torch.randn(B, 1, generator=g)]

    def losses():
        h = x @ W.T
        return torch.stack([F.mse_loss(h @ heads[k].T, ys[k]) for k in range(2)])

    return W, heads, losses


def _hand_grad(losses_fn, W, w, L0, alpha):
    """dL_grad/dw on a separate graph: closed form with n_k = ||dL_k/dW||, and by plain autograd."""
    L = losses_fn()
    n = torch.stack([torch.linalg.vector_norm(torch.autograd.grad(L[k], W, retain_graph=True)[0]) for k in range(2)])
    G = w * n  # ||d(w_k L_k)/dW|| = w_k ||dL_k/dW|| for w_k > 0
    ratio = L.detach() / L0
    target = G.mean() * (ratio / ratio.mean()) ** alpha
    closed = torch.sign(G - target) * n
    wl = w.clone().requires_grad_()
    L = losses_fn()
    G2 = torch.stack([
        torch.linalg.vector_norm(torch.autograd.grad(wl[k] * L[k], W, create_graph=True)[0]) for k in range(2)
    ])
    Lg = (G2 - (G2.mean() * (ratio / ratio.mean()) ** alpha).detach()).abs().sum()
    (auto,) = torch.autograd.grad(Lg, wl, retain_graph=True)
    second_order = torch.autograd.grad(Lg, W)[0]  # what a buggy implementation would add to W.grad
    return closed.detach(), auto, second_order


def test_gradnorm_step_routes_gradients_as_published():
    W, heads, losses_fn = _linear_problem(0)
    gn = GradNorm(2, W, alpha=1.5)
    assert [p is gn.task_weights for p in gn.parameters()] == [True]  # W is not registered
    assert set(gn.state_dict()) == {"task_weights", "initial_losses", "num_steps"}

    L_first = losses_fn()
    gn(L_first)  # records L(0); its total is never backpropagated
    L0 = L_first.detach().clone()
    assert torch.equal(gn.initial_losses, L0) and int(gn.num_steps) == 1
    assert gn.task_weights.grad is not None and W.grad is None and heads[0].grad is None

    # move the losses away from L(0) and the weights off the simplex, then take the step under test
    with torch.no_grad():
        heads[0].mul_(0.5)
        heads[1].add_(0.3)
        gn.task_weights.copy_(torch.tensor([0.6, 2.2]))
    gn.task_weights.grad = None
    L = losses_fn()
    total = gn(L)
    w = gn.task_weights.detach().clone()
    torch.testing.assert_close(w, torch.tensor([0.6, 2.2]) * 2 / 2.8)  # renormalised in place first
    # (a) the returned total is sum(w * L) with the renormalised weights
    torch.testing.assert_close(total, (w * L).sum())
    # (e) L(0) stays fixed after the first call
    assert torch.equal(gn.initial_losses, L0) and int(gn.num_steps) == 2
    # (b) w.grad is dL_grad/dw, by a closed form and by autograd on a separate graph
    closed, auto, second_order = _hand_grad(losses_fn, W, w, L0, 1.5)
    torch.testing.assert_close(gn.task_weights.grad, closed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gn.task_weights.grad, auto, rtol=1e-5, atol=1e-6)
    assert float(closed.abs().min()) > 0
    # (c) the network gets exactly the gradient of sum(sg(w) L): no second-order GradNorm term
    assert W.grad is None and heads[0].grad is None  # GradNorm's forward leaves the network's .grad alone
    total.backward()
    expected = torch.autograd.grad((w * losses_fn()).sum(), [W, *heads])
    for p, e in zip([W, *heads], expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-7)
    assert float(second_order.abs().max()) > 1e-3  # the term that must not leak is not trivially zero
    torch.testing.assert_close(gn.task_weights.grad, closed, rtol=1e-5, atol=1e-6)  # backward adds nothing

    # (d) after an optimizer step the weights leave the simplex; the next forward renormalises
    opt = torch.optim.SGD([W, *heads, gn.task_weights], lr=0.3)
    opt.step()
    assert abs(float(gn.task_weights.detach().sum()) - 2.0) > 1e-3
    torch.testing.assert_close(gn.weights().sum(), torch.tensor(2.0))
    opt.zero_grad()
    L = losses_fn()
    total = gn(L)
    torch.testing.assert_close(gn.task_weights.sum(), torch.tensor(2.0))
    torch.testing.assert_close(total, (gn.task_weights.detach() * L).sum())
    assert torch.equal(gn.initial_losses, L0) and int(gn.num_steps) == 3


def test_gradnorm_accumulates_into_existing_grad():
    W, _, losses_fn = _linear_problem(1)
    gn = GradNorm(2, W)
    gn(losses_fn())
    first = gn.task_weights.grad.clone()
    gn.task_weights.grad = torch.tensor([10.0, -20.0])
    gn(losses_fn())  # same losses, same weights -> same GradNorm gradient, added on top
    torch.testing.assert_close(gn.task_weights.grad, torch.tensor([10.0, -20.0]) + first)


def test_gradnorm_two_forwards_before_backward():
    # e.g. gradient accumulation: the second forward's in-place renormalisation must not invalidate
    # the first total's graph, and each total keeps the weights it was computed with.
    W, heads, losses_fn = _linear_problem(6)
    gn = GradNorm(2, W)
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([1.0, 3.0]))
    L1 = losses_fn()
    t1 = gn(L1)
    w1 = gn.task_weights.detach().clone()
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([2.0, 0.5]))
    L2 = losses_fn()
    t2 = gn(L2)
    w2 = gn.task_weights.detach().clone()
    (t1 + t2).backward()
    expected = torch.autograd.grad((w1 * losses_fn()).sum() + (w2 * losses_fn()).sum(), W)[0]
    torch.testing.assert_close(W.grad, expected)


def test_gradnorm_alpha_and_state_dict_round_trip():
    W, heads, losses_fn = _linear_problem(2)
    gn = GradNorm(2, W, alpha=0.7)
    L0 = losses_fn()
    gn(L0)
    with torch.no_grad():
        heads[1].mul_(0.2)
        gn.task_weights.copy_(torch.tensor([1.5, 0.9]))
    gn.task_weights.grad = None
    gn(losses_fn())
    # (e) restored on a fresh instance: L(0), step count and weights; L(0) is not re-recorded
    fresh = build_weighting("gradnorm", 2, shared_parameter=W, alpha=0.7)
    fresh.load_state_dict(gn.state_dict())
    for name in ("task_weights", "initial_losses", "num_steps"):
        assert torch.equal(getattr(fresh, name), getattr(gn, name))
    with torch.no_grad():
        heads[0].mul_(1.7)
    a, b = gn(losses_fn()), fresh(losses_fn())
    torch.testing.assert_close(a, b)
    assert torch.equal(fresh.initial_losses, L0.detach()) and int(fresh.num_steps) == 3
    w = gn.task_weights.detach()
    closed, auto, _ = _hand_grad(losses_fn, W, w, L0.detach(), 0.7)
    torch.testing.assert_close(fresh.task_weights.grad, closed, rtol=1e-5, atol=1e-6)


def test_gradnorm_outside_training_changes_nothing():
    W, _, losses_fn = _linear_problem(3)
    gn = GradNorm(2, W)
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([0.5, 0.5]))
    L = losses_fn()
    gn.eval()
    total = gn(L)
    torch.testing.assert_close(total, (torch.tensor([1.0, 1.0]) * L).sum())
    assert gn.task_weights.tolist() == [0.5, 0.5] and gn.task_weights.grad is None and int(gn.num_steps) == 0
    gn.train()
    with torch.no_grad():
        total = gn(losses_fn())
    assert int(gn.num_steps) == 0 and gn.task_weights.grad is None and not total.requires_grad


def test_gradnorm_errors():
    W, _, losses_fn = _linear_problem(4)
    with pytest.raises(ValueError, match="require grad"):
        GradNorm(2, torch.ones(3))
    with pytest.raises(TypeError, match="tensor"):
        GradNorm(2, [W])
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(2, W, alpha=-0.1)
    gn = GradNorm(2, W)
    with pytest.raises(ValueError, match="shape"):
        gn(torch.ones(3, requires_grad=True))
    other = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="do not depend on shared_parameter"):
        gn(other * 2)


def _conv_problem(seed=5, N=2, C=4, H=6, Wd=8):
    """Tiny 2-task dense model: shared 1x1 conv (W), tanh, a seg head and a depth head."""
    g = torch.Generator().manual_seed(seed)
    W = nn.Parameter(torch.randn(5, 3, 1, 1, generator=g))
    seg_head = nn.Parameter(0.5 * torch.randn(C, 5, 1, 1, generator=g))
    depth_head = nn.Parameter(0.5 * torch.randn(1, 5, 1, 1, generator=g))
    x = torch.randn(N, 3, H, Wd, generator=g)
    y = torch.randint(-1, C, (N, H, Wd), generator=g)
    z = torch.rand(N, 1, H, Wd, generator=g) * 4
    z[z < 0.5] = 0

    def losses(lib):
        h = torch.tanh(F.conv2d(x, W))
        return torch.stack([
            lib.masked_cross_entropy(F.conv2d(h, seg_head), y, -1),
            lib.masked_l1_loss(F.conv2d(h, depth_head), z),
        ])

    return W, [seg_head, depth_head], losses


def test_gradnorm_through_fused_ops_double_backward():
    # (f) the GradNorm gradient of w goes through the fused ops' backward differentiated w.r.t.
    # its upstream gradient; it must equal the same computation on the eager references.
    results = {}
    for name, lib in (("fused", ops), ("eager", reference)):
        W, heads, losses_fn = _conv_problem()
        gn = GradNorm(2, W, alpha=1.5)
        gn(losses_fn(lib))
        with torch.no_grad():
            heads[0].mul_(0.6)
            gn.task_weights.copy_(torch.tensor([1.4, 0.7]))
        gn.task_weights.grad = None
        L = losses_fn(lib)
        total = gn(L)
        total.backward()
        results[name] = (total.detach(), gn.task_weights.grad.clone(), W.grad.clone(), heads[0].grad.clone())
        if name == "fused":
            w = gn.task_weights.detach()
            closed, auto, _ = _hand_grad(lambda: losses_fn(reference), W, w, gn.initial_losses.clone(), 1.5)
            torch.testing.assert_close(gn.task_weights.grad, closed, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gn.task_weights.grad, auto, rtol=1e-4, atol=1e-6)
    for a, b in zip(results["fused"], results["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert float(results["fused"][1].abs().min()) > 0


# ---------------------------------------------------------------------------------------------
# LPS (MT-CP §3.5, reconstructed: docs/fidelity.md, "MT-CP losses and LPS")

EPS = 1e-6


def _raw_for_projected(values):
    """Raw losses L with log(1 + L + eps) == v exactly (up to rounding)."""
    return [math.exp(v) - 1 - EPS for v in values]


def _step(lps, means, losses=(0.7, 1.1, 2.0)):
    """One epoch: forward/backward with the current weights, then epoch_end(means)."""
    L = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
    w = lps.weights().double()
    total = lps(L)
    proj = [math.log1p(x + EPS) for x in losses] if lps.log_transform else list(losses)
    assert total.item() == pytest.approx(sum(wi * p for wi, p in zip(w.tolist(), proj)), rel=1e-6)
    (g,) = torch.autograd.grad(total, L)  # sg(w): d total / d L_t = w_t * dLhat_t/dL_t
    dproj = [1 / (1 + x + EPS) for x in losses] if lps.log_transform else [1.0] * len(losses)
    assert g.tolist() == pytest.approx([wi * d for wi, d in zip(w.tolist(), dproj)], rel=1e-6)
    lps.epoch_end(torch.tensor(means, dtype=torch.float64))


def test_lps_log_projection_ratios_and_spread_by_hand():
    # projected epoch means chosen so that the arithmetic is exact fractions
    lps = LPS(3)  # beta 2.5, K = 1, log on
    assert lps.weights().tolist() == [1.0, 1.0, 1.0]
    _step(lps, _raw_for_projected([2.0, 1.0, 1.0]))  # pi(0) = [1/2, 1/4, 1/4]
    assert lps.weights().tolist() == [1.0, 1.0, 1.0]  # no history yet: equal weights for epoch 1
    assert lps.share_history[-1].tolist() == pytest.approx([0.5, 0.25, 0.25], rel=1e-9)
    _step(lps, _raw_for_projected([1.5, 1.0, 1.0]))  # pi(1) = [3/7, 2/7, 2/7]
    # w = pi(1)/pi(0) = [6/7, 8/7, 8/7]; wbar = 22/21; delta = [-4/21, 2/21, 2/21]
    # spread: 22/21 + 2.5 delta = [12/21, 27/21, 27/21] (mean 22/21) -> renormalised [6/11, 27/22, 27/22]
    expected = [6 / 11, 27 / 22, 27 / 22]
    assert lps.weights().tolist() == pytest.approx(expected, rel=1e-6)
    assert float(lps.weights().mean()) == pytest.approx(1.0, rel=1e-6)
    _step(lps, _raw_for_projected([3.0, 2.0, 2.0]))  # pi(2) = [3/7, 2/7, 2/7] = pi(1): w = 1 everywhere
    assert lps.weights().tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    _step(lps, _raw_for_projected([1.0, 1.0, 1.5]))  # pi(3) = [2/7, 2/7, 3/7]
    # w = pi(3)/pi(2) = [2/3, 1, 3/2]; wbar = 19/18; delta = [-7/18, -1/18, 8/18]
    # spread: [19/18 - 35/36, 19/18 - 5/36, 19/18 + 40/36] = [3/36, 33/36, 78/36]; / (19/18)
    expected = [3 / 38, 33 / 38, 78 / 38]
    assert lps.weights().tolist() == pytest.approx(expected, rel=1e-6)
    assert int(lps.num_epochs) == 4
    assert list(lps.parameters()) == []


def test_lps_positivity_floor_and_renormalisation_by_hand():
    # prioritization only (raw losses), K = 1, beta = 2.5
    lps = LPS(3, log_transform=False)
    _step(lps, [2.0, 1.0, 1.0])  # pi(0) = [1/2, 1/4, 1/4]
    _step(lps, [2.0, 2.0, 4.0])  # pi(1) = [1/4, 1/4, 1/2]
    # w = [1/2, 1, 2]; wbar = 7/6; spread: 7/6 + 2.5 * ([1/2, 1, 2] - 7/6) = [-1/2, 3/4, 13/4]
    # task 0 would get a negative weight (the authors' code keeps it); floor = 1e-3 * 7/6
    floor = 1e-3 * 7 / 6
    raw = [floor, 0.75, 3.25]
    expected = [x * 3 / sum(raw) for x in raw]
    assert lps.weights().tolist() == pytest.approx(expected, rel=1e-6)
    assert bool((lps.weights() > 0).all())
    # the total with the floored weights: sum_t w_t L_t (no log)
    _step(lps, [1.0, 1.0, 2.0])  # pi(2) = pi(1): weights back to 1
    assert lps.weights().tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    _step(lps, [3.0, 2.0, 3.0])  # pi(3) = [3/8, 2/8, 3/8]
    # w = [3/2, 1, 3/4]; wbar = 13/12; spread: [51/24, 21/24, 6/24] (mean 13/12) -> [51/26, 21/26, 6/26]
    assert lps.weights().tolist() == pytest.approx([51 / 26, 21 / 26, 6 / 26], rel=1e-6)
    # a larger floor binds with a visible value
    big = LPS(3, log_transform=False, floor=0.5)
    big.epoch_end([2.0, 1.0, 1.0])
    big.epoch_end([2.0, 2.0, 4.0])
    raw = [0.5 * 7 / 6, 0.75, 3.25]
    assert big.weights().tolist() == pytest.approx([x * 3 / sum(raw) for x in raw], rel=1e-6)


def test_lps_history_k2_by_hand():
    lps = LPS(3, beta=1.5, history=2, log_transform=False)
    lps.epoch_end([2.0, 1.0, 1.0])  # pi(0) = [1/2, 1/4, 1/4]
    lps.epoch_end([1.0, 1.0, 2.0])  # pi(1) = [1/4, 1/4, 1/2]; only one epoch of history before: w = 1
    assert lps.weights().tolist() == [1.0, 1.0, 1.0]
    assert lps.share_history.flatten().tolist() == pytest.approx([0.5, 0.25, 0.25, 0.25, 0.25, 0.5])
    lps.epoch_end([1.0, 2.0, 1.0])  # pi(2) = [1/4, 1/2, 1/4]; mean(pi(0), pi(1)) = [3/8, 1/4, 3/8]
    # w = [2/3, 2, 2/3]; wbar = 10/9; spread 1.5: [4/9, 22/9, 4/9] -> renormalised [0.4, 2.2, 0.4]
    assert lps.weights().tolist() == pytest.approx([0.4, 2.2, 0.4], rel=1e-6)
    lps.epoch_end([2.0, 1.0, 1.0])  # pi(3) = [1/2, 1/4, 1/4]; mean(pi(1), pi(2)) = [1/4, 3/8, 3/8]
    assert lps.weights().tolist() == pytest.approx([2.2, 0.4, 0.4], rel=1e-6)
    # K = 1 on the same means differs (uses only the last epoch)
    k1 = LPS(3, beta=1.5, log_transform=False)
    for m in ([2.0, 1.0, 1.0], [1.0, 1.0, 2.0], [1.0, 2.0, 1.0]):
        k1.epoch_end(m)
    # w = pi(2)/pi(1) = [1, 2, 1/2]; wbar = 7/6; spread 1.5: [11/12, 29/12, 2/12] -> [11/14, 29/14, 2/14]
    assert k1.weights().tolist() == pytest.approx([11 / 14, 29 / 14, 2 / 14], rel=1e-6)


def test_lps_beta_controls_the_spread():
    means = [_raw_for_projected([2.0, 1.0, 1.0]), _raw_for_projected([1.5, 1.0, 1.0])]
    ws = {}
    for beta in (0.0, 1.0, 2.5, 4.0):
        lps = LPS(3, beta=beta)
        for m in means:
            lps.epoch_end(m)
        ws[beta] = lps.weights()
    assert ws[0.0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # beta = 1: plain ratios [6/7, 8/7, 8/7] renormalised by their mean 22/21
    assert ws[1.0].tolist() == pytest.approx([x * 21 / 22 for x in (6 / 7, 8 / 7, 8 / 7)], rel=1e-6)
    spreads = [float(ws[b].std()) for b in (0.0, 1.0, 2.5, 4.0)]
    assert spreads == sorted(spreads) and spreads[0] == 0


def test_lps_ablation_switches():
    means = [[2.0, 1.0, 1.0], [2.0, 2.0, 4.0], [1.0, 3.0, 2.0]]
    L = torch.tensor([0.5, 1.5, 3.0])
    log_only = build_weighting("lps-log", 3)
    assert isinstance(log_only, LPS) and log_only.log_transform and not log_only.prioritize
    for m in means:
        log_only.epoch_end(m)
        assert log_only.weights().tolist() == [1.0, 1.0, 1.0]
        assert log_only(L).item() == pytest.approx(sum(math.log1p(x + EPS) for x in L.tolist()), rel=1e-6)
    assert int(log_only.num_epochs) == 3  # the shares are still recorded
    prio = build_weighting("lps-prio", 3)
    assert isinstance(prio, LPS) and prio.prioritize and not prio.log_transform
    full = build_weighting("lps", 3, beta=7.5)
    assert full.beta == 7.5 and full.log_transform and full.prioritize
    for m in means:
        prio.epoch_end(m)
        full.epoch_end(m)
    w = prio.weights()
    assert prio(L).item() == pytest.approx(float((w * L).sum()), rel=1e-6)  # raw losses
    assert not torch.allclose(prio.weights(), full.weights())  # the log changes the shares
    neither = LPS(3, log_transform=False, prioritize=False)  # == equal weights
    for m in means:
        neither.epoch_end(m)
    assert neither(L).item() == pytest.approx(EqualWeighting(3)(L).item())
    assert LPS_ABLATIONS == {"ew": "equal", "log": "lps-log", "prio": "lps-prio", "lps": "lps"}
    assert isinstance(build_weighting(LPS_ABLATIONS["ew"], 3), EqualWeighting)
    with pytest.raises(ValueError, match="fixes prioritize"):
        build_weighting("lps-log", 3, prioritize=True)
    assert not build_weighting("lps-log", 3, prioritize=False).prioritize  # consistent value is fine
    with pytest.raises(TypeError):
        build_weighting("lps", 3, temperature=2.0)


@pytest.mark.parametrize("epochs", [0, 1, 2, 4])
@pytest.mark.parametrize("history", [1, 2])
def test_lps_state_dict_round_trip_on_a_fresh_instance(epochs, history):
    g = torch.Generator().manual_seed(10 * epochs + history)
    means = torch.rand(epochs + 1, 3, generator=g, dtype=torch.float64) * 3 + 0.1
    a = LPS(3, history=history)
    for e in range(epochs):
        a.epoch_end(means[e])
    state = a.state_dict()
    assert set(state) == {"share_history", "lps_weights", "num_epochs"}
    b = build_weighting("lps", 3, history=history)
    b.load_state_dict(state)
    assert torch.equal(a.weights(), b.weights()) and int(b.num_epochs) == epochs
    assert torch.equal(a.share_history, b.share_history)
    a.epoch_end(means[epochs])
    b.epoch_end(means[epochs])
    assert torch.equal(a.weights(), b.weights())
    L = torch.tensor([0.3, 2.0, 5.0])
    assert torch.equal(a(L), b(L))


def test_lps_distributed_epoch_end_all_reduces(monkeypatch):
    import torch.distributed as dist

    other_rank = torch.tensor([4.0, 1.0, 3.0], dtype=torch.float64)  # the second rank's epoch means
    calls = []

    def fake_all_reduce(tensor, op=None, **kwargs):
        calls.append(op)
        tensor.add_(other_rank)  # SUM over two ranks

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    lps = LPS(3, log_transform=False)
    lps.epoch_end([2.0, 1.0, 1.0])  # global means [3, 1, 2]: pi(0) = [1/2, 1/6, 1/3]
    assert lps.share_history[-1].tolist() == pytest.approx([1 / 2, 1 / 6, 1 / 3])
    lps.epoch_end([2.0, 3.0, 1.0])  # global means [3, 2, 2]: pi(1) = [3/7, 2/7, 2/7]
    assert len(calls) == 2 and all(op == dist.ReduceOp.SUM for op in calls)
    monkeypatch.undo()
    ref = LPS(3, log_transform=False)  # not distributed, fed the global means
    ref.epoch_end([3.0, 1.0, 2.0])
    ref.epoch_end([3.0, 2.0, 2.0])
    assert torch.equal(lps.weights(), ref.weights())
    # w = [6/7, 12/7, 6/7]; wbar = 8/7; spread: [8/7 - 5/7, 8/7 + 10/7, 3/7] -> [3/8, 18/8, 3/8]
    assert lps.weights().tolist() == pytest.approx([3 / 8, 9 / 4, 3 / 8], rel=1e-6)


def test_lps_errors_and_validation():
    for kwargs, match in (
        (dict(beta=-0.1), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(history=0), "history"),
        (dict(history=1.5), "history"),
        (dict(eps=-1e-3), "eps"),
        (dict(floor=0.0), "floor"),
        (dict(floor=1.0), "floor"),
    ):
        with pytest.raises(ValueError, match=match):
            LPS(3, **kwargs)
    lps = LPS(2)
    with pytest.raises(ValueError, match="shape"):
        lps(torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        lps.epoch_end(torch.ones(3))
    for bad in ([1.0, float("nan")], [float("inf"), 1.0], [-1.0, 1.0]):
        with pytest.raises(ValueError, match="finite and > 0"):
            lps.epoch_end(torch.tensor(bad))
    assert int(lps.num_epochs) == 0  # rejected means leave no trace
    lps.epoch_end([0.0, 1.0])  # a zero mean is fine under the log: log(1 + eps) > 0
    raw = LPS(2, log_transform=False)
    with pytest.raises(ValueError, match="raw mean of 0"):
        raw.epoch_end([0.0, 1.0])
    assert "beta=2.5" in repr(LPS(2))
