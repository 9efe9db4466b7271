"""Hostile inputs to the fused ops: every bad argument is a clear error naming it, in every kernel (CPU,
Meta, FakeTensor), and extreme but legal values (INT64_MIN labels, negative or non-finite class weights, huge
and tiny norms, deep negative gates, float8) give the documented result. Also the transforms the ops must
survive: torch.func (grad, vjp, jacrev, vmap), double backward below eps, torch.compile with dynamic shapes,
channels_last and expanded upstream gradients. PyTorch's shape conventions are tests/ops/test_shapes.py.

References are float64 PyTorch computations on the same values (``torch.nn.functional`` where it
has the same semantics, else the op's own formula written out).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xtc_ext import ops, reference

XO = torch.ops.xtc_ext
REDUCTIONS = ("mean", "sum", "none")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, dtype=torch.float64, scale=1.0):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


# ----------------------------------------------------------------------------------------------
# A zero-size class/channel dimension is a ValueError naming the input, in every kernel (CPU, Meta).


@pytest.mark.parametrize("shape", [(2, 0, 4, 4), (2, 0), (0,), (3, 0, 5)], ids=str)
def test_zero_size_class_dim_is_a_value_error(shape):
    z = torch.randn(shape)
    pixel = shape[:1] + shape[2:] if len(shape) > 1 else ()
    calls = [
        (lambda: ops.soft_cross_entropy(z, z), "logits"),
        (lambda: ops.masked_cross_entropy(z, torch.zeros(pixel, dtype=torch.long)), "logits"),
        (lambda: ops.cosine_similarity_loss(z, z, dim=1 if len(shape) > 1 else 0), "a"),
        (lambda: XO.soft_cross_entropy_fwd(z, z, None, "sum"), "logits"),
        (lambda: XO.soft_cross_entropy_fwd(z.to("meta"), z.to("meta"), None, "sum"), "logits"),
        (lambda: XO.soft_cross_entropy_bwd(torch.tensor(1.0), z, z, None, torch.zeros(pixel), torch.tensor(1.0),
                                           "sum"), "logits"),
    ]
    for call, name in calls:
        with pytest.raises(ValueError, match=name):
            call()


# ----------------------------------------------------------------------------------------------
# Every registered op validates every argument, saved tensors included, before touching memory.


def _bwd_calls():
    """(op, args, exception, argument name): hostile calls of the internal ops (saved tensors of the wrong
    shape, dtype or device included)."""
    z = torch.randn(1, 2, 64, 64)
    t = torch.randint(0, 2, (1, 64, 64))
    lse, den, g = torch.zeros(1, 64, 64), torch.tensor(1.0), torch.tensor(1.0)
    a = torch.randn(1, 3, 8, 8)
    return [
        (XO.masked_cross_entropy_bwd, (g, z, t, None, torch.zeros(1), den, -1, 0.0, "mean"), ValueError,
         "lse_minus_max"),
        (XO.masked_cross_entropy_bwd, (g, z, t, None, lse[:, :32], den, -1, 0.0, "mean"), ValueError,
         "lse_minus_max"),
        (XO.masked_cross_entropy_bwd, (g, z, t, None, lse.long(), den, -1, 0.0, "mean"), TypeError, "lse_minus_max"),
        (XO.masked_cross_entropy_bwd, (g, z, t, None, lse, torch.ones(3), -1, 0.0, "mean"), ValueError, "denom"),
        (XO.masked_cross_entropy_bwd, (torch.ones(5), z, t, None, lse, den, -1, 0.0, "mean"), ValueError,
         "grad_loss"),
        (XO.masked_cross_entropy_bwd, (torch.ones(1, 64, 63), z, t, None, lse, den, -1, 0.0, "none"), ValueError,
         "grad_loss"),
        (XO.masked_cross_entropy_bwd, (g, z, t[:, :5], None, lse, den, -1, 0.0, "mean"), ValueError, "target"),
        (XO.masked_cross_entropy_bwd, (g, z, t, torch.ones(3), lse, den, -1, 0.0, "mean"), ValueError, "weight"),
        (XO.masked_cross_entropy_bwd, (g, z, t, None, lse, den, -1, 2.0, "mean"), ValueError, "label_smoothing"),
        (XO.masked_cross_entropy_bwd, (g.long(), z, t, None, lse, den, -1, 0.0, "mean"), TypeError, "grad_loss"),
        (XO.soft_cross_entropy_bwd, (g, z, z, None, torch.zeros(7), den, "mean"), ValueError, "lse_minus_max"),
        (XO.soft_cross_entropy_bwd, (g, z, z, torch.ones(1, 64, 9, dtype=torch.bool), lse, den, "mean"),
         ValueError, "mask"),
        (XO.soft_cross_entropy_bwd, (g, z, z, None, lse, den.to("meta"), "mean"), RuntimeError, "denom"),
        (XO.masked_l1_loss_bwd, (torch.ones(2), z, z, None, den, 0.0, "none"), ValueError, "grad_loss"),
        (XO.masked_l1_loss_bwd, (g, z, z[:, :1], None, den, 0.0, "mean"), ValueError, "target"),
        (XO.cosine_similarity_loss_bwd, (torch.ones(1, 8, 7), a, a, None, den, 1e-8, "none", 1), ValueError,
         "grad_loss"),
        (XO.cosine_similarity_loss_bwd, (g, a, a, None, den, 1e-8, "mean", 4), ValueError, "dim"),
        (XO.cosine_similarity_loss_bwd, (g, a, a, None, den, 0.0, "mean", 1), ValueError, "eps"),
        (XO.sigmoid_gate_bwd, (a[:, :2], a, a), ValueError, "grad_out"),
        (XO.sigmoid_gate_bwd, (a.double(), a, a), TypeError, "grad_out"),
        (XO.masked_cross_entropy_fwd, (z, t, None, -1, 0.0, "avg"), ValueError, "reduction"),
        (XO.masked_l1_loss_fwd, (z, z, torch.ones(1, 2, 64, 64), 0.0, "mean"), ValueError, "mask"),
        (XO.cosine_similarity_loss_fwd, (a, a, torch.ones(1, 8, 8, dtype=torch.complex64), 1e-8, "mean", 1),
         TypeError, "mask"),
    ]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("index", range(len(_bwd_calls())))
def test_internal_ops_validate_every_argument(index, device):
    op, args, exc, name = _bwd_calls()[index]
    other = "cpu" if device == "meta" else "meta"  # a tensor placed on the other device stays the odd one out

    def place(a):
        if not isinstance(a, torch.Tensor):
            return a
        return a.to(device) if a.device.type == "cpu" else torch.zeros(a.shape, dtype=a.dtype, device=other)

    args = [place(a) for a in args]
    with pytest.raises(exc, match=name):
        op(*args)


# ----------------------------------------------------------------------------------------------
# A label of INT64_MIN is an out-of-range class, not a silently ignored pixel.


def test_int64_min_label_is_an_out_of_range_class():
    logits = torch.randn(2, 5, 4, 4)
    target = torch.full((2, 4, 4), -(2**63))
    for reduction in REDUCTIONS:
        with pytest.raises(ValueError, match="target"):
            ops.masked_cross_entropy(logits, target, reduction=reduction)
    target[0, 0, 0] = 1
    with pytest.raises(ValueError, match="-9223372036854775808"):
        ops.masked_cross_entropy(logits, target)
    # as ignore_index it is a valid marker
    loss = ops.masked_cross_entropy(logits, target, ignore_index=-(2**63), reduction="sum")
    torch.testing.assert_close(loss, F.cross_entropy(logits[:1, :, :1, :1], target[:1, :1, :1], reduction="sum"))


# ----------------------------------------------------------------------------------------------
# Mixing meta and CPU tensors raises the documented RuntimeError naming the argument (never a fake
# kernel's uninitialised output).


def _device_cases():
    z, a = torch.randn(2, 5, 4, 4), torch.randn(2, 3, 4, 4)
    t, m = torch.randint(0, 5, (2, 4, 4)), torch.rand(2, 4, 4) > 0.5
    return [
        ("masked_l1_loss", lambda d: ops.masked_l1_loss(a, d(a)), "target"),
        ("masked_l1_loss-mask", lambda d: ops.masked_l1_loss(a, a, d(m)), "mask"),
        ("ce-target", lambda d: ops.masked_cross_entropy(z, d(t)), "target"),
        ("ce-weight", lambda d: ops.masked_cross_entropy(z, t, weight=d(torch.ones(5))), "weight"),
        ("ce-logits", lambda d: ops.masked_cross_entropy(d(z), t), "target"),
        ("soft_ce-target", lambda d: ops.soft_cross_entropy(z, d(z)), "target_logits"),
        ("cos-mask", lambda d: ops.cosine_similarity_loss(a, a, d(m)), "mask"),
        ("cos-b", lambda d: ops.cosine_similarity_loss(a, d(a)), "b"),
        ("gate-logits", lambda d: ops.sigmoid_gate(a, d(a)), "gate_logits"),
        ("gate-x", lambda d: ops.sigmoid_gate(d(a), a), "gate_logits"),
    ]


@pytest.mark.parametrize("case", _device_cases(), ids=lambda c: c[0])
def test_meta_mixed_with_cpu_names_the_argument(case):
    _, call, name = case
    with pytest.raises(RuntimeError, match=f"{name} is on"):
        call(lambda t: t.to("meta"))


# ----------------------------------------------------------------------------------------------
# reduction="mean" with negative or mixed-sign class weights divides by sum_valid w_y (F.cross_entropy).


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("signs", ["negative", "mixed"])
def test_negative_class_weights_mean_matches_torch(signs, label_smoothing):
    z = _randn((3, 6, 5, 7), 50, scale=2.0)
    target = torch.randint(0, 6, (3, 5, 7), generator=_gen(51))
    target[0, 0] = -1
    w = torch.rand(6, generator=_gen(52), dtype=torch.float64) + 0.2
    w = -w if signs == "negative" else w * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    kw = dict(ignore_index=-1, weight=w, label_smoothing=label_smoothing)
    x, y = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours, theirs = ops.masked_cross_entropy(x, target, **kw), F.cross_entropy(y, target, **kw)
    assert abs(float(w[target[target != -1]].sum())) > 0.5  # denominator far from 0
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(reference.masked_cross_entropy(z, target, **kw), theirs, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# A zero denominator with label smoothing follows the empty-mean rule (0, not the sum).


@pytest.mark.parametrize("weight", [[0.0, 1.0, 1.0], [1.0, -1.0, 2.0]], ids=["zero", "cancelling"])
def test_zero_weight_sum_mean_is_zero(weight):
    z = _randn((1, 3, 2, 2), 60, scale=3.0).requires_grad_()
    target = torch.tensor([[[0, 0], [0, 0]]]) if weight[0] == 0 else torch.tensor([[[0, 1], [-1, -1]]])
    w = torch.tensor(weight, dtype=torch.float64)
    for eps in (0.0, 0.2, 1.0):
        z.grad = None
        loss = ops.masked_cross_entropy(z, target, -1, w, eps)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))
        assert torch.equal(reference.masked_cross_entropy(z.detach(), target, -1, w, eps), loss.detach())
        if eps > 0:  # the sum itself is not zero: the rule, not the numerator, makes the mean 0
            assert ops.masked_cross_entropy(z, target, -1, w, eps, "sum").abs().item() > 0.1


# ----------------------------------------------------------------------------------------------
# cosine_similarity_loss without overflow (|a| ~ 3e19 in fp32) and with tiny eps on zero vectors.


def _cos_exact64(a, b, eps):
    """Per-pixel 1 - cos over dim 1 in float64, the eps rule differentiated as written (floored norm = const)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    da = torch.where(na > eps, na, torch.full_like(na, eps))
    db = torch.where(nb > eps, nb, torch.full_like(nb, eps))
    return 1 - (a * b).sum(dim=1) / da / db


