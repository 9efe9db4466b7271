"""CUDA against CPU on the same inputs, where the two kernels are most likely to part (benchmarks/RESULTS.md,
the GPU acceptance script; docs/ops.md, Values,
Determinism and Errors), skipped without a CUDA device. Each compares the CUDA kernels with the CPU kernels on
the same inputs (or, where the CPU cannot go, with a float64 reference or a chunked evaluation):

- NaN/inf logits at a VALID pixel of masked_cross_entropy, soft_cross_entropy and cosine_similarity_loss
  with a zero upstream scale ((0 * loss).backward(), a zero per-pixel upstream gradient, zero class weights on
  the present classes): same NaN/inf/zero pattern, finite values close (the CPU gives exactly 0 gradient);
- sigmoid_gate with grad_out ~3.4e38, x = 1e-10, gate = -29.5 (grad_gate ~5.2456e15), fp32 and bf16;
- cosine with eps = 1e-46 and zero vectors: CUDA does what the CPU does (raises the same error type, or
  gives the same values);
- cosine with NaN/inf in ``a`` at a counted pixel: that pixel's whole gradient non-finite, masked pixels 0;
- the vector path past the 4096-block cap, fp32 (2, 3, 1536, 1536);
- fp64 with uint8 labels, fp16, CE without weight and smoothing, a misaligned target or mask (storage offset 1)
  with aligned logits, channels_last inputs (with a profiler count of the copy kernels), P = 1 inputs (N, C),
  empty shapes, more than 2^31 elements (gate, L1), the bad-label device assert;
- ``sync_debug``: torch.cuda.set_sync_debug_mode("error") around forward + backward of every op;
- ``launches``: kernel launches per op, forward and backward (profiler), recorded as JUnit properties.

``bash benchmarks/gpu_check.sh`` runs this file in three steps (``cuda_vs_cpu``, ``sync_debug``, ``launches``;
its report shows the recorded properties) and a selection under compute-sanitizer. Nothing is written to disk.

``XTC_CUDA_VS_CPU_DEVICE=cpu`` runs every comparison CPU against CPU (the CUDA-only tests skip): a check of
this file's own code on a machine without a GPU.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import pytest
import torch

from xtc_ext import ops

from op_cases import (
    CASES,
    OPS,
    OP_IDS,
    REDUCTIONS,
    Sample,
    _gen,
    _kw,
    _randn,
    _scaled_close,
    build_ce,
    case_params,
    misaligned,
    run,
    run_out_of_range,
)

DEVICE = os.environ.get("XTC_CUDA_VS_CPU_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device (none available)")
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="CUDA only (XTC_CUDA_VS_CPU_DEVICE is not cuda)")

LOSSES = [CASES[n] for n in ("masked_cross_entropy", "soft_cross_entropy", "masked_l1_loss", "cosine_similarity_loss")]
LOSS_IDS = [c.name for c in LOSSES]
BAD = [float("nan"), float("inf"), float("-inf")]
BAD_IDS = ["nan", "inf", "-inf"]
VEC = (2, 4, 6, 8)  # H*W = 48: a multiple of 4 (fp32 vector path) and of 8 (half types)
ODD = (2, 4, 5, 7)  # H*W = 35: the scalar path


def _device(sample: Sample) -> Sample:
    return sample.to(DEVICE)


def _same_values(actual, expected, rtol, atol_rel, floor=1e-30, what=""):
    """Same shape, dtype, NaN / +inf / -inf / exact-zero pattern; the finite values close (tolerance scaled
    by the largest finite expected value, at least ``floor``)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    for name, pattern in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf),
                          ("zero", lambda t: t == 0)):
        differ = pattern(a) != pattern(e)
        assert not differ.any(), f"{what}: {name} pattern differs at {int(differ.sum())} elements, first " \
                                 f"{differ.nonzero()[0].tolist()}: {DEVICE} {a[differ][0].item()} vs cpu {e[differ][0].item()}"
    finite = torch.isfinite(e)
    _scaled_close(a[finite], e[finite], rtol, atol_rel, floor)


