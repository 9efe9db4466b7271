"""Property-based tests of the ops (Hypothesis): random shapes (sizes 0 and 1, pixel counts that are not a
multiple of the 256-pixel block, every rank the ops accept), strides and memory formats, dtypes, masks in
every documented form, ignore indices, class weights, label smoothing, eps, dim and value ranges; each
op against a float64 PyTorch reference (``xtc_ext.reference`` evaluated on the same, rounded, values), forward
and gradient with a random upstream gradient, plus bitwise invariance to layout and mask form.

Profiles (tests/ops/conftest.py): ``XTC_HYPOTHESIS_PROFILE=ci`` (default, seconds) or ``thorough``. A case
is a plain dict (shape, dtype, layout, ..., seed of the values), so a failing example Hypothesis reports
is kept below as an explicit ``@example``.
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from xtc_ext import ops, reference

DTYPES = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# (rtol, atol relative to the largest reference value) of the loss and of the gradient
TOL = {"f64": (1e-9, 1e-9), "f32": (2e-4, 2e-5), "bf16": (2e-2, 1e-2), "f16": (2e-2, 1e-2)}
LOSS_TOL = {"f64": (1e-9, 1e-9), "f32": (2e-4, 2e-5), "bf16": (2e-4, 2e-5), "f16": (2e-4, 2e-5)}
MAX_NUMEL = 6000


@st.composite
def shapes(draw, min_rank=1, max_rank=5, min_c=1):
    """(N, C, d1..dk) with sizes 0 and 1 likely, sometimes a dim of 255/257 (blocks of 256 pixels)."""
    rank = draw(st.integers(min_rank, max_rank))
    c = draw(st.integers(min_c, 6))
    if rank == 1:
        return (c,)
    n = draw(st.integers(0, 3))
    spatial = draw(st.lists(st.one_of(st.integers(0, 7), st.sampled_from([255, 257])), min_size=rank - 2,
                            max_size=rank - 2))
    shape = (n, c, *spatial)
    assume(math.prod(shape) <= MAX_NUMEL)
    return shape


def common(draw, shape):
    return dict(
        shape=shape,
        dtype=draw(st.sampled_from(list(DTYPES))),
        layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "channels_last"])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        scale=draw(st.sampled_from([1e-2, 1.0, 30.0, 1e3])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def ce_cases(draw):
    case = common(draw, draw(shapes()))
    c = case["shape"][1] if len(case["shape"]) > 1 else case["shape"][0]
    case.update(
        ignore_index=draw(st.sampled_from([-1, 255, 0, c - 1])),
        uint8=draw(st.booleans()),
        weight=draw(st.sampled_from([None, "positive", "mixed"])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0, draw(st.floats(0, 1))])),
    )
    return case


@st.composite
def masked_cases(draw, min_c=1):
    case = common(draw, draw(shapes(min_c=min_c)))
    case["mask"] = draw(st.sampled_from([None, "pixel", "keepdim", "float", "uint8", "int64"]))
    return case


# ----------------------------------------------------------------------------------------------
# Building the inputs of a case


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def values(case, shape, salt, scale=None):
    g = _gen(case["seed"] + salt)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * (case["scale"] if scale is None else scale)
    return x.to(DTYPES[case["dtype"]])


def layout(case, t):
    """The same values in the case's memory layout (transposed, every other element of a wider tensor, ...)."""
    if t is None or t.dim() < 2:
        return t
    kind = case["layout"]
    if kind == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "sliced":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if kind == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def pixel_mask(case, shape, cdim):
    kind = case.get("mask")
    if kind is None:
        return None
    pixel = shape[:cdim] + shape[cdim + 1:]
    m = torch.rand(pixel, generator=_gen(case["seed"] + 3)) < 0.75
    if kind == "keepdim" and len(shape) > 1:
        m = m.unsqueeze(cdim)
    return {"pixel": m, "keepdim": m, "float": m.double() * 0.5, "uint8": m.to(torch.uint8),
            "int64": m.long()}[kind]


