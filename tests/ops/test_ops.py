"""Tests of the fused ops (xtc_ext.ops) against the eager references (xtc_ext.reference).

Table-driven: every op of the shared table ``OPS`` (the three XTasC losses, class-weighted and
label-smoothed cross-entropy, MT-CP's cosine_similarity_loss and sigmoid_gate) goes through the
same tests: forward values and gradients on random inputs of several (odd) shapes, empty inputs,
reduced precision, strided inputs, gradcheck / double backward (GradNorm pattern), retain_graph,
opcheck, torch.compile(fullgraph=True) and bitwise determinism (including across thread counts).
Op-specific semantics (ignore_index, class weights, label smoothing, masks, invalid values, soft
targets, the cosine eps rule, saturated gates) and error reporting have their own tests.

Devices: the core tests run on every entry of ``DEVICES`` (CUDA when available). The tests named
``test_cuda_*`` (and the ``[cuda]`` parametrisations) need a CUDA device and are skipped without one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import xtc_ext
from xtc_ext import ops, reference

ROOT = Path(__file__).resolve().parents[2]
REDUCTIONS = ("mean", "sum", "none")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none available)")

SHAPES = [(1, 1, 1, 1), (2, 1, 5, 7), (2, 3, 5, 7), (1, 256, 3, 5), (3, 13, 17, 31), (2, 40, 9, 300)]
# C=1 (depth), C=3 (normals), C=256 features on a small map; (2, 40, 9, 300): H*W = 2700, not a
# multiple of the 256-pixel block, 11 blocks per image.
BIG = (2, 40, 9, 300)


# ----------------------------------------------------------------------------------------------
# Input builders and the op table


@dataclass
class Sample:
    args: list  # positional args of both the fused op and the reference
    kwargs: dict
    grad_idx: tuple[int, ...]  # positions of the differentiable args

    def to(self, device) -> Sample:
        def move(v):
            return v.to(device) if isinstance(v, torch.Tensor) else v

        return Sample([move(a) for a in self.args], {k: move(v) for k, v in self.kwargs.items()}, self.grad_idx)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in [*self.args, *self.kwargs.values()] if isinstance(t, torch.Tensor)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, gen, dtype, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _bernoulli(shape, gen, p):
    return torch.rand(shape, generator=gen) < p


def _mask(N, H, W, gen, kind, p=0.8):
    if kind is None:
        return None
    m = _bernoulli((N, H, W), gen, p)
    return {
        "nhw": m,
        "n1hw": m.unsqueeze(1),
        "float": m.double().unsqueeze(1),
        "uint8": m.to(torch.uint8),
    }[kind]


def _class_weight(C, gen, dtype, kind):
    """None, or positive class weights: "rand" in [0.5, 2), "small" in [0.001, 0.01) (sum below 1)."""
    if kind is None or kind is False:
        return None
    lo, hi = {True: (0.5, 2.0), "rand": (0.5, 2.0), "small": (0.001, 0.01)}[kind]
    return (lo + (hi - lo) * torch.rand(C, generator=gen, dtype=torch.float64)).to(dtype)


def build_ce(shape, dtype, gen, ignore_index=-1, ignore_frac=0.2, target_dtype=torch.int64, weight=None,
             label_smoothing=0.0):
    N, C, H, W = shape
    logits = _randn(shape, gen, dtype, 3.0)
    target = torch.randint(0, C, (N, H, W), generator=gen)
    target[_bernoulli((N, H, W), gen, ignore_frac)] = ignore_index
    kwargs = {"ignore_index": ignore_index}
    if weight is not None:
        kwargs["weight"] = _class_weight(C, gen, dtype, weight)
    if label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    return Sample([logits, target.to(target_dtype)], kwargs, (0,))


def build_soft_ce(shape, dtype, gen, mask_kind="nhw"):
    N, C, H, W = shape
    logits = _randn(shape, gen, dtype, 2.0)
    target_logits = _randn(shape, gen, dtype, 2.0)
    return Sample([logits, target_logits], {"mask": _mask(N, H, W, gen, mask_kind)}, (0,))


def build_l1(shape, dtype, gen, mask_kind="n1hw", invalid_value=0.0):
    N, C, H, W = shape
    pred = _randn(shape, gen, dtype)
    target = _randn(shape, gen, dtype)
    target[_bernoulli(shape, gen, 0.2)] = 0.0
    return Sample([pred, target], {"mask": _mask(N, H, W, gen, mask_kind), "invalid_value": invalid_value}, (0,))


def build_cos(shape, dtype, gen, mask_kind="nhw"):
    """Two feature maps whose pixels range from nearly aligned to opposed (b = 0.6 a + noise)."""
    N, C, H, W = shape
    a = _randn(shape, gen, torch.float64)
    b = 0.6 * a + _randn(shape, gen, torch.float64, 0.8)
    return Sample([a.to(dtype), b.to(dtype)], {"mask": _mask(N, H, W, gen, mask_kind)}, (0, 1))


def build_gate(shape, dtype, gen):
    return Sample([_randn(shape, gen, dtype), _randn(shape, gen, dtype, 3.0)], {}, (0, 1))


def _valid_pixels(sample: Sample) -> torch.Tensor:
    a = sample.args[0]
    mask = sample.kwargs.get("mask")
    if mask is None:
        return torch.ones(a.shape[0], *a.shape[2:], dtype=torch.bool, device=a.device)
    return (mask[:, 0] if mask.dim() == 4 else mask) != 0


def _cos_term_scale(sample: Sample, up: torch.Tensor, reduction: str) -> float:
    """Size of the two terms of the cosine-loss gradient (ka a and kab b, ~ |upstream| / |a| at a pixel).
    They cancel exactly for C = 1, where the gradient is rounding noise of that size."""
    a, b = (t.double() for t in sample.args)
    inv = 1 / a.norm(dim=1).clamp(min=1e-8) + 1 / b.norm(dim=1).clamp(min=1e-8)
    per = up.double().abs() * inv * _valid_pixels(sample)
    if reduction == "mean":
        per = per / _valid_pixels(sample).sum().clamp(min=1)
    return per.max().item() if per.numel() else 0.0


def _ce_term_scale(sample: Sample, up: torch.Tensor, reduction: str) -> float:
    """Size of the terms of the cross-entropy gradient, A p_c and (1 - eps) w_y + (eps / C) w_c, ~ |upstream| max_c w_c
    at a pixel. With weights and label smoothing they cancel exactly for C = 1 (rounding noise of that size)."""
    target = sample.args[1].long()
    w = sample.kwargs.get("weight")
    valid = target != sample.kwargs["ignore_index"]
    w = torch.ones(sample.args[0].shape[1], dtype=torch.float64) if w is None else w.double().cpu()
    per = up.double().abs().cpu() * valid.cpu() * w.max()
    if reduction == "mean":
        denom = (w[torch.where(valid, target, 0).cpu()] * valid.cpu()).sum()
        per = per / (denom if denom > 0 else 1)
    return per.max().item() if per.numel() else 0.0


@dataclass
class OpCase:
    name: str  # test id
    op: str  # name under xtc_ext.ops / torch.ops.xtc_ext
    build: Callable  # build(shape, dtype, generator) -> Sample
    internal: tuple[str, ...]  # the op's internal torch.ops
    none_shape: str = "pixel"  # reduction "none": "pixel" [N,H,W] or "element" [N,C,H,W]
    reduces: bool = True  # a loss with a reduction argument (sigmoid_gate: elementwise, input dtype)
    has_mask: bool = False
    curvature: bool = True  # the GradNorm input term is nonzero (d^2 out / d x^2 != 0 for some input)
    term_scale: Callable | None = None  # (sample, upstream, reduction) -> scale of cancelling gradient terms

    @property
    def fused(self):
        return getattr(ops, self.op)

    @property
    def ref(self):
        return getattr(reference, self.op)

    @property
    def reductions(self):
        return REDUCTIONS if self.reduces else (None,)

    def out_shape(self, shape, reduction):
        if not self.reduces or (reduction == "none" and self.none_shape == "element"):
            return tuple(shape)
        N, C, H, W = shape
        return (N, H, W) if reduction == "none" else ()

    def out_dtype(self, dtype):
        if not self.reduces:
            return dtype
        return torch.float64 if dtype == torch.float64 else torch.float32


_CE_INTERNAL = ("masked_cross_entropy_fwd", "masked_cross_entropy_bwd")
OPS = [
    OpCase("masked_cross_entropy", "masked_cross_entropy", build_ce, _CE_INTERNAL, term_scale=_ce_term_scale),
    OpCase("masked_cross_entropy-weighted", "masked_cross_entropy",
           partial(build_ce, weight="rand", label_smoothing=0.1), _CE_INTERNAL, term_scale=_ce_term_scale),
    OpCase("soft_cross_entropy", "soft_cross_entropy", build_soft_ce,
           ("soft_cross_entropy_fwd", "soft_cross_entropy_bwd"), has_mask=True),
    OpCase("masked_l1_loss", "masked_l1_loss", build_l1, ("masked_l1_loss_fwd", "masked_l1_loss_bwd"),
           none_shape="element", has_mask=True, curvature=False),
    OpCase("cosine_similarity_loss", "cosine_similarity_loss", build_cos,
           ("cosine_similarity_loss_fwd", "cosine_similarity_loss_bwd"), has_mask=True, term_scale=_cos_term_scale),
    OpCase("sigmoid_gate", "sigmoid_gate", build_gate, ("sigmoid_gate_bwd",), reduces=False),
]
OP_IDS = [c.name for c in OPS]
CASES = {c.name: c for c in OPS}
MASKED = [c for c in OPS if c.has_mask]


def case_params(cases=None, reductions=REDUCTIONS):
    """(case, reduction) pairs: each loss with each reduction, sigmoid_gate once with reduction None."""
    out = []
    for c in OPS if cases is None else cases:
        for r in reductions if c.reduces else (None,):
            out.append(pytest.param(c, r, id=c.name if r is None else f"{c.name}-{r}"))
    return out


def _kw(kwargs: dict, reduction) -> dict:
    return kwargs if reduction is None else {**kwargs, "reduction": reduction}


def _upstream(loss: torch.Tensor, seed: int) -> torch.Tensor:
    """Upstream gradient != 1: a random weight in +-[0.5, 2] for scalars, a random map otherwise."""
    g = _gen(seed + 7919)
    if loss.dim() == 0:
        sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
        up = sign * (0.5 + 1.5 * torch.rand((), generator=g, dtype=torch.float64))
    else:
        up = torch.randn(loss.shape, generator=g, dtype=torch.float64)
    return up.to(device=loss.device, dtype=loss.dtype)


def run(fn, sample: Sample, reduction, seed: int, cast=None):
    """Output and gradients of (upstream * out).sum() w.r.t. the differentiable args (fresh leaves).
    ``reduction`` None: the op takes none (sigmoid_gate)."""
    args = []
    for i, a in enumerate(sample.args):
        if cast is not None and a.is_floating_point():
            a = a.to(cast)
        args.append(a.detach().clone().requires_grad_() if i in sample.grad_idx else a)
    loss = fn(*args, **_kw(sample.kwargs, reduction))
    up = _upstream(loss, seed)
    grads = torch.autograd.grad((loss * up).sum(), [args[i] for i in sample.grad_idx])
    return loss.detach(), [g.detach() for g in grads]


def _scaled_close(actual, expected, rtol, atol_rel, floor=1e-30):
    """assert_close with an absolute tolerance relative to the scale of the expected values."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=max(atol_rel * scale, floor))