def _compare(fn, sample: Sample, reduction, seed, rtol, atol_rel, floor=1e-30):
    """run() (forward + backward with a random upstream gradient) on the CPU and on DEVICE, compared."""
    cpu_loss, cpu_grads = run(fn, sample, reduction, seed)
    dev_loss, dev_grads = run(fn, _device(sample), reduction, seed)
    assert dev_loss.device.type == DEVICE
    _same_values(dev_loss, cpu_loss, rtol, atol_rel, floor, "loss")
    assert len(dev_grads) == len(cpu_grads)
    for i, (g, cg) in enumerate(zip(dev_grads, cpu_grads)):
        _same_values(g, cg, rtol, atol_rel, floor, f"gradient {i}")
    return dev_loss, dev_grads


def _fwd_bwd(fn, sample: Sample, reduction, upstream):
    """Loss and gradients of (upstream(loss) * loss).sum() with respect to the differentiable args."""
    args = [a.detach().clone().requires_grad_() if i in sample.grad_idx else a for i, a in enumerate(sample.args)]
    loss = fn(*args, **_kw(sample.kwargs, reduction))
    grads = torch.autograd.grad((upstream(loss) * loss).sum(), [args[i] for i in sample.grad_idx])
    return loss.detach(), [g.detach() for g in grads]


def _tol(dtype):
    return {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}.get(dtype, (1e-2, 1e-2))


# ----------------------------------------------------------------------------------------------
# NaN/inf at a valid pixel with a zero upstream scale


NONFINITE_OPS = ["masked_cross_entropy", "masked_cross_entropy-weighted", "soft_cross_entropy", "cosine_similarity_loss"]
NONFINITE_LAYOUTS = [pytest.param(torch.float32, VEC, id="fp32-vec"), pytest.param(torch.float32, ODD, id="fp32-odd"),
              pytest.param(torch.bfloat16, (2, 4, 8, 16), id="bf16-vec")]


def _poisoned(name, dtype, shape, bad, seed=50):
    """CASES[name]'s inputs with ``bad`` in the first input at pixel (0, 1, 2), which counts (valid label or
    mask); returns the sample and that pixel's index."""
    case = CASES[name]
    sample = case.build(shape, dtype, _gen(seed))
    pixel = (0, 1, 2)
    if case.op == "masked_cross_entropy":
        sample.args[1][pixel] = 1
    else:
        sample.kwargs["mask"][pixel] = True
    sample.args[0][pixel[0], 0, pixel[1], pixel[2]] = bad
    return case, sample, pixel


def _zero_at(pixel):
    def upstream(loss):
        up = torch.randn(loss.shape, generator=_gen(51), dtype=torch.float64).to(loss.dtype).to(loss.device)
        up[pixel] = 0
        return up

    return upstream


def _nonfinite_check(case, sample, reduction, upstream):
    cpu = _fwd_bwd(case.fused, sample, reduction, upstream)
    dev = _fwd_bwd(case.fused, _device(sample), reduction, upstream)
    rtol, atol_rel = _tol(sample.args[0].dtype)
    _same_values(dev[0], cpu[0], rtol, atol_rel, what="loss")
    for i, (g, cg) in enumerate(zip(dev[1], cpu[1])):
        _same_values(g, cg, rtol, atol_rel, what=f"gradient {i}")


@pytest.mark.parametrize("dtype,shape", NONFINITE_LAYOUTS)
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name", NONFINITE_OPS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_nonfinite_at_valid_pixel_zero_times_loss(name, bad, dtype, shape, reduction):
    """(0 * loss).backward() with a NaN/inf logit at a valid pixel (docs/ops.md, Values)."""
    case, sample, _ = _poisoned(name, dtype, shape, bad)
    _nonfinite_check(case, sample, reduction, lambda loss: torch.zeros_like(loss))


@pytest.mark.parametrize("dtype,shape", NONFINITE_LAYOUTS)
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name", NONFINITE_OPS)
def test_nonfinite_at_valid_pixel_zero_pixel_upstream(name, bad, dtype, shape):
    """reduction "none" with a zero upstream gradient at the poisoned pixel, random elsewhere."""
    case, sample, pixel = _poisoned(name, dtype, shape, bad)
    _nonfinite_check(case, sample, "none", _zero_at(pixel))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("dtype,shape", NONFINITE_LAYOUTS)
