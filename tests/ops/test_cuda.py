"""CUDA-only tests of the device code paths that the CPU cannot reach (skipped without a CUDA device):
grids past the finalize block and the 4096-block cap, the half-type vector path, misaligned inputs, and the
hostile-input behaviour on CUDA (shapes, layouts, broadcast gradients, exact gate, huge norms,
device mixing). Each compares the CUDA kernels with the CPU kernels or a float64 reference.
"""

from __future__ import annotations

import pytest
import torch

from xtc_ext import ops, reference

from op_cases import misaligned

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none available)")
REDUCTIONS = ("mean", "sum", "none")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(name, shape, dtype, seed):
    """CPU inputs of op `name` (values in dtype) and the index of the differentiable ones."""
    g = _gen(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    y = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    cdim = 1 if len(shape) > 1 else 0
    pixel = shape[:cdim] + shape[cdim + 1:]
    mask = torch.rand(pixel, generator=g) < 0.8
    if name == "masked_cross_entropy":
        t = torch.randint(0, shape[cdim], pixel, generator=g)
        t[~mask] = -1
        return [x, t], {"ignore_index": -1, "weight": torch.rand(shape[cdim], generator=g).to(dtype) + 0.5,
                        "label_smoothing": 0.1}, (0,)
    if name == "cosine_similarity_loss":
        return [x, y], {"mask": mask, "dim": cdim}, (0, 1)
    if name == "sigmoid_gate":
        return [x, y], {}, (0, 1)
    return [x, y], {"mask": mask}, (0, 1) if name in ("masked_l1_loss", "cosine_similarity_loss") else (0,)


def _run(fn, args, kwargs, grad_idx, reduction, seed):
    leaves = [a.detach().clone().requires_grad_() if i in grad_idx else a for i, a in enumerate(args)]
    out = fn(*leaves, **(kwargs if reduction is None else {**kwargs, "reduction": reduction}))
    up = torch.randn(out.shape, generator=_gen(seed), dtype=torch.float64).to(out.dtype).to(out.device)
    grads = torch.autograd.grad((out * up).sum(), [leaves[i] for i in grad_idx])
    return out.detach().cpu().double(), [g.cpu().double() for g in grads]


def _to(args, kwargs, device):
    move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
    return [move(a) for a in args], {k: move(v) for k, v in kwargs.items()}


def _close(a, b, rtol, atol_rel):
    scale = b.abs().max().item() if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=max(atol_rel * scale, 1e-30))


OPS = [spec.name for spec in ops.OP_TABLE]  # _inputs has a branch per op that is not a two-tensor masked loss


def _params(reductions=REDUCTIONS):
    return [pytest.param(n, r, id=f"{n}-{r}") for n in OPS for r in (reductions if n != "sigmoid_gate" else [None])]


# ----------------------------------------------------------------------------------------------
# Device-only code paths: grid-stride loops past the block cap, half-type vector loads, misalignment


@pytest.mark.parametrize("name,reduction", _params(("mean", "none")))
def test_cuda_two_million_pixels_odd_count(name, reduction):
    """~2.2 M pixels, an odd count: > 4096 blocks of 256 pixels (grid-stride loop) and > 512 partials (the
    finalize loop), against the CPU kernels."""
    shape = (1, 3, 1481, 1487)  # 2,202,247 pixels
    args, kwargs, idx = _inputs(name, shape, torch.float32, 1)
    cpu = _run(getattr(ops, name), args, kwargs, idx, reduction, 2)
    gpu = _run(getattr(ops, name), *_to(args, kwargs, "cuda"), idx, reduction, 2)
    _close(gpu[0], cpu[0], 1e-4, 1e-5)
    for g, c in zip(gpu[1], cpu[1]):
        _close(g, c, 1e-4, 1e-5)


@pytest.mark.parametrize("name,reduction", _params())
def test_cuda_bf16_vector_path(name, reduction):
    """bf16 with H*W % 8 == 0 (the half-type vector loads), against the float64 reference."""
    shape = (2, 5, 16, 24)
    args, kwargs, idx = _inputs(name, shape, torch.bfloat16, 3)
    gpu = _run(getattr(ops, name), *_to(args, kwargs, "cuda"), idx, reduction, 4)
    args64 = [a.double() if a.is_floating_point() else a for a in args]
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kwargs.items()}
    ref = _run(getattr(reference, name), args64, kw64, idx, reduction, 4)
    _close(gpu[0], ref[0], 1e-2, 1e-2)
    for g, r in zip(gpu[1], ref[1]):
        _close(g, r, 2e-2, 2e-2)


@pytest.mark.parametrize("name,reduction", _params())
def test_cuda_misaligned_contiguous_input(name, reduction):
    """Contiguous inputs off the 16-byte alignment take the scalar path: same values as the aligned run (up to
    the summation order of the reduction, which depends on the grid: docs/ops.md, Determinism)."""
    shape = (2, 4, 8, 32)
    args, kwargs, idx = _inputs(name, shape, torch.float32, 5)
    args, kwargs = _to(args, kwargs, "cuda")
    aligned = _run(getattr(ops, name), args, kwargs, idx, reduction, 6)
    shifted = [misaligned(a) if a.is_floating_point() else a for a in args]
    off = _run(getattr(ops, name), shifted, kwargs, idx, reduction, 6)
    _close(off[0], aligned[0], 1e-6, 1e-7)
    for g, a in zip(off[1], aligned[1]):
        _close(g, a, 1e-6, 1e-7)