@pytest.mark.parametrize("scale", [3e19, 1e38, 1e-25], ids=["3e19", "1e38", "1e-25"])
def test_cosine_huge_and_tiny_norms_fp32(scale):
    a = _randn((2, 4, 3, 5), 70, torch.float32) * scale
    b = _randn((2, 4, 3, 5), 71, torch.float32) * scale
    eps = 1e-30 if scale < 1 else 1e-8
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = ops.cosine_similarity_loss(x, y, eps=eps, reduction="none")
    up = _randn(loss.shape, 72, torch.float32)
    loss.backward(up)
    x64, y64 = a.double().requires_grad_(), b.double().requires_grad_()
    ref = _cos_exact64(x64, y64, eps)
    ref.backward(up.double())
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    for g, rg in ((x.grad, x64.grad), (y.grad, y64.grad)):
        torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-5 * rg.abs().max().item())


@pytest.mark.parametrize("eps", [1e-20, 1e-30, 1e-35])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_zero_vectors_tiny_eps(eps, dtype):
    a = torch.zeros(2, 3, 1, 4, dtype=dtype)
    b = _randn((2, 3, 1, 4), 73, dtype)
    b[1, :, 0, 3] = 0  # both zero
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = ops.cosine_similarity_loss(x, y, eps=eps, reduction="none")
    torch.testing.assert_close(loss, torch.ones_like(loss))
    loss.sum().backward()
    # d/da = -b / (eps |b|) at a = 0 (finite up to 1/eps), 0 for b (direction of a zero a is undefined: const)
    expected = -(b.double() / b.double().norm(dim=1, keepdim=True).clamp(min=eps)) / eps
    assert torch.isfinite(x.grad).all() and torch.equal(y.grad, torch.zeros_like(y.grad))
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------
# sigmoid_gate exact for very negative gates (no exp clamp flooring sigmoid at ~6e-39 in fp32).


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gate_exact_for_deep_negative_logits(dtype):
    x = torch.tensor([1e30, 1e30, -3e25, 1.0, 2.0, 1e30], dtype=dtype)
    g = torch.tensor([-100.0, -60.0, -80.0, -100.0, 100.0, -130.0], dtype=dtype)
    up = torch.tensor([1.0, 1e20, -1.0, 1e30, 1.0, 1e25], dtype=dtype)
    xr, gr = x.clone().requires_grad_(), g.clone().requires_grad_()
    out = ops.sigmoid_gate(xr, gr)
    out.backward(up)
    # float64 formulas without cancellation or overflow: e = exp(-|g|), s = 1/(1+e) or e/(1+e), s(1-s) = e/(1+e)^2
    # (eager float64 gives s(1-s) = 0 at g = 100 and overflows grad * x at 1e20 * 1e30 in fp32)
    x64, g64, up64 = x.double(), g.double(), up.double()
    e = torch.exp(-g64.abs())
    s = torch.where(g64 >= 0, 1 / (1 + e), e / (1 + e))
    ds = e / (1 + e) ** 2
    rtol = 1e-2 if dtype == torch.bfloat16 else (1e-12 if dtype == torch.float64 else 1e-6)
    for actual, expected in ((out, x64 * s), (xr.grad, up64 * s), (gr.grad, up64 * ds * x64)):
        # expected values rounded to the dtype first: what an exactly rounded kernel returns
        torch.testing.assert_close(actual.double(), expected.to(dtype).double(), rtol=rtol, atol=0)
    if dtype == torch.float32:
        assert math.isclose(out[0].item(), 3.7200759760208356e-14, rel_tol=1e-6)