def test_nonfinite_at_valid_pixel_zero_weights_of_present_classes(dtype, shape, bad, label_smoothing):
    """Classes 0 and 1 present, both weighted 0: the mean's denominator is 0 (the empty-mean rule: loss 0,
    zero gradient, docs/ops.md, Reductions), with a NaN/inf logit at a valid pixel."""
    case, sample, _ = _poisoned("masked_cross_entropy", dtype, shape, bad)
    target = sample.args[1]
    target[target > 1] = 0
    sample.kwargs.update(weight=torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=dtype), label_smoothing=label_smoothing)
    _nonfinite_check(case, sample, "mean", lambda loss: torch.full_like(loss, 1.3))


# ----------------------------------------------------------------------------------------------
# sigmoid_gate, huge upstream gradient, tiny x, deep negative gate


@pytest.mark.parametrize("deep", [False, True], ids=["gates-small", "gates-below-87-nearby"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gate_huge_grad_out_tiny_x(dtype, deep):
    """grad_out ~3.4e38 (bf16: its largest value), x = 1e-10, gate = -29.5: grad_gate ~5.2456e15, finite; the
    CPU's exact path too ("deep": gates of -100 in the same 256-element pieces); docs/ops.md, Values."""
    n = 1024
    at = [0, 5, 511, 1020, 1023]  # vector body and tail
    x, g, up = (_randn((n,), _gen(52 + i), torch.float64, s) for i, s in enumerate((1.0, 3.0, 1.0)))
    x[at], g[at], up[at] = 1e-10, -29.5, min(3.4e38, torch.finfo(dtype).max)
    if deep:  # x = 1e30, gate -100, grad 1e20 (docs/ops.md, Values): results in the normal range
        deep_at = [1, 300, 1000]
        x[deep_at], g[deep_at], up[deep_at] = 1e30, -100.0, 1e20
    x, g, up = (t.to(dtype) for t in (x, g, up))
    x64, g64, up64 = (t.double() for t in (x, g, up))
    s = torch.sigmoid(g64)
    ref = [x64 * s, up64 * s, up64 * x64 * s * (1 - s)]
    if dtype == torch.float32:
        torch.testing.assert_close(ref[2][at], torch.full((len(at),), 5.2456e15, dtype=torch.float64), rtol=1e-4,
                                   atol=0)
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    results = {}
    for device in ("cpu", DEVICE):
        xl, gl = x.to(device).requires_grad_(), g.to(device).requires_grad_()
        out = ops.sigmoid_gate(xl, gl)
        gx, gg = torch.autograd.grad(out, (xl, gl), up.to(device))
        results[device] = [out.detach(), gx, gg]
        for name, v, r in zip(("out", "grad_x", "grad_gate"), results[device], ref):
            bad = (~torch.isfinite(v)).nonzero().flatten().tolist()
            assert v.dtype == dtype and not bad, f"{device} {name}: not finite at {bad}"
            torch.testing.assert_close(v.cpu().double(), r, rtol=rtol, atol=1e-30, msg=f"{device} {name}")
    for v, c in zip(results[DEVICE], results["cpu"]):
        _same_values(v, c, rtol, 0.0, floor=1e-30)


# ----------------------------------------------------------------------------------------------
# cosine eps below the smallest fp32 subnormal, with zero vectors


def _outcome(fn, sample, reduction, device):
    try:
        return _fwd_bwd(fn, sample.to(device), reduction, lambda loss: torch.full_like(loss, 0.7))
    except Exception as e:  # noqa: BLE001 - the CPU's outcome, whatever it is, is the expectation
        return e


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_eps_1e_46_zero_vectors(dtype, reduction, record_property):
    """eps = 1e-46 is > 0 as a double but 0 as fp32 (docs/ops.md: eps > 0): CUDA does exactly what the CPU
    does, a ValueError naming eps or the same values (NaN included)."""
    a, b = _randn((2, 3, 4, 8), _gen(55), dtype), _randn((2, 3, 4, 8), _gen(56), dtype)
    a[0, :, 1, 2] = 0
    b[1, :, 3, 5] = 0
    a[1, :, 0, 0] = b[1, :, 0, 0] = 0
    sample = Sample([a, b], {"mask": None, "eps": 1e-46}, (0, 1))
    fn = ops.cosine_similarity_loss
    cpu = _outcome(fn, sample, reduction, "cpu")
    dev = _outcome(fn, sample, reduction, DEVICE)
    record_property("cpu_outcome", repr(cpu)[:200] if isinstance(cpu, Exception) else
                    f"finite loss: {bool(torch.isfinite(cpu[0]).all())}, finite gradients: "
                    f"{all(bool(torch.isfinite(g).all()) for g in cpu[1])}")
    if isinstance(cpu, Exception):
        assert type(dev) is type(cpu), f"cpu raised {cpu!r}, {DEVICE} gave {dev!r}"
        assert ("eps" in str(dev)) == ("eps" in str(cpu)), (cpu, dev)
        return
    assert not isinstance(dev, Exception), f"cpu gave values, {DEVICE} raised {dev!r}"
    # the zero vectors' gradients are ~1/eps: compare element by element, not against the largest value
    rtol = _tol(dtype)[0]
    _same_values(dev[0], cpu[0], rtol, 0.0, floor=1e-6, what="loss")
    for i, (g, cg) in enumerate(zip(dev[1], cpu[1])):
        _same_values(g, cg, rtol, 0.0, floor=1e-6, what=f"gradient {i}")


# ----------------------------------------------------------------------------------------------
# NaN/inf in a at a counted pixel of the cosine loss


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_nonfinite_a_at_a_counted_pixel(bad, reduction):
    """A NaN/inf channel of ``a`` at a counted pixel: that pixel's loss and its whole gradient (every channel, a
    and b) non-finite on both devices, masked pixels (also poisoned) exactly 0, the other pixels finite and as on
    the CPU. (At b28f16c the CPU kernel gives finite values, ~1e7, in a's other channels there.)"""
    sample = CASES["cosine_similarity_loss"].build(VEC, torch.float32, _gen(57))
    mask = sample.kwargs["mask"]
    mask[0, 1, 2], mask[1, 0, 0] = True, False
    sample.args[0][0, 1, 1, 2] = bad  # counted
    sample.args[0][1, 2, 0, 0] = bad  # masked
    valid = mask.unsqueeze(1).expand(sample.args[0].shape)
    others = valid.clone()
    others[0, :, 1, 2] = False
    results = {d: run(ops.cosine_similarity_loss, sample.to(d), reduction, 57) for d in ("cpu", DEVICE)}
    for device, (loss, grads) in results.items():
        assert not torch.isfinite(loss[0, 1, 2] if reduction == "none" else loss).any(), device
        for i, g in enumerate(grads):
            g = g.cpu()
            assert not torch.isfinite(g[0, :, 1, 2]).any(), (device, i, g[0, :, 1, 2])
            assert torch.equal(g[~valid], torch.zeros_like(g[~valid])), (device, i)
            assert torch.isfinite(g[others]).all(), (device, i)
    # the rest as on the CPU (NaN and inf at the poisoned pixel may differ between the devices)
    for i, (g, cg) in enumerate(zip(results[DEVICE][1], results["cpu"][1])):
        _same_values(g.cpu()[others], cg[others], 1e-5, 1e-6, what=f"gradient {i}")
    if reduction == "none":
        rest = torch.ones(mask.shape, dtype=torch.bool)
        rest[0, 1, 2] = False
        _same_values(results[DEVICE][0].cpu()[rest], results["cpu"][0][rest], 1e-5, 1e-6, what="loss")


# ----------------------------------------------------------------------------------------------
# Vector path past the 4096-block cap


@pytest.mark.parametrize("case,reduction", case_params(LOSSES, ("mean", "none")))
def test_vector_path_past_block_cap(case, reduction):
    """fp32 (2, 3, 1536, 1536): H*W % 4 == 0 and N*H*W / 4 = 1.18 M pixel groups > 4096 blocks of 256."""
    shape = (2, 3, 1536, 1536)
    N, C, H, W = shape
    assert (H * W) % 4 == 0 and N * H * W // 4 > 4096 * 256
    sample = case.build(shape, torch.float32, _gen(58))
    _compare(case.fused, sample, reduction, 58, 1e-4, 1e-5)


# ----------------------------------------------------------------------------------------------
# Untested dtype paths: fp64 with uint8 labels, fp16, CE without weight or smoothing


@pytest.mark.parametrize("shape", [(2, 5, 16, 24), (2, 5, 9, 61)], ids=["even", "odd"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fp64_uint8_labels(shape, weighted, reduction):
    extra = {"weight": "rand", "label_smoothing": 0.1} if weighted else {}
    sample = build_ce(shape, torch.float64, _gen(59), ignore_index=255, target_dtype=torch.uint8, **extra)
    assert sample.args[1].dtype == torch.uint8
    _compare(ops.masked_cross_entropy, sample, reduction, 59, 1e-10, 1e-12)


def _dtype_params():
    fp16 = [pytest.param(c, r, torch.float16, id=f"{p.id}-fp16") for p in case_params() for c, r in [p.values]]
    plain = CASES["masked_cross_entropy"]
    ce = [pytest.param(plain, r, d, id=f"plain_ce-{r}-{i}") for r in REDUCTIONS
          for d, i in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))]
    return fp16 + ce


@pytest.mark.parametrize("case,reduction,dtype", _dtype_params())
def test_dtype_paths(case, reduction, dtype):
    """fp16 for every op, and CE without weight or smoothing in fp32 and bf16, at H*W = 384 (vector path)."""
    sample = case.build((2, 5, 16, 24), dtype, _gen(60))
    _compare(case.fused, sample, reduction, 60, *_tol(dtype))


# ----------------------------------------------------------------------------------------------
# Misaligned target or mask with aligned logits


def _misaligned_params():
    """(case name, builder kwargs, where the shifted operand is: an args index or a kwargs key)."""
    rows = [("masked_cross_entropy", {}, 1), ("masked_cross_entropy", {"target_dtype": torch.uint8,
                                                                       "ignore_index": 255}, 1),
            ("soft_cross_entropy", {}, 1), ("soft_cross_entropy", {}, "mask"),
            ("masked_l1_loss", {}, 1), ("masked_l1_loss", {}, "mask"),
            ("cosine_similarity_loss", {}, 1), ("cosine_similarity_loss", {}, "mask")]
    return [pytest.param(name, kw, where, dtype, id=f"{name}-{'u8-' if kw else ''}{where}-{dn}")
            for name, kw, where in rows for dtype, dn in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))]


