"""Tests of the fused loss ops (xtc_ext.ops) against the eager references (xtc_ext.reference).

Covers forward values and gradients on random inputs of several (odd) shapes, op-specific
semantics (ignore_index, masks, invalid values, soft targets), error reporting, reduced precision,
strided inputs, gradcheck / double backward (GradNorm pattern), retain_graph, opcheck,
torch.compile(fullgraph=True) and bitwise determinism (including across thread counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import xtc_ext
from xtc_ext import ops, reference

REDUCTIONS = ("mean", "sum", "none")
SHAPES = [(1, 1, 1, 1), (2, 1, 5, 7), (2, 3, 5, 7), (3, 13, 17, 31), (2, 40, 9, 300)]
# (2, 40, 9, 300): H*W = 2700, not a multiple of the 256-pixel block, 11 blocks per image.
BIG = (2, 40, 9, 300)


# ----------------------------------------------------------------------------------------------
# Input builders and the op table


@dataclass
class Sample:
    args: list  # positional args of both the fused op and the reference
    kwargs: dict
    grad_idx: tuple[int, ...]  # positions of the differentiable args


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, gen, dtype, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _bernoulli(shape, gen, p):
    return torch.rand(shape, generator=gen) < p


def build_ce(shape, dtype, gen, ignore_index=-1, ignore_frac=0.2, target_dtype=torch.int64):
    N, C, H, W = shape
    logits = _randn(shape, gen, dtype, 3.0)
    target = torch.randint(0, C, (N, H, W), generator=gen)
    target[_bernoulli((N, H, W), gen, ignore_frac)] = ignore_index
    return Sample([logits, target.to(target_dtype)], {"ignore_index": ignore_index}, (0,))


def build_soft_ce(shape, dtype, gen, mask_kind="nhw"):
    N, C, H, W = shape
    logits = _randn(shape, gen, dtype, 2.0)
    target_logits = _randn(shape, gen, dtype, 2.0)
    return Sample([logits, target_logits], {"mask": _mask(N, H, W, gen, mask_kind)}, (0,))


def build_l1(shape, dtype, gen, mask_kind="n1hw", invalid_value=0.0):
    N, C, H, W = shape
    pred = _randn(shape, gen, dtype)
    target = _randn(shape, gen, dtype)
    target[_bernoulli(shape, gen, 0.2)] = 0.0
    return Sample([pred, target], {"mask": _mask(N, H, W, gen, mask_kind), "invalid_value": invalid_value}, (0,))


def _mask(N, H, W, gen, kind, p=0.8):
    if kind is None:
        return None
    m = _bernoulli((N, H, W), gen, p)
    return {
        "nhw": m,
        "n1hw": m.unsqueeze(1),
        "float": m.double().unsqueeze(1),
        "uint8": m.to(torch.uint8),
    }[kind]


@dataclass
class OpCase:
    name: str
    fused: Callable
    ref: Callable
    build: Callable
    per_element: bool  # reduction "none" returns [N,C,H,W] (L1) rather than [N,H,W]


OPS = [
    OpCase("masked_cross_entropy", ops.masked_cross_entropy, reference.masked_cross_entropy, build_ce, False),
    OpCase("soft_cross_entropy", ops.soft_cross_entropy, reference.soft_cross_entropy, build_soft_ce, False),
    OpCase("masked_l1_loss", ops.masked_l1_loss, reference.masked_l1_loss, build_l1, True),
]
OP_IDS = [c.name for c in OPS]


def _upstream(loss: torch.Tensor, seed: int) -> torch.Tensor:
    """Upstream gradient != 1: a random weight in +-[0.5, 2] for scalars, a random map for "none"."""
    g = _gen(seed + 7919)
    if loss.dim() == 0:
        sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
        return (sign * (0.5 + 1.5 * torch.rand((), generator=g, dtype=torch.float64))).to(loss.dtype)
    return torch.randn(loss.shape, generator=g, dtype=torch.float64).to(loss.dtype)


def run(fn, sample: Sample, reduction: str, seed: int, cast=None):
    """Loss and gradients of (upstream * loss).sum() w.r.t. the differentiable args (fresh leaves)."""
    args = []
    for i, a in enumerate(sample.args):
        if cast is not None and a.is_floating_point():
            a = a.to(cast)
        args.append(a.detach().clone().requires_grad_() if i in sample.grad_idx else a)
    loss = fn(*args, **sample.kwargs, reduction=reduction)
    up = _upstream(loss, seed)
    grads = torch.autograd.grad((loss * up).sum(), [args[i] for i in sample.grad_idx])
    return loss.detach(), [g.detach() for g in grads]


def _scaled_close(actual, expected, rtol, atol_rel, floor=1e-30):
    """assert_close with an absolute tolerance relative to the scale of the expected values."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=max(atol_rel * scale, floor))


TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12)}


def _expected_shape(case: OpCase, shape, reduction):
    if reduction != "none":
        return ()
    N, C, H, W = shape
    return (N, C, H, W) if case.per_element else (N, H, W)