def run(fn, args, grad_idx, up_seed):
    """Output and gradients of <up, fn(args)> w.r.t. args[grad_idx] (fresh leaves)."""
    leaves = [a.detach().clone().requires_grad_() if i in grad_idx else a for i, a in enumerate(args)]
    if any(isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() > 1 for a in args):
        leaves = [layout_like(a, o) for a, o in zip(leaves, args)]
    out = fn(*leaves)
    up = torch.randn(out.shape, generator=_gen(up_seed), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad((out * up).sum(), [leaves[i] for i in grad_idx]) if out.numel() else [
        torch.zeros_like(leaves[i]) for i in grad_idx]
    return out.detach(), [g.detach() for g in grads], up


def layout_like(leaf, original):
    """A differentiable view of leaf with original's strides (clone keeps strides of dense layouts)."""
    if not isinstance(leaf, torch.Tensor) or leaf.stride() == original.stride() or not leaf.requires_grad:
        return leaf
    return leaf.as_strided(original.shape, original.stride()) if original.is_contiguous() else leaf


def check(case, fused, ref, args, grad_idx, term_scale=None):
    """fused(args) against ref(args in float64): loss and gradients, tolerances of the case's dtype."""
    out, grads, up = run(fused, args, grad_idx, case["seed"] + 11)
    args64 = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    ref_out, ref_grads, _ = run(ref, args64, grad_idx, case["seed"] + 11)
    assert out.shape == ref_out.shape
    rtol, atol = LOSS_TOL[case["dtype"]]
    # per-pixel terms like log(sum exp) are exact to a few ulp of 1, not relative to a tiny loss
    pixels = max(1, math.prod(case["shape"]) // max(1, case["shape"][1 if len(case["shape"]) > 1 else 0]))
    floor = 10 * (1e-16 if case["dtype"] == "f64" else 1.2e-7) * (pixels if case["reduction"] == "sum" else 1)
    close(out.double(), ref_out, rtol, atol, floor)
    rtol, atol = TOL[case["dtype"]]
    floor = atol * term_scale(up.double()) if term_scale is not None else 0.0
    for g, rg, i in zip(grads, ref_grads, grad_idx):
        assert g.dtype == args[i].dtype and g.shape == args[i].shape
        close(g.double(), rg, rtol, atol, floor)


def close(actual, expected, rtol, atol_rel, floor=0.0):
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(actual)), "non-finite values differ"
    scale = expected[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol, atol=max(atol_rel * scale, floor, 1e-300))


def pixel_scale(case, up, denom):
    """|upstream| per pixel (divided by the mean's denominator)."""
    s = up.abs()
    return s / abs(denom) if case["reduction"] == "mean" and denom != 0 else s


# ----------------------------------------------------------------------------------------------
# The properties


@given(ce_cases())
@example(dict(shape=(1, 1), dtype="f32", layout="contiguous", reduction="mean", scale=1.0, seed=0, ignore_index=-1,
              uint8=False, weight="positive", label_smoothing=0.5))
def test_masked_cross_entropy(case):
    shape, cdim = case["shape"], 1 if len(case["shape"]) > 1 else 0
    c = shape[cdim]
    z = layout(case, values(case, shape, 0))
    pixel = shape[:cdim] + shape[cdim + 1:]
    target = torch.randint(0, c, pixel, generator=_gen(case["seed"] + 1))
    target[torch.rand(pixel, generator=_gen(case["seed"] + 2)) < 0.2] = case["ignore_index"]
    if case["uint8"] and 0 <= case["ignore_index"] <= 255:
        target = target.to(torch.uint8)
    w = None
    if case["weight"] is not None:
        w = torch.rand(c, generator=_gen(case["seed"] + 4), dtype=torch.float64) + 0.25
        if case["weight"] == "mixed":
            assume(case["dtype"] == "f64")  # cancelling denominators amplify rounding: exact inputs only
            w = w * torch.where(torch.rand(c, generator=_gen(case["seed"] + 5)) < 0.5, -1.0, 1.0).double()
    valid = target.long() != case["ignore_index"]
    wy = torch.ones(pixel, dtype=torch.float64) if w is None else w[torch.where(valid, target.long(), 0)]
    denom = float((wy * valid).sum())
    assume(case["reduction"] != "mean" or denom == 0 or abs(denom) > 0.5)
    kw = dict(ignore_index=case["ignore_index"], weight=w, label_smoothing=case["label_smoothing"],
              reduction=case["reduction"])
    wmax = 1.0 if w is None else float(w.abs().max())

    def term_scale(up):  # size of the cancelling gradient terms (A p_c and (1 - eps) w_y + eps / C w_c)
        return float(pixel_scale(case, up, denom).max()) * wmax if up.numel() else 0.0

    check(case, lambda x: ops.masked_cross_entropy(x, target, **kw),
          lambda x: reference.masked_cross_entropy(x, target, **kw), [z], (0,), term_scale)


@given(masked_cases(), st.sampled_from([0.0, None, 0.5]))
def test_masked_l1_loss(case, invalid_value):
    shape = case["shape"]
    cdim = 1 if len(shape) > 1 else 0
    pred = layout(case, values(case, shape, 0))
    target = values(case, shape, 1)
    target[torch.rand(shape, generator=_gen(case["seed"] + 2)) < 0.2] = 0.5 if invalid_value == 0.5 else 0.0
    target = layout(case, target)
    mask = layout(case, pixel_mask(case, shape, cdim))
    args = (invalid_value, case["reduction"])
    check(case, lambda p, t: ops.masked_l1_loss(p, t, mask, *args),
          lambda p, t: reference.masked_l1_loss(p, t, mask, *args), [pred, target], (0, 1))


@given(masked_cases())
def test_soft_cross_entropy(case):
    shape = case["shape"]
    cdim = 1 if len(shape) > 1 else 0
    z, t = layout(case, values(case, shape, 0)), layout(case, values(case, shape, 1))
    mask = layout(case, pixel_mask(case, shape, cdim))
    n_valid = int(((mask != 0) if mask is not None else torch.ones(1)).sum())
    check(case, lambda x: ops.soft_cross_entropy(x, t, mask, case["reduction"]),
          lambda x: reference.soft_cross_entropy(x, t, mask, case["reduction"]), [z], (0,),
          lambda up: float(pixel_scale(case, up, n_valid).max()) if up.numel() else 0.0)


@given(masked_cases(), st.sampled_from([1e-8, 0.5]), st.integers(-5, 4))
@example(dict(shape=(1,), dtype="f64", layout="contiguous", reduction="mean", scale=0.01, seed=0, mask=None), 0.5, 0)  # norms below eps: the eps rule's gradient (found by the thorough profile)
def test_cosine_similarity_loss(case, eps, dim):
    shape = case["shape"]
    assume(-len(shape) <= dim < len(shape))
    cdim = dim % len(shape)
    assume(shape[cdim] >= 1)  # a zero-size channel dim is a ValueError (tested in test_hostile_inputs.py)
    a = values(case, shape, 0)
    b = (0.6 * a.double() + values(case, shape, 1).double()).to(a.dtype)
    norms = [x.double().norm(dim=cdim) for x in (a, b)]
    assume(all(bool(((n - eps).abs() > 1e-3 * eps + 1e-6 * n).all()) for n in norms))  # no pixel at the floor
    mask = layout(case, pixel_mask(case, shape, cdim))
    n_valid = int(((mask != 0) if mask is not None else torch.ones(1)).sum())
    inv = sum(1 / n.clamp(min=eps) for n in norms)

    def term_scale(up):  # the two gradient terms are ~ |s| / max(|a|, eps) and cancel for C = 1
        terms = pixel_scale(case, up, n_valid) * inv
        return float(terms.max()) if terms.numel() else 0.0

    kw = dict(mask=mask, eps=eps, reduction=case["reduction"], dim=dim)
    check(case, lambda x, y: ops.cosine_similarity_loss(x, y, **kw), lambda x, y: cosine_exact(x, y, **kw),
          [layout(case, a), layout(case, b)], (0, 1), term_scale)


def cosine_exact(a, b, mask, eps, reduction, dim):
    """1 - <a, b> / (max(|a|, eps) max(|b|, eps)) differentiated as written: a floored norm is the constant eps
    (F.cosine_similarity's autograd keeps a derivative there, for norms in (0, eps))."""
    def floored(x):
        sq = (x * x).sum(dim)
        big = sq > eps * eps
        return torch.where(big, torch.sqrt(torch.where(big, sq, torch.ones_like(sq))), torch.full_like(sq, eps))

    per = 1 - (a * b).sum(dim) / floored(a) / floored(b)
    valid = torch.ones_like(per, dtype=torch.bool)
    if mask is not None:
        valid = (mask != 0).squeeze(dim) if mask.dim() == a.dim() else mask != 0
    per = torch.where(valid, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    count = valid.sum()
    return per.sum() if reduction == "sum" else (per.sum() / count if count > 0 else per.sum() * 0)


@given(masked_cases(), st.integers(0, 5), st.sampled_from([1.0, 10.0, 120.0]))
def test_sigmoid_gate(case, rank, gate_scale):
    shape = case["shape"][:rank] if rank < len(case["shape"]) else case["shape"]
    x = layout(case, values(case, shape, 0))
    g = layout(case, values(case, shape, 1, gate_scale))
    out, (gx, gg), up = run(ops.sigmoid_gate, [x, g], (0, 1), case["seed"] + 11)
    # float64 formulas without cancellation: e = exp(-|g|), s = 1/(1+e) or e/(1+e), s(1-s) = e/(1+e)^2
    x64, g64, up64 = x.double(), g.double(), up.double()
    e = torch.exp(-g64.abs())
    s = torch.where(g64 >= 0, 1 / (1 + e), e / (1 + e))
    rtol, atol = TOL[case["dtype"]]
    for actual, expected in ((out, x64 * s), (gx, up64 * s), (gg, up64 * x64 * (e / (1 + e) ** 2))):
        assert actual.dtype == x.dtype and actual.shape == x.shape
        close(actual.double(), expected.to(x.dtype).double(), rtol, atol)  # what exact rounding gives


@given(masked_cases(min_c=1))
def test_layout_and_mask_form_invariance(case):
    """CPU results are bitwise identical whatever the memory layout of the inputs and the mask form."""
    shape = case["shape"]
    cdim = 1 if len(shape) > 1 else 0
    a, b = values(case, shape, 0), values(case, shape, 1)
    mask = pixel_mask(case, shape, cdim)
    fns = [
        lambda x, y, m: ops.soft_cross_entropy(x, y, m, case["reduction"]),
        lambda x, y, m: ops.masked_l1_loss(x, y, m, 0.0, case["reduction"]),
        lambda x, y, m: ops.cosine_similarity_loss(x, y, m, 1e-8, case["reduction"], cdim),
    ]
    for fn in fns:
        base, base_grads, _ = run(lambda x, y: fn(x, y, mask), [a, b], (0,), case["seed"])
        forms = [mask]
        if mask is not None:
            pixel = (mask != 0).squeeze(cdim) if mask.dim() == a.dim() and a.dim() > 1 else mask != 0
            forms += [pixel, pixel.unsqueeze(cdim) if a.dim() > 1 else pixel]
        for m in forms:
            out, grads, _ = run(lambda x, y: fn(x, y, layout(case, m)), [layout(case, a), layout(case, b)], (0,),
                                case["seed"])
            assert torch.equal(out, base)
            assert torch.equal(grads[0], base_grads[0])