@pytest.mark.parametrize("name,build_kwargs,where,dtype", _misaligned_params())
def test_misaligned_operand(name, build_kwargs, where, dtype):
    """The target (or mask) at storage offset 1, the logits aligned: the same values as the aligned run (up
    to the summation order, docs/ops.md, Determinism) and as the CPU."""
    case = CASES[name]
    builder = build_ce if build_kwargs else case.build
    sample = _device(builder((2, 4, 8, 32), dtype, _gen(61), **build_kwargs))
    shifted = Sample(list(sample.args), dict(sample.kwargs), sample.grad_idx)
    if isinstance(where, int):
        shifted.args[where] = misaligned(sample.args[where])
    else:
        shifted.kwargs[where] = misaligned(sample.kwargs[where])
    aligned = run(case.fused, sample, "mean", 61)
    off = run(case.fused, shifted, "mean", 61)
    cpu = run(case.fused, shifted.to("cpu"), "mean", 61)
    rtol, atol_rel = _tol(dtype)
    tight = (1e-6, 1e-7) if dtype == torch.float32 else (rtol, atol_rel)
    for a, o, c in zip([aligned[0], *aligned[1]], [off[0], *off[1]], [cpu[0], *cpu[1]]):
        _same_values(o, a, *tight)
        _same_values(o, c, rtol, atol_rel)
    per_pixel = run(case.fused, shifted, "none", 62)
    _same_values(per_pixel[0], run(case.fused, shifted.to("cpu"), "none", 62)[0], rtol, atol_rel)