def _grads_close(case, sample, reduction, seed, loss, grads, ref_grads, rtol, atol_rel):
    floor = 1e-30
    if case.term_scale is not None:
        floor = atol_rel * case.term_scale(sample, _upstream(loss, seed), reduction)
    for g, rg in zip(grads, ref_grads):
        assert g.shape == rg.shape
        assert torch.isfinite(g).all()
        _scaled_close(g, rg, rtol, atol_rel, floor)


TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12)}


# ----------------------------------------------------------------------------------------------
# 1. Fused vs eager reference (every device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case,reduction", case_params())
def test_matches_reference(case, reduction, shape, dtype, seed, device):
    sample = case.build(shape, dtype, _gen(seed)).to(device)
    loss, grads = run(case.fused, sample, reduction, seed)
    ref_loss, ref_grads = run(case.ref, sample, reduction, seed)

    assert loss.device.type == device
    assert loss.dtype == case.out_dtype(dtype) and ref_loss.dtype == loss.dtype
    assert tuple(loss.shape) == case.out_shape(shape, reduction)
    rtol, atol_rel = TOL[dtype]
    # absolute floor atol_rel in loss units: 1 - cos of parallel C=1 vectors is rounding noise ~ulp(1), not 0
    _scaled_close(loss, ref_loss, rtol, atol_rel, floor=atol_rel)
    assert all(g.dtype == dtype for g in grads)
    _grads_close(case, sample, reduction, seed, loss, grads, ref_grads, rtol, atol_rel)


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_non_contiguous_upstream_gradient(case):
    """Unreduced output with an expanded (out.sum()) or permuted upstream gradient."""
    sample = case.build((2, 3, 4, 7), torch.float64, _gen(30))
    reduction = "none" if case.reduces else None
    for make in (
        lambda out: out.sum(),
        lambda out: out.mean() * 3.0,
        lambda out: (out.transpose(-1, -2) * _upstream(out.transpose(-1, -2), 30)).sum(),
    ):
        grads = []
        for fn in (case.fused, case.ref):
            x = sample.args[0].clone().requires_grad_()
            out = fn(x, *sample.args[1:], **_kw(sample.kwargs, reduction))
            make(out).backward()
            grads.append(x.grad)
        _scaled_close(grads[0], grads[1], 1e-10, 1e-12)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5)], ids=["N0", "H0"])
