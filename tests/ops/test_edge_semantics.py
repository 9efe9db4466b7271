"""Edge semantics of the CPU kernels that the CUDA kernels must match (docs/ops.md, "Values" and "Reductions"):

- a pixel that counts but whose upstream scale is 0 (reduction "none" with a zero upstream gradient there, or
  a mean whose denominator is 0 because the present classes weigh 0) gets an exactly-zero gradient, even
  with inf/NaN inputs at that pixel;
- ``sigmoid_gate``'s gate gradient has no intermediate overflow for |grad_out| up to the largest float;
- the cosine ``eps`` must be > 0 in the accumulation type (float32 below float64 inputs);
- a NaN or inf input at a counted pixel of ``cosine_similarity_loss`` makes that pixel's whole gradient
  (every channel of both inputs) non-finite, as PyTorch; masked pixels keep an exactly-zero gradient.

References are float64 PyTorch computations.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtc_ext import ops

NAN, INF = float("nan"), float("inf")


def _randn(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------------------------
# Zero upstream scale at a counted pixel: exactly-zero gradient there (not NaN).


def _poison_pixel(x, bad, n=0, h=1, w=2):
    """x with its first channels at pixel (n, h, w) set to bad (channel 0) and a finite value (channel 1)."""
    x = x.clone()
    x[n, 0, h, w] = bad
    x[n, 1, h, w] = 3.0
    return x


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_zero_upstream_gradient_at_valid_pixel_is_exactly_zero(bad, dtype):
    """reduction "none": the upstream gradient is 0 at the poisoned (valid) pixel and random elsewhere; the
    gradient there is exactly 0 in every channel and equals the float64 reference everywhere else."""
    z = _poison_pixel(_randn((2, 4, 3, 5), 1), bad)
    t = _poison_pixel(_randn((2, 4, 3, 5), 2), bad, n=1)  # soft-CE target / cosine b: poisoned elsewhere
    target = torch.randint(0, 4, (2, 3, 5), generator=torch.Generator().manual_seed(3))
    up = _randn((2, 3, 5), 4)
    up[0, 1, 2] = 0.0
    up[1, 1, 2] = 0.0
    tt = t.to(dtype).double()  # the target as the op sees it
    cases = [
        ("ce", lambda x: ops.masked_cross_entropy(x, target, -1, None, 0.1, "none"),
         lambda x: F.cross_entropy(x, target, ignore_index=-1, label_smoothing=0.1, reduction="none")),
        ("soft_ce", lambda x: ops.soft_cross_entropy(x, t.to(dtype), None, "none"),
         lambda x: -(torch.softmax(tt, 1) * torch.log_softmax(x, 1)).sum(1)),
        ("cosine", lambda x: ops.cosine_similarity_loss(x, t.to(dtype), None, 1e-8, "none"),
         lambda x: 1 - F.cosine_similarity(x, tt, dim=1, eps=1e-8)),
    ]
    for name, ours, ref in cases:
        x = z.to(dtype).clone().requires_grad_()
        ours(x).backward(up.to(torch.float64 if dtype == torch.float64 else torch.float32))
        x64 = z.to(dtype).double().clone().requires_grad_()
        ref(x64).backward(up)
        g = x.grad.double()
        assert torch.equal(g[0, :, 1, 2], torch.zeros(4, dtype=torch.float64)), (name, g[0, :, 1, 2])
        if name != "ce":  # the target side is poisoned at (1, :, 1, 2), whose scale is 0 too
            assert torch.equal(g[1, :, 1, 2], torch.zeros(4, dtype=torch.float64)), (name, g[1, :, 1, 2])
        keep = torch.ones(2, 3, 5, dtype=torch.bool)
        keep[:, 1, 2] = False
        keep = keep.unsqueeze(1).expand_as(g)
        tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g[keep], x64.grad[keep], **tol, msg=name)


@pytest.mark.parametrize("bad", [NAN, INF])
def test_zero_scalar_upstream_gradient_is_exactly_zero(bad):
    """(0 * loss).backward() with inf/NaN logits at a valid pixel: the whole gradient is exactly 0 (a task
    weighted 0 in a multi-task sum must not put NaN into the shared backbone)."""
    z = _poison_pixel(_randn((2, 4, 3, 5), 5, torch.float32), bad)
    t = _randn((2, 4, 3, 5), 6, torch.float32)
    target = torch.randint(0, 4, (2, 3, 5), generator=torch.Generator().manual_seed(7))
    for reduction in ("mean", "sum", "none"):
        for f in (lambda x: ops.masked_cross_entropy(x, target, -1, None, 0.0, reduction),
                  lambda x: ops.soft_cross_entropy(x, t, None, reduction),
                  lambda x: ops.cosine_similarity_loss(x, t, None, 1e-8, reduction)):
            x = z.clone().requires_grad_()
            (0.0 * f(x)).sum().backward()
            assert torch.equal(x.grad, torch.zeros_like(x.grad)), reduction


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_zero_weight_mean_is_zero_with_non_finite_logits(bad, smoothing):
    """Mean whose denominator sum w_y is 0 (every present class weighs 0): loss 0 and an exactly-zero gradient
    even where a valid pixel has NaN/inf logits (the empty-mean rule)."""
    z = _poison_pixel(_randn((2, 4, 3, 5), 8, torch.float32), bad)
    target = torch.randint(0, 2, (2, 3, 5), generator=torch.Generator().manual_seed(9))  # classes 0 and 1 only
    weight = torch.tensor([0.0, 0.0, 1.0, 2.0])
    x = z.clone().requires_grad_()
    loss = ops.masked_cross_entropy(x, target, -1, weight, smoothing, "mean")
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x.grad))
    assert loss.item() == 0.0


# ----------------------------------------------------------------------------------------------
# sigmoid_gate: grad_gate = grad_out * x * s (1 - s) without intermediate overflow.


def _gate_reference(go, x, g):
    go, x, g = go.double(), x.double(), g.double()
    s = torch.sigmoid(g)
    return go * s, go * x * s * torch.sigmoid(-g)


# (grad_out, x, gate): grad_out near the largest float, where grad_out * p / d^2 (p up to 1.42) overflowed.
_GATE_CASES = [(3.4e38, 1e-10, -29.5), (-3.4e38, 1e-10, -29.5), (3.3e38, 2e-3, -29.5), (3.4e38, 1e-20, -60.3),
               (3.0e38, -1e-12, -10.4), (3.4e38, 1e-30, -80.0), (3.4e38, 1.0, -0.3), (3.4e38, 1e-5, 3.0)]


def _gate_inputs(dtype, with_large_gate):
    """512 elements: two 256-element CPU pieces, the cases at the start of each. With with_large_gate, one
    gate of the first piece is -100 (|g| > 87: that piece takes the exact GateExp path); the second piece has
    only small gates (the vectorised path)."""
    go, x, g = (_randn((512,), 10 + i, torch.float64) for i in range(3))
    for base in (0, 256):
        for i, (a, b, c) in enumerate(_GATE_CASES):
            go[base + i], x[base + i], g[base + i] = a, b, c
    if with_large_gate:
        g[100] = -100.0
    if dtype == torch.bfloat16:
        go = go.clamp(-3.3e38, 3.3e38)  # 3.4e38 rounds to inf in bfloat16
    return go.to(dtype), x.to(dtype), g.to(dtype)


@pytest.mark.parametrize("with_large_gate", [True, False], ids=["exact_path", "small_gates"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sigmoid_gate_grad_no_intermediate_overflow(dtype, with_large_gate):
    go, x, g = _gate_inputs(dtype, with_large_gate)
    xx, gg = x.clone().requires_grad_(), g.clone().requires_grad_()
    ops.sigmoid_gate(xx, gg).backward(go)
    ref_x, ref_g = _gate_reference(go, x, g)
    assert torch.isfinite(ref_g).all() and torch.isfinite(gg.grad).all(), gg.grad[~torch.isfinite(gg.grad)]
    # atol: the subnormal grad_gate of the g = -100 element (~4e-44), a few subnormal steps
    tol = dict(rtol=1e-2, atol=1e-43) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-43)
    torch.testing.assert_close(gg.grad.double(), ref_g.to(dtype).double(), **tol)
    torch.testing.assert_close(xx.grad.double(), ref_x.to(dtype).double(), **tol)
    # the reported case: grad_out 3.4e38, x 1e-10, gate -29.5 -> 5.2456e15 (fp32)
    if dtype == torch.float32:
        assert abs(gg.grad[0].item() / 5.2456e15 - 1) < 1e-4


# ----------------------------------------------------------------------------------------------
# cosine_similarity_loss eps: > 0 in the accumulation type.


@pytest.mark.parametrize("eps", [1e-46, 7e-46, 1e-300, 5e-324])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cosine_eps_zero_in_float32_is_rejected(eps, dtype):
    """An eps that rounds to 0 in float32 (the accumulation type of fp32/fp16/bf16) is a ValueError naming eps
    (it gave a NaN loss for a zero vector), in the forward, the backward and the meta kernels."""
    a = torch.zeros(2, 3, 4, dtype=dtype)
    b = torch.ones(2, 3, 4, dtype=dtype)
    with pytest.raises(ValueError, match="eps"):
        ops.cosine_similarity_loss(a, b, eps=eps)
    with pytest.raises(ValueError, match="eps"):
        ops.cosine_similarity_loss(a.to("meta"), b.to("meta"), eps=eps)
    den = torch.ones((), dtype=torch.float32)
    with pytest.raises(ValueError, match="eps"):
        torch.ops.xtc_ext.cosine_similarity_loss_bwd(den, a, b, None, den, eps, "mean", 1)


@pytest.mark.parametrize("eps", [1e-46, 1e-300, 5e-324])
def test_cosine_tiny_eps_float64_zero_vector(eps):
    """For float64 inputs eps is used in float64: 1e-46 and even the smallest subnormal are valid; a zero
    vector then has loss exactly 1 (cos 0), not NaN."""
    a = torch.zeros(2, 3, 4, dtype=torch.float64)
    b = _randn((2, 3, 4), 20)
    loss = ops.cosine_similarity_loss(a, b, eps=eps, reduction="none")
    assert torch.equal(loss, torch.ones_like(loss))


def test_cosine_smallest_float32_eps_zero_vector():
    """The smallest positive float32 (1.4e-45) is accepted and a zero vector's loss is 1, not NaN."""
    a = torch.zeros(2, 3, 4)
    b = _randn((2, 3, 4), 21, torch.float32)
    loss = ops.cosine_similarity_loss(a, b, eps=1.5e-45, reduction="none")
    assert torch.equal(loss, torch.ones_like(loss))