# ----------------------------------------------------------------------------------------------
# Layouts: channels_last (with the copy kernels counted), P = 1, empty shapes


def _channels_last(sample: Sample) -> Sample:
    cl = lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t  # noqa: E731
    return Sample([cl(a) for a in sample.args],
                  {k: cl(v) if isinstance(v, torch.Tensor) else v for k, v in sample.kwargs.items()}, sample.grad_idx)


def _device_events(fn):
    """The CUDA device events (kernels, memcpy, memset) that ``fn()`` launches, by name (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def _is_copy(name: str) -> bool:
    return "copy" in name.lower() and "HtoD" not in name and "DtoH" not in name


def _kernel_counts(names):
    """kernels (launches, memcpy/memset left out) and copies (copy kernels and device-to-device memcpy)."""
    kernels = [n for n in names if not n.startswith(("Memcpy", "Memset"))]
    return len(kernels), sum(map(_is_copy, names))


def _short(name: str) -> str:
    """A kernel's function name without its namespaces, template and parameters; copies marked."""
    base = re.split(r"[<(]", name.removeprefix("void "), maxsplit=1)[0].split("::")[-1]
    return base + (" [copy]" if _is_copy(name) else "")


@pytest.mark.parametrize("case,reduction", case_params(LOSSES))
def test_channels_last_losses(case, reduction, record_property):
    """channels_last inputs give the contiguous inputs' results (docs/ops.md, Gradients and layouts: copied
    once per call); the copy kernels of forward + backward are counted and recorded."""
    sample = _device(case.build((2, 8, 6, 16), torch.float32, _gen(63)))
    cl = _channels_last(sample)
    assert cl.args[0].is_contiguous(memory_format=torch.channels_last) and not cl.args[0].is_contiguous()
    ref = run(case.fused, sample, reduction, 63)
    got = run(case.fused, cl, reduction, 63)
    if reduction == "none":
        assert torch.equal(got[0], ref[0])
    else:
        _same_values(got[0], ref[0], 1e-6, 1e-7)
    for g, r in zip(got[1], ref[1]):
        assert torch.equal(g, r)
    _compare(case.fused, cl.to("cpu"), reduction, 63, 1e-5, 1e-6)
    if DEVICE == "cuda":
        for name, s in (("contiguous", sample), ("channels_last", cl)):
            forward, backward = _prepared(case, s, reduction)
            kernels, copies = _kernel_counts(_device_events(lambda: backward(forward())))
            record_property(f"copy_kernels_{name}", copies)
            record_property(f"kernels_{name}", kernels)