@pytest.mark.parametrize("case,reduction", case_params())
def test_empty_inputs(case, reduction, shape):
    sample = case.build(shape, torch.float32, _gen(31))
    loss, grads = run(case.fused, sample, reduction, 31)
    assert tuple(loss.shape) == case.out_shape(shape, reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert [tuple(g.shape) for g in grads] == [shape] * len(sample.grad_idx)


@pytest.mark.parametrize("case", OPS, ids=OP_IDS)
def test_public_ops_are_torch_ops(case):
    assert case.op in ops.__all__
    for name in (case.op, *case.internal):
        assert hasattr(torch.ops.xtc_ext, name), name
    sample = case.build((2, 4, 3, 5), torch.float32, _gen(0))
    for reduction in case.reductions:
        a = case.fused(*sample.args, **_kw(sample.kwargs, reduction))
        b = getattr(torch.ops.xtc_ext, case.op)(*sample.args, **_kw(sample.kwargs, reduction))
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Hand-computable tiny cases


def test_ce_tiny_hand_computed():
    logits = torch.tensor([[0.0, 0.0, 1.0], [0.0, math.log(3.0), 1.0]]).view(1, 2, 1, 3).requires_grad_()
    target = torch.tensor([[[0, -1, 1]]])
    # pixel 0: uniform over 2 classes -> ln 2; pixel 1 ignored; pixel 2: logits equal -> ln 2
    loss = ops.masked_cross_entropy(logits, target, -1, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(2.0)))
    loss_mean = ops.masked_cross_entropy(logits, target, -1, reduction="mean")
    torch.testing.assert_close(loss_mean, torch.tensor(math.log(2.0)))
    loss_mean.backward()
    expected = torch.tensor([[0.5 - 1, 0.0, 0.5], [0.5, 0.0, 0.5 - 1]]).view(1, 2, 1, 3) / 2
    torch.testing.assert_close(logits.grad, expected)
    # a single class: loss 0 everywhere, gradient 0
    z = torch.randn(1, 1, 2, 2, requires_grad=True)
    out = ops.masked_cross_entropy(z, torch.zeros(1, 2, 2, dtype=torch.long), -1, reduction="mean")
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_ce_weight_smoothing_hand_computed():
    """Two classes with equal logits (lse - z_c = ln 2), weight (2, 1), label smoothing 0.5, target 0:
    (1 - 0.5) * 2 ln 2 + (0.5 / 2) * (2 + 1) ln 2 = 1.75 ln 2; the mean divides by w_0 = 2."""
    logits = torch.zeros(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, -1]]])
    weight = torch.tensor([2.0, 1.0], dtype=torch.float64)
    kw = dict(weight=weight, label_smoothing=0.5)
    per = ops.masked_cross_entropy(logits, target, **kw, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[[1.75 * math.log(2.0), 0.0]]], dtype=torch.float64))
    mean = ops.masked_cross_entropy(logits, target, **kw)
    torch.testing.assert_close(mean, torch.tensor(0.875 * math.log(2.0), dtype=torch.float64))
    mean.backward()
    # d/dz_c = A p_c - ((1 - eps) w_y [c = y] + (eps / C) w_c), A = (1 - eps) w_y + (eps / C) W = 1.75
    g0, g1 = 1.75 * 0.5 - (0.5 * 2 + 0.25 * 2), 1.75 * 0.5 - 0.25 * 1
    expected = torch.tensor([[g0, 0.0], [g1, 0.0]], dtype=torch.float64).view(1, 2, 1, 2) / 2
    torch.testing.assert_close(logits.grad, expected)
    torch.testing.assert_close(mean, F.cross_entropy(logits.detach(), target, ignore_index=-1, **kw))


