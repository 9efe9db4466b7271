"""Shared inputs of the op tests (tests/ops/test_ops*.py): input builders, the table ``OPS`` of every op
(the three XTasC losses, class-weighted and label-smoothed cross-entropy, MT-CP's cosine_similarity_loss and
sigmoid_gate) with its reference, a runner of forward + backward with a random upstream gradient, and the
tolerance helpers. Devices: ``DEVICES`` lists the CPU and, when available, CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import pytest
import torch

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
    none_shape: str = "pixel"  # reduction "none": "pixel" [N,H,W] or "element" [N,C,H,W]
    reduces: bool = True  # a loss with a reduction argument (sigmoid_gate: elementwise, input dtype)
    has_mask: bool = False
    curvature: bool = True  # the GradNorm input term is nonzero (d^2 out / d x^2 != 0 for some input)
    term_scale: Callable | None = None  # (sample, upstream, reduction) -> scale of cancelling gradient terms

    @property
    def internal(self) -> tuple[str, ...]:
        """The op's internal torch.ops, from the op table (xtc_ext.ops.OP_TABLE)."""
        return SPECS[self.op].internal

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


SPECS = {spec.name: spec for spec in ops.OP_TABLE}
# The test cases of every op of the op table (test_ops.py checks that none is missing): one row per op,
# plus variants (extra rows of the same op).
OPS = [
    OpCase("masked_cross_entropy", "masked_cross_entropy", build_ce, term_scale=_ce_term_scale),
    OpCase("masked_cross_entropy-weighted", "masked_cross_entropy",
           partial(build_ce, weight="rand", label_smoothing=0.1), term_scale=_ce_term_scale),
    OpCase("soft_cross_entropy", "soft_cross_entropy", build_soft_ce, has_mask=True),
    OpCase("masked_l1_loss", "masked_l1_loss", build_l1, none_shape="element", has_mask=True, curvature=False),
    OpCase("cosine_similarity_loss", "cosine_similarity_loss", build_cos, has_mask=True,
           term_scale=_cos_term_scale),
    OpCase("sigmoid_gate", "sigmoid_gate", build_gate, reduces=False),
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
# CUDA helpers (tests/ops/test_cuda*.py, test_ops_autograd.py)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values in a contiguous tensor whose data pointer is one element past a 16-byte boundary
    (storage offset 1): the kernels must take their scalar path for it (docs/ops.md, Determinism)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:]
    out = flat.view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.storage_offset() == 1 and out.data_ptr() % 16 != 0
    return out


OUT_OF_RANGE_SCRIPT = """
import sys
import torch
import xtc_ext

dtype, op, reduction, weighted = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "weighted"
logits = torch.randn(2, 5, 3, 7, device="cuda")
target = torch.randint(0, 5, (2, 3, 7), device="cuda").to(getattr(torch, dtype))
target[1, 2, 6] = 7
weight = torch.rand(5, device="cuda") + 0.5 if weighted else None
loss = getattr(xtc_ext.ops, op)(logits, target, -1, weight, 0.1 if weighted else 0.0, reduction)
print("launched without error", flush=True)
torch.cuda.synchronize()
print("synchronised without error", flush=True)
"""
"""A label 7 of 5 classes on CUDA: the device-side check fails at the next synchronisation (docs/ops.md, Errors)."""


def run_out_of_range(target_dtype: str, op: str = "masked_cross_entropy", reduction: str = "mean",
                     weighted: bool = False) -> subprocess.CompletedProcess:
    """OUT_OF_RANGE_SCRIPT in a fresh process (a device assert leaves the CUDA context unusable)."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_LAUNCH_BLOCKING"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", OUT_OF_RANGE_SCRIPT, target_dtype, op, reduction, "weighted" if weighted else "plain"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