def _rows(sample: Sample) -> Sample:
    """(N, C, 1, 1) inputs as (N, C): one pixel per sample (pixel masks (N, 1, 1) -> (N,), (N, 1, 1, 1) -> (N, 1))."""
    def row(t):
        if not isinstance(t, torch.Tensor) or t.dim() < 3:
            return t
        return t.reshape(t.shape[:2]) if t.dim() == 4 else t.reshape(t.shape[:1])

    return Sample([row(a) for a in sample.args], {k: row(v) for k, v in sample.kwargs.items()}, sample.grad_idx)


def _p1_params():
    params = [pytest.param(c, r, None, id=p.id) for p in case_params() for c, r in [p.values]]
    cos = CASES["cosine_similarity_loss"]
    return params + [pytest.param(cos, r, -1, id=f"{cos.name}-{r}-dim-1") for r in REDUCTIONS]


@pytest.mark.parametrize("n", [1037, 4096])
@pytest.mark.parametrize("case,reduction,dim", _p1_params())
def test_p1_inputs(case, reduction, dim, n):
    """(N, C) inputs (P = 1 pixel per sample); cosine also with dim=-1."""
    sample = _rows(case.build((n, 5, 1, 1), torch.float32, _gen(64)))
    assert sample.args[0].shape == (n, 5)
    if dim is not None:
        sample.kwargs["dim"] = dim
    _compare(case.fused, sample, reduction, 64, 1e-5, 1e-6, floor=1e-6)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0), (0, 3, 1, 1)],
                         ids=["N0", "H0", "W0", "rows0"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_empty_shapes(case, reduction, shape):
    """Zero pixels: the loss is 0 (a mean over none: the empty-mean rule), the gradients empty; as on the CPU."""
    sample = case.build(shape, torch.float32, _gen(65))
    if shape[2:] == (1, 1):
        sample = _rows(sample)
    loss, grads = _compare(case.fused, sample, reduction, 65, 1e-6, 1e-7)
    assert torch.equal(loss.cpu(), torch.zeros_like(loss.cpu()))
    assert [g.shape for g in grads] == [sample.args[i].shape for i in sample.grad_idx]


# ----------------------------------------------------------------------------------------------
# More than 2^31 elements (sigmoid_gate, masked_l1_loss), bf16


@pytest.fixture
def free_after():
    yield
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _need_free(nbytes: int) -> None:
    free, total = torch.cuda.mem_get_info()
    if free < nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} of {total / 2**30:.1f} "
                    f"GiB free")