def test_soft_ce_tiny_hand_computed():
    # uniform logits over 2 classes: -sum_c q_c * ln(1/2) = ln 2 whatever the target distribution
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    target_logits = torch.tensor([[5.0, -1.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    loss = ops.soft_cross_entropy(logits, target_logits, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(2.0)))
    loss.backward()
    q = torch.softmax(target_logits, dim=1)
    torch.testing.assert_close(logits.grad, 0.5 - q)


def test_l1_tiny_hand_computed():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4).requires_grad_()
    target = torch.tensor([0.0, 1.0, 5.0, 2.0]).view(1, 1, 1, 4)
    # invalid_value=0 drops the first element: (1 + 2 + 2) / 3
    loss = ops.masked_l1_loss(pred, target)
    torch.testing.assert_close(loss, torch.tensor(5.0 / 3.0))
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([0.0, 1.0, -1.0, 1.0]).view(1, 1, 1, 4) / 3)
    # invalid_value=None keeps it: (1 + 1 + 2 + 2) / 4
    torch.testing.assert_close(ops.masked_l1_loss(pred, target, invalid_value=None), torch.tensor(1.5))
    torch.testing.assert_close(ops.masked_l1_loss(pred, target, invalid_value=None, reduction="sum"),
                               torch.tensor(6.0))
    # a mask excluding the last pixel as well: (1 + 2) / 2
    mask = torch.tensor([True, True, True, False]).view(1, 1, 4)
    torch.testing.assert_close(ops.masked_l1_loss(pred, target, mask), torch.tensor(1.5))
    per = ops.masked_l1_loss(pred, target, mask, reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.0, 1.0, 2.0, 0.0]).view(1, 1, 1, 4))


