"""Op-specific values of the fused ops against the eager references (the shared table: test_ops.py):
masked_l1_loss, cosine_similarity_loss and sigmoid_gate specifics, reduced precision (bf16/fp16 against fp32
on the same rounded inputs) and strided, channels_last and sliced inputs.
"""

from __future__ import annotations

import pytest
import torch

from xtc_ext import ops, reference

from op_cases import (
    CASES,
    REDUCTIONS,
    Sample,
    TOL,
    _bernoulli,
    _gen,
    _kw,
    _randn,
    _scaled_close,
    _upstream,
    _valid_pixels,
    build_cos,
    build_l1,
    case_params,
    run,
)


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
    with pytest.raises(ValueError, match="mask"):
        ops.masked_l1_loss(pred[0], pred[0], torch.ones(4, 5, dtype=torch.bool))  # (C, H, W): pixels (C, W)
    with pytest.raises(TypeError, match="pred"):
        ops.masked_l1_loss(pred.long(), pred.long())
    with pytest.raises(ValueError, match="mask"):
        ops.masked_l1_loss(pred, pred, torch.ones(2, 2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        ops.masked_l1_loss(pred, pred, torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        ops.masked_l1_loss(pred, pred, reduction="mean ")


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


# ----------------------------------------------------------------------------------------------
# 5. cosine_similarity_loss and sigmoid_gate specifics


def _cos_exact(a, b, mask=None, eps=1e-8, reduction="mean"):
    """1 - <a,b> / (max(|a|, eps) max(|b|, eps)) differentiated as written: a floored norm is a constant
    (F.cosine_similarity's autograd instead differentiates through the floor, see test_cos_zero_vectors)."""
    a, b = a.double(), b.double()
    d = a.norm(dim=1).clamp(min=eps) * b.norm(dim=1).clamp(min=eps)
    per = 1 - (a * b).sum(dim=1) / d
    valid = _valid_pixels(Sample([a, b], {"mask": mask}, ()))
    per = torch.where(valid, per, torch.zeros((), dtype=per.dtype))
    if reduction == "none":
        return per
    return per.sum() / (valid.sum().clamp(min=1) if reduction == "mean" else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("eps", [1e-8, 0.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cos_zero_vectors(reduction, eps, dtype):
    """Pixels with a = 0, b = 0, both 0 (the eps branch, gradient ~1/eps) and tiny nonzero vectors below
    eps: finite, equal to the reference for exact zeros (loss and both gradients), and for norms in
    (0, eps) equal to the exact derivative of the eps rule (F.cosine_similarity's autograd there keeps the
    derivative of the floored norm, which the fused op does not)."""
    g = _gen(37)
    shape = (2, 3, 4, 9)
    sample = build_cos(shape, dtype, g, mask_kind="nhw")
    a, b = sample.args
    sample.kwargs["eps"] = eps
    zero_a, zero_b = torch.zeros(2, 4, 9, dtype=torch.bool), torch.zeros(2, 4, 9, dtype=torch.bool)
    zero_a[0, 0, :3] = zero_a[1, 2, 4] = True
    zero_b[0, 0, 2:5] = zero_b[1, 3, 8] = True  # [0, 0, 2]: both zero
    a.permute(0, 2, 3, 1)[zero_a] = 0
    b.permute(0, 2, 3, 1)[zero_b] = 0
    tiny = torch.zeros(2, 4, 9, dtype=torch.bool)
    tiny[1, 1, :3] = True
    a.permute(0, 2, 3, 1)[tiny] = (torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64) * eps).to(dtype)
    sample.kwargs["mask"][:, :, :] = True
    sample.kwargs["mask"][1, 0, 0] = False
    special = zero_a | zero_b | tiny

    loss, grads = run(ops.cosine_similarity_loss, sample, reduction, 37)
    ref_loss, ref_grads = run(reference.cosine_similarity_loss, sample, reduction, 37)
    exact_loss, exact_grads = run(_cos_exact, sample, reduction, 37)
    assert torch.isfinite(loss).all() and all(torch.isfinite(gr).all() for gr in grads)
    rtol, atol_rel = TOL[dtype]
    _scaled_close(loss, ref_loss, rtol, atol_rel)
    if reduction == "none":
        torch.testing.assert_close(loss[zero_a | zero_b], torch.ones_like(loss[zero_a | zero_b]))
    exact = (~tiny).unsqueeze(-1).expand(2, 4, 9, 3)
    for gr, rg, eg in zip(grads, ref_grads, exact_grads):
        gr, rg, eg = (t.permute(0, 2, 3, 1) for t in (gr, rg, eg))
        for pixels in (~special, special & ~tiny, tiny):  # ordinary pixels and eps-branch pixels separately
            _scaled_close(gr[pixels], eg[pixels].to(dtype), rtol, atol_rel)
        _scaled_close(gr[exact & special.unsqueeze(-1)], rg[exact & special.unsqueeze(-1)], rtol, atol_rel)
    # the eps branch is really taken: |grad_a| ~ |upstream| / eps at a = 0 (not 0, not inf)
    assert grads[0].permute(0, 2, 3, 1)[zero_a & ~zero_b].abs().max() > 0


def test_cos_bad_args():
    a = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="eps"):
        ops.cosine_similarity_loss(a, a, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        ops.cosine_similarity_loss(a, a, eps=-1e-8)
    with pytest.raises(ValueError, match="b"):
        ops.cosine_similarity_loss(a, torch.randn(2, 4, 4, 5))
    with pytest.raises(TypeError, match="b"):
        ops.cosine_similarity_loss(a, a.double())
    with pytest.raises(ValueError, match="dim"):
        ops.cosine_similarity_loss(a[0, 0, 0, 0], a[0, 0, 0, 0])  # 0-D with dim=1
    with pytest.raises(ValueError, match="a"):
        ops.cosine_similarity_loss(a[:, :0], a[:, :0])  # no channel
    with pytest.raises(TypeError, match="a"):
        ops.cosine_similarity_loss(a.long(), a.long())
    with pytest.raises(ValueError, match="mask"):
        ops.cosine_similarity_loss(a, a, torch.ones(2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        ops.cosine_similarity_loss(a, a, torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        ops.cosine_similarity_loss(a, a, reduction="avg")


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4), (2, 3, 4, 5), (1, 2, 3, 4, 5), (4, 70000)],
                         ids=lambda s: "x".join(map(str, s)) or "scalar")
def test_gate_any_shape(shape):
    sample = Sample([_randn(shape, _gen(38), torch.float32), _randn(shape, _gen(39), torch.float32, 3.0)], {}, (0, 1))
    out, grads = run(ops.sigmoid_gate, sample, None, 38)
    # against float64 (the fused op is exact to a few ulp; an fp32 eager reference is not closer than that)
    ref_out, ref_grads = run(reference.sigmoid_gate, sample, None, 38, cast=torch.float64)
    assert out.shape == shape and out.dtype == torch.float32
    _scaled_close(out.double(), ref_out, 1e-6, 1e-7)
    for g, rg in zip(grads, ref_grads):
        _scaled_close(g.double(), rg, 1e-6, 1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gate_huge_logits(dtype):
    """Saturated gates (logits +-1e4, exp overflows in every dtype): output x or 0, finite gradients."""
    g = _gen(40)
    x = _randn((2, 3, 4, 50), g, dtype, 10.0)
    gate = torch.where(_bernoulli(x.shape, g, 0.5), 1e4, -1e4).to(dtype)  # bf16 rounds 1e4 to 9984
    gate[0, 0, 0, :5] = torch.tensor([0.0, 30.0, -30.0, 100.0, -100.0], dtype=dtype)
    sample = Sample([x, gate], {}, (0, 1))
    out, (gx, gg) = run(ops.sigmoid_gate, sample, None, 40)
    ref_out, (rgx, rgg) = run(reference.sigmoid_gate, sample, None, 40, cast=torch.float64)
    assert out.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gg).all()
    for actual, expected in ((out, ref_out), (gx, rgx), (gg, rgg)):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-2 if dtype.itemsize == 2 else 1e-6, atol=1e-6)
    on, off = gate > 1000, gate < -1000
    torch.testing.assert_close(out[on], x[on])
    assert out[off].abs().max().item() < 1e-30
    assert gg[on | off].abs().max().item() < 1e-30  # s (1 - s) = 0 to the dtype's resolution


def test_gate_bad_args():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="gate_logits"):
        ops.sigmoid_gate(x, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="gate_logits"):
        ops.sigmoid_gate(x, torch.randn(3, 4))  # no broadcasting
    with pytest.raises(TypeError, match="gate_logits"):
        ops.sigmoid_gate(x, x.double())
    with pytest.raises(TypeError, match="gate_logits"):
        ops.sigmoid_gate(x, x.long())
    with pytest.raises(TypeError, match="x"):
        ops.sigmoid_gate(x.long(), x.long())


@pytest.mark.parametrize("case,reduction", case_params([CASES["cosine_similarity_loss"], CASES["sigmoid_gate"]]))
def test_two_input_grads(case, reduction):
    """Gradients flow to both inputs; with only one requiring grad the other gets None and the gradient
    of the one is unchanged."""
    sample = case.build((2, 3, 5, 11), torch.float32, _gen(41))
    _, both = run(case.fused, sample, reduction, 41)
    assert all(g.abs().sum() > 0 for g in both)
    for k in (0, 1):
        args = [a.clone().requires_grad_(i == k) for i, a in enumerate(sample.args)]
        out = case.fused(*args, **_kw(sample.kwargs, reduction))
        (out * _upstream(out, 41)).sum().backward()
        assert args[1 - k].grad is None
        assert torch.equal(args[k].grad, both[k])
    args = [a.clone() for a in sample.args]
    out = case.fused(*args, **_kw(sample.kwargs, reduction))
    assert not out.requires_grad and out.grad_fn is None


# ----------------------------------------------------------------------------------------------
# 6. Reduced precision: fused on bf16/fp16 vs the reference in fp32 on the same rounded inputs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_low_precision(case, reduction, dtype):
    shape = (2, 5, 7, 300)
    sample = case.build(shape, dtype, _gen(19))
    loss, grads = run(case.fused, sample, reduction, 19)
    ref_loss, ref_grads = run(case.ref, sample, reduction, 19, cast=torch.float32)
    assert loss.dtype == case.out_dtype(dtype)
    torch.testing.assert_close(loss.float(), ref_loss, rtol=1e-2, atol=1e-2)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert torch.isfinite(g).all()
        _scaled_close(g.float(), rg, 1e-2, 1e-2)
    # the fused op also agrees with the reference run directly on the low-precision inputs
    direct_loss, _ = run(case.ref, sample, reduction, 19)
    assert direct_loss.dtype == loss.dtype
    torch.testing.assert_close(loss.float(), direct_loss.float(), rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# 7. Non-contiguous and channels_last inputs


def _transposed_copy(x):
    """Same values, non-contiguous strides (a transposed view of a contiguous tensor)."""
    if x.dim() == 4:
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_strided_inputs(case, reduction, layout):
    shape = (2, 3, 9, 31)
    sample = case.build(shape, torch.float32, _gen(20))
    base_loss, base_grads = run(case.fused, sample, reduction, 20)
    change = _transposed_copy if layout == "transposed" else _channels_last
    strided = Sample(
        [change(a) for a in sample.args],
        {k: (change(v) if isinstance(v, torch.Tensor) and k != "weight" else v) for k, v in sample.kwargs.items()},
        sample.grad_idx,
    )
    assert not strided.args[0].is_contiguous()
    loss, grads = run(case.fused, strided, reduction, 20)
    assert torch.equal(loss, base_loss)
    for g, bg in zip(grads, base_grads):
        assert torch.equal(g, bg)


@pytest.mark.parametrize("case,reduction", case_params(reductions=("mean", "none")))
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
    kwargs = {k: (widen(v)[..., ::2] if isinstance(v, torch.Tensor) and k != "weight" else v)
              for k, v in sample.kwargs.items()}
    assert not args[0].is_contiguous()
    loss = case.fused(*args, **_kw(kwargs, reduction))
    (loss * _upstream(loss, 21)).sum().backward()
    assert torch.equal(loss.detach(), base_loss)
    for i, bg in zip(sample.grad_idx, base_grads):
        g = leaves[i].grad
        assert torch.equal(g[..., ::2], bg)
        assert torch.equal(g[..., 1::2], torch.zeros_like(g[..., 1::2]))
