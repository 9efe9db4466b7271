"""The fused ops (xtc_ext.ops) agree with the eager references (xtc_ext.reference): every op, and the
cross-entropy specifics.

Table-driven (tests/ops/op_cases.py): every op of ``OPS`` is compared with its reference on random inputs
of several (odd) shapes and on empty inputs, plus hand-computable cases, and the cross-entropy specifics
(ignore_index, class weights, label smoothing, huge and -inf logits, errors) and soft cross-entropy
specifics (masks, no gradient to the target). The L1, cosine and gate specifics,
reduced precision and strided inputs are test_ops_values.py; gradcheck, double backward (GradNorm),
retain_graph, opcheck, torch.compile and determinism are test_ops_autograd.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xtc_ext import ops, reference

from op_cases import (
    BIG,
    DEVICES,
    MASKED,
    OPS,
    OP_IDS,
    REDUCTIONS,
    SHAPES,
    Sample,
    TOL,
    _bernoulli,
    _class_weight,
    _gen,
    _grads_close,
    _kw,
    _randn,
    _scaled_close,
    _upstream,
    build_ce,
    build_soft_ce,
    case_params,
    run,
)


# ----------------------------------------------------------------------------------------------
# 1. Fused vs eager reference (every device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case,reduction", case_params())
def test_matches_reference(case, reduction, shape, dtype, seed, device):
    sample = case.build(shape, dtype, _gen(seed)).to(device)
    loss, grads = run(case.fused, sample, reduction, seed)
    ref_loss, ref_grads = run(case.ref, sample, reduction, seed)

    assert loss.device.type == device
    assert loss.dtype == case.out_dtype(dtype) and ref_loss.dtype == loss.dtype
    assert tuple(loss.shape) == case.out_shape(shape, reduction)
    rtol, atol_rel = TOL[dtype]
    # absolute floor atol_rel in loss units: 1 - cos of parallel C=1 vectors is rounding noise ~ulp(1), not 0
    _scaled_close(loss, ref_loss, rtol, atol_rel, floor=atol_rel)
    assert all(g.dtype == dtype for g in grads)
    _grads_close(case, sample, reduction, seed, loss, grads, ref_grads, rtol, atol_rel)


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_non_contiguous_upstream_gradient(case):
    """Unreduced output with an expanded (out.sum()) or permuted upstream gradient."""
    sample = case.build((2, 3, 4, 7), torch.float64, _gen(30))
    reduction = "none" if case.reduces else None
    for make in (
        lambda out: out.sum(),
        lambda out: out.mean() * 3.0,
        lambda out: (out.transpose(-1, -2) * _upstream(out.transpose(-1, -2), 30)).sum(),
    ):
        grads = []
        for fn in (case.fused, case.ref):
            x = sample.args[0].clone().requires_grad_()
            out = fn(x, *sample.args[1:], **_kw(sample.kwargs, reduction))
            make(out).backward()
            grads.append(x.grad)
        _scaled_close(grads[0], grads[1], 1e-10, 1e-12)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5)], ids=["N0", "H0"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_empty_inputs(case, reduction, shape):
    sample = case.build(shape, torch.float32, _gen(31))
    loss, grads = run(case.fused, sample, reduction, 31)
    assert tuple(loss.shape) == case.out_shape(shape, reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert [tuple(g.shape) for g in grads] == [shape] * len(sample.grad_idx)


def test_every_op_of_the_table_has_a_case_and_every_kernel_is_registered():
    """The op table drives the tests: every op has a row in op_cases.OPS, and every internal op of the table
    (and no other) is a torch op of the library with its autograd."""
    assert {c.op for c in OPS} == {spec.name for spec in ops.OP_TABLE}
    kernels = {k.name for spec in ops.OP_TABLE for k in spec.kernels}
    library = {n for n in dir(torch.ops.xtc_ext) if hasattr(getattr(torch.ops.xtc_ext, n), "default")}
    publics = {spec.name for spec in ops.OP_TABLE}
    assert library == kernels | publics
    assert set(ops._FUNCTIONS) == kernels


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_public_ops_are_torch_ops(case):
    assert case.op in ops.__all__
    for name in (case.op, *case.internal):
        assert hasattr(torch.ops.xtc_ext, name), name
    sample = case.build((2, 4, 3, 5), torch.float32, _gen(0))
    for reduction in case.reductions:
        a = case.fused(*sample.args, **_kw(sample.kwargs, reduction))
        b = getattr(torch.ops.xtc_ext, case.op)(*sample.args, **_kw(sample.kwargs, reduction))
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Hand-computable tiny cases


def test_ce_tiny_hand_computed():
    logits = torch.tensor([[0.0, 0.0, 1.0], [0.0, math.log(3.0), 1.0]]).view(1, 2, 1, 3).requires_grad_()
    target = torch.tensor([[[0, -1, 1]]])
    # pixel 0: uniform over 2 classes -> ln 2; pixel 1 ignored; pixel 2: logits equal -> ln 2
    loss = ops.masked_cross_entropy(logits, target, -1, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(2.0)))
    loss_mean = ops.masked_cross_entropy(logits, target, -1, reduction="mean")
    torch.testing.assert_close(loss_mean, torch.tensor(math.log(2.0)))
    loss_mean.backward()
    expected = torch.tensor([[0.5 - 1, 0.0, 0.5], [0.5, 0.0, 0.5 - 1]]).view(1, 2, 1, 3) / 2
    torch.testing.assert_close(logits.grad, expected)
    # a single class: loss 0 everywhere, gradient 0
    z = torch.randn(1, 1, 2, 2, requires_grad=True)
    out = ops.masked_cross_entropy(z, torch.zeros(1, 2, 2, dtype=torch.long), -1, reduction="mean")
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_ce_weight_smoothing_hand_computed():
    """Two classes with equal logits (lse - z_c = ln 2), weight (2, 1), label smoothing 0.5, target 0:
    (1 - 0.5) * 2 ln 2 + (0.5 / 2) * (2 + 1) ln 2 = 1.75 ln 2; the mean divides by w_0 = 2."""
    logits = torch.zeros(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, -1]]])
    weight = torch.tensor([2.0, 1.0], dtype=torch.float64)
    kw = dict(weight=weight, label_smoothing=0.5)
    per = ops.masked_cross_entropy(logits, target, **kw, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[[1.75 * math.log(2.0), 0.0]]], dtype=torch.float64))
    mean = ops.masked_cross_entropy(logits, target, **kw)
    torch.testing.assert_close(mean, torch.tensor(0.875 * math.log(2.0), dtype=torch.float64))
    mean.backward()
    # d/dz_c = A p_c - ((1 - eps) w_y [c = y] + (eps / C) w_c), A = (1 - eps) w_y + (eps / C) W = 1.75
    g0, g1 = 1.75 * 0.5 - (0.5 * 2 + 0.25 * 2), 1.75 * 0.5 - 0.25 * 1
    expected = torch.tensor([[g0, 0.0], [g1, 0.0]], dtype=torch.float64).view(1, 2, 1, 2) / 2
    torch.testing.assert_close(logits.grad, expected)
    torch.testing.assert_close(mean, F.cross_entropy(logits.detach(), target, ignore_index=-1, **kw))


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


def test_cos_tiny_hand_computed():
    """Unit normals (C=3): orthogonal -> 1, equal -> 0, opposite -> 2; scale-invariant; the eps rule
    floors each norm separately: a = (0.05, 0, 0), b = (3, 0, 0), eps = 0.1 gives cos = 0.15 / (0.1 * 3)."""
    cols = [([1, 0, 0], [0, 1, 0]), ([0, 0.6, 0.8], [0, 0.6, 0.8]), ([1, 0, 0], [-1, 0, 0]), ([3, 4, 0], [0.6, 0.8, 0])]
    a = torch.tensor([c[0] for c in cols], dtype=torch.float64).T.reshape(1, 3, 1, 4)
    b = torch.tensor([c[1] for c in cols], dtype=torch.float64).T.reshape(1, 3, 1, 4)
    per = ops.cosine_similarity_loss(a, b, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[[1.0, 0.0, 2.0, 0.0]]], dtype=torch.float64))
    torch.testing.assert_close(ops.cosine_similarity_loss(a, b), torch.tensor(0.75, dtype=torch.float64))

    a = torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_()
    b = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_()
    loss = ops.cosine_similarity_loss(a, b, eps=0.1, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(0.5, dtype=torch.float64))
    loss.backward()
    # |a| < eps: loss = 1 - <a, b> / (eps |b|), so d/da = -b / (eps |b|); |b| > eps: d/db = 0 (direction only)
    torch.testing.assert_close(a.grad.flatten(), torch.tensor([-10.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(b.grad.flatten(), torch.zeros(3, dtype=torch.float64))


def test_gate_tiny_hand_computed():
    x = torch.tensor([2.0, -4.0, 3.0]).requires_grad_()
    g = torch.tensor([0.0, math.log(3.0), -math.log(3.0)]).requires_grad_()
    out = ops.sigmoid_gate(x, g)
    torch.testing.assert_close(out, torch.tensor([1.0, -3.0, 0.75]))
    out.backward(torch.tensor([1.0, 2.0, -1.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 1.5, -0.25]))  # grad * s
    torch.testing.assert_close(g.grad, torch.tensor([0.5, -1.5, -0.5625]))  # grad * x * s * (1 - s)


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


def _torch_ce(logits, target, ignore_index=-1, weight=None, label_smoothing=0.0, reduction="mean"):
    """torch.nn.functional.cross_entropy with this library's argument order (computed in fp32 or fp64)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    w = None if weight is None else weight.to(z.dtype)
    return F.cross_entropy(z, target.long(), weight=w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


@pytest.mark.parametrize("ignore_index,target_dtype", [(-1, torch.int64), (255, torch.uint8)], ids=["int64", "uint8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weight", [None, "rand"], ids=["unweighted", "weighted"])
def test_ce_weight_label_smoothing(weight, label_smoothing, reduction, dtype, ignore_index, target_dtype):
    """Fused vs reference vs F.cross_entropy (some pixels valid), upstream gradient != 1. bf16: the loss
    is computed in fp32 from the same rounded logits (tight), only the gradient is rounded to bf16."""
    sample = build_ce((2, 6, 5, 37), dtype, _gen(33), ignore_index, 0.25, target_dtype, weight, label_smoothing)
    target = sample.args[1]
    assert (target == ignore_index).any() and (target != ignore_index).any()
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 33)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and grad.dtype == dtype
    rtol, atol_rel = TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    grtol, gatol_rel = (1e-2, 1e-2) if dtype == torch.bfloat16 else (rtol, atol_rel)
    for fn in (reference.masked_cross_entropy, _torch_ce):
        cast = torch.float32 if dtype == torch.bfloat16 else None
        ref_loss, (ref_grad,) = run(fn, sample, reduction, 33, cast=cast)
        _scaled_close(loss, ref_loss, rtol, atol_rel)
        _scaled_close(grad.to(ref_grad.dtype), ref_grad, grtol, gatol_rel)
    ignored = (target == ignore_index).unsqueeze(1).expand_as(grad)
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_ce_mean_is_invariant_to_weight_scale(label_smoothing):
    """The mean divides by sum_valid w_y, so scaling all weights changes nothing, also when that sum is
    below 1 (weights ~0.005 on 40 valid pixels)."""
    sample = build_ce((1, 4, 5, 10), torch.float64, _gen(34), weight="small", label_smoothing=label_smoothing)
    w = sample.kwargs["weight"]
    valid = sample.args[1] != -1
    assert 0 < w[sample.args[1][valid]].sum() < 1
    small_loss, (small_grad,) = run(ops.masked_cross_entropy, sample, "mean", 34)
    sample.kwargs["weight"] = w * 1000
    big_loss, (big_grad,) = run(ops.masked_cross_entropy, sample, "mean", 34)
    torch.testing.assert_close(small_loss, big_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(small_grad, big_grad, rtol=1e-10, atol=1e-14)
    sample.kwargs["weight"] = w
    t_loss, (t_grad,) = run(_torch_ce, sample, "mean", 34)
    torch.testing.assert_close(small_loss, t_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(small_grad, t_grad, rtol=1e-10, atol=1e-14)


def test_ce_weight_any_float_dtype():
    """weight is used in the loss dtype whatever its own floating dtype (values exact in fp16)."""
    sample = build_ce((2, 5, 4, 9), torch.float32, _gen(35), label_smoothing=0.1)
    w = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.25])
    results = []
    for wdt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        sample.kwargs["weight"] = w.to(wdt)
        results.append(run(ops.masked_cross_entropy, sample, "mean", 35))
    for loss, (grad,) in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(grad, results[0][1][0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight,label_smoothing", [(None, 0.0), ("rand", 0.1), ("rand", 1.0)],
                         ids=["plain", "weighted-ls0.1", "weighted-ls1"])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8])