def test_cos_tiny_hand_computed():
    """Unit normals (C=3): orthogonal -> 1, equal -> 0, opposite -> 2; scale-invariant; the eps rule
    floors each norm separately: a = (0.05, 0, 0), b = (3, 0, 0), eps = 0.1 gives cos = 0.15 / (0.1 * 3)."""
    cols = [([1, 0, 0], [0, 1, 0]), ([0, 0.6, 0.8], [0, 0.6, 0.8]), ([1, 0, 0], [-1, 0, 0]), ([3, 4, 0], [0.6, 0.8, 0])]
    a = torch.tensor([c[0] for c in cols], dtype=torch.float64).T.reshape(1, 3, 1, 4)
    b = torch.tensor([c[1] for c in cols], dtype=torch.float64).T.reshape(1, 3, 1, 4)
    per = ops.cosine_similarity_loss(a, b, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[[1.0, 0.0, 2.0, 0.0]]], dtype=torch.float64))
    torch.testing.assert_close(ops.cosine_similarity_loss(a, b), torch.tensor(0.75, dtype=torch.float64))

    a = torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_()
    b = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_()
    loss = ops.cosine_similarity_loss(a, b, eps=0.1, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(0.5, dtype=torch.float64))
    loss.backward()
    # |a| < eps: loss = 1 - <a, b> / (eps |b|), so d/da = -b / (eps |b|); |b| > eps: d/db = 0 (direction only)
    torch.testing.assert_close(a.grad.flatten(), torch.tensor([-10.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(b.grad.flatten(), torch.zeros(3, dtype=torch.float64))


def test_gate_tiny_hand_computed():
    x = torch.tensor([2.0, -4.0, 3.0]).requires_grad_()
    g = torch.tensor([0.0, math.log(3.0), -math.log(3.0)]).requires_grad_()
    out = ops.sigmoid_gate(x, g)
    torch.testing.assert_close(out, torch.tensor([1.0, -3.0, 0.75]))
    out.backward(torch.tensor([1.0, 2.0, -1.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 1.5, -0.25]))  # grad * s
    torch.testing.assert_close(g.grad, torch.tensor([0.5, -1.5, -0.5625]))  # grad * x * s * (1 - s)


# ----------------------------------------------------------------------------------------------
# 2. masked_cross_entropy specifics


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "ignore_index,target_dtype",
    [(-1, torch.int64), (250, torch.int64), (255, torch.uint8), (255, torch.int64), (0, torch.int64)],
)
def test_ce_ignore_index(ignore_index, target_dtype, reduction):
    shape = (2, 19, 11, 13)
    sample = build_ce(shape, torch.float32, _gen(3), ignore_index, 0.3, target_dtype)
    target = sample.args[1]
    assert (target == ignore_index).any() and (target != ignore_index).any()
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 3)
    ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 3)
    _scaled_close(loss, ref_loss, 1e-5, 1e-6)
    _scaled_close(grad, ref_grad, 1e-5, 1e-6)

    # torch's own cross-entropy (int64 target) agrees when some pixels are valid
    def torch_ce(logits, target, ignore_index, reduction):
        return F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction=reduction)

    t_loss, (t_grad,) = run(torch_ce, sample, reduction, 3)
    _scaled_close(loss, t_loss, 1e-5, 1e-6)
    _scaled_close(grad, t_grad, 1e-5, 1e-6)
    # ignored pixels: zero loss ("none") and zero gradient on every class
    ignored = target == ignore_index
    assert torch.equal(grad.permute(0, 2, 3, 1)[ignored], torch.zeros_like(grad.permute(0, 2, 3, 1)[ignored]))
    if reduction == "none":
        assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))