# ----------------------------------------------------------------------------------------------
# Cosine double backward where a norm is below eps: the loss is linear in that vector there.


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_double_backward_below_eps(reduction):
    eps = 1e-8
    a = _randn((2, 3, 2, 2), 90) * 1e-9  # every |a| < eps
    b = _randn((2, 3, 2, 2), 91)
    a[1, :, 1, 1] = _randn((3,), 92)  # one ordinary pixel
    v = _randn(a.shape, 93)

    def hvp(fn):
        x = a.clone().requires_grad_()
        y = b.clone().requires_grad_()
        loss = fn(x, y)
        (gx,) = torch.autograd.grad((loss * _randn(loss.shape, 94)).sum(), x, create_graph=True)
        return torch.autograd.grad((gx * v).sum(), (x, y))

    ours = hvp(lambda x, y: ops.cosine_similarity_loss(x, y, eps=eps, reduction=reduction))

    def exact(x, y):
        per = _cos_exact64(x, y, eps)
        return per if reduction == "none" else (per.sum() / (per.numel() if reduction == "mean" else 1))

    theirs = hvp(exact)
    small = torch.ones(2, 2, 2, dtype=torch.bool)
    small[1, 1, 1] = False
    assert torch.equal(ours[0].permute(0, 2, 3, 1)[small], torch.zeros(7, 3, dtype=torch.float64))
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# An inf/NaN weight of a class absent from the targets (no smoothing) leaves the gradient finite.