# ----------------------------------------------------------------------------------------------
# 1. Fused vs eager reference


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_matches_reference(case, shape, reduction, dtype, seed):
    sample = case.build(shape, dtype, _gen(seed))
    loss, grads = run(case.fused, sample, reduction, seed)
    ref_loss, ref_grads = run(case.ref, sample, reduction, seed)

    assert loss.dtype == dtype and ref_loss.dtype == dtype
    assert tuple(loss.shape) == _expected_shape(case, shape, reduction)
    rtol, atol_rel = TOL[dtype]
    _scaled_close(loss, ref_loss, rtol, atol_rel)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype and g.shape == rg.shape
        assert torch.isfinite(g).all()
        _scaled_close(g, rg, rtol, atol_rel)


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_non_contiguous_upstream_gradient(case):
    """reduction="none" with an expanded (loss.sum()) or permuted upstream gradient."""
    sample = case.build((2, 3, 4, 7), torch.float64, _gen(30))
    for make in (
        lambda loss: loss.sum(),
        lambda loss: loss.mean() * 3.0,
        lambda loss: (loss.transpose(-1, -2) * _upstream(loss.transpose(-1, -2), 30)).sum(),
    ):
        grads = []
        for fn in (case.fused, case.ref):
            x = sample.args[0].clone().requires_grad_()
            loss = fn(x, *sample.args[1:], **sample.kwargs, reduction="none")
            make(loss).backward()
            grads.append(x.grad)
        _scaled_close(grads[0], grads[1], 1e-10, 1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5)], ids=["N0", "H0"])
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_empty_inputs(case, shape, reduction):
    sample = case.build(shape, torch.float32, _gen(31))
    loss, grads = run(case.fused, sample, reduction, 31)
    assert tuple(loss.shape) == _expected_shape(case, shape, reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert grads[0].shape == shape


def test_public_ops_are_torch_ops():
    for name in OP_IDS:
        assert getattr(ops, name) is not None
        assert hasattr(torch.ops.xtc_ext, name)
        for suffix in ("_fwd", "_bwd"):
            assert hasattr(torch.ops.xtc_ext, name + suffix)
    sample = build_ce((2, 4, 3, 5), torch.float32, _gen(0))
    a = ops.masked_cross_entropy(*sample.args, **sample.kwargs)
    b = torch.ops.xtc_ext.masked_cross_entropy(*sample.args, sample.kwargs["ignore_index"], "mean")
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Hand-computable tiny cases


def test_ce_tiny_hand_computed():
    logits = torch.tensor([[0.0, 0.0, 1.0], [0.0, math.log(3.0), 1.0]]).view(1, 2, 1, 3).requires_grad_()
    target = torch.tensor([[[0, -1, 1]]])
    # pixel 0: uniform over 2 classes -> ln 2; pixel 1 ignored; pixel 2: logits equal -> ln 2
    loss = ops.masked_cross_entropy(logits, target, -1, "sum")
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(2.0)))
    loss_mean = ops.masked_cross_entropy(logits, target, -1, "mean")
    torch.testing.assert_close(loss_mean, torch.tensor(math.log(2.0)))
    loss_mean.backward()
    expected = torch.tensor([[0.5 - 1, 0.0, 0.5], [0.5, 0.0, 0.5 - 1]]).view(1, 2, 1, 3) / 2
    torch.testing.assert_close(logits.grad, expected)
    # a single class: loss 0 everywhere, gradient 0
    z = torch.randn(1, 1, 2, 2, requires_grad=True)
    out = ops.masked_cross_entropy(z, torch.zeros(1, 2, 2, dtype=torch.long), -1, "mean")
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_soft_ce_tiny_hand_computed():
    # uniform logits over 2 classes: -sum_c q_c * ln(1/2) = ln 2 whatever the target distribution
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    target_logits = torch.tensor([[5.0, -1.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    loss = ops.soft_cross_entropy(logits, target_logits, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(2.0)))
    loss.backward()
    q = torch.softmax(target_logits, dim=1)
    torch.testing.assert_close(logits.grad, 0.5 - q)


def test_l1_tiny_hand_computed():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4).requires_grad_()
    target = torch.tensor([0.0, 1.0, 5.0, 2.0]).view(1, 1, 1, 4)
    # invalid_value=0 drops the first element: (1 + 2 + 2) / 3
    loss = ops.masked_l1_loss(pred, target)
    torch.testing.assert_close(loss, torch.tensor(5.0 / 3.0))
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([0.0, 1.0, -1.0, 1.0]).view(1, 1, 1, 4) / 3)
    # invalid_value=None keeps it: (1 + 1 + 2 + 2) / 4
    torch.testing.assert_close(ops.masked_l1_loss(pred, target, invalid_value=None), torch.tensor(1.5))
    torch.testing.assert_close(ops.masked_l1_loss(pred, target, invalid_value=None, reduction="sum"),
                               torch.tensor(6.0))
    # a mask excluding the last pixel as well: (1 + 2) / 2
    mask = torch.tensor([True, True, True, False]).view(1, 1, 4)
    torch.testing.assert_close(ops.masked_l1_loss(pred, target, mask), torch.tensor(1.5))
    per = ops.masked_l1_loss(pred, target, mask, reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.0, 1.0, 2.0, 0.0]).view(1, 1, 1, 4))


