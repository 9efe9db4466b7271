"""Autograd and compilation of the fused ops against the eager references: gradcheck and
gradgradcheck, the GradNorm double-backward pattern, retain_graph, torch.library.opcheck of every public and
internal op, torch.compile(fullgraph=True), bitwise determinism across thread counts, and the CUDA-only
tests (skipped without a CUDA device).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache, partial

import pytest
import torch

import xtc_ext
from xtc_ext import ops

from op_cases import (
    BIG,
    CASES,
    DEVICES,
    OPS,
    OP_IDS,
    OpCase,
    Sample,
    _bernoulli,
    _class_weight,
    _gen,
    _grads_close,
    _kw,
    _randn,
    _scaled_close,
    _upstream,
    build_ce,
    build_cos,
    build_gate,
    build_l1,
    case_params,
    requires_cuda,
    run,
    run_out_of_range,
)


# ----------------------------------------------------------------------------------------------
# 8. gradcheck, gradgradcheck and the GradNorm pattern (float64)


def _tiny(case: OpCase, seed=22):
    sample = case.build((2, 3, 2, 3), torch.float64, _gen(seed))
    if case.op == "masked_cross_entropy":
        sample.args[1][0, 0, 0] = -1  # at least one ignored pixel
    if case.op == "masked_l1_loss":
        pred, target = sample.args
        # keep |pred - target| away from the kink for finite differences
        close = (pred - target).abs() < 0.05
        pred[close] += 0.2
        sample.kwargs["mask"][0, 0, 0, 0] = False
    if case.has_mask:
        sample.kwargs["mask"][0, 0, 0] = False  # at least one masked pixel
    return sample


def _closure(case: OpCase, sample: Sample, reduction, grad_idx):
    def fn(*diff):
        args = list(sample.args)
        for i, d in zip(grad_idx, diff):
            args[i] = d
        return case.fused(*args, **_kw(sample.kwargs, reduction))

    inputs = tuple(sample.args[i].detach().clone().requires_grad_() for i in grad_idx)
    return fn, inputs


def _gradcheck_variants():
    """(case, builder, grad_idx, reduction): every table entry with each of its reductions, plus extra variants."""
    ce, l1 = CASES["masked_cross_entropy"], CASES["masked_l1_loss"]
    variants = [(case.name, case, case.build, None) for case in OPS]
    ls1 = partial(build_ce, weight="rand", label_smoothing=1.0)
    variants.append(("masked_cross_entropy-weighted-ls1", ce, ls1, None))
    # L1 with the target differentiable too (invalid_value=None: perturbing a zero target must not flip validity)
    variants.append(("masked_l1_loss-target", l1, partial(build_l1, invalid_value=None), (0, 1)))
    return [
        pytest.param(case, build, grad_idx, r, id=name if r is None else f"{name}-{r}")
        for name, case, build, grad_idx in variants
        for r in case.reductions
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,build,grad_idx,reduction", _gradcheck_variants())
def test_gradcheck_gradgradcheck(case, build, grad_idx, reduction, device):
    case = dataclasses.replace(case, build=build)
    sample = _tiny(case).to(device)
    fn, inputs = _closure(case, sample, reduction, grad_idx or sample.grad_idx)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,reduction", case_params())
def test_gradnorm_double_backward(case, reduction, device):
    """GradNorm: grad of w*loss with create_graph, then its norm backpropagated to w and the inputs."""
    sample = case.build((2, 4, 3, 5), torch.float64, _gen(23)).to(device)
    u = None

    def gradnorm(fn):
        nonlocal u
        xs = [sample.args[i].detach().clone().requires_grad_() for i in sample.grad_idx]
        args = list(sample.args)
        for i, x in zip(sample.grad_idx, xs):
            args[i] = x
        w = torch.tensor(1.7, dtype=torch.float64, device=device, requires_grad=True)
        loss = fn(*args, **_kw(sample.kwargs, reduction))
        if u is None:
            u = _upstream(loss, 23)
        gs = torch.autograd.grad(w * (u * loss).sum(), xs, create_graph=True)
        norm = torch.cat([g.flatten() for g in gs]).norm()
        norm.backward()
        return [g.detach() for g in gs], norm.detach(), w.grad, [x.grad for x in xs]

    g, norm, w_grad, x_grads = gradnorm(case.fused)
    rg, rnorm, rw_grad, rx_grads = gradnorm(case.ref)
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm, rnorm, rtol=1e-10, atol=1e-12)
    # analytic: d||w * dL/dx|| / dw = ||dL/dx|| for w > 0
    torch.testing.assert_close(w_grad, norm / 1.7, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w_grad, rw_grad, rtol=1e-10, atol=1e-12)
    for x, xg, rxg in zip(sample.grad_idx, x_grads, rx_grads):
        zeros = torch.zeros_like(sample.args[x])
        xg, rxg = (zeros if t is None else t for t in (xg, rxg))
        _scaled_close(xg, rxg, 1e-9, 1e-11)
    if case.curvature:  # the input term is not trivially 0
        assert any(xg is not None and xg.abs().sum() > 0 for xg in x_grads)


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_double_backward_wrt_upstream_weight(case):
    """d/dw <v, d(w*loss)/dx> = <v, dloss/dx>, the derivative of the backward w.r.t. grad_loss."""
    sample = case.build((2, 3, 4, 5), torch.float32, _gen(24))
    v = torch.randn(sample.args[0].shape, generator=_gen(25))
    for reduction in case.reductions:
        x = sample.args[0].detach().clone().requires_grad_()
        w = torch.tensor(0.3, requires_grad=True)
        loss = case.fused(x, *sample.args[1:], **_kw(sample.kwargs, reduction))
        (g,) = torch.autograd.grad(w * loss.sum(), x, create_graph=True)
        (g * v).sum().backward()
        xr = sample.args[0].detach().clone().requires_grad_()
        ref_loss = case.ref(xr, *sample.args[1:], **_kw(sample.kwargs, reduction))
        (ref_g,) = torch.autograd.grad(ref_loss.sum(), xr)
        torch.testing.assert_close(w.grad, (ref_g * v).sum(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 9. retain_graph and repeated backward


@pytest.mark.parametrize("case,reduction", case_params())
def test_retain_graph_repeated_backward(case, reduction):
    sample = case.build((2, 5, 6, 50), torch.float32, _gen(26))
    originals = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    x = sample.args[0].clone().requires_grad_()
    args = [x, *sample.args[1:]]
    loss = case.fused(*args, **_kw(sample.kwargs, reduction))
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
    loss2 = case.fused(x2, *sample.args[1:], **_kw(sample.kwargs, reduction))
    assert torch.equal(loss2.detach(), loss.detach())
    (g3,) = torch.autograd.grad(loss2, x2, up)
    assert torch.equal(g3, g1)


@pytest.mark.parametrize("case,reduction", case_params())
def test_retain_graph_double_backward(case, reduction):
    """The double-backward graph (create_graph=True) can be walked repeatedly with retain_graph=True."""
    sample = case.build((2, 4, 5, 20), torch.float64, _gen(42))
    xs = [sample.args[i].clone().requires_grad_() for i in sample.grad_idx]
    args = list(sample.args)
    for i, x in zip(sample.grad_idx, xs):
        args[i] = x
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = case.fused(*args, **_kw(sample.kwargs, reduction))
    gs = torch.autograd.grad(w * (loss * _upstream(loss, 42)).sum(), xs, create_graph=True)
    vs = [torch.randn(g.shape, generator=_gen(43), dtype=g.dtype) for g in gs]
    inner = sum((g * v).sum() for g, v in zip(gs, vs))
    h1 = torch.autograd.grad(inner, [w, *xs], retain_graph=True, allow_unused=True)
    h2 = torch.autograd.grad(inner, [w, *xs], retain_graph=True, allow_unused=True)
    for a, b in zip(h1, h2):
        assert (a is None and b is None) or torch.equal(a, b)
    assert h1[0] != 0  # d inner / dw = inner / w
    torch.testing.assert_close(h1[0] * 0.7, inner.detach(), rtol=1e-12, atol=1e-15)
    inner.backward(retain_graph=True)
    first = w.grad.clone()
    inner.backward()
    torch.testing.assert_close(w.grad, 2 * first, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# 10. torch.library.opcheck (public ops, *_fwd, *_bwd, sigmoid_gate, sigmoid_gate_bwd; every device)


def _opcheck_samples(device):
    g = _gen(27)
    shape = (2, 3, 4, 5)
    N, C, H, W = shape

    def leaf(dtype=torch.float32, layout=None):
        t = _randn(shape, g, dtype).to(device)
        return (t.contiguous(memory_format=layout) if layout else t).requires_grad_()

    def data(dtype=torch.float32):
        return _randn(shape, g, dtype).to(device)

    ce_t = build_ce(shape, torch.float32, g).args[1].to(device)
    ce_t8 = torch.randint(0, C, (N, H, W), generator=g, dtype=torch.uint8)
    ce_t8[0, 0] = 255
    ce_t8 = ce_t8.to(device)
    weight = _class_weight(C, g, torch.float32, "rand").to(device)
    mask = _bernoulli((N, H, W), g, 0.7).to(device)
    l1_target = _randn(shape, g, torch.float32)
    l1_target[0, 0, 0] = 0.0
    l1_target = l1_target.to(device)
    cl = torch.channels_last
    xo = torch.ops.xtc_ext
    samples = [
        ("masked_cross_entropy", xo.masked_cross_entropy.default, (leaf(), ce_t, -1, None, 0.0, "mean")),
        ("masked_cross_entropy", xo.masked_cross_entropy.default, (leaf(), ce_t8, 255, weight, 0.1, "none")),
        ("masked_cross_entropy_fwd", xo.masked_cross_entropy_fwd.default, (leaf(), ce_t, None, -1, 0.0, "sum")),
        ("masked_cross_entropy_fwd", xo.masked_cross_entropy_fwd.default,
         (leaf(torch.float64), ce_t8, weight, 255, 1.0, "none")),
        ("masked_cross_entropy_fwd", xo.masked_cross_entropy_fwd.default, (leaf(), ce_t, weight, -1, 0.1, "mean")),
        ("soft_cross_entropy", xo.soft_cross_entropy.default, (leaf(), data(), mask, "mean")),
        ("soft_cross_entropy", xo.soft_cross_entropy.default, (leaf(), leaf(), None, "none")),
        ("soft_cross_entropy_fwd", xo.soft_cross_entropy_fwd.default, (leaf(), data(), mask, "sum")),
        ("soft_cross_entropy_fwd", xo.soft_cross_entropy_fwd.default, (leaf(), leaf(), None, "none")),
        ("masked_l1_loss", xo.masked_l1_loss.default, (leaf(), l1_target, mask.unsqueeze(1).float(), 0.0, "mean")),
        ("masked_l1_loss", xo.masked_l1_loss.default, (leaf(), leaf(), None, None, "none")),
        ("masked_l1_loss_fwd", xo.masked_l1_loss_fwd.default, (leaf(), l1_target, mask, 0.0, "sum")),
        ("masked_l1_loss_fwd", xo.masked_l1_loss_fwd.default, (leaf(), leaf(), None, None, "none")),
        ("cosine_similarity_loss", xo.cosine_similarity_loss.default, (leaf(), leaf(), mask, 1e-8, "mean")),
        ("cosine_similarity_loss", xo.cosine_similarity_loss.default,
         (leaf(), data(), mask.unsqueeze(1).float(), 0.5, "none")),
        ("cosine_similarity_loss_fwd", xo.cosine_similarity_loss_fwd.default, (leaf(), leaf(), None, 1e-8, "sum", 1)),
        ("cosine_similarity_loss_fwd", xo.cosine_similarity_loss_fwd.default,
         (leaf(layout=cl), leaf(layout=cl), mask, 1e-8, "none", 1)),
        ("sigmoid_gate", xo.sigmoid_gate.default, (leaf(), leaf())),
        ("sigmoid_gate", xo.sigmoid_gate.default, (leaf(torch.bfloat16, cl), leaf(torch.bfloat16, cl))),
    ]
    # the *_bwd ops (their autograd is the double backward), with saved tensors from the forward
    z64, tl64, a64, b64 = (data(torch.float64) for _ in range(4))
    p64, d64 = data(torch.float64), data(torch.float64)
    _, lse, den = xo.masked_cross_entropy_fwd(z64, ce_t, None, -1, 0.0, "mean")
    _, wlse, wden = xo.masked_cross_entropy_fwd(z64, ce_t8, weight, 255, 0.1, "none")
    _, slse, sden = xo.soft_cross_entropy_fwd(z64, tl64, mask, "none")
    _, lden = xo.masked_l1_loss_fwd(p64, d64, None, None, "sum")
    _, cden = xo.cosine_similarity_loss_fwd(a64, b64, mask, 1e-8, "mean", 1)

    def grad_w(*s):
        return torch.randn(s, generator=g, dtype=torch.float64).to(device).requires_grad_()

    def req(t, layout=None):
        return (t.contiguous(memory_format=layout) if layout else t.clone()).requires_grad_()

    samples += [
        ("masked_cross_entropy_bwd", xo.masked_cross_entropy_bwd.default,
         (grad_w(), req(z64), ce_t, None, lse, den, -1, 0.0, "mean")),
        ("masked_cross_entropy_bwd", xo.masked_cross_entropy_bwd.default,
         (grad_w(N, H, W), req(z64), ce_t8, weight, wlse, wden, 255, 0.1, "none")),
        ("soft_cross_entropy_bwd", xo.soft_cross_entropy_bwd.default,
         (grad_w(N, H, W), req(z64), tl64, mask, slse, sden, "none")),
        ("masked_l1_loss_bwd", xo.masked_l1_loss_bwd.default, (grad_w(), p64, d64, None, lden, None, "sum")),
        ("cosine_similarity_loss_bwd", xo.cosine_similarity_loss_bwd.default,
         (grad_w(), req(a64), req(b64), mask, cden, 1e-8, "mean", 1)),
        ("cosine_similarity_loss_bwd", xo.cosine_similarity_loss_bwd.default,
         (grad_w(N, H, W), req(a64, cl), req(b64, cl), None, cden, 1e-8, "none", 1)),
        ("sigmoid_gate_bwd", xo.sigmoid_gate_bwd.default, (req(d64), req(a64), req(b64))),
        ("sigmoid_gate_bwd", xo.sigmoid_gate_bwd.default, (req(d64, cl), req(a64, cl), req(b64, cl))),
    ]
    return samples


_opcheck_cached = lru_cache(maxsize=None)(_opcheck_samples)
_OPCHECK_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(_opcheck_samples("cpu"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(_OPCHECK_IDS)), ids=_OPCHECK_IDS)
def test_opcheck(index, device):
    _, op, args = _opcheck_cached(device)[index]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_opcheck_covers_every_op():
    names = {name for name, _, _ in _opcheck_samples("cpu")}
    expected = {n for c in OPS for n in (c.op, *c.internal)}
    assert names == expected


# ----------------------------------------------------------------------------------------------
# 11. torch.compile(fullgraph=True): all five ops in one graph (CPU; CUDA when available)


def _all_losses(logits, target, weight, target_logits, mask, pred, depth, a, b, x, gate):
    ce = ops.masked_cross_entropy(logits, target, -1, weight, 0.1, "mean")
    soft = ops.soft_cross_entropy(logits, target_logits, mask, "sum")
    l1 = ops.masked_l1_loss(pred, depth, mask, 0.0, "mean")
    per = ops.masked_cross_entropy(logits, target, reduction="none")
    cos = ops.cosine_similarity_loss(a, b, mask.unsqueeze(1), reduction="mean")
    gated = ops.sigmoid_gate(x, gate)
    return 0.7 * ce + 0.01 * soft + 1.3 * l1 + (per * per).mean() + cos + (gated * gated).mean()


_COMPILE_LEAVES = ("logits", "pred", "a", "b", "x", "gate")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    g = _gen(28)
    shape = (2, 4, 5, 6)
    ce = build_ce(shape, torch.float32, g, weight="rand")
    cos = build_cos(shape, torch.float32, g)
    gate = build_gate((2, 8, 5, 6), torch.float32, g)
    inputs = dict(
        logits=ce.args[0],
        target=ce.args[1],
        weight=ce.kwargs["weight"],
        target_logits=_randn(shape, g, torch.float32),
        mask=_bernoulli((2, 5, 6), g, 0.8),
        pred=_randn((2, 1, 5, 6), g, torch.float32),
        depth=build_l1((2, 1, 5, 6), torch.float32, g).args[1],
        a=cos.args[0],
        b=cos.args[1],
        x=gate.args[0],
        gate=gate.args[1],
    )
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def run_fn(fn):
        leaves = {k: (v.clone().requires_grad_() if k in _COMPILE_LEAVES else v) for k, v in inputs.items()}
        out = fn(**leaves)
        out.backward()
        return out.detach(), [leaves[k].grad for k in _COMPILE_LEAVES]

    try:
        compiled = torch.compile(_all_losses, fullgraph=True, backend="inductor")
        c_out, c_grads = run_fn(compiled)
        e_out, e_grads = run_fn(_all_losses)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(c_out, e_out, rtol=1e-5, atol=1e-6)
    for k, cg, eg in zip(_COMPILE_LEAVES, c_grads, e_grads):
        assert cg is not None and eg.abs().sum() > 0, k
        torch.testing.assert_close(cg, eg, rtol=1e-5, atol=1e-6, msg=k)


# ----------------------------------------------------------------------------------------------
# 12. Determinism


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_deterministic_and_thread_invariant(case):
    sample = case.build(BIG, torch.float32, _gen(29))
    old = torch.get_num_threads()
    try:
        for reduction in case.reductions:
            torch.set_num_threads(2)
            a_loss, a_grads = run(case.fused, sample, reduction, 29)
            b_loss, b_grads = run(case.fused, sample, reduction, 29)
            torch.set_num_threads(1)
            c_loss, c_grads = run(case.fused, sample, reduction, 29)
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


# ----------------------------------------------------------------------------------------------
# 13. CUDA only (skipped without a CUDA device)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_cuda_matches_cpu(case, reduction, dtype):
    """The CUDA kernels agree with the CPU kernels: fp32 tightly, bf16 to bf16 rounding."""
    sample = case.build((2, 5, 9, 61), dtype, _gen(44))
    cpu_loss, cpu_grads = run(case.fused, sample, reduction, 44)
    gpu_loss, gpu_grads = run(case.fused, sample.to("cuda"), reduction, 44)
    assert gpu_loss.device.type == "cuda" and gpu_loss.dtype == cpu_loss.dtype
    rtol, atol_rel = (1e-5, 1e-6) if dtype == torch.float32 else (1e-2, 1e-2)
    _scaled_close(gpu_loss.cpu().float(), cpu_loss.float(), rtol, atol_rel)
    for g, cg in zip(gpu_grads, cpu_grads):
        assert g.dtype == cg.dtype
        _scaled_close(g.cpu().float(), cg.float(), rtol, atol_rel)


@requires_cuda
@pytest.mark.parametrize("case,reduction", case_params(reductions=("mean", "none")))
def test_cuda_graph_capture(case, reduction):
    """Forward + backward captured in a CUDA graph (capture fails on any host synchronisation, e.g. a
    .item() on the valid-pixel count), replayed on new data copied into the static inputs."""
    shape = (2, 5, 9, 61)
    static = case.build(shape, torch.float32, _gen(45)).to("cuda")
    new = case.build(shape, torch.float32, _gen(46)).to("cuda")
    leaves = [static.args[i].requires_grad_() for i in static.grad_idx]
    out_shape = case.out_shape(shape, reduction)
    up = _upstream(torch.empty(out_shape, device="cuda"), 45)

    def step(sample):
        out = case.fused(*sample.args, **_kw(sample.kwargs, reduction))
        loss = (out * up).sum()
        loss.backward()
        return loss

    def eager(sample):
        fresh = Sample([a.detach().clone() for a in sample.args], sample.kwargs, sample.grad_idx)
        xs = [fresh.args[i].requires_grad_() for i in fresh.grad_idx]
        loss = step(fresh)
        return loss.detach(), [x.grad for x in xs]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for x in leaves:
                x.grad = None
            step(static)
    torch.cuda.current_stream().wait_stream(side)
    for x in leaves:
        x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(static)

    graph.replay()
    torch.cuda.synchronize()
    first_loss = static_loss.clone()
    expected_loss, expected_grads = eager(static)
    torch.testing.assert_close(static_loss, expected_loss, rtol=1e-6, atol=1e-6)
    for x, eg in zip(leaves, expected_grads):
        _scaled_close(x.grad, eg, 1e-6, 1e-7)

    with torch.no_grad():
        for dst, src in zip(static.tensors(), new.tensors()):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    expected_loss, expected_grads = eager(new)
    assert not torch.equal(static_loss, first_loss)  # the replay recomputed on the new data
    torch.testing.assert_close(static_loss, expected_loss, rtol=1e-6, atol=1e-6)
    for x, eg in zip(leaves, expected_grads):
        _scaled_close(x.grad, eg, 1e-6, 1e-7)


@requires_cuda
@pytest.mark.parametrize("target_dtype", ["int64", "uint8"])
def test_cuda_out_of_range_label_fails_at_synchronisation(target_dtype):
    """On CUDA a bad label cannot raise at the call (that would need a host sync): a device-side check
    fails at the next synchronisation. It poisons the CUDA context, hence the subprocess."""
    proc = run_out_of_range(target_dtype)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "launched without error" in proc.stdout, output
    assert "synchronised without error" not in proc.stdout, output
    assert "masked_cross_entropy" in output, output


@requires_cuda
@pytest.mark.parametrize("shape", [(2, 3, 181, 191), (1, 2, 257, 263)], ids=["N2-69142px", "N1-67591px"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_cuda_many_pixels_odd_count(case, reduction, shape):
    """N*H*W > 65535 (beyond a 16-bit grid dimension) and not a multiple of the 256-pixel block."""
    N, C, H, W = shape
    assert N * H * W > 65535 and (N * H * W) % 256 != 0
    sample = case.build(shape, torch.float32, _gen(47)).to("cuda")
    loss, grads = run(case.fused, sample, reduction, 47)
    ref_loss, ref_grads = run(case.ref, sample, reduction, 47)
    _scaled_close(loss, ref_loss, 1e-5, 1e-6, floor=1e-6)
    _grads_close(case, sample, reduction, 47, loss, grads, ref_grads, 1e-5, 1e-6)


@requires_cuda
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_cuda_mixed_devices_raise(case):
    """Every tensor operand on another device than the first input: RuntimeError."""
    sample = case.build((2, 3, 4, 5), torch.float32, _gen(48)).to("cuda")
    movable = [("args", i) for i in range(1, len(sample.args))]
    movable += [("kwargs", k) for k, v in sample.kwargs.items() if isinstance(v, torch.Tensor)]
    for where, key in movable:
        args, kwargs = list(sample.args), dict(sample.kwargs)
        (args if where == "args" else kwargs)[key] = (args if where == "args" else kwargs)[key].cpu()
        with pytest.raises(RuntimeError):
            case.fused(*args, **_kw(kwargs, case.reductions[0]))