def test_ce_all_ignored_is_zero(target_dtype, weight, label_smoothing, reduction):
    g = _gen(4)
    logits = torch.randn(2, 5, 3, 300, generator=g, requires_grad=True)
    target = torch.full((2, 3, 300), 255, dtype=target_dtype)
    w = _class_weight(5, g, torch.float32, weight)
    loss = ops.masked_cross_entropy(logits, target, 255, w, label_smoothing, reduction)
    assert torch.isfinite(loss).all()
    assert torch.equal(loss, torch.zeros_like(loss))
    (loss * 1.7).sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_zero_weight_of_present_classes(reduction):
    """Present classes weighted 0 (F.cross_entropy's mean is NaN there): loss 0 and zero gradient; with
    label smoothing the other classes still contribute to the sum and "none", while the mean over a zero weight
    sum is 0 with zero gradient (the documented empty-mean rule, not the sum)."""
    g = _gen(36)
    logits = _randn((2, 5, 3, 40), g, torch.float64, 3.0).requires_grad_()
    target = torch.randint(0, 2, (2, 3, 40), generator=g)
    target[_bernoulli(target.shape, g, 0.2)] = -1
    for weight, eps in [([0.0, 0.0, 1.0, 2.0, 3.0], 0.0), ([0.0] * 5, 0.1), ([0.0] * 5, 1.0)]:
        logits.grad = None
        w = torch.tensor(weight, dtype=torch.float64)
        loss = ops.masked_cross_entropy(logits, target, -1, w, eps, reduction)
        assert torch.equal(loss, torch.zeros_like(loss)), (weight, eps)
        (loss * 1.3).sum().backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits)), (weight, eps)
    w = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    sample = Sample([logits.detach(), target], {"ignore_index": -1, "weight": w, "label_smoothing": 0.1}, (0,))
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 36)
    ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 36)
    assert torch.isfinite(loss).all()
    if reduction == "mean":
        assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))
    else:
        assert (loss != 0).any()
    _scaled_close(loss, ref_loss, 1e-10, 1e-12)
    _scaled_close(grad, ref_grad, 1e-10, 1e-12)