# ----------------------------------------------------------------------------------------------
# 2. masked_cross_entropy specifics


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "ignore_index,target_dtype",
    [(-1, torch.int64), (250, torch.int64), (255, torch.uint8), (255, torch.int64), (0, torch.int64)],
)
def test_ce_ignore_index(ignore_index, target_dtype, reduction):
    shape = (2, 19, 11, 13)
    sample = build_ce(shape, torch.float32, _gen(3), ignore_index, 0.3, target_dtype)
    target = sample.args[1]
    assert (target == ignore_index).any() and (target != ignore_index).any()
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 3)
    ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 3)
    _scaled_close(loss, ref_loss, 1e-5, 1e-6)
    _scaled_close(grad, ref_grad, 1e-5, 1e-6)

    # torch's own cross-entropy (int64 target) agrees when some pixels are valid
    def torch_ce(logits, target, ignore_index, reduction):
        return F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction=reduction)

    t_loss, (t_grad,) = run(torch_ce, sample, reduction, 3)
    _scaled_close(loss, t_loss, 1e-5, 1e-6)
    _scaled_close(grad, t_grad, 1e-5, 1e-6)
    # ignored pixels: zero loss ("none") and zero gradient on every class
    ignored = target == ignore_index
    assert torch.equal(grad.permute(0, 2, 3, 1)[ignored], torch.zeros_like(grad.permute(0, 2, 3, 1)[ignored]))
    if reduction == "none":
        assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8])
def test_ce_all_ignored_is_zero(target_dtype, reduction):
    logits = torch.randn(2, 5, 3, 300, generator=_gen(4), requires_grad=True)
    target = torch.full((2, 3, 300), 255, dtype=target_dtype)
    loss = ops.masked_cross_entropy(logits, target, 255, reduction)
    assert torch.isfinite(loss).all()
    assert torch.equal(loss, torch.zeros_like(loss))
    (loss * 1.7).sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_uint8_and_int64_targets_identical():
    sample = build_ce(BIG, torch.float32, _gen(5), 255, 0.25, torch.int64)
    logits, target = sample.args
    for reduction in REDUCTIONS:
        results = []
        for tdt in (torch.int64, torch.uint8):
            z = logits.clone().requires_grad_()
            loss = ops.masked_cross_entropy(z, target.to(tdt), 255, reduction)
            (loss * _upstream(loss, 5)).sum().backward()
            results.append((loss.detach(), z.grad))
        assert torch.equal(results[0][0], results[1][0])
        assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_huge_logits(reduction, dtype):
    g = _gen(6)
    shape = (2, 7, 5, 37)
    sample = build_ce(shape, dtype, g)
    logits = _randn(shape, g, dtype, 1e3)
    logits[_bernoulli(shape, g, 0.1)] = 1e4
    logits[_bernoulli(shape, g, 0.1)] = -1e4
    logits[0, :, 0, 0] = 1e4  # a tie at the maximum
    logits[1, :, 0, 0] = -1e4  # all classes at the minimum
    sample.args[0] = logits
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 6)
    ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 6)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    rtol, atol_rel = TOL[dtype]
    _scaled_close(loss, ref_loss, rtol, atol_rel)
    _scaled_close(grad, ref_grad, rtol, atol_rel)


def test_ce_confident_pixel_gradient_is_exact_in_fp32():
    """A confidently right pixel with large logits: the target-class gradient p - 1 is a small
    difference, so any rounding of the saved normaliser shows up (fp64 is the reference)."""
    z64 = torch.tensor([306.3098, 312.3541]).double().view(1, 2, 1, 1)  # fp32-representable inputs
    target = torch.tensor([[[1]]])
    grads = []
    for dtype in (torch.float32, torch.float64):
        z = z64.to(dtype).requires_grad_()
        ops.masked_cross_entropy(z, target).backward()
        grads.append(z.grad.double().flatten())
    # fp32 softmax probabilities carry ~1 ulp(1) of absolute error (eager log_softmax too); a
    # normaliser rounded at the scale of the logits (|lse| * 2^-24 ~ 2e-5) would be 100x larger.
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=2.0**-22)
    assert abs(float(grads[0].sum())) < 2.0**-22  # the softmax gradient sums to zero (to fp32 rounding)


def test_ce_minus_inf_logits():
    """Classes switched off with -inf logits (never the target) contribute nothing."""
    g = _gen(7)
    logits = _randn((2, 6, 4, 33), g, torch.float32, 3.0)
    target = torch.randint(0, 3, (2, 4, 33), generator=g)
    target[0, 0, :5] = -1
    logits[:, 3:][_bernoulli((2, 3, 4, 33), g, 0.7)] = float("-inf")
    sample = Sample([logits, target], {"ignore_index": -1}, (0,))
    for reduction in REDUCTIONS:
        loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 7)
        ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 7)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        _scaled_close(loss, ref_loss, 1e-5, 1e-6)
        _scaled_close(grad, ref_grad, 1e-5, 1e-6)