def _torch_ce(logits, target, ignore_index=-1, weight=None, label_smoothing=0.0, reduction="mean"):
    """torch.nn.functional.cross_entropy with this library's argument order (computed in fp32 or fp64)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    w = None if weight is None else weight.to(z.dtype)
    return F.cross_entropy(z, target.long(), weight=w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


@pytest.mark.parametrize("ignore_index,target_dtype", [(-1, torch.int64), (255, torch.uint8)], ids=["int64", "uint8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weight", [None, "rand"], ids=["unweighted", "weighted"])
def test_ce_weight_label_smoothing(weight, label_smoothing, reduction, dtype, ignore_index, target_dtype):
    """Fused vs reference vs F.cross_entropy (some pixels valid), upstream gradient != 1. bf16: the loss
    is computed in fp32 from the same rounded logits (tight), only the gradient is rounded to bf16."""
    sample = build_ce((2, 6, 5, 37), dtype, _gen(33), ignore_index, 0.25, target_dtype, weight, label_smoothing)
    target = sample.args[1]
    assert (target == ignore_index).any() and (target != ignore_index).any()
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 33)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and grad.dtype == dtype
    rtol, atol_rel = TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    grtol, gatol_rel = (1e-2, 1e-2) if dtype == torch.bfloat16 else (rtol, atol_rel)
    for fn in (reference.masked_cross_entropy, _torch_ce):
        cast = torch.float32 if dtype == torch.bfloat16 else None
        ref_loss, (ref_grad,) = run(fn, sample, reduction, 33, cast=cast)
        _scaled_close(loss, ref_loss, rtol, atol_rel)
        _scaled_close(grad.to(ref_grad.dtype), ref_grad, grtol, gatol_rel)
    ignored = (target == ignore_index).unsqueeze(1).expand_as(grad)
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_ce_mean_is_invariant_to_weight_scale(label_smoothing):
    """The mean divides by sum_valid w_y, so scaling all weights changes nothing, also when that sum is
    below 1 (weights ~0.005 on 40 valid pixels)."""
    sample = build_ce((1, 4, 5, 10), torch.float64, _gen(34), weight="small", label_smoothing=label_smoothing)
    w = sample.kwargs["weight"]
    valid = sample.args[1] != -1
    assert 0 < w[sample.args[1][valid]].sum() < 1
    small_loss, (small_grad,) = run(ops.masked_cross_entropy, sample, "mean", 34)
    sample.kwargs["weight"] = w * 1000
    big_loss, (big_grad,) = run(ops.masked_cross_entropy, sample, "mean", 34)
    torch.testing.assert_close(small_loss, big_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(small_grad, big_grad, rtol=1e-10, atol=1e-14)
    sample.kwargs["weight"] = w
    t_loss, (t_grad,) = run(_torch_ce, sample, "mean", 34)
    torch.testing.assert_close(small_loss, t_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(small_grad, t_grad, rtol=1e-10, atol=1e-14)


def test_ce_weight_any_float_dtype():
    """weight is used in the loss dtype whatever its own floating dtype (values exact in fp16)."""
    sample = build_ce((2, 5, 4, 9), torch.float32, _gen(35), label_smoothing=0.1)
    w = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.25])
    results = []
    for wdt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        sample.kwargs["weight"] = w.to(wdt)
        results.append(run(ops.masked_cross_entropy, sample, "mean", 35))
    for loss, (grad,) in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(grad, results[0][1][0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight,label_smoothing", [(None, 0.0), ("rand", 0.1), ("rand", 1.0)],
                         ids=["plain", "weighted-ls0.1", "weighted-ls1"])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8])
def test_ce_all_ignored_is_zero(target_dtype, weight, label_smoothing, reduction):
    g = _gen(4)
    logits = torch.randn(2, 5, 3, 300, generator=g, requires_grad=True)
    target = torch.full((2, 3, 300), 255, dtype=target_dtype)
    w = _class_weight(5, g, torch.float32, weight)
    loss = ops.masked_cross_entropy(logits, target, 255, w, label_smoothing, reduction)
    assert torch.isfinite(loss).all()
    assert torch.equal(loss, torch.zeros_like(loss))
    (loss * 1.7).sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_zero_weight_of_present_classes(reduction):
    """Present classes weighted 0 (F.cross_entropy's mean is NaN there): loss 0 and zero gradient; with
    label smoothing the other classes still contribute to the sum and "none", while the mean over a zero weight
    sum is 0 with zero gradient (the documented empty-mean rule; it used to be the sum, issue 9 defect 6)."""
    g = _gen(36)
    logits = _randn((2, 5, 3, 40), g, torch.float64, 3.0).requires_grad_()
    target = torch.randint(0, 2, (2, 3, 40), generator=g)
    target[_bernoulli(target.shape, g, 0.2)] = -1
    for weight, eps in [([0.0, 0.0, 1.0, 2.0, 3.0], 0.0), ([0.0] * 5, 0.1), ([0.0] * 5, 1.0)]:
        logits.grad = None
        w = torch.tensor(weight, dtype=torch.float64)
        loss = ops.masked_cross_entropy(logits, target, -1, w, eps, reduction)
        assert torch.equal(loss, torch.zeros_like(loss)), (weight, eps)
        (loss * 1.3).sum().backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits)), (weight, eps)
    w = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    sample = Sample([logits.detach(), target], {"ignore_index": -1, "weight": w, "label_smoothing": 0.1}, (0,))
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 36)
    ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 36)
    assert torch.isfinite(loss).all()
    if reduction == "mean":
        assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))
    else:
        assert (loss != 0).any()
    _scaled_close(loss, ref_loss, 1e-10, 1e-12)
    _scaled_close(grad, ref_grad, 1e-10, 1e-12)


def test_ce_weight_and_label_smoothing_errors():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    bad = [
        (dict(weight=torch.ones(4)), ValueError, "weight"),
        (dict(weight=torch.ones(2)), ValueError, "weight"),
        (dict(weight=torch.ones(1, 3)), ValueError, "weight"),
        (dict(weight=torch.tensor(1.0)), ValueError, "weight"),
        (dict(weight=torch.ones(3, dtype=torch.long)), TypeError, "weight"),
        (dict(weight=torch.ones(3, dtype=torch.int32)), TypeError, "weight"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(label_smoothing=1.0001), ValueError, "label_smoothing"),
        (dict(label_smoothing=float("nan")), ValueError, "label_smoothing"),
    ]
    for kwargs, exc, match in bad:
        for reduction in REDUCTIONS:
            with pytest.raises(exc, match=match):
                ops.masked_cross_entropy(logits, target, **kwargs, reduction=reduction)
    for eps in (0.0, 1.0):  # the closed interval
        assert torch.isfinite(ops.masked_cross_entropy(logits, target, label_smoothing=eps))


def test_ce_uint8_and_int64_targets_identical():
    for weight, eps in [(None, 0.0), ("rand", 0.1)]:
        sample = build_ce(BIG, torch.float32, _gen(5), 255, 0.25, torch.int64, weight, eps)
        logits, target = sample.args
        for reduction in REDUCTIONS:
            results = []
            for tdt in (torch.int64, torch.uint8):
                z = logits.clone().requires_grad_()
                loss = ops.masked_cross_entropy(z, target.to(tdt), **_kw(sample.kwargs, reduction))
                (loss * _upstream(loss, 5)).sum().backward()
                results.append((loss.detach(), z.grad))
            assert torch.equal(results[0][0], results[1][0])
            assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothed", [False, True])
def test_ce_huge_logits(smoothed, reduction, dtype):
    g = _gen(6)
    shape = (2, 7, 5, 37)
    sample = build_ce(shape, dtype, g, weight="rand" if smoothed else None, label_smoothing=0.1 if smoothed else 0.0)
    logits = _randn(shape, g, dtype, 1e3)
    logits[_bernoulli(shape, g, 0.1)] = 1e4
    logits[_bernoulli(shape, g, 0.1)] = -1e4
    logits[0, :, 0, 0] = 1e4  # a tie at the maximum
    logits[1, :, 0, 0] = -1e4  # all classes at the minimum
    sample.args[0] = logits
    loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 6)
    ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 6)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    rtol, atol_rel = TOL[dtype]
    _scaled_close(loss, ref_loss, rtol, atol_rel)
    _scaled_close(grad, ref_grad, rtol, atol_rel)


def test_ce_confident_pixel_gradient_is_exact_in_fp32():
    """A confidently right pixel with large logits: the target-class gradient p - 1 is a small
    difference, so any rounding of the saved normaliser shows up (fp64 is the reference)."""
    z64 = torch.tensor([306.3098, 312.3541]).double().view(1, 2, 1, 1)  # fp32-representable inputs
    target = torch.tensor([[[1]]])
    grads = []
    for dtype in (torch.float32, torch.float64):
        z = z64.to(dtype).requires_grad_()
        ops.masked_cross_entropy(z, target).backward()
        grads.append(z.grad.double().flatten())
    # fp32 softmax probabilities carry ~1 ulp(1) of absolute error (eager log_softmax too); a
    # normaliser rounded at the scale of the logits (|lse| * 2^-24 ~ 2e-5) would be 100x larger.
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=2.0**-22)
    assert abs(float(grads[0].sum())) < 2.0**-22  # the softmax gradient sums to zero (to fp32 rounding)


def test_ce_minus_inf_logits():
    """Classes switched off with -inf logits (never the target) contribute nothing."""
    g = _gen(7)
    logits = _randn((2, 6, 4, 33), g, torch.float32, 3.0)
    target = torch.randint(0, 3, (2, 4, 33), generator=g)
    target[0, 0, :5] = -1
    logits[:, 3:][_bernoulli((2, 3, 4, 33), g, 0.7)] = float("-inf")
    for weight in (None, torch.tensor([0.5, 1.0, 2.0, 1.0, 1.0, 1.0])):
        sample = Sample([logits, target], {"ignore_index": -1, "weight": weight}, (0,))
        for reduction in REDUCTIONS:
            loss, (grad,) = run(ops.masked_cross_entropy, sample, reduction, 7)
            ref_loss, (ref_grad,) = run(reference.masked_cross_entropy, sample, reduction, 7)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
            _scaled_close(loss, ref_loss, 1e-5, 1e-6)
            _scaled_close(grad, ref_grad, 1e-5, 1e-6)


@pytest.mark.parametrize("bad", [5, -2, 250])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ce_out_of_range_target_raises(bad, reduction):
    logits = torch.randn(2, 5, 3, 7, requires_grad=True)
    target = torch.randint(0, 5, (2, 3, 7))
    target[1, 2, 6] = bad
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target, -1, reduction=reduction)
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target, -1, torch.ones(5), 0.1, reduction)
    with pytest.raises(ValueError, match="target"):
        torch.ops.xtc_ext.masked_cross_entropy_fwd(logits, target, None, -1, 0.0, reduction)
    # uint8 labels out of range (ignore_index 255 does not cover 200)
    t8 = torch.randint(0, 5, (2, 3, 7), dtype=torch.uint8)
    t8[0, 0, 0] = 200
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, t8, 255, reduction=reduction)


@pytest.mark.parametrize("tdtype", [torch.float32, torch.int32, torch.int8, torch.bool])
def test_ce_wrong_target_dtype_raises(tdtype):
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=tdtype)
    with pytest.raises(TypeError, match="target"):
        ops.masked_cross_entropy(logits, target)


def test_ce_bad_shapes_and_args():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="logits"):
        ops.masked_cross_entropy(logits[0], target)  # 3-D logits
    with pytest.raises(ValueError, match="logits"):
        ops.masked_cross_entropy(logits.unsqueeze(0), target)  # 5-D logits
    with pytest.raises(ValueError, match="logits"):
        ops.masked_cross_entropy(torch.randn(2, 0, 4, 5), target)  # no class
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target.unsqueeze(1))  # [N,1,H,W] target
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target[:, :, :4])  # wrong W
    with pytest.raises(ValueError, match="target"):
        ops.masked_cross_entropy(logits, target[:1])  # wrong N
    with pytest.raises(TypeError, match="logits"):
        ops.masked_cross_entropy(logits.long(), target)
    for bad in ("avg", "MEAN", ""):
        with pytest.raises(ValueError, match="reduction"):
            ops.masked_cross_entropy(logits, target, -1, reduction=bad)


# ----------------------------------------------------------------------------------------------
# 3. soft_cross_entropy specifics


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_ce_no_grad_to_target(reduction):
    sample = build_soft_ce((2, 5, 4, 9), torch.float32, _gen(8))
    logits = sample.args[0].clone().requires_grad_()
    target_logits = sample.args[1].clone().requires_grad_()
    loss = ops.soft_cross_entropy(logits, target_logits, sample.kwargs["mask"], reduction)
    (loss * _upstream(loss, 8)).sum().backward()
    assert target_logits.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the value does not depend on whether target_logits requires grad
    ref = ops.soft_cross_entropy(sample.args[0], sample.args[1], sample.kwargs["mask"], reduction)
    assert torch.equal(loss.detach(), ref)


@pytest.mark.parametrize("case,reduction", case_params(MASKED))
def test_mask_forms_agree(case, reduction):
    """[N,H,W] bool, [N,1,H,W] bool, float (nonzero = valid) and uint8 masks give identical results."""
    shape = (2, 3, 7, 300)
    results = {}
    for kind in ("nhw", "n1hw", "float", "uint8"):
        sample = case.build(shape, torch.float32, _gen(9), mask_kind=kind)  # same seed: same mask
        if kind == "float":
            sample.kwargs["mask"] = sample.kwargs["mask"].float() * 0.75  # nonzero = valid
        results[kind] = run(case.fused, sample, reduction, 9)
    base_loss, base_grads = results["nhw"]
    for kind, (loss, grads) in results.items():
        assert torch.equal(loss, base_loss), kind
        for g, bg in zip(grads, base_grads):
            assert torch.equal(g, bg), kind
    sample = case.build(shape, torch.float32, _gen(9), mask_kind="n1hw")
    ref_loss, ref_grads = run(case.ref, sample, reduction, 9)
    _scaled_close(base_loss, ref_loss, 1e-5, 1e-6)
    for g, rg in zip(base_grads, ref_grads):
        _scaled_close(g, rg, 1e-5, 1e-6)
    # masked pixels: zero gradient on every channel, zero loss for "none"
    masked = ~sample.kwargs["mask"][:, 0]
    for g in base_grads:
        assert torch.equal(g.permute(0, 2, 3, 1)[masked], torch.zeros_like(g.permute(0, 2, 3, 1)[masked]))
    if reduction == "none":
        per = base_loss if base_loss.dim() == 3 else base_loss.permute(0, 2, 3, 1)
        assert torch.equal(per[masked], torch.zeros_like(per[masked]))


@pytest.mark.parametrize("case,reduction", case_params(MASKED))
def test_all_masked_is_zero(case, reduction):
    sample = case.build((2, 4, 3, 300), torch.float32, _gen(10), mask_kind=None)
    for mask in (torch.zeros(2, 3, 300, dtype=torch.bool), torch.zeros(2, 1, 3, 300)):
        leaves = [a.clone().requires_grad_() if i in sample.grad_idx else a for i, a in enumerate(sample.args)]
        loss = case.fused(*leaves, **{**sample.kwargs, "mask": mask, "reduction": reduction})
        assert torch.isfinite(loss).all()
        assert torch.equal(loss, torch.zeros_like(loss))
        (loss * 2.5).sum().backward()
        for i in sample.grad_idx:
            assert torch.equal(leaves[i].grad, torch.zeros_like(leaves[i]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_ce_with_one_hot_target_equals_ce(reduction):
    shape = (2, 6, 5, 41)
    ce = build_ce(shape, torch.float32, _gen(12), ignore_frac=0.25)
    logits, target = ce.args
    valid = target != -1
    one_hot = F.one_hot(target.clamp(min=0), shape[1]).permute(0, 3, 1, 2).float() * 1e4
    soft = Sample([logits, one_hot], {"mask": valid}, (0,))
    loss, (grad,) = run(ops.soft_cross_entropy, soft, reduction, 12)
    ce_loss, (ce_grad,) = run(ops.masked_cross_entropy, ce, reduction, 12)
    _scaled_close(loss, ce_loss, 1e-5, 1e-6)
    _scaled_close(grad, ce_grad, 1e-5, 1e-6)


def test_soft_ce_bad_args():
    logits = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="target_logits"):
        ops.soft_cross_entropy(logits, torch.randn(2, 4, 4, 5))
    with pytest.raises(ValueError, match="target_logits"):
        ops.soft_cross_entropy(logits, torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="target_logits"):
        ops.soft_cross_entropy(logits, logits.double())
    with pytest.raises(TypeError, match="target_logits"):
        ops.soft_cross_entropy(logits, logits.half())
    with pytest.raises(ValueError, match="logits"):
        ops.soft_cross_entropy(logits[0, 0, 0, 0], logits[0, 0, 0, 0])  # 0-D: no class dim (3-D is (N, C, d1))
    with pytest.raises(ValueError, match="logits"):
        ops.soft_cross_entropy(logits[:, :0], logits[:, :0])  # no class
    with pytest.raises(TypeError, match="logits"):
        ops.soft_cross_entropy(logits.long(), logits.long())
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(logits, logits, torch.ones(2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        ops.soft_cross_entropy(logits, logits, torch.ones(2, 4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        ops.soft_cross_entropy(logits, logits, reduction="elementwise")


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


_OUT_OF_RANGE_SCRIPT = """
import sys
import torch
import xtc_ext

logits = torch.randn(2, 5, 3, 7, device="cuda")
target = torch.randint(0, 5, (2, 3, 7), device="cuda").to(getattr(torch, sys.argv[1]))
target[1, 2, 6] = 7
loss = getattr(xtc_ext.ops, sys.argv[2])(logits, target, -1)
print("launched without error", flush=True)
torch.cuda.synchronize()
print("synchronised without error", flush=True)
"""


@requires_cuda
@pytest.mark.parametrize("target_dtype", ["int64", "uint8"])
def test_cuda_out_of_range_label_fails_at_synchronisation(target_dtype):
    """On CUDA a bad label cannot raise at the call (that would need a host sync): a device-side check
    fails at the next synchronisation. It poisons the CUDA context, hence the subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_LAUNCH_BLOCKING"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _OUT_OF_RANGE_SCRIPT, target_dtype, "masked_cross_entropy"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
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