def test_ce_weight_and_label_smoothing_errors():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    bad = [
        (dict(weight=torch.ones(4)), ValueError, "weight"),
        (dict(weight=torch.ones(2)), ValueError, "weight"),
        (dict(weight=torch.ones(1, 3)), ValueError, "weight"),
        (dict(weight=torch.tensor(1.0)), ValueError, "weight"),
        (dict(weight=torch.ones(3, dtype=torch.long)), TypeError, "weight"),
        (dict(weight=torch.ones(3, dtype=torch.int32)), TypeError, "weight"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(label_smoothing=1.0001), ValueError, "label_smoothing"),
        (dict(label_smoothing=float("nan")), ValueError, "label_smoothing"),
    ]
    for kwargs, exc, match in bad:
        for reduction in REDUCTIONS:
            with pytest.raises(exc, match=match):
                ops.masked_cross_entropy(logits, target, **kwargs, reduction=reduction)
    for eps in (0.0, 1.0):  # the closed interval
        assert torch.isfinite(ops.masked_cross_entropy(logits, target, label_smoothing=eps))


def test_ce_uint8_and_int64_targets_identical():
    for weight, eps in [(None, 0.0), ("rand", 0.1)]:
        sample = build_ce(BIG, torch.float32, _gen(5), 255, 0.25, torch.int64, weight, eps)
        logits, target = sample.args
        for reduction in REDUCTIONS:
            results = []
            for tdt in (torch.int64, torch.uint8):
                z = logits.clone().requires_grad_()
                loss = ops.masked_cross_entropy(z, target.to(tdt), **_kw(sample.kwargs, reduction))
                (loss * _upstream(loss, 5)).sum().backward()
                results.append((loss.detach(), z.grad))
            assert torch.equal(results[0][0], results[1][0])
            assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothed", [False, True])
