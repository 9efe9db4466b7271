"""The CUDA device code, executed on the host (tests/ops/device_on_host.py, tests/cuda_host/), against the CPU
kernels: the op-case tables of op_cases.py and hostile values (NaN/inf at counted and non-counted pixels, zero
upstream gradients at valid pixels, zero and negative class weights, extreme gates and gradients, eps near
fp32 underflow, misaligned operands, HW not a multiple of the vector width, more work than the block caps,
empty shapes). Same NaN/inf pattern, exact zeros where the CPU has structural zeros, finite values within the
dtype's tolerance (``TOL``). The launch log proves which path (vector or scalar, grid-stride or not) ran.
"""

from __future__ import annotations

import math

import pytest
import torch

import device_on_host as dh
from op_cases import OPS, SHAPES, _gen, _upstream, misaligned

pytestmark = pytest.mark.skipif(dh.SKIP_REASON is not None, reason=str(dh.SKIP_REASON))

CPU = torch.ops.xtc_ext
INF, NAN = math.inf, math.nan
# (rtol, atol relative to the largest finite expected value) per input dtype; the losses (float32 for the half
# types) use the float32 row. Half-type gradients: one rounding of the input dtype apart.
TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6), torch.float16: (2e-3, 1e-3),
       torch.bfloat16: (1.6e-2, 8e-3)}


@pytest.fixture(scope="module")
def host():
    return dh.host()


def assert_same(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str, floor: float = 0.0) -> None:
    """Same shape, NaN and +-inf positions; finite values within TOL[dtype] (absolute tolerance at least
    ``floor``: the size of terms that cancel, whose difference is rounding noise)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    for name, pattern in (("NaN", torch.isnan), ("+inf", lambda t: t == INF), ("-inf", lambda t: t == -INF)):
        diff = (pattern(a) != pattern(e)).nonzero()
        assert diff.numel() == 0, f"{what}: {name} pattern differs at {diff[:5].tolist()} (device {a[tuple(diff[0])]}, " \
                                  f"cpu {e[tuple(diff[0])]})"
    finite = torch.isfinite(e)
    if finite.any():
        rtol, atol_rel = TOL[dtype]
        scale = e[finite].abs().max().item()
        atol = max(atol_rel * scale, floor, 1e-30)
        torch.testing.assert_close(a[finite], e[finite], rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_results(got: dict, want: dict, dtype: torch.dtype, grad_floor: float = 0.0) -> None:
    for key in want:
        grad = key.startswith("grad")
        tol_dtype = dtype if grad else (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_same(got[key], want[key], tol_dtype, key, grad_floor if grad else 0.0)


# ---------------------------------------------------------------------------------------------------
# Forward + backward of each op through one implementation (the CPU op namespace or the device on host),
# with the internal ops' arguments. ``up`` maps the forward's loss to the upstream gradient.


def run_ce(impl, logits, target, weight=None, ignore_index=-1, label_smoothing=0.0, reduction="mean", up=None):
    extra = (ignore_index, label_smoothing, reduction)
    loss, log_norm, denom = impl.masked_cross_entropy_fwd(logits, target, weight, *extra)
    grad = impl.masked_cross_entropy_bwd(up(loss), logits, target, weight, log_norm, denom, *extra)
    return {"loss": loss, "log_norm": log_norm, "denom": denom, "grad": grad}


def run_soft_ce(impl, logits, target_logits, mask=None, reduction="mean", up=None):
    loss, log_norm, denom = impl.soft_cross_entropy_fwd(logits, target_logits, mask, reduction)
    grad = impl.soft_cross_entropy_bwd(up(loss), logits, target_logits, mask, log_norm, denom, reduction)
    return {"loss": loss, "log_norm": log_norm, "denom": denom, "grad": grad}


def run_l1(impl, pred, target, mask=None, invalid_value=0.0, reduction="mean", up=None):
    loss, denom = impl.masked_l1_loss_fwd(pred, target, mask, invalid_value, reduction)
    grad = impl.masked_l1_loss_bwd(up(loss), pred, target, mask, denom, invalid_value, reduction)
    return {"loss": loss, "denom": denom, "grad": grad}


def run_cos(impl, a, b, mask=None, eps=1e-8, reduction="mean", up=None):
    loss, denom = impl.cosine_similarity_loss_fwd(a, b, mask, eps, reduction, 1)
    grad_a, grad_b = impl.cosine_similarity_loss_bwd(up(loss), a, b, mask, denom, eps, reduction, 1)
    return {"loss": loss, "denom": denom, "grad_a": grad_a, "grad_b": grad_b}


def run_gate(impl, x, gate_logits, reduction=None, up=None):
    out = impl.sigmoid_gate(x, gate_logits)
    grad_x, grad_gate = impl.sigmoid_gate_bwd(up(out), x, gate_logits)
    return {"out": out, "grad_x": grad_x, "grad_gate": grad_gate}


RUNNERS = {"masked_cross_entropy": run_ce, "soft_cross_entropy": run_soft_ce, "masked_l1_loss": run_l1,
           "cosine_similarity_loss": run_cos, "sigmoid_gate": run_gate}


def compare(host, op: str, *args, dtype=None, up=None, grad_floor=0.0, **kwargs) -> dict:
    """Runs op on the CPU kernels and on the device code; asserts the same results; returns the CPU's."""
    up = up or (lambda loss: _upstream(loss, 0))
    want = RUNNERS[op](CPU, *args, up=up, **kwargs)
    got = RUNNERS[op](host, *args, up=up, **kwargs)
    assert_results(got, want, dtype or args[0].dtype, grad_floor)
    return want