# ----------------------------------------------------------------------------------------------
# Hostile inputs on CUDA: the shared validation, shapes, layouts, broadcast gradients, extreme values


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 7, 5), (2, 7, 3, 2, 5)], ids=str)
def test_cuda_pytorch_shapes_match_cpu(shape):
    for name in [n for n in OPS if n != "sigmoid_gate"]:  # the losses
        args, kwargs, idx = _inputs(name, shape, torch.float64, 7)
        for reduction in REDUCTIONS:
            cpu = _run(getattr(ops, name), args, kwargs, idx, reduction, 8)
            gpu = _run(getattr(ops, name), *_to(args, kwargs, "cuda"), idx, reduction, 8)
            _close(gpu[0], cpu[0], 1e-10, 1e-12)
            for g, c in zip(gpu[1], cpu[1]):
                _close(g, c, 1e-10, 1e-12)


def test_cuda_hostile_values():
    """Exact gate at deep negative logits, cosine at |a| ~ 3e19 in fp32, zero vectors with eps = 1e-30, an inf
    weight of an absent class: CUDA equals CPU."""
    x = torch.tensor([1e30, 1e30, -3e25, 2.0])
    g = torch.tensor([-100.0, -60.0, -80.0, 100.0])
    a = torch.randn(2, 4, 3, 5, generator=_gen(9)) * 3e19
    a[0, :, 0, 0] = 0
    b = torch.randn(2, 4, 3, 5, generator=_gen(10)) * 3e19
    z = torch.randn(2, 4, 3, 5, generator=_gen(11))
    t = torch.randint(0, 3, (2, 3, 5), generator=_gen(12))
    w = torch.tensor([1.0, 2.0, 0.5, float("inf")])
    cases = [
        (ops.sigmoid_gate, [x, g], {}, (0, 1)),
        (ops.cosine_similarity_loss, [a, b], {"eps": 1e-30}, (0, 1)),
        (ops.masked_cross_entropy, [z, t], {"weight": w}, (0,)),
    ]
    for fn, args, kwargs, idx in cases:
        cpu = _run(fn, args, kwargs, idx, None, 13)
        gpu = _run(fn, *_to(args, kwargs, "cuda"), idx, None, 13)
        assert all(torch.isfinite(v).all() for v in [gpu[0], *gpu[1]])
        _close(gpu[0], cpu[0], 1e-5, 1e-6)
        for gg, c in zip(gpu[1], cpu[1]):
            _close(gg, c, 1e-5, 1e-6)


def test_cuda_gate_channels_last_and_broadcast_gradient():
    cl = torch.channels_last
    x = torch.randn(2, 8, 4, 6, device="cuda").contiguous(memory_format=cl).requires_grad_()
    g = torch.randn(2, 8, 4, 6, device="cuda").contiguous(memory_format=cl).requires_grad_()
    out = ops.sigmoid_gate(x, g)
    assert out.is_contiguous(memory_format=cl)
    (out.sum() * 1.5).backward()
    ref_gx = 1.5 * torch.sigmoid(g.detach().double())
    torch.testing.assert_close(x.grad.double(), ref_gx, rtol=1e-6, atol=1e-7)
    for name in ("masked_l1_loss", "soft_cross_entropy", "cosine_similarity_loss"):
        args, kwargs = _to(*_inputs(name, (2, 3, 5, 7), torch.float32, 14)[:2], "cuda")
        p = args[0].clone().requires_grad_()
        getattr(ops, name)(p, *args[1:], **kwargs, reduction="none").sum().backward()
        q = args[0].clone().requires_grad_()
        out = getattr(ops, name)(q, *args[1:], **kwargs, reduction="none")
        out.backward(torch.ones_like(out))
        assert torch.equal(p.grad, q.grad), name


def test_cuda_mixed_devices_and_bad_dtypes_raise():
    z = torch.randn(2, 3, 4, 5, device="cuda")
    t = torch.randint(0, 3, (2, 4, 5))
    with pytest.raises(RuntimeError, match="target"):
        ops.masked_cross_entropy(z, t)
    with pytest.raises(RuntimeError, match="mask"):
        ops.cosine_similarity_loss(z, z, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="target_logits"):
        ops.soft_cross_entropy(z, z.to("meta"))
    with pytest.raises(TypeError, match="x"):
        ops.sigmoid_gate(z.to(torch.float8_e4m3fn), z.to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="logits"):
        ops.soft_cross_entropy(z[:, :0], z[:, :0])
    with pytest.raises(ValueError, match="lse_minus_max"):
        torch.ops.xtc_ext.masked_cross_entropy_bwd(torch.tensor(1.0, device="cuda"), z, t.cuda(), None,
                                                   torch.zeros(1, device="cuda"), torch.tensor(1.0, device="cuda"),
                                                   -1, 0.0, "mean")