def test_ce_huge_logits(smoothed, reduction, dtype):
    g = _gen(6)
    shape = (2, 7, 5, 37)
    sample = build_ce(shape, dtype, g, weight="rand" if smoothed else None, label_smoothing=0.1 if smoothed else 0.0)
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
    for weight in (None, torch.tensor([0.5, 1.0, 2.0, 1.0, 1.0, 1.0])):
        sample = Sample([logits, target], {"ignore_index": -1, "weight": weight}, (0,))
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
        ops.masked_cross_entropy(logits, target, -1, reduction=reduction)
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target, -1, torch.ones(5), 0.1, reduction)
    with pytest.raises(ValueError, match="target"):
        torch.ops.xtc_ext.masked_cross_entropy_fwd(logits, target, None, -1, 0.0, reduction)
    # uint8 labels out of range (ignore_index 255 does not cover 200)
    t8 = torch.randint(0, 5, (2, 3, 7), dtype=torch.uint8)
    t8[0, 0, 0] = 200
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, t8, 255, reduction=reduction)


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
            ops.masked_cross_entropy(logits, target, -1, reduction=bad)


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


@pytest.mark.parametrize("case,reduction", case_params(MASKED))
def test_mask_forms_agree(case, reduction):
    """[N,H,W] bool, [N,1,H,W] bool, float (nonzero = valid) and uint8 masks give identical results."""
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
    for g, rg in zip(base_grads, ref_grads):
        _scaled_close(g, rg, 1e-5, 1e-6)
    # masked pixels: zero gradient on every channel, zero loss for "none"
    masked = ~sample.kwargs["mask"][:, 0]
    for g in base_grads:
        assert torch.equal(g.permute(0, 2, 3, 1)[masked], torch.zeros_like(g.permute(0, 2, 3, 1)[masked]))
    if reduction == "none":
        per = base_loss if base_loss.dim() == 3 else base_loss.permute(0, 2, 3, 1)
        assert torch.equal(per[masked], torch.zeros_like(per[masked]))