@pytest.mark.parametrize("bad", [5, -2, 250])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ce_out_of_range_target_raises(bad, reduction):
    logits = torch.randn(2, 5, 3, 7, requires_grad=True)
    target = torch.randint(0, 5, (2, 3, 7))
    target[1, 2, 6] = bad
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target, -1, reduction)
    with pytest.raises(ValueError, match="target"):
        torch.ops.xtc_ext.masked_cross_entropy_fwd(logits, target, -1, reduction)
    # uint8 labels out of range (ignore_index 255 does not cover 200)
    t8 = torch.randint(0, 5, (2, 3, 7), dtype=torch.uint8)
    t8[0, 0, 0] = 200
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, t8, 255, reduction)


@pytest.mark.parametrize("tdtype", [torch.float32, torch.int32, torch.int8, torch.bool])
def test_ce_wrong_target_dtype_raises(tdtype):
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=tdtype)
    with pytest.raises(TypeError, match="target"):
        ops.masked_cross_entropy(logits, target)


def test_ce_bad_shapes_and_args():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="logits"):
        ops.masked_cross_entropy(logits[0], target)  # 3-D logits
    with pytest.raises(ValueError, match="logits"):
        ops.masked_cross_entropy(logits.unsqueeze(0), target)  # 5-D logits
    with pytest.raises(ValueError, match="logits"):
        ops.masked_cross_entropy(torch.randn(2, 0, 4, 5), target)  # no class
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target.unsqueeze(1))  # [N,1,H,W] target
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target[:, :, :4])  # wrong W
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target[:1])  # wrong N
    with pytest.raises(TypeError, match="logits"):
        ops.masked_cross_entropy(logits.long(), target)
    for bad in ("avg", "MEAN", ""):
        with pytest.raises(ValueError, match="reduction"):
            ops.masked_cross_entropy(logits, target, -1, bad)


# ----------------------------------------------------------------------------------------------
# 3. soft_cross_entropy specifics


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_ce_no_grad_to_target(reduction):
    sample = build_soft_ce((2, 5, 4, 9), torch.float32, _gen(8))
    logits = sample.args[0].clone().requires_grad_()
    target_logits = sample.args[1].clone().requires_grad_()
    loss = ops.soft_cross_entropy(logits, target_logits, sample.kwargs["mask"], reduction)
    (loss * _upstream(loss, 8)).sum().backward()
    assert target_logits.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the value does not depend on whether target_logits requires grad
    ref = ops.soft_cross_entropy(sample.args[0], sample.args[1], sample.kwargs["mask"], reduction)
    assert torch.equal(loss.detach(), ref)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OPS[1:], ids=OP_IDS[1:])