@pytest.mark.parametrize("bad", [math.inf, math.nan, -math.inf])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nonfinite_weight_of_absent_class_keeps_gradient_finite(bad, reduction):
    z = _randn((2, 4, 3, 5), 100, scale=2.0)
    target = torch.randint(0, 3, (2, 3, 5), generator=_gen(101))  # class 3 absent
    w = torch.tensor([1.0, 0.5, 2.0, bad], dtype=torch.float64)
    x, y = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = ops.masked_cross_entropy(x, target, weight=w, reduction=reduction)
    theirs = F.cross_entropy(y, target, weight=w, reduction=reduction)
    up = _randn(ours.shape, 102)
    (ours * up).sum().backward()
    (theirs * up).sum().backward()
    assert torch.isfinite(ours).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-14)
    # double backward (GradNorm) stays finite too
    x2 = z.clone().requires_grad_()
    (g,) = torch.autograd.grad(ops.masked_cross_entropy(x2, target, weight=w, reduction="sum"), x2, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), x2)
    assert torch.isfinite(h).all()


# ----------------------------------------------------------------------------------------------
# The fake (meta) kernels validate exactly like the real ones.


def _fake_mode_calls():
    def m(*shape, dtype=torch.float32):
        return torch.empty(shape, dtype=dtype, device="meta")

    return [
        (lambda: XO.masked_cross_entropy_fwd(m(2, 3, 4), m(2, 4), None, -1, 0.0, "mean"), TypeError, "target"),
        (lambda: XO.masked_cross_entropy_fwd(m(2, 3, 4), m(2, 4, dtype=torch.long), None, -1, 0.0, "avg"),
         ValueError, "reduction"),
        (lambda: XO.masked_cross_entropy_fwd(m(2, 3, 4), m(2, 5, dtype=torch.long), None, -1, 0.0, "mean"),
         ValueError, "target"),
        (lambda: XO.masked_cross_entropy_fwd(m(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), None, -1, 0.0,
                                             "mean"), RuntimeError, "target"),
        (lambda: XO.soft_cross_entropy_fwd(m(2, 3, 4), m(2, 3, 5), None, "mean"), ValueError, "target_logits"),
        (lambda: XO.masked_l1_loss_fwd(m(2, 3, 4), m(2, 3, 4, dtype=torch.float16), None, 0.0, "sum"), TypeError,
         "target"),
        (lambda: XO.cosine_similarity_loss_fwd(m(2, 3, 4), m(2, 3, 4), m(2, 5), 1e-8, "mean", 1), ValueError, "mask"),
        (lambda: XO.sigmoid_gate(m(2, 3), m(3, 2)), ValueError, "gate_logits"),
    ]


