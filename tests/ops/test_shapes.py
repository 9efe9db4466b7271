"""PyTorch's shape conventions: ``(C,)``, ``(N, C)`` and ``(N, C, d1, ..., dk)`` with the
class/channel dim 1 (``cosine_similarity_loss``: ``dim``), targets and masks of the pixel shape, and the
reduction="none" output of the pixel shape, against ``torch.nn.functional`` in float64; and PyTorch's own
OpInfo sample inputs of ``nn.functional.cross_entropy`` (class-index targets), ``l1_loss`` and
``cosine_similarity``, every one of which must pass except the documented all-ignored mean (ours 0,
PyTorch NaN).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtc_ext import ops, reference

REDUCTIONS = ("mean", "sum", "none")
SHAPES = [(5,), (4, 5), (3, 5, 1), (2, 5, 7), (2, 5, 3, 4), (2, 5, 1, 2, 3), (1, 5, 2, 1, 2, 3)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale


def _pixel_shape(shape, cdim=1):
    cdim = cdim if len(shape) > 1 else 0
    return shape[:cdim] + shape[cdim + 1:]


def _value_and_grad(fn, x, up_seed=7):
    x = x.clone().requires_grad_()
    out = fn(x)
    up = _randn(out.shape, up_seed)
    (grad,) = torch.autograd.grad((out * up).sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cross_entropy_any_rank_matches_torch(shape, reduction):
    C = shape[1] if len(shape) > 1 else shape[0]
    z = _randn(shape, 1, 2.0)
    target = torch.randint(0, C, _pixel_shape(shape), generator=_gen(2))
    if target.numel() > 1:
        target.view(-1)[0] = -1
    w = torch.rand(C, generator=_gen(3), dtype=torch.float64) + 0.5
    kw = dict(ignore_index=-1, weight=w, label_smoothing=0.1, reduction=reduction)
    ours = _value_and_grad(lambda x: ops.masked_cross_entropy(x, target, **kw), z)
    theirs = _value_and_grad(lambda x: F.cross_entropy(x, target, **kw), z)
    assert ours[0].shape == theirs[0].shape
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_soft_ce_l1_cosine_any_rank(shape, reduction):
    z, t = _randn(shape, 4, 2.0), _randn(shape, 5, 2.0)
    pixel = _pixel_shape(shape)
    mask = torch.rand(pixel, generator=_gen(6)) > 0.3
    keep = mask.unsqueeze(1) if len(shape) > 1 else mask
    cases = [
        (lambda x: ops.soft_cross_entropy(x, t, mask, reduction),
         lambda x: reference.soft_cross_entropy(x, t, mask, reduction), pixel),
        (lambda x: ops.soft_cross_entropy(x, t, keep, reduction),
         lambda x: reference.soft_cross_entropy(x, t, mask, reduction), pixel),
        (lambda x: ops.masked_l1_loss(x, t, keep, None, reduction), lambda x: F.l1_loss(x, t, reduction=reduction)
         if bool(mask.all()) else reference.masked_l1_loss(x, t, keep, None, reduction), shape),
        (lambda x: ops.cosine_similarity_loss(x, t, None, 1e-8, reduction, dim=1 if len(shape) > 1 else 0),
         lambda x: _reduce(1 - F.cosine_similarity(x, t, dim=1 if len(shape) > 1 else 0), reduction), pixel),
    ]
    for fused, ref, none_shape in cases:
        ours, theirs = _value_and_grad(fused, z), _value_and_grad(ref, z)
        if reduction == "none":
            assert tuple(ours[0].shape) == tuple(none_shape)
        for o, r in zip(ours, theirs):
            torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)


def _reduce(per, reduction):
    return per if reduction == "none" else (per.sum() if reduction == "sum" else per.mean())


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_cosine_dim_and_broadcasting(dim):
    a = _randn((3, 1, 4), 8)
    b = _randn((1, 5, 4), 9)
    ours = _value_and_grad(lambda x: ops.cosine_similarity_loss(x, b, reduction="none", dim=dim), a)
    theirs = _value_and_grad(lambda x: 1 - F.cosine_similarity(x, b, dim=dim), a)
    through_dispatcher = _value_and_grad(
        lambda x: torch.ops.xtc_ext.cosine_similarity_loss(x, b, None, 1e-8, "none", dim), a)
    for o, t, d in zip(ours, theirs, through_dispatcher):
        torch.testing.assert_close(o, t, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(d, t, rtol=1e-12, atol=1e-13)


def test_pixel_shape_errors_name_the_argument():
    z = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(z, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(z[:, :, 0, 0], torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(z, z, torch.ones(2, 2, 4, 5))
    with pytest.raises(ValueError, match="b"):
        ops.cosine_similarity_loss(z, torch.randn(2, 3, 4, 6))
    with pytest.raises(ValueError, match="dim"):
        ops.cosine_similarity_loss(z, z, dim=4)


# ----------------------------------------------------------------------------------------------
# PyTorch's OpInfo samples


def _op_db_samples(name):
    common = pytest.importorskip("torch.testing._internal.common_methods_invocations")
    (info,) = [op for op in common.op_db if op.name == name and op.variant_test_name == ""]
    return list(info.sample_inputs("cpu", torch.float64, requires_grad=True))


def _check_sample(fused, reference_fn, sample, all_ignored=False):
    x = sample.input.detach().clone().requires_grad_()
    others = [a.detach() if isinstance(a, torch.Tensor) else a for a in sample.args]
    out = fused(x, *others, **sample.kwargs)
    x_ref = sample.input.detach().clone().requires_grad_()
    ref = reference_fn(x_ref, *others, **sample.kwargs)
    if all_ignored:  # documented: a mean over nothing is 0 (PyTorch: NaN), with zero gradient
        assert torch.isnan(ref) and out.item() == 0.0
        out.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
        return
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    up = torch.randn(out.shape, generator=_gen(11), dtype=out.dtype)
    (g,) = torch.autograd.grad((out * up).sum(), x)
    (rg,) = torch.autograd.grad((ref * up).sum(), x_ref)
    torch.testing.assert_close(g, rg, rtol=1e-12, atol=1e-13)


def test_opinfo_cross_entropy_class_index_samples():
    samples = [s for s in _op_db_samples("nn.functional.cross_entropy") if not s.args[0].is_floating_point()]
    assert len(samples) >= 10

    def fused(x, target, **kw):
        return ops.masked_cross_entropy(x, target, kw.pop("ignore_index", -100), **kw)

    for s in samples:
        target = s.args[0]
        ignored = target == s.kwargs.get("ignore_index", -100)
        _check_sample(fused, F.cross_entropy, s, bool(ignored.all()) and s.kwargs.get("reduction", "mean") == "mean")


def test_opinfo_l1_loss_samples():
    samples = _op_db_samples("nn.functional.l1_loss")
    assert len(samples) >= 5
    for s in samples:
        _check_sample(lambda x, t, **kw: ops.masked_l1_loss(x, t, None, None, **kw), F.l1_loss, s)


def test_opinfo_cosine_similarity_samples():
    samples = _op_db_samples("nn.functional.cosine_similarity")
    assert len(samples) >= 8

    def fused(x1, x2, dim=1, eps=1e-8):
        return 1 - ops.cosine_similarity_loss(x1, x2, None, eps, "none", dim)

    for s in samples:
        _check_sample(fused, F.cosine_similarity, s)