def test_mask_forms_agree(case, reduction):
    shape = (2, 3, 7, 300)
    results = {}
    for kind in ("nhw", "n1hw", "float", "uint8"):
        sample = case.build(shape, torch.float32, _gen(9), mask_kind=kind)  # same seed: same mask
        if kind == "float":
            sample.kwargs["mask"] = sample.kwargs["mask"].float() * 0.75  # nonzero = valid
        results[kind] = run(case.fused, sample, reduction, 9)
    base_loss, base_grads = results["nhw"]
    for kind, (loss, grads) in results.items():
        assert torch.equal(loss, base_loss), kind
        for g, bg in zip(grads, base_grads):
            assert torch.equal(g, bg), kind
    sample = case.build(shape, torch.float32, _gen(9), mask_kind="n1hw")
    ref_loss, ref_grads = run(case.ref, sample, reduction, 9)
    _scaled_close(base_loss, ref_loss, 1e-5, 1e-6)
    _scaled_close(base_grads[0], ref_grads[0], 1e-5, 1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_ce_all_masked_is_zero(reduction):
    logits = torch.randn(2, 4, 3, 300, generator=_gen(10), requires_grad=True)
    target_logits = torch.randn(2, 4, 3, 300, generator=_gen(11))
    for mask in (torch.zeros(2, 3, 300, dtype=torch.bool), torch.zeros(2, 1, 3, 300)):
        logits.grad = None
        loss = ops.soft_cross_entropy(logits, target_logits, mask, reduction)
        assert torch.equal(loss, torch.zeros_like(loss))
        (loss * 2.5).sum().backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_ce_with_one_hot_target_equals_ce(reduction):
    shape = (2, 6, 5, 41)
    ce = build_ce(shape, torch.float32, _gen(12), ignore_frac=0.25)
    logits, target = ce.args
    valid = target != -1
    one_hot = F.one_hot(target.clamp(min=0), shape[1]).permute(0, 3, 1, 2).float() * 1e4
    soft = Sample([logits, one_hot], {"mask": valid}, (0,))
    loss, (grad,) = run(ops.soft_cross_entropy, soft, reduction, 12)
    ce_loss, (ce_grad,) = run(ops.masked_cross_entropy, ce, reduction, 12)
    _scaled_close(loss, ce_loss, 1e-5, 1e-6)
    _scaled_close(grad, ce_grad, 1e-5, 1e-6)


def test_soft_ce_bad_args():
    logits = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="target_logits"):
        ops.soft_cross_entropy(logits, torch.randn(2, 4, 4, 5))
    with pytest.raises(ValueError, match="target_logits"):
        ops.soft_cross_entropy(logits, torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="target_logits"):
        ops.soft_cross_entropy(logits, logits.double())
    with pytest.raises(TypeError, match="target_logits"):
        ops.soft_cross_entropy(logits, logits.half())
    with pytest.raises(ValueError, match="logits"):
        ops.soft_cross_entropy(logits[0], logits[0])
    with pytest.raises(TypeError, match="logits"):
        ops.soft_cross_entropy(logits.long(), logits.long())
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(logits, logits, torch.ones(2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(logits, logits, torch.ones(2, 4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        ops.soft_cross_entropy(logits, logits, reduction="elementwise")


# ----------------------------------------------------------------------------------------------
# 4. masked_l1_loss specifics


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("invalid_value", [0.0, None, 0.5])
@pytest.mark.parametrize("mask_kind", [None, "n1hw", "nhw", "float"])
def test_l1_invalid_value_and_masks(mask_kind, invalid_value, reduction):
    shape = (2, 3, 7, 45)
    sample = build_l1(shape, torch.float32, _gen(13), mask_kind=mask_kind, invalid_value=invalid_value)
    target = sample.args[1]
    target[_bernoulli(shape, _gen(14), 0.1)] = 0.5
    loss, (grad,) = run(ops.masked_l1_loss, sample, reduction, 13)
    ref_loss, (ref_grad,) = run(reference.masked_l1_loss, sample, reduction, 13)
    _scaled_close(loss, ref_loss, 1e-5, 1e-6)
    _scaled_close(grad, ref_grad, 1e-5, 1e-6)
    if invalid_value is not None:
        excluded = target == invalid_value
        assert excluded.any()
        assert torch.equal(grad[excluded], torch.zeros_like(grad[excluded]))
    if reduction == "none":
        assert loss.shape == shape


def test_l1_invalid_value_changes_result():
    sample = build_l1((2, 1, 6, 6), torch.float32, _gen(15), mask_kind=None)
    pred, target = sample.args
    assert (target == 0).any()
    with_invalid = ops.masked_l1_loss(pred, target, invalid_value=0.0, reduction="sum")
    without = ops.masked_l1_loss(pred, target, invalid_value=None, reduction="sum")
    extra = pred[target == 0].abs().sum()
    torch.testing.assert_close(without - with_invalid, extra)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_multichannel_and_target_grad(reduction):
    shape = (2, 3, 5, 270)
    sample = build_l1(shape, torch.float32, _gen(16), mask_kind="nhw")
    sample.grad_idx = (0, 1)
    loss, (gp, gt) = run(ops.masked_l1_loss, sample, reduction, 16)
    ref_loss, (rgp, rgt) = run(reference.masked_l1_loss, sample, reduction, 16)
    if reduction == "none":
        assert loss.shape == sample.args[0].shape
    _scaled_close(loss, ref_loss, 1e-5, 1e-6)
    _scaled_close(gp, rgp, 1e-5, 1e-6)
    _scaled_close(gt, rgt, 1e-5, 1e-6)
    assert torch.equal(gt, -gp)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_all_invalid_is_zero(reduction):
    pred = torch.randn(2, 2, 3, 300, generator=_gen(17), requires_grad=True)
    target = torch.randn(2, 2, 3, 300, generator=_gen(18))
    cases = [
        (torch.zeros_like(target), None, 0.0),  # all targets invalid
        (target, torch.zeros(2, 1, 3, 300, dtype=torch.bool), None),  # all masked
        (target, torch.zeros(2, 3, 300), 0.0),
    ]
    for tgt, mask, invalid in cases:
        pred.grad = None
        loss = ops.masked_l1_loss(pred, tgt, mask, invalid, reduction)
        assert torch.equal(loss, torch.zeros_like(loss))
        (loss * 3.0).sum().backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_l1_bad_args():
    pred = torch.randn(2, 1, 4, 5)
    with pytest.raises(TypeError, match="target"):
        ops.masked_l1_loss(pred, pred.double())
    with pytest.raises(TypeError, match="target"):
        ops.masked_l1_loss(pred, pred.bfloat16())
    with pytest.raises(ValueError, match="target"):
        ops.masked_l1_loss(pred, torch.randn(2, 1, 4, 6))
    with pytest.raises(ValueError, match="pred"):
        ops.masked_l1_loss(pred[0], pred[0])
    with pytest.raises(TypeError, match="pred"):
        ops.masked_l1_loss(pred.long(), pred.long())
    with pytest.raises(ValueError, match="mask"):
        ops.masked_l1_loss(pred, pred, torch.ones(2, 2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        ops.masked_l1_loss(pred, pred, torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        ops.masked_l1_loss(pred, pred, reduction="mean ")


# ----------------------------------------------------------------------------------------------
# 5. Reduced precision: fused on bf16/fp16 vs the reference in fp32 on the same rounded inputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_l1_non_integer_invalid_value(dtype):
    """invalid_value is compared in the input dtype (0.1 rounds the same way as the stored target)."""
    g = _gen(32)
    pred = _randn((2, 2, 5, 9), g, dtype)
    target = _randn((2, 2, 5, 9), g, dtype)
    target[_bernoulli(target.shape, g, 0.3)] = 0.1
    for reduction in REDUCTIONS:
        loss = ops.masked_l1_loss(pred, target, invalid_value=0.1, reduction=reduction)
        ref = reference.masked_l1_loss(pred, target, invalid_value=0.1, reduction=reduction)
        _scaled_close(loss, ref, 1e-5, 1e-6)
    excluded = target == 0.1
    assert excluded.any()
    per = ops.masked_l1_loss(pred, target, invalid_value=0.1, reduction="none")
    assert torch.equal(per[excluded], torch.zeros_like(per[excluded]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_low_precision(case, dtype, reduction):
    shape = (2, 5, 7, 300)
    sample = case.build(shape, dtype, _gen(19))
    loss, grads = run(case.fused, sample, reduction, 19)
    ref_loss, ref_grads = run(case.ref, sample, reduction, 19, cast=torch.float32)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert torch.isfinite(g).all()
        _scaled_close(g.float(), rg, 1e-2, 1e-2)
    # the fused op also agrees with the reference run directly on the low-precision inputs
    direct_loss, _ = run(case.ref, sample, reduction, 19)
    assert direct_loss.dtype == torch.float32
    torch.testing.assert_close(loss, direct_loss, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# 6. Non-contiguous and channels_last inputs


def _transposed_copy(x):
    """Same values, non-contiguous strides (a transposed view of a contiguous tensor)."""
    if x.dim() == 4:
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_strided_inputs(case, layout, reduction):
    shape = (2, 3, 9, 31)
    sample = case.build(shape, torch.float32, _gen(20))
    base_loss, base_grads = run(case.fused, sample, reduction, 20)
    change = _transposed_copy if layout == "transposed" else _channels_last
    strided = Sample(
        [change(a) for a in sample.args],
        {k: (change(v) if isinstance(v, torch.Tensor) else v) for k, v in sample.kwargs.items()},
        sample.grad_idx,
    )
    assert not strided.args[0].is_contiguous()
    loss, grads = run(case.fused, strided, reduction, 20)
    assert torch.equal(loss, base_loss)
    for g, bg in zip(grads, base_grads):
        assert torch.equal(g, bg)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_sliced_inputs(case, reduction):
    """Every other column of a wider leaf: gradient lands on the right elements of the base."""
    shape = (2, 3, 9, 31)
    sample = case.build(shape, torch.float32, _gen(21))
    base_loss, base_grads = run(case.fused, sample, reduction, 21)

    def widen(x):
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide

    leaves = [widen(a).requires_grad_() if i in sample.grad_idx else widen(a) for i, a in enumerate(sample.args)]
    args = [a[..., ::2] for a in leaves]
    kwargs = {k: (widen(v)[..., ::2] if isinstance(v, torch.Tensor) else v) for k, v in sample.kwargs.items()}
    assert not args[0].is_contiguous()
    loss = case.fused(*args, **kwargs, reduction=reduction)
    (loss * _upstream(loss, 21)).sum().backward()
    assert torch.equal(loss.detach(), base_loss)
    for i, bg in zip(sample.grad_idx, base_grads):
        g = leaves[i].grad
        assert torch.equal(g[..., ::2], bg)
        assert torch.equal(g[..., 1::2], torch.zeros_like(g[..., 1::2]))


# ----------------------------------------------------------------------------------------------
# 7. gradcheck, gradgradcheck and the GradNorm pattern (float64)


def _tiny(case: OpCase, seed=22):
    sample = case.build((2, 3, 2, 3), torch.float64, _gen(seed))
    if case.name == "masked_cross_entropy":
        sample.args[1][0, 0, 0] = -1  # at least one ignored pixel
    if case.name == "masked_l1_loss":
        pred, target = sample.args
        # keep |pred - target| away from the kink for finite differences
        close = (pred - target).abs() < 0.05
        pred[close] += 0.2
        sample.kwargs["mask"][0, 0, 0, 0] = False
    return sample


def _closure(case: OpCase, sample: Sample, reduction: str, grad_idx):
    def fn(*diff):
        args = list(sample.args)
        for i, d in zip(grad_idx, diff):
            args[i] = d
        return case.fused(*args, **sample.kwargs, reduction=reduction)

    inputs = tuple(sample.args[i].detach().clone().requires_grad_() for i in grad_idx)
    return fn, inputs


def _gradcheck_variants():
    out = []
    for case in OPS:
        out.append(pytest.param(case, (0,), id=case.name))
    # L1 with the target differentiable too (invalid_value=None: perturbing a zero target must not flip validity)
    out.append(pytest.param(OPS[2], (0, 1), id="masked_l1_loss-target"))
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case,grad_idx", _gradcheck_variants())
def test_gradcheck_gradgradcheck(case, grad_idx, reduction):
    sample = _tiny(case)
    if grad_idx == (0, 1):
        sample.kwargs["invalid_value"] = None
    fn, inputs = _closure(case, sample, reduction, grad_idx)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_gradnorm_double_backward(case, reduction):
    """GradNorm: grad of w*loss with create_graph, then its norm backpropagated to w and the inputs."""
    sample = case.build((2, 4, 3, 5), torch.float64, _gen(23))
    u = None

    def gradnorm(fn):
        nonlocal u
        x = sample.args[0].detach().clone().requires_grad_()
        w = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
        loss = fn(x, *sample.args[1:], **sample.kwargs, reduction=reduction)
        if u is None:
            u = _upstream(loss, 23)
        (g,) = torch.autograd.grad(w * (u * loss).sum(), x, create_graph=True)
        norm = g.norm()
        norm.backward()
        return g.detach(), norm.detach(), w.grad, x.grad

    g, norm, w_grad, x_grad = gradnorm(case.fused)
    rg, rnorm, rw_grad, rx_grad = gradnorm(case.ref)
    torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm, rnorm, rtol=1e-10, atol=1e-12)
    # analytic: d||w * dL/dx|| / dw = ||dL/dx|| for w > 0
    torch.testing.assert_close(w_grad, norm / 1.7, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w_grad, rw_grad, rtol=1e-10, atol=1e-12)
    zeros = torch.zeros_like(sample.args[0])
    torch.testing.assert_close(
        zeros if x_grad is None else x_grad, zeros if rx_grad is None else rx_grad, rtol=1e-9, atol=1e-12
    )
    if case.name != "masked_l1_loss":  # cross-entropies have curvature: the input term is not trivially 0
        assert x_grad is not None and x_grad.abs().sum() > 0


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_double_backward_wrt_upstream_weight(case):
    """d/dw <v, d(w*loss)/dx> = <v, dloss/dx>, the derivative of the backward w.r.t. grad_loss."""
    sample = case.build((2, 3, 4, 5), torch.float32, _gen(24))
    v = torch.randn(sample.args[0].shape, generator=_gen(25))
    for reduction in REDUCTIONS:
        x = sample.args[0].detach().clone().requires_grad_()
        w = torch.tensor(0.3, requires_grad=True)
        loss = case.fused(x, *sample.args[1:], **sample.kwargs, reduction=reduction)
        (g,) = torch.autograd.grad(w * loss.sum(), x, create_graph=True)
        (g * v).sum().backward()
        xr = sample.args[0].detach().clone().requires_grad_()
        ref_loss = case.ref(xr, *sample.args[1:], **sample.kwargs, reduction=reduction)
        (ref_g,) = torch.autograd.grad(ref_loss.sum(), xr)
        torch.testing.assert_close(w.grad, (ref_g * v).sum(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 8. retain_graph and repeated backward


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_retain_graph_repeated_backward(case, reduction):
    sample = case.build((2, 5, 6, 50), torch.float32, _gen(26))
    originals = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    x = sample.args[0].clone().requires_grad_()
    args = [x, *sample.args[1:]]
    loss = case.fused(*args, **sample.kwargs, reduction=reduction)
    up = _upstream(loss, 26)
    (g1,) = torch.autograd.grad(loss, x, up, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, up, retain_graph=True)
    assert torch.equal(g1, g2)
    loss.backward(up, retain_graph=True)
    first = x.grad.clone()
    assert torch.equal(first, g1)
    loss.backward(up)
    assert torch.equal(x.grad, 2 * first)
    # inputs and saved tensors were not overwritten: a fresh forward gives the same loss and gradient
    for a, o in zip(args, originals):
        assert torch.equal(a.detach(), o)
    x2 = sample.args[0].clone().requires_grad_()
    loss2 = case.fused(x2, *sample.args[1:], **sample.kwargs, reduction=reduction)
    assert torch.equal(loss2.detach(), loss.detach())
    (g3,) = torch.autograd.grad(loss2, x2, up)
    assert torch.equal(g3, g1)


# ----------------------------------------------------------------------------------------------
# 9. torch.library.opcheck


def _opcheck_samples():
    g = _gen(27)
    shape = (2, 3, 4, 5)
    N, C, H, W = shape

    def leaf(dtype=torch.float32):
        return _randn(shape, g, dtype).requires_grad_()

    ce_t = build_ce(shape, torch.float32, g).args[1]
    ce_t8 = torch.randint(0, C, (N, H, W), generator=g, dtype=torch.uint8)
    ce_t8[0, 0] = 255
    mask = _bernoulli((N, H, W), g, 0.7)
    l1_target = _randn(shape, g, torch.float32)
    l1_target[0, 0, 0] = 0.0
    xo = torch.ops.xtc_ext
    samples = [
        ("masked_cross_entropy", xo.masked_cross_entropy.default, (leaf(), ce_t, -1, "mean")),
        ("masked_cross_entropy", xo.masked_cross_entropy.default, (leaf(), ce_t8, 255, "none")),
        ("masked_cross_entropy_fwd", xo.masked_cross_entropy_fwd.default, (leaf(), ce_t, -1, "sum")),
        ("masked_cross_entropy_fwd", xo.masked_cross_entropy_fwd.default, (leaf(torch.float64), ce_t8, 255, "none")),
        ("soft_cross_entropy", xo.soft_cross_entropy.default, (leaf(), _randn(shape, g, torch.float32), mask, "mean")),
        ("soft_cross_entropy", xo.soft_cross_entropy.default, (leaf(), leaf(), None, "none")),
        ("soft_cross_entropy_fwd", xo.soft_cross_entropy_fwd.default, (leaf(), _randn(shape, g, torch.float32), mask, "sum")),
        ("soft_cross_entropy_fwd", xo.soft_cross_entropy_fwd.default, (leaf(), leaf(), None, "none")),
        ("masked_l1_loss", xo.masked_l1_loss.default, (leaf(), l1_target, mask.unsqueeze(1).float(), 0.0, "mean")),
        ("masked_l1_loss", xo.masked_l1_loss.default, (leaf(), leaf(), None, None, "none")),
        ("masked_l1_loss_fwd", xo.masked_l1_loss_fwd.default, (leaf(), l1_target, mask, 0.0, "sum")),
        ("masked_l1_loss_fwd", xo.masked_l1_loss_fwd.default, (leaf(), leaf(), None, None, "none")),
    ]
    # the *_bwd ops (their autograd is the double backward), with saved tensors from the forward
    z64, tl64 = _randn(shape, g, torch.float64), _randn(shape, g, torch.float64)
    p64, d64 = _randn(shape, g, torch.float64), _randn(shape, g, torch.float64)
    _, lse, den = xo.masked_cross_entropy_fwd(z64, ce_t, -1, "mean")
    _, slse, sden = xo.soft_cross_entropy_fwd(z64, tl64, mask, "none")
    _, lden = xo.masked_l1_loss_fwd(p64, d64, None, None, "sum")

    def grad_w(*s):
        return torch.randn(s, generator=g, dtype=torch.float64).requires_grad_()

    def req(t):
        return t.clone().requires_grad_()

    samples += [
        ("masked_cross_entropy_bwd", xo.masked_cross_entropy_bwd.default,
         (grad_w(), req(z64), ce_t, lse, den, -1, "mean")),
        ("soft_cross_entropy_bwd", xo.soft_cross_entropy_bwd.default,
         (grad_w(N, H, W), req(z64), tl64, mask, slse, sden, "none")),
        ("masked_l1_loss_bwd", xo.masked_l1_loss_bwd.default, (grad_w(), p64, d64, None, lden, None, "sum")),
    ]
    return samples


_OPCHECK = _opcheck_samples()


@pytest.mark.parametrize("name,op,args", _OPCHECK, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(_OPCHECK)])
def test_opcheck(name, op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# ----------------------------------------------------------------------------------------------
# 10. torch.compile(fullgraph=True)


def _all_losses(logits, target, target_logits, mask, pred, depth):
    a = ops.masked_cross_entropy(logits, target, -1, "mean")
    b = ops.soft_cross_entropy(logits, target_logits, mask, "sum")
    c = ops.masked_l1_loss(pred, depth, mask, 0.0, "mean")
    d = ops.masked_cross_entropy(logits, target, -1, "none")
    return 0.7 * a + 0.01 * b + 1.3 * c + (d * d).mean()


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    g = _gen(28)
    shape = (2, 4, 5, 6)
    ce = build_ce(shape, torch.float32, g)
    inputs = dict(
        logits=ce.args[0],
        target=ce.args[1],
        target_logits=_randn(shape, g, torch.float32),
        mask=_bernoulli((2, 5, 6), g, 0.8),
        pred=_randn((2, 1, 5, 6), g, torch.float32),
        depth=build_l1((2, 1, 5, 6), torch.float32, g).args[1],
    )

    def run_fn(fn):
        leaves = {k: (v.clone().requires_grad_() if k in ("logits", "pred") else v) for k, v in inputs.items()}
        out = fn(**leaves)
        out.backward()
        return out.detach(), leaves["logits"].grad, leaves["pred"].grad

    compiled = torch.compile(_all_losses, fullgraph=True, backend="inductor")
    c_out, c_gl, c_gp = run_fn(compiled)
    e_out, e_gl, e_gp = run_fn(_all_losses)
    torch.testing.assert_close(c_out, e_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_gl, e_gl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_gp, e_gp, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# 11. Determinism


def _loss_and_grad(case, sample, reduction):
    return run(case.fused, sample, reduction, 29)


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_deterministic_and_thread_invariant(case):
    sample = case.build(BIG, torch.float32, _gen(29))
    old = torch.get_num_threads()
    try:
        for reduction in REDUCTIONS:
            torch.set_num_threads(2)
            a_loss, a_grads = _loss_and_grad(case, sample, reduction)
            b_loss, b_grads = _loss_and_grad(case, sample, reduction)
            torch.set_num_threads(1)
            c_loss, c_grads = _loss_and_grad(case, sample, reduction)
            for loss in (b_loss, c_loss):
                assert torch.equal(loss, a_loss), reduction
            for grads in (b_grads, c_grads):
                for g, ag in zip(grads, a_grads):
                    assert torch.equal(g, ag), reduction
    finally:
        torch.set_num_threads(old)


def test_build_info():
    info = xtc_ext.build_info
    assert info["torch_version"] == torch.__version__