def table_case(host, case, sample, reduction, seed, dtype):
    """One op-case table entry: the case's own scale of cancelling gradient terms sets the floor."""
    args, kwargs = sample_call(case, sample, reduction)
    floor = 0.0
    if case.term_scale is not None:
        loss = RUNNERS[case.op](CPU, *args, up=lambda out: torch.zeros_like(out), **kwargs)
        floor = TOL[dtype][1] * case.term_scale(sample, _upstream(next(iter(loss.values())), seed), reduction)
    compare(host, case.op, *args, up=lambda out: _upstream(out, seed), grad_floor=floor, **kwargs)


def sample_call(case, sample, reduction):
    """(args, kwargs) of the runner from an op_cases Sample (the public functions' arguments)."""
    kwargs = dict(sample.kwargs)
    if reduction is not None:
        kwargs["reduction"] = reduction
    return sample.args, kwargs


# ---------------------------------------------------------------------------------------------------
# The op-case tables


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", OPS, ids=lambda c: c.name)
def test_op_cases_float32(host, case, shape):
    for seed, reduction in enumerate(case.reductions):
        table_case(host, case, case.build(shape, torch.float32, _gen(seed)), reduction, seed, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (2, 5, 3, 7), (1, 19, 4, 16)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", OPS, ids=lambda c: c.name)
def test_op_cases_other_dtypes(host, case, shape, dtype):
    """Vector paths (HW % 4 == 0) and scalar paths (HW odd) for every dtype."""
    for seed, reduction in enumerate(case.reductions):
        table_case(host, case, case.build(shape, dtype, _gen(100 + seed)), reduction, seed, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_uint8_labels_without_weight_or_smoothing(host, dtype):
    gen = _gen(3)
    logits = torch.randn(2, 7, 6, 8, generator=gen, dtype=dtype)
    target = torch.randint(0, 7, (2, 6, 8), generator=gen).to(torch.uint8)
    target[0, :2] = 255
    for reduction in ("mean", "sum", "none"):
        compare(host, "masked_cross_entropy", logits, target, None, 255, 0.0, reduction)


# ---------------------------------------------------------------------------------------------------
# Paths of the kernel skeleton, proven by the launch log: the vector path (every operand 16-byte aligned and
# HW % VEC == 0), its fallbacks, and the grid-stride loops beyond the block caps.

THREADS, FINALIZE_THREADS, MAX_PARTIALS, MAX_MAP_BLOCKS = 256, 512, 4096, 1 << 20


def reduction_grid(groups: int) -> int:
    return max(1, min(MAX_PARTIALS, math.ceil(groups / THREADS)))


def map_grid(groups: int) -> int:
    return max(1, min(MAX_MAP_BLOCKS, math.ceil(groups / THREADS)))


def loss_launches(groups_fwd: int, groups_bwd: int) -> list[tuple[int, int]]:
    """Forward (pixel reduction + finalize) then backward (map) of a loss."""
    return [(reduction_grid(groups_fwd), THREADS), (1, FINALIZE_THREADS), (map_grid(groups_bwd), THREADS)]


@pytest.mark.parametrize("where", [None, "logits", "target", "upstream"])
@pytest.mark.parametrize("hw", [(16, 16), (5, 7)], ids=["HW%4==0", "HW-odd"])
def test_cross_entropy_paths(host, where, hw):
    gen = _gen(11)
    N, C = 2, 5
    logits = torch.randn(N, C, *hw, generator=gen) * 3
    target = torch.randint(-1, C, (N, *hw), generator=gen)
    up = torch.randn(N, *hw, generator=gen, dtype=torch.float32)
    logits = misaligned(logits) if where == "logits" else logits
    target = misaligned(target) if where == "target" else target
    up = misaligned(up) if where == "upstream" else up
    host.clear_launches()
    compare(host, "masked_cross_entropy", logits, target, None, -1, 0.0, "none", up=lambda loss: up)
    pixels = N * math.prod(hw)
    vec_fwd = hw[0] * hw[1] % 4 == 0 and where not in ("logits", "target")
    vec_bwd = vec_fwd and where != "upstream"
    expected = loss_launches(pixels // (4 if vec_fwd else 1), pixels // (4 if vec_bwd else 1))
    assert host.launches() == expected


@pytest.mark.parametrize("op", ["soft_cross_entropy", "masked_l1_loss", "cosine_similarity_loss"])
@pytest.mark.parametrize("aligned_mask", [True, False], ids=["mask-aligned", "mask-misaligned"])
def test_masked_paths(host, op, aligned_mask):
    """A misaligned mask with aligned inputs takes the scalar path; the results are the same."""
    gen = _gen(12)
    N, C, H, W = 2, 3, 8, 12
    a = torch.randn(N, C, H, W, generator=gen)
    b = torch.randn(N, C, H, W, generator=gen)
    mask = torch.rand(N, H, W, generator=gen) < 0.7
    mask = mask if aligned_mask else misaligned(mask)
    host.clear_launches()
    compare(host, op, a, b, mask, reduction="mean")
    groups = N * H * W // (4 if aligned_mask else 1)
    fwd, fin, bwd = host.launches()
    assert (fwd, fin) == ((reduction_grid(groups), THREADS), (1, FINALIZE_THREADS)), op
    assert bwd[1] == THREADS


@pytest.mark.parametrize("numel", [1, 7, 4096 + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_gate_paths(host, numel, dtype):
    """16 bytes per thread, the last partial group scalar; a misaligned operand: the scalar path."""
    gen = _gen(13)
    x = (torch.randn(numel, generator=gen, dtype=torch.float64) * 2).to(dtype)
    g = (torch.randn(numel, generator=gen, dtype=torch.float64) * 5).to(dtype)
    width = 16 // x.element_size()
    for gate, vec in ((g, True), (misaligned(g), False)):
        host.clear_launches()
        compare(host, "sigmoid_gate", x, gate)
        groups = math.ceil(numel / (width if vec else 1))
        assert host.launches() == [(map_grid(groups), THREADS)] * 2
    # the gradient of out.sum(): one value broadcast to every element (read as a scalar)
    compare(host, "sigmoid_gate", x, g, up=lambda out: torch.ones((), dtype=out.dtype).expand_as(out))


@pytest.mark.parametrize("shape,vec", [((1, 1, 1025, 1025), 1), ((2, 1, 1536, 1536), 4)],
                         ids=["scalar-path", "vector-path"])
def test_beyond_the_reduction_block_cap(host, shape, vec):
    """More pixel groups than 4096 blocks x 256 threads: each thread of the capped grid loops (grid stride)."""
    gen = _gen(14)
    pred = torch.randn(shape, generator=gen)
    target = torch.randn(shape, generator=gen)
    target[torch.rand(shape, generator=gen) < 0.1] = 0.0
    mask = torch.rand(shape[0], *shape[2:], generator=gen) < 0.9
    host.clear_launches()
    compare(host, "masked_l1_loss", pred, target, mask, 0.0, "mean")
    groups = pred.numel() // vec
    assert groups > MAX_PARTIALS * THREADS
    assert host.launches() == loss_launches(groups, groups)
    assert host.launches()[0][0] == MAX_PARTIALS


def test_cross_entropy_beyond_the_block_cap(host):
    """The vector path of a 3-class cross-entropy past the cap (the first-GPU-run case, one image)."""
    gen = _gen(15)
    logits = torch.randn(1, 3, 2048, 2056, generator=gen)
    target = torch.randint(-1, 3, (1, 2048, 2056), generator=gen)
    host.clear_launches()
    compare(host, "masked_cross_entropy", logits, target, None, -1, 0.0, "mean")
    groups = 2048 * 2056 // 4
    assert groups > MAX_PARTIALS * THREADS
    assert host.launches() == loss_launches(groups, groups)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 5)], ids=["N=0", "HW=0"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_shapes(host, shape, reduction):
    """One reduction block writes 0 (mean/sum), maps launch nothing."""
    a, b = torch.randn(shape), torch.randn(shape)
    target = torch.zeros(shape[0], *shape[2:], dtype=torch.int64)
    compare(host, "masked_cross_entropy", a, target, None, -1, 0.0, reduction)
    compare(host, "soft_cross_entropy", a, b, None, reduction)
    compare(host, "masked_l1_loss", a, b, None, 0.0, reduction)
    compare(host, "cosine_similarity_loss", a, b, None, 1e-8, reduction)
    compare(host, "sigmoid_gate", a, b)


# ---------------------------------------------------------------------------------------------------
# Hostile values

N, C, H, W = 2, 4, 4, 8  # HW % 4 == 0: the vector path; the scalar path is exercised by the table above


def poison(t: torch.Tensor, counted: torch.Tensor, not_counted: torch.Tensor) -> torch.Tensor:
    """t with NaN, +inf, -inf in channel 0..2 at one counted and one non-counted pixel each ([N, H, W] masks)."""
    t = t.clone()
    for pixels in (counted, not_counted):
        idx = pixels.nonzero()
        for k, value in enumerate((NAN, INF, -INF)):
            n, h, w = idx[k].tolist()
            t[n, k % t.shape[1], h, w] = value
    return t


def _pixels(gen, p=0.7):
    valid = torch.rand(N, H, W, generator=gen) < p
    valid.view(-1)[:3] = True
    valid.view(-1)[3:6] = False
    return valid


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_nonfinite_inputs(host, reduction, dtype):
    """NaN/+-inf at counted pixels propagate; at ignored or masked pixels they leave no trace."""
    gen = _gen(21)
    valid = _pixels(gen)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.where(valid, torch.randint(0, C, (N, H, W), generator=gen), -1)
    bad = poison(x, valid, ~valid)
    compare(host, "masked_cross_entropy", bad, target, None, -1, 0.0, reduction)
    compare(host, "masked_cross_entropy", bad, target, torch.rand(C, generator=gen, dtype=torch.float64).to(dtype),
            -1, 0.1, reduction)
    for op in ("soft_cross_entropy", "masked_l1_loss", "cosine_similarity_loss"):
        extra = (0.0,) if op == "masked_l1_loss" else (1e-8,) if op == "cosine_similarity_loss" else ()
        compare(host, op, bad, y, valid, *extra, reduction=reduction)
        compare(host, op, x, poison(y, valid, ~valid), valid, *extra, reduction=reduction)
    compare(host, "sigmoid_gate", bad, y)
    compare(host, "sigmoid_gate", x, poison(y, valid, ~valid))


def test_cosine_nonfinite_counted_pixel_poisons_its_whole_gradient(host):
    """A NaN or inf in a at a counted pixel: every channel of that pixel's gradients is non-finite, on the
    device code as on the CPU (torch.nn.functional.cosine_similarity's autograd gives NaN there too)."""
    gen = _gen(22)
    valid = _pixels(gen)
    a = poison(torch.randn(N, C, H, W, generator=gen), valid, ~valid)
    b = torch.randn(N, C, H, W, generator=gen)
    for reduction in ("mean", "sum", "none"):
        want = compare(host, "cosine_similarity_loss", a, b, valid, 1e-8, reduction)
        got = run_cos(host, a, b, valid, 1e-8, reduction, up=lambda loss: torch.ones_like(loss))
        bad_pixels = (~torch.isfinite(a)).any(1) & valid
        for grads in (want, got):
            for key in ("grad_a", "grad_b"):
                g = grads[key].permute(0, 2, 3, 1)
                assert (~torch.isfinite(g[bad_pixels])).all(), key
                assert (g[~valid] == 0).all(), key


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_upstream_at_valid_pixels(host, reduction):
    """A zero upstream gradient ((0 * loss).backward(), a task weighted 0) at valid pixels whose inputs are
    non-finite gives exactly 0, never 0 * inf = NaN (the CPU's rule)."""
    gen = _gen(23)
    valid = _pixels(gen)
    x = poison(torch.randn(N, C, H, W, generator=gen), valid, ~valid)
    y = torch.randn(N, C, H, W, generator=gen)
    target = torch.where(valid, torch.randint(0, C, (N, H, W), generator=gen), -1)
    zero = lambda loss: torch.zeros_like(loss)  # noqa: E731
    results = [compare(host, "masked_cross_entropy", x, target, None, -1, 0.0, reduction, up=zero),
               compare(host, "soft_cross_entropy", x, y, valid, reduction, up=zero),
               compare(host, "cosine_similarity_loss", x, y, valid, 1e-8, reduction, up=zero)]
    for r in results:
        for key in ("grad", "grad_a", "grad_b"):
            if key in r:
                assert (r[key] == 0).all(), key


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_and_negative_class_weights(host, reduction):
    """Zero weights on every present class (mean over a zero denominator: loss 0, gradient exactly 0 even
    at inf logits), and negative weights (same formulas as the CPU)."""
    gen = _gen(24)
    valid = _pixels(gen)
    logits = torch.randn(N, C, H, W, generator=gen) * 3
    target = torch.where(valid, torch.randint(0, 2, (N, H, W), generator=gen), -1)  # classes 0 and 1 only
    absent_only = torch.tensor([0.0, 0.0, 1.5, 2.0])
    inf_logits = poison(logits, valid, ~valid)
    for smoothing in (0.0, 0.2):
        r = compare(host, "masked_cross_entropy", inf_logits, target, absent_only, -1, smoothing, reduction)
        if reduction == "mean" and smoothing == 0.0:
            assert r["denom"] == 0 and r["loss"] == 0 and (r["grad"] == 0).all()
        compare(host, "masked_cross_entropy", logits, target, torch.tensor([-1.0, 0.5, -2.0, 0.0]), -1,
                smoothing, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_extreme_gates_and_gradients(host, dtype):
    """Gates at the ends of exp's range, +-inf, NaN, signed zeros; x and upstream gradients up to the largest
    finite value (grad_out 3.4e38, x 1e-10, gate -29.5: the exact gradient 5.2456e15 is finite)."""
    info = torch.finfo(dtype)
    gates = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 29.5, -29.5, 87.3, -87.3, 88.8, -88.8, 103.9, -104.0, 745.0,
                          -746.0, 1e4, -1e4, INF, -INF, NAN, 17.0], dtype=torch.float64)
    xs = torch.tensor([1.0, -1e-10, 1e-10, info.max, -info.max, info.tiny, 3.0, 0.0], dtype=torch.float64)
    ups = torch.tensor([1.0, info.max, -info.max, 1e-30, 0.0], dtype=torch.float64)
    g, x, u = torch.meshgrid(gates, xs, ups, indexing="ij")
    g, x, u = (t.reshape(-1).to(dtype) for t in (g, x, u))
    compare(host, "sigmoid_gate", x, g, up=lambda out: u)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("eps", [1.5e-45, 1e-40, 1e-30, 1e-8])
def test_eps_near_underflow_with_zero_vectors(host, dtype, eps):
    """cosine_similarity_loss with zero vectors (the invalid normals pixels) and eps down to the smallest float32
    subnormal: the same on both, the loss finite (a gradient of size 1 / eps may overflow to inf, on both)."""
    gen = _gen(25)
    a = torch.randn(N, 3, H, W, generator=gen, dtype=dtype)
    b = torch.randn(N, 3, H, W, generator=gen, dtype=dtype)
    a[:, :, 0] = 0
    b[:, :, 1] = 0
    a[:, :, 2, :3] = 1e-30
    for reduction in ("mean", "none"):
        r = compare(host, "cosine_similarity_loss", a, b, None, eps, reduction)
        assert torch.isfinite(r["loss"]).all()


# ---------------------------------------------------------------------------------------------------
# The emulator itself (tests/cuda_host/selftest.cu)


def _ptr(t):
    return dh.ctypes.c_void_p(t.data_ptr())


def _warp_tree_sum(v: torch.Tensor) -> torch.Tensor:
    """warp_sum of cuda_common.cuh in float32: v += shfl_down(v, 16, 8, 4, 2, 1); lanes past the warp read
    their own value. Returns lane 0."""
    v = v.clone()
    for off in (16, 8, 4, 2, 1):
        shifted = torch.cat([v[off:], v[32 - off:]])  # lane i reads lane i + off, or its own value
        v = v + shifted
    return v[0]


def test_emulator_block_sum_in_the_device_order(host):
    """block_sum2 on the emulator equals the device's reduction tree evaluated in float32 (warp trees, then
    warp 0 over the 8 warp sums), bit for bit; values spread over 2^-20..2^20 so that the order matters."""
    gen = _gen(31)
    blocks = 3
    x = (torch.randn(blocks * THREADS, generator=gen) * torch.exp2(torch.randint(-20, 20, (blocks * THREADS,),
                                                                               generator=gen).float()))
    out = torch.empty(2 * blocks)
    assert host.lib.xtc_selftest_block_sum(_ptr(x), _ptr(out), dh.ctypes.c_int64(blocks)) == 0
    for b in range(blocks):
        warps = x[b * THREADS:(b + 1) * THREADS].view(8, 32)
        partial = torch.stack([_warp_tree_sum(w) for w in warps])
        expected = _warp_tree_sum(torch.cat([partial, torch.zeros(24)]))
        assert out[2 * b].item() == expected.item()
        assert out[2 * b + 1].item() == THREADS


@pytest.mark.parametrize("delta", [1, 5, 16, 31])
def test_emulator_shuffle_down(host, delta):
    out = torch.empty(64, dtype=torch.int32)
    assert host.lib.xtc_selftest_shuffle(delta, _ptr(out)) == 0
    lane = torch.arange(64) % 32
    expected = torch.where(lane + delta < 32, torch.arange(64) + delta, torch.arange(64))
    assert torch.equal(out.long(), expected)


def test_emulator_reports_a_divergent_barrier(host):
    out = torch.zeros(64, dtype=torch.int32)
    assert host.lib.xtc_selftest_divergent_barrier(_ptr(out)) != 0
    assert b"divergent barrier" in host.lib.xtc_emu_last_error()


def test_emulator_reports_a_misaligned_vector_access(host):
    buf = torch.arange(16, dtype=torch.float32)
    out = torch.empty(32)
    assert host.lib.xtc_selftest_vector_load(_ptr(buf), _ptr(out)) == 0
    assert (out == 0).all()
    assert host.lib.xtc_selftest_vector_load(_ptr(buf[1:]), _ptr(out)) != 0
    assert b"misaligned" in host.lib.xtc_emu_last_error()