# ----------------------------------------------------------------------------------------------
# cosine_similarity_loss: a non-finite input at a counted pixel gives a non-finite gradient over the whole
# pixel (every channel, both inputs; not finite values in the pixel's other channels).


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cosine_non_finite_input_poisons_whole_pixel(bad, side, dtype, reduction):
    a, b = _randn((2, 4, 3, 6), 30), _randn((2, 4, 3, 6), 31)
    (a if side == "a" else b)[0, 2, 1, 3] = bad  # counted pixel (0, 1, 3)
    (a if side == "a" else b)[1, 0, 2, 4] = bad  # masked pixel (1, 2, 4)
    mask = torch.ones(2, 3, 6, dtype=torch.bool)
    mask[1, 2, 4] = False
    x, y = a.to(dtype).clone().requires_grad_(), b.to(dtype).clone().requires_grad_()
    loss = ops.cosine_similarity_loss(x, y, mask, 1e-8, reduction)
    loss.backward(torch.ones_like(loss))
    # PyTorch's autograd of 1 - cos gives NaN in every channel of both inputs at that pixel
    x64, y64 = a.to(dtype).double().clone().requires_grad_(), b.to(dtype).double().clone().requires_grad_()
    (1 - F.cosine_similarity(x64, y64, dim=1, eps=1e-8))[0, 1, 3].backward()
    assert not torch.isfinite(x64.grad[0, :, 1, 3]).any() and not torch.isfinite(y64.grad[0, :, 1, 3]).any()
    for g in (x.grad, y.grad):
        assert not torch.isfinite(g[0, :, 1, 3]).any(), g[0, :, 1, 3]
        assert torch.equal(g[1, :, 2, 4], torch.zeros(4, dtype=dtype))  # masked: exactly 0
        keep = torch.ones(2, 3, 6, dtype=torch.bool)
        keep[0, 1, 3] = False
        assert torch.isfinite(g.permute(0, 2, 3, 1)[keep]).all()  # no other pixel is touched
    if reduction == "none":
        assert torch.isnan(loss[0, 1, 3]) and loss[1, 2, 4] == 0 and torch.isfinite(loss[keep]).all()
    else:
        assert torch.isnan(loss)


@pytest.mark.parametrize("bad", [NAN, INF])
def test_cosine_non_finite_and_huge_values_in_one_block(bad):
    """A non-finite pixel next to pixels that take the rescaled path (|a| ~ 3e19) and ordinary ones in the same
    block: only the non-finite pixel is non-finite, the others equal the float64 reference."""
    a, b = _randn((1, 3, 1, 8), 40, torch.float32), _randn((1, 3, 1, 8), 41, torch.float32)
    a[0, :, 0, 1] *= 3e19
    b[0, 1, 0, 5] = bad
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    ops.cosine_similarity_loss(x, y, None, 1e-8, "sum").backward()
    x64, y64 = a.double().requires_grad_(), b.double().requires_grad_()
    keep = torch.ones(8, dtype=torch.bool)
    keep[5] = False
    (1 - F.cosine_similarity(x64, y64, dim=1, eps=1e-8))[..., keep].sum().backward()
    for g, rg in ((x.grad, x64.grad), (y.grad, y64.grad)):
        assert not torch.isfinite(g[0, :, 0, 5]).any()
        torch.testing.assert_close(g[..., keep].double(), rg[..., keep], rtol=1e-4, atol=1e-30)
