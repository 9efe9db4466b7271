"""Adversarial input classes not covered by test_hostile_inputs.py: non-finite values where a pixel does
not count, aliased and expanded operands, non-contiguous class weights, inference mode, and double backward
in the new shape conventions. References are float64 PyTorch computations.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from xtc_ext import ops, reference


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_non_finite_values_where_pixels_do_not_count(bad, reduction):
    """NaN/inf in ignored (CE), masked (soft-CE, cosine) or invalid (L1) pixels: the loss equals the loss with
    finite values there and the gradient there is exactly 0 (PyTorch's eager masking leaks NaN into it)."""
    z, t = _randn((2, 4, 3, 5), 1, 2.0), _randn((2, 4, 3, 5), 2, 2.0)
    drop = torch.rand(2, 3, 5, generator=_gen(3)) < 0.3
    target = torch.randint(0, 4, (2, 3, 5), generator=_gen(4))
    target[drop] = -1
    poisoned = z.clone()
    poisoned.permute(0, 2, 3, 1)[drop] = bad
    l1_target = t.clone()
    l1_target.permute(0, 2, 3, 1)[drop] = 0.0  # invalid_value
    cases = [
        lambda x: ops.masked_cross_entropy(x, target, -1, None, 0.1, reduction),
        lambda x: ops.soft_cross_entropy(x, t, ~drop, reduction),
        lambda x: ops.cosine_similarity_loss(x, t, ~drop, 1e-8, reduction),
        lambda x: ops.masked_l1_loss(x, l1_target, ~drop, 0.0, reduction),
    ]
    for fn in cases:
        clean, dirty = z.clone().requires_grad_(), poisoned.clone().requires_grad_()
        out_clean, out_dirty = fn(clean), fn(dirty)
        up = _randn(out_clean.shape, 5)
        (out_clean * up).sum().backward()
        (out_dirty * up).sum().backward()
        assert torch.equal(out_dirty, out_clean)
        assert torch.equal(dirty.grad, clean.grad)
        assert torch.equal(dirty.grad.permute(0, 2, 3, 1)[drop], torch.zeros(int(drop.sum()), 4, dtype=torch.float64))


def test_aliased_operands():
    """The same tensor as both operands: both gradient contributions reach it (cosine of x with itself is 0)."""
    x = _randn((2, 3, 4, 5), 6).requires_grad_()
    y = _randn((2, 3, 4, 5), 6).requires_grad_()
    ops.sigmoid_gate(x, x).sum().backward()
    reference.sigmoid_gate(y, y).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-14)
    x.grad = None
    loss = ops.cosine_similarity_loss(x, x, reduction="sum")
    assert abs(loss.item()) < 1e-12
    loss.backward()
    assert x.grad.abs().max() < 1e-12


def test_expanded_and_non_contiguous_operands():
    """Inputs with zero strides (expand), a non-contiguous weight and a broadcast mask give the results of
    their materialised copies."""
    z = _randn((1, 5, 3, 4), 7).expand(3, 5, 3, 4)
    target = torch.randint(0, 5, (1, 3, 4), generator=_gen(8)).expand(3, 3, 4)
    weight = _randn((10,), 9).abs()[::2]
    mask = (torch.rand(1, 1, 4, generator=_gen(10)) < 0.5).expand(3, 3, 4)
    for fn in (
        lambda x, t, w, m: ops.masked_cross_entropy(x, t, -1, w, 0.2, "none"),
        lambda x, t, w, m: ops.soft_cross_entropy(x, x.flip(1), m, "sum"),
        lambda x, t, w, m: ops.cosine_similarity_loss(x, x.flip(1), m, 1e-8, "mean"),
    ):
        a = z.clone().requires_grad_()
        out = fn(z, target, weight, mask)
        ref = fn(z.contiguous(), target.contiguous(), weight.contiguous(), mask.contiguous())
        assert torch.equal(out, ref)
        fn(a, target, weight, mask).sum().backward()
        assert torch.isfinite(a.grad).all()


def test_nan_invalid_value_is_rejected():
    """NaN equals nothing, so invalid_value=NaN would silently mark no target invalid."""
    x = torch.randn(2, 1, 3, 4)
    for fn in (ops.masked_l1_loss, reference.masked_l1_loss):
        with pytest.raises(ValueError, match="invalid_value"):
            fn(x, x, invalid_value=float("nan"))


def test_concurrent_calls_from_threads():
    """Calls from several Python threads at once (each running its own OpenMP loops) give the results of
    sequential calls, bitwise."""
    z = _randn((4, 6, 17, 33), 20, 3.0)
    target = torch.randint(0, 6, (4, 17, 33), generator=_gen(21))

    def work(k):
        x = (z * (1 + k / 8)).requires_grad_()
        loss = ops.masked_cross_entropy(x, target, -1, None, 0.1) + ops.soft_cross_entropy(x, z.flip(1))
        loss.backward()
        return loss.detach(), x.grad

    expected = [work(k) for k in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(8)))
    for (loss, grad), (e_loss, e_grad) in zip(results, expected):
        assert torch.equal(loss, e_loss) and torch.equal(grad, e_grad)


def test_inference_mode_and_no_grad():
    z = _randn((2, 3, 4, 5), 11).requires_grad_()
    target = torch.randint(0, 3, (2, 4, 5), generator=_gen(12))
    with torch.inference_mode():
        a = ops.masked_cross_entropy(z, target)
    with torch.no_grad():
        b = ops.masked_cross_entropy(z, target)
    assert not a.requires_grad and not b.requires_grad
    torch.testing.assert_close(a, F.cross_entropy(z.detach(), target), rtol=1e-12, atol=1e-12)
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 1, 2)], ids=["NC", "5D"])
def test_double_backward_in_pytorch_shapes(shape):
    z = _randn(shape, 13).requires_grad_()
    t = _randn(shape, 14)
    target = torch.randint(0, 3, shape[:1] + shape[2:], generator=_gen(15))
    mask = torch.rand(shape[:1] + shape[2:], generator=_gen(16)) < 0.7
    for fn in (
        lambda x: ops.masked_cross_entropy(x, target, -1, None, 0.1, "mean"),
        lambda x: ops.soft_cross_entropy(x, t, mask.unsqueeze(1), "none"),
        lambda x: ops.cosine_similarity_loss(x, t, mask, 1e-8, "sum"),
        lambda x: ops.sigmoid_gate(x, t),
    ):
        assert torch.autograd.gradgradcheck(fn, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)