def _sample_index(n: int, gen) -> torch.Tensor:
    """Indices to check: both ends, around 2^31, and 2^20 random ones."""
    ends = [torch.arange(0, 4096), torch.arange(2**31 - 2048, min(2**31 + 2048, n)), torch.arange(n - 4096, n),
            torch.randint(0, n, (2**20,), generator=gen)]
    return torch.cat(ends).to("cuda")


@cuda_only
def test_huge_sigmoid_gate_past_2_31_elements(free_after):
    n = 2**31 + 4104  # a multiple of 8: the bf16 vector path, with elements past index 2^31
    _need_free(8 * n * 2)  # x, gate, out, upstream, two gradients (bf16), headroom
    gen = torch.Generator(device="cuda").manual_seed(66)
    x = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    g = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(3).requires_grad_()
    out = ops.sigmoid_gate(x, g)
    up = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen)
    gx, gg = torch.autograd.grad(out, (x, g), up)
    idx = _sample_index(n, torch.Generator().manual_seed(66))
    x64, g64, up64 = (t.detach()[idx].double() for t in (x, g, up))
    s = torch.sigmoid(g64)
    for name, v, r in (("out", out, x64 * s), ("grad_x", gx, up64 * s), ("grad_gate", gg, up64 * x64 * s * (1 - s))):
        assert v.shape == (n,) and v.dtype == torch.bfloat16, name
        torch.testing.assert_close(v.detach()[idx].double(), r, rtol=1e-2, atol=1e-12, msg=name)


@cuda_only
def test_huge_masked_l1_loss_past_2_31_elements(free_after):
    shape = (1, 1, 32768, 65537)  # 2,147,516,416 elements in one image; H*W % 4 == 0
    n = 32768 * 65537
    assert n > 2**31
    _need_free(6 * n * 2)  # pred, target, gradient (bf16), the validity count, headroom
    gen = torch.Generator(device="cuda").manual_seed(67)
    pred = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    target = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    target.view(-1)[::7] = 0  # invalid (invalid_value 0), also past 2^31
    loss = ops.masked_l1_loss(pred, target, None, 0.0, "mean")
    (grad,) = torch.autograd.grad(loss, pred, torch.tensor(1.7, device="cuda"))
    # chunked: the same op's sums over views of fewer than 2^31 elements, added in float64
    p, t = pred.detach().view(-1), target.view(-1)
    chunk = 2**30
    total = sum(ops.masked_l1_loss(p[i:i + chunk].view(1, 1, -1), t[i:i + chunk].view(1, 1, -1), None, 0.0, "sum")
                .double() for i in range(0, n, chunk))
    count = (t != 0).sum().double()
    torch.testing.assert_close(loss.double(), total / count, rtol=1e-4, atol=0)
    idx = _sample_index(n, torch.Generator().manual_seed(67))
    p64, t64 = p[idx].double(), t[idx].double()
    ref = 1.7 * torch.sign(p64 - t64) * (t64 != 0) / count
    torch.testing.assert_close(grad.view(-1)[idx].double(), ref, rtol=1e-2, atol=1e-20)


# ----------------------------------------------------------------------------------------------
# The bad-label device assert names the op