@pytest.mark.parametrize("case,reduction", case_params(MASKED))
def test_all_masked_is_zero(case, reduction):
    sample = case.build((2, 4, 3, 300), torch.float32, _gen(10), mask_kind=None)
    for mask in (torch.zeros(2, 3, 300, dtype=torch.bool), torch.zeros(2, 1, 3, 300)):
        leaves = [a.clone().requires_grad_() if i in sample.grad_idx else a for i, a in enumerate(sample.args)]
        loss = case.fused(*leaves, **{**sample.kwargs, "mask": mask, "reduction": reduction})
        assert torch.isfinite(loss).all()
        assert torch.equal(loss, torch.zeros_like(loss))
        (loss * 2.5).sum().backward()
        for i in sample.grad_idx:
            assert torch.equal(leaves[i].grad, torch.zeros_like(leaves[i]))


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
        ops.soft_cross_entropy(logits[0, 0, 0, 0], logits[0, 0, 0, 0])  # 0-D: no class dim (3-D is (N, C, d1))
    with pytest.raises(ValueError, match="logits"):
        ops.soft_cross_entropy(logits[:, :0], logits[:, :0])  # no class
    with pytest.raises(TypeError, match="logits"):
        ops.soft_cross_entropy(logits.long(), logits.long())
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(logits, logits, torch.ones(2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(logits, logits, torch.ones(2, 4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        ops.soft_cross_entropy(logits, logits, reduction="elementwise")