@pytest.mark.parametrize("index", range(len(_fake_mode_calls())))
def test_meta_kernels_validate(index):
    call, exc, name = _fake_mode_calls()[index]
    with pytest.raises(exc, match=name):
        call()


def test_fake_tensor_mode_validates_and_matches_real_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    z, t = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    real = XO.masked_cross_entropy_fwd(z, t, None, -1, 0.0, "none")
    t_float = t.float()
    with FakeTensorMode() as mode:
        fz, ft = mode.from_tensor(z), mode.from_tensor(t)
        fake = XO.masked_cross_entropy_fwd(fz, ft, None, -1, 0.0, "none")
        assert [tuple(f.shape) for f in fake] == [tuple(r.shape) for r in real]
        assert [f.stride() for f in fake] == [r.stride() for r in real]
        with pytest.raises(TypeError, match="target"):
            XO.masked_cross_entropy_fwd(fz, mode.from_tensor(t_float), None, -1, 0.0, "none")
        with pytest.raises(ValueError, match="reduction"):
            XO.masked_cross_entropy_fwd(fz, ft, None, -1, 0.0, "avg")


# ----------------------------------------------------------------------------------------------
# float8 inputs raise the documented TypeError naming the argument (not NotImplementedError).


@pytest.mark.parametrize("f8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_float8_is_a_type_error(f8):
    x = torch.randn(2, 3, 4, 5)
    t = torch.randint(0, 3, (2, 4, 5))
    cases = [
        (lambda: ops.masked_cross_entropy(x.to(f8), t), "logits"),
        (lambda: ops.masked_cross_entropy(x, t, weight=torch.ones(3).to(f8)), "weight"),
        (lambda: ops.soft_cross_entropy(x.to(f8), x.to(f8)), "logits"),
        (lambda: ops.masked_l1_loss(x.to(f8), x.to(f8)), "pred"),
        (lambda: ops.masked_l1_loss(x, x, torch.ones(2, 4, 5).to(f8)), "mask"),
        (lambda: ops.cosine_similarity_loss(x.to(f8), x.to(f8)), "a"),
        (lambda: ops.sigmoid_gate(x.to(f8), x.to(f8)), "x"),
        (lambda: ops.sigmoid_gate(x, x.to(f8)), "gate_logits"),
    ]
    for call, name in cases:
        with pytest.raises(TypeError, match=name):
            call()


# ----------------------------------------------------------------------------------------------
# torch.func: grad, vjp, jacrev (and vmap of them) on every op.


def _func_cases():
    z = _randn((2, 3, 2, 3), 130)
    t = torch.randint(0, 3, (2, 2, 3), generator=_gen(131))
    t[0, 0, 0] = -1
    b = _randn((2, 3, 2, 3), 132)
    m = torch.rand(2, 1, 2, 3, generator=_gen(133)) > 0.3
    w = torch.rand(3, generator=_gen(134), dtype=torch.float64) + 0.5
    return [
        ("masked_cross_entropy", z, lambda x: ops.masked_cross_entropy(x, t, -1, w, 0.1, "none")),
        ("soft_cross_entropy", z, lambda x: ops.soft_cross_entropy(x, b, m, "none")),
        ("masked_l1_loss", z, lambda x: ops.masked_l1_loss(x, b, m, None, "none")),
        ("cosine_similarity_loss", z, lambda x: ops.cosine_similarity_loss(x, b, m, 1e-8, "none")),
        ("sigmoid_gate", z, lambda x: ops.sigmoid_gate(x, b)),
    ]


@pytest.mark.parametrize("case", _func_cases(), ids=lambda c: c[0])
def test_torch_func_grad_vjp_and_jacrev(case):
    _, x0, fn = case
    up = _randn(fn(x0).shape, 135)

    def scalar(x):
        return (fn(x) * up).sum()

    x = x0.clone().requires_grad_()
    (expected,) = torch.autograd.grad(scalar(x), x)
    torch.testing.assert_close(torch.func.grad(scalar)(x0), expected, rtol=1e-12, atol=1e-14)
    _, vjp_fn = torch.func.vjp(fn, x0)
    torch.testing.assert_close(vjp_fn(up)[0], expected, rtol=1e-12, atol=1e-14)
    jac = torch.func.jacrev(fn)(x0)
    eye = torch.eye(fn(x0).numel(), dtype=x0.dtype).view(-1, *fn(x0).shape)
    rows = [torch.autograd.grad(fn(xs := x0.clone().requires_grad_()), xs, e)[0] for e in eye]
    torch.testing.assert_close(jac.reshape(len(rows), -1), torch.stack(rows).reshape(len(rows), -1))
    # per-sample gradients: vmap over a leading batch of the whole call
    batched = torch.stack([x0, 2 * x0])
    per_sample = torch.func.vmap(torch.func.grad(scalar))(batched)
    torch.testing.assert_close(per_sample[1], torch.func.grad(scalar)(2 * x0), rtol=1e-12, atol=1e-14)


def test_torch_func_second_order():
    z = _randn((1, 4, 2, 3), 136)
    t = torch.randint(0, 4, (1, 2, 3), generator=_gen(137))
    hess = torch.func.jacrev(torch.func.grad(lambda x: ops.masked_cross_entropy(x, t)))(z)
    ref = torch.func.jacrev(torch.func.grad(lambda x: F.cross_entropy(x, t)))(z)
    torch.testing.assert_close(hess, ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True, dynamic=True): one graph across shapes for both mask forms ([N, 1, H, W]
# included: no recompilation per shape).


@pytest.mark.parametrize("form", ["n1hw", "nhw"])
def test_compile_dynamic_one_graph_per_mask_form(form):
    from torch._dynamo.utils import counters

    def losses(p, t, m, y):
        return (ops.masked_l1_loss(p, t, m) + ops.soft_cross_entropy(p, t, m, "sum")
                + ops.cosine_similarity_loss(p, t, m) + ops.masked_cross_entropy(p, y, -1, None, 0.1)
                + ops.sigmoid_gate(p, t).mean())

    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = torch.compile(losses, fullgraph=True, dynamic=True, backend="aot_eager")
        # sizes all distinct within a call (no duck-sizing equality guards between them)
        for i, (n, h, w) in enumerate([(2, 5, 7), (4, 6, 9), (5, 7, 11), (6, 9, 8), (7, 11, 13), (2, 13, 10)]):
            p, t = _randn((n, 3, h, w), 140 + i), _randn((n, 3, h, w), 150 + i)
            m = torch.rand(n, 1, h, w, generator=_gen(160 + i)) > 0.3
            m = m if form == "n1hw" else m[:, 0]
            y = torch.randint(-1, 3, (n, h, w), generator=_gen(170 + i))
            p1, p2 = p.clone().requires_grad_(), p.clone().requires_grad_()
            out, ref = compiled(p1, t, m, y), losses(p2, t, m, y)
            out.backward()
            ref.backward()
            torch.testing.assert_close(out, ref)
            torch.testing.assert_close(p1.grad, p2.grad)
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    finally:
        torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# sigmoid_gate keeps x's memory format (channels_last stays channels_last), forward and gradients.


def test_gate_keeps_channels_last():
    cl = torch.channels_last
    x = _randn((2, 5, 4, 3), 170, torch.float32).contiguous(memory_format=cl)
    g = _randn((2, 5, 4, 3), 171, torch.float32, 3.0).contiguous(memory_format=cl)
    xr, gr = x.clone().requires_grad_(), g.clone().requires_grad_()
    out = ops.sigmoid_gate(xr, gr)
    assert out.is_contiguous(memory_format=cl) and out.stride() == (x * torch.sigmoid(g)).stride()
    up = _randn(out.shape, 172, torch.float32)
    out.backward(up)
    x64, g64 = x.double().requires_grad_(), g.double().requires_grad_()
    ref = x64 * torch.sigmoid(g64)
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(xr.grad.double(), x64.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gr.grad.double(), g64.grad, rtol=1e-6, atol=1e-7)
    # mixed layouts: the output follows x
    assert ops.sigmoid_gate(x, g.contiguous()).is_contiguous(memory_format=cl)
    assert ops.sigmoid_gate(x.contiguous(), g).is_contiguous()


# ----------------------------------------------------------------------------------------------
# An expanded upstream gradient (out.sum()) is read by stride, not copied out before the kernel.


def _copies_in_backward(make_loss, leaf):
    x = leaf.clone().requires_grad_()
    loss = make_loss(x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()

    def in_op(event):  # inside one of this library's ops
        while event is not None:
            if event.name.startswith("xtc_ext::"):
                return True
            event = event.cpu_parent
        return False

    copies = ("aten::copy_", "aten::clone", "aten::contiguous")
    return [e.name for e in prof.events() if e.name in copies and in_op(e)], x.grad


@pytest.mark.parametrize("name", ["sigmoid_gate", "masked_l1_loss", "masked_cross_entropy", "soft_cross_entropy",
                                  "cosine_similarity_loss"])
def test_expanded_upstream_gradient_is_not_materialised(name):
    x0 = _randn((2, 3, 8, 9), 180, torch.float32)
    other = _randn((2, 3, 8, 9), 181, torch.float32)
    target = torch.randint(0, 3, (2, 8, 9), generator=_gen(182))
    call = {
        "sigmoid_gate": lambda x: ops.sigmoid_gate(x, other),
        "masked_l1_loss": lambda x: ops.masked_l1_loss(x, other, reduction="none"),
        "masked_cross_entropy": lambda x: ops.masked_cross_entropy(x, target, reduction="none"),
        "soft_cross_entropy": lambda x: ops.soft_cross_entropy(x, other, reduction="none"),
        "cosine_similarity_loss": lambda x: ops.cosine_similarity_loss(x, other, reduction="none"),
    }[name]
    copies, grad = _copies_in_backward(lambda x: call(x).sum() * 1.5, x0)
    assert copies == [], copies
    x = x0.clone().requires_grad_()
    out = call(x)
    out.backward(torch.full_like(out, 1.5))  # the same gradient, dense
    assert torch.equal(grad, x.grad)


# ----------------------------------------------------------------------------------------------
# torch.func.vmap through the registered batching rules.


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 5, 3, 4)], ids=str)
def test_vmap_batching_rules_match_a_loop(shape, reduction):
    """vmap and vmap(grad) of every op equal a loop over the samples, through the registered batching rules
    (PyTorch's per-sample fallback would warn: warnings are errors here)."""
    B, cd = 3, 1 if len(shape) > 1 else 0
    z, t = _randn((B, *shape), 190), _randn((B, *shape), 191)
    pixel = shape[:cd] + shape[cd + 1:]
    y = torch.randint(0, shape[cd], (B, *pixel), generator=_gen(192))
    m = torch.rand(B, *pixel, generator=_gen(193)) > 0.3
    fns = [
        (lambda a, b, mm: ops.soft_cross_entropy(a, b, mm, reduction), (z, t, m)),
        (lambda a, b, mm: ops.masked_l1_loss(a, b, mm, 0.0, reduction), (z, t, m)),
        (lambda a, b, mm: ops.cosine_similarity_loss(a, b, mm, 1e-8, reduction, cd), (z, t, m)),
        (lambda a, b, mm: ops.sigmoid_gate(a, b), (z, t, m)),
    ]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn, xs in fns:
            for f in (fn, torch.func.grad(lambda *a: fn(*a).sum())):
                batched = torch.func.vmap(f)(*xs)
                looped = torch.stack([f(*[x[i] for x in xs]) for i in range(B)])
                torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
        for f in (lambda a, yy: ops.masked_cross_entropy(a, yy, -1, None, 0.1, reduction),
                  torch.func.grad(lambda a, yy: ops.masked_cross_entropy(a, yy, -1, None, 0.1, reduction).sum())):
            batched = torch.func.vmap(f)(z, y)
            looped = torch.stack([f(z[i], y[i]) for i in range(B)])
            torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