@cuda_only
@pytest.mark.parametrize("target_dtype", ["int64", "uint8"])
@pytest.mark.parametrize("reduction,weighted", [("mean", False), ("none", True)], ids=["mean", "none-weighted"])
def test_bad_label_device_assert_names_the_op(target_dtype, reduction, weighted, record_property):
    """An out-of-range label on CUDA: a device-side assert at the next synchronisation whose message names
    the op (docs/ops.md, Errors; a subprocess, as the assert leaves the CUDA context unusable)."""
    proc = run_out_of_range(target_dtype, reduction=reduction, weighted=weighted)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines() if "masked_cross_entropy" in line or "assert" in line.lower()]
    record_property("assert_message", " | ".join(lines[:3])[:400])
    assert proc.returncode != 0, output
    assert "launched without error" in proc.stdout and "synchronised without error" not in proc.stdout, output
    assert "masked_cross_entropy" in output, output


# ----------------------------------------------------------------------------------------------
# sync_debug and launches (their own steps of gpu_check.sh)


def _variant(case, variant: str, shape=(2, 4, 6, 16)) -> Sample:
    """The case's CUDA inputs in one variant: fp32, bf16, channels_last (fp32) or a float mask (fp32)."""
    sample = case.build(shape, torch.bfloat16 if variant == "bf16" else torch.float32, _gen(68))
    if variant == "channels_last":
        sample = _channels_last(sample)
    if variant == "float_mask" and sample.kwargs.get("mask") is not None:
        sample.kwargs["mask"] = sample.kwargs["mask"].float()
    return sample.to("cuda")


def _prepared(case, sample: Sample, reduction):
    """Leaves, an upstream gradient and the forward + backward call, all allocated before the call."""
    leaves = [a.detach().clone().requires_grad_() if i in sample.grad_idx else a for i, a in enumerate(sample.args)]
    shape = case.out_shape(tuple(sample.args[0].shape), reduction)
    up = torch.randn(shape, device="cuda", dtype=case.out_dtype(sample.args[0].dtype))

    def forward():
        return case.fused(*leaves, **_kw(sample.kwargs, reduction))

    def backward(out):
        return torch.autograd.grad(out, [leaves[i] for i in sample.grad_idx], up)

    return forward, backward


@contextmanager
def _sync_debug_error():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


SYNC_VARIANTS = ["fp32", "bf16", "channels_last", "float_mask"]


@cuda_only
@pytest.mark.parametrize("variant", SYNC_VARIANTS)
@pytest.mark.parametrize("case,reduction", case_params())
def test_sync_debug_forward_backward(case, reduction, variant):
    """No host synchronisation in forward or backward (docs/ops.md, Determinism): any would raise here."""
    if variant == "float_mask" and not case.has_mask:
        pytest.skip("no mask")
    forward, backward = _prepared(case, _variant(case, variant), reduction)
    backward(forward())  # warm-up outside the mode
    torch.cuda.synchronize()
    with _sync_debug_error():
        out = forward()
        grads = backward(out)
    torch.cuda.synchronize()
    assert all(torch.isfinite(g).all() for g in grads) and torch.isfinite(out).all()


LAUNCH_VARIANTS = ["fp32", "channels_last", "float_mask"]


@cuda_only
@pytest.mark.parametrize("variant", LAUNCH_VARIANTS)
@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_launches_per_op(case, variant, record_property):
    """Kernel launches of one forward and one backward (reduction "mean"), recorded for the report; the
    copies among them (channels_last inputs are copied once per call, docs/ops.md, Gradients and layouts)."""
    if variant == "float_mask" and not case.has_mask:
        pytest.skip("no mask")
    reduction = case.reductions[0]
    forward, backward = _prepared(case, _variant(case, variant), reduction)
    backward(forward())  # warm-up
    box = {}
    fwd = _device_events(lambda: box.setdefault("out", forward()))
    bwd = _device_events(lambda: backward(box["out"]))
    if not fwd:
        pytest.skip("the profiler saw no CUDA kernel (CUPTI unavailable?)")
    for phase, names in (("fwd", fwd), ("bwd", bwd)):
        kernels, copies = _kernel_counts(names)
        record_property(f"{phase}_kernels", kernels)
        record_property(f"{phase}_copies", copies)
        record_property(f"{phase}_names", "; ".join(map(_short, names))[:600])
        assert kernels >= 1, (phase, names)
