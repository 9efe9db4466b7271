"""The fused loss ops: public API and autograd (including double backward and torch.func support).

Every op is also reachable as ``torch.ops.xtc_ext.<name>`` once :mod:`xtc_ext` is imported. The full
reference (shapes, dtypes, reductions, the empty-mean rule, determinism, errors) is ``docs/ops.md``.
In short:

- Shapes follow PyTorch: an input is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` with the classes or
  channels in dim 1 (``cosine_similarity_loss``: in ``dim``); the other dims are the pixels. Targets,
  masks and ``reduction="none"`` outputs have the pixel shape ``(N, d1, ..., dk)``; a mask may also keep
  the class dim with size 1.
- Inputs float16/bfloat16/float32/float64, all operands of one dtype; accumulation in float32 (float64
  for float64 inputs); the loss is float32 (float64).
- ``reduction``: ``"mean"`` over the valid pixels of the whole batch, ``"sum"``, or ``"none"``. A mean
  whose denominator is 0 (no valid pixel, or class weights summing to 0) is 0 with zero gradient.
- No host synchronisation; CPU results are bitwise deterministic for any thread count.
- Bad input raises ``ValueError`` (shape, value), ``TypeError`` (dtype) or ``RuntimeError`` (device)
  naming the argument, in every kernel (CPU, CUDA, and the Meta kernels used by torch.compile).

Internal ops: ``<name>_fwd`` returns the loss plus what the backward needs: for the two cross-entropies
``lse_minus_max = log sum_c exp(z_c - max_c z)`` per pixel (one fp32 per pixel, bounded by log C, so
exact to fp32 rounding however large the logits), and the device-side denominator; ``<name>_bwd``
recomputes the max and the softmax from it. Their autograd is a :class:`torch.autograd.Function` with
a separate ``setup_context`` (what :mod:`torch.func` needs: ``grad``, ``vjp``, ``jacrev``, ``vmap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

_lib = torch.ops.xtc_ext

__all__ = [
    "masked_cross_entropy",
    "masked_l1_loss",
    "soft_cross_entropy",
    "cosine_similarity_loss",
    "sigmoid_gate",
]


def masked_cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = -1,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy over the class dimension with ignored pixels excluded from sum and count.

    Per valid pixel (``target != ignore_index``) with class weights ``w`` (ones if None), ``W = sum_c w_c``
    and label smoothing ``eps``: ``loss = (1 - eps) w_y (lse - z_y) + (eps / C) sum_c w_c (lse - z_c)``;
    0 at ignored pixels. ``"mean"`` divides the sum by ``sum_valid w_y`` (the valid-pixel count without
    weights), whatever its sign, as ``torch.nn.functional.cross_entropy``; where that sum is 0 the mean
    is 0 with zero gradient (PyTorch: NaN). XTasC-Net paper Eq. 12 (direct segmentation loss) and the
    Align-Net transfer loss (Eq. 8); ``docs/ops.md``.

    Args:
        logits: ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` (segmentation: ``[N, C, H, W]``)
            float16/bfloat16/float32/float64 raw scores, ``C >= 1``.
        target: int64 or uint8 class indices in ``[0, C)`` or ``ignore_index``, of logits' shape without
            dim 1: ``()``, ``(N,)`` or ``(N, d1, ..., dk)``.
        ignore_index: label value of pixels to ignore (-1 for NYUv2/MTAN, 250 Cityscapes/XTasC, 255 Vandenhende).
        weight: optional ``[C]`` class weights, float16/bfloat16/float32/float64 (used in the loss dtype);
            any sign.
        label_smoothing: ``eps`` in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64 for float64 logits) scalar, or the pixel shape for ``reduction="none"``.
        Gradient flows to ``logits`` only.

    Raises:
        ValueError: wrong shape (logits with no class, target, weight), bad ``reduction`` or
            ``label_smoothing``, or (CPU) a target class index outside ``[0, C)`` that is not
            ``ignore_index``. On CUDA that last check is a device-side assert (``docs/ops.md``).
        TypeError: logits or weight not float16/bfloat16/float32/float64, or target not int64/uint8.
        RuntimeError: tensors on different devices.
    """
    return _call("masked_cross_entropy_fwd", logits, target, weight, ignore_index, label_smoothing, reduction)[0]


def masked_l1_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    invalid_value: float | None = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """L1 (absolute) error over valid elements: depth loss and depth consistency.

    An element is valid when ``target != invalid_value`` (skipped if ``invalid_value`` is None) and its
    pixel's ``mask`` entry is nonzero (if a mask is given). XTasC-Net paper Eq. 14 (direct depth loss,
    pixels with depth 0 masked) and Eq. 15 (depth consistency against the detached direct prediction:
    pass that as ``target``, ``invalid_value=None`` and the ground-truth validity as ``mask``).

    Args:
        pred: any shape, float16/bfloat16/float32/float64 (depth: ``[N, 1, H, W]``, metres). The
            channels are dim 1 (dim 0 of a 1-D input); they matter only for the mask.
        target: same shape and dtype as ``pred``.
        mask: optional per-pixel mask, ``pred``'s shape without dim 1 or with size 1 there (``[N, H, W]``
            or ``[N, 1, H, W]``), bool, integer or floating, nonzero = valid.
        invalid_value: target value marking invalid elements (0 = missing depth), or None.
        reduction: ``"mean"`` (over valid elements of the batch), ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64) scalar, or a per-element loss of ``pred``'s shape (0 where invalid) for
        ``"none"``. Gradients ``sign(pred - target)`` (0 at equality) to ``pred`` and its negative to
        ``target`` when it requires grad.

    Raises:
        ValueError: shape mismatch, bad mask shape or ``reduction``, or a NaN ``invalid_value`` (NaN equals
            no target: exclude NaN targets with ``mask``).
        TypeError: inputs not float16/bfloat16/float32/float64, mismatched dtypes, or a bad mask dtype.
        RuntimeError: tensors on different devices.
    """
    return _call("masked_l1_loss_fwd", pred, target, mask, invalid_value, reduction)[0]


def soft_cross_entropy(
    logits: Tensor, target_logits: Tensor, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy against the soft distribution ``softmax(target_logits)``; no gradient to the target.

    ``loss[p] = -sum_c softmax(target_logits)[c, p] * log_softmax(logits)[c, p]`` over the class dim.
    XTasC-Net paper Eq. 13: the segmentation consistency loss of the depth->segmentation transfer
    network against the (stop-gradient) direct segmentation prediction.

    Args:
        logits: ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` float16/bfloat16/float32/float64, ``C >= 1``.
        target_logits: same shape and dtype (the direct prediction's logits); treated as detached.
        mask: optional, the pixel shape (``[N, H, W]``) or with size 1 in dim 1 (``[N, 1, H, W]``),
            nonzero = valid pixel.
        reduction: ``"mean"`` (over valid pixels of the batch), ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64) scalar, or the pixel shape for ``"none"`` (0 where masked).

    Raises:
        ValueError: no class, shape mismatch, bad mask shape or ``reduction``.
        TypeError: inputs not float16/bfloat16/float32/float64, mismatched dtypes, or a bad mask dtype.
        RuntimeError: tensors on different devices.
    """
    return _call("soft_cross_entropy_fwd", logits, target_logits, mask, reduction)[0]


def cosine_similarity_loss(
    a: Tensor, b: Tensor, mask: Tensor | None = None, eps: float = 1e-8, reduction: str = "mean", dim: int = 1
) -> Tensor:
    """``1 - cos(a_p, b_p)`` per pixel over dimension ``dim``: MT-CP coherence and normals losses.

    ``cos = <a_p, b_p> / (max(|a_p|, eps) * max(|b_p|, eps))`` (``torch.nn.functional.cosine_similarity``'s
    eps rule, computed without overflow or underflow of the squared norms). MT-CP paper §3 (coherence
    between main and auxiliary task representations) and its surface-normal loss.

    Args:
        a, b: float16/bfloat16/float32/float64 of one dtype; shapes equal or broadcastable (PyTorch
            broadcasting, as ``F.cosine_similarity``). Gradients flow to both; detach one in the caller
            for a one-sided loss.
        mask: optional, the (broadcast) shape without ``dim`` or with size 1 there, nonzero = valid pixel.
        eps: floor of each norm, > 0 in the accumulation type: an ``eps`` that rounds to 0 in float32 (below
            ~7e-46) is rejected for float16/bfloat16/float32 inputs (``docs/ops.md``).
        reduction: ``"mean"`` (over valid pixels of the batch), ``"sum"`` or ``"none"``.
        dim: the channel dimension (default 1: ``[N, C, H, W]`` feature maps).

    Returns:
        float32 (float64) scalar, or the shape without ``dim`` for ``"none"`` (0 where masked).

    Raises:
        ValueError: shapes that do not broadcast, a zero-size ``dim``, ``dim`` out of range, bad mask
            shape, ``eps`` not > 0 in the accumulation type, or bad ``reduction``.
        TypeError: inputs not float16/bfloat16/float32/float64, mismatched dtypes, or a bad mask dtype.
        RuntimeError: tensors on different devices.
    """
    if a.shape != b.shape and isinstance(b, Tensor):
        try:
            a, b = torch.broadcast_tensors(a, b)
        except RuntimeError:
            raise ValueError(
                f"cosine_similarity_loss: b must have the shape of a {tuple(a.shape)} or broadcast with it, "
                f"got {tuple(b.shape)}"
            ) from None
    return _call("cosine_similarity_loss_fwd", a, b, mask, eps, reduction, dim)[0]


def sigmoid_gate(x: Tensor, gate_logits: Tensor) -> Tensor:
    """``x * sigmoid(gate_logits)`` elementwise, forward and backward fused (MT-CP CFM per-pixel gates).

    Exact to one rounding of the result over the whole range (a gate of -100 on ``x = 1e30`` gives
    3.72e-14 in float32); the output keeps ``x``'s memory format (channels_last stays channels_last).

    Args:
        x: float16/bfloat16/float32/float64 tensor of any shape (MT-CP: ``[N, C, H, W]`` features).
        gate_logits: same shape and dtype as ``x`` (no broadcasting).

    Returns:
        Tensor of ``x``'s shape, dtype and memory format (computed in float32, or float64). Gradients to
        both inputs.

    Raises:
        ValueError: shape mismatch. TypeError: dtypes not float16/bfloat16/float32/float64 or mismatched.
        RuntimeError: devices differ.
    """
    return _call("sigmoid_gate", x, gate_logits)


# ----------------------------------------------------------------------------------------------
# Autograd: per internal op a torch.autograd.Function with a separate setup_context (the form torch.func
# requires; torch.library.register_autograd's generated Function has none). The public functions above
# apply it directly, so torch.func transforms see it (an autograd.Function applied from inside a
# dispatcher kernel is invisible to them). The op's Autograd kernel, so that torch.ops.xtc_ext.* calls
# (and torch.compile's traces) are differentiable too, is torch.library.register_autograd's with the
# same setup_context and backward: public API only (torch 2.11 and 2.13; tests/ops/test_torch_api.py).

_autograd_lib = torch.library.Library("xtc_ext", "FRAGMENT")
_FUNCTIONS: dict[str, type[torch.autograd.Function]] = {}


def _register_autograd(name: str, setup_context: Callable, backward: Callable) -> None:
    op = getattr(_lib, name).default

    def forward(*args):
        return op(*args)

    function = type(
        f"{name}_autograd",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "generate_vmap_rule": True,
        },
    )
    torch.library.register_autograd(f"xtc_ext::{name}", backward, setup_context=setup_context, lib=_autograd_lib)
    _FUNCTIONS[name] = function


def _call(name: str, *args):
    """The internal op ``name``, differentiable: while torch.compile traces, through the dispatcher (whose
    Autograd kernel applies the op's autograd.Function; Dynamo cannot trace that Function applied here when
    no input requires a gradient); otherwise its autograd.Function applied here, in one hop (and visible
    to the torch.func transforms, which do not see one applied inside a dispatcher kernel)."""
    if torch.compiler.is_compiling():
        return getattr(_lib, name)(*args)
    return _FUNCTIONS[name].apply(*args)


def _class_dim(x: Tensor) -> int:
    return 1 if x.dim() >= 2 else 0


def _valid_pixels(mask: Tensor | None, pixel_shape, cdim: int, device) -> Tensor:
    """A mask in either documented form as a bool tensor of the pixel shape (all True without mask)."""
    if mask is None:
        return torch.ones(pixel_shape, dtype=torch.bool, device=device)
    m = mask != 0
    return m.squeeze(cdim) if m.dim() == len(pixel_shape) + 1 else m


# First order: the *_fwd ops call their *_bwd op with the saved tensors.


def _ce_setup(ctx, inputs, output):
    logits, target, weight, ignore_index, label_smoothing, reduction = inputs
    _, lse, denom = output
    ctx.mark_non_differentiable(lse, denom)
    ctx.save_for_backward(logits, target, weight, lse, denom)
    ctx.args = (ignore_index, label_smoothing, reduction)


def _ce_backward(ctx, grad_loss, _grad_lse, _grad_denom):
    logits, target, weight, lse, denom = ctx.saved_tensors
    grad = _call("masked_cross_entropy_bwd", grad_loss, logits, target, weight, lse, denom, *ctx.args)
    return grad, None, None, None, None, None


def _soft_ce_setup(ctx, inputs, output):
    logits, target_logits, mask, reduction = inputs
    _, lse, denom = output
    ctx.mark_non_differentiable(lse, denom)
    ctx.save_for_backward(logits, target_logits, mask, lse, denom)
    ctx.reduction = reduction


def _soft_ce_backward(ctx, grad_loss, _grad_lse, _grad_denom):
    logits, target_logits, mask, lse, denom = ctx.saved_tensors
    grad = _call("soft_cross_entropy_bwd", grad_loss, logits, target_logits, mask, lse, denom, ctx.reduction)
    return grad, None, None, None


def _l1_setup(ctx, inputs, output):
    pred, target, mask, invalid_value, reduction = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(pred, target, mask, output[1])
    ctx.args = (invalid_value, reduction)


def _l1_backward(ctx, grad_loss, _grad_denom):
    pred, target, mask, denom = ctx.saved_tensors
    grad = _call("masked_l1_loss_bwd", grad_loss, pred, target, mask, denom, *ctx.args)
    grad_target = -grad if ctx.needs_input_grad[1] else None
    return grad, grad_target, None, None, None


def _cos_setup(ctx, inputs, output):
    a, b, mask, eps, reduction, dim = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(a, b, mask, output[1])
    ctx.args = (eps, reduction, dim)


def _cos_backward(ctx, grad_loss, _grad_denom):
    a, b, mask, denom = ctx.saved_tensors
    grad_a, grad_b = _call("cosine_similarity_loss_bwd", grad_loss, a, b, mask, denom, *ctx.args)
    needs = ctx.needs_input_grad
    return grad_a if needs[0] else None, grad_b if needs[1] else None, None, None, None, None


def _gate_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gate_backward(ctx, grad_out):
    x, gate_logits = ctx.saved_tensors
    grad_x, grad_gate = _call("sigmoid_gate_bwd", grad_out, x, gate_logits)
    return grad_x if ctx.needs_input_grad[0] else None, grad_gate if ctx.needs_input_grad[1] else None


# ----------------------------------------------------------------------------------------------
# Double backward (autograd of the *_bwd ops). The input gradient is linear in grad_loss, so its
# derivative there is the backward evaluated at grad_loss = 1 contracted with the incoming v. For
# the two cross-entropies, the derivative with respect to the logits is the softmax Hessian-vector
# product s * p * (v - <p, v>) (s = per-pixel upstream scale); L1 has zero curvature. The saved
# ``lse_minus_max`` is named ``lse`` below.


def _acc(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _grad_of_grad_loss(bwd: Callable[[Tensor], Tensor], grad_loss: Tensor, v: Tensor, cdim: int) -> Tensor:
    prod = _acc(v) * _acc(bwd(torch.ones_like(grad_loss)))
    if grad_loss.dim() == 0:
        prod = prod.sum()
    elif prod.shape != grad_loss.shape:
        prod = prod.sum(dim=cdim)
    return prod.to(grad_loss.dtype)


def _mean_scale(grad_loss: Tensor, denom: Tensor, reduction: str) -> Tensor:
    """The upstream scale of every pixel: grad_loss / denom for mean (0 where denom is 0), else grad_loss."""
    if reduction != "mean":
        return _acc(grad_loss)
    d = _acc(denom)
    nonzero = d != 0
    return torch.where(nonzero, _acc(grad_loss) / torch.where(nonzero, d, torch.ones_like(d)), torch.zeros_like(d))


def _softmax_hvp(logits: Tensor, lse_minus_max: Tensor, v: Tensor, scale: Tensor) -> Tensor:
    cdim = _class_dim(logits)
    z = _acc(logits)
    p = torch.exp(z - z.amax(dim=cdim, keepdim=True) - lse_minus_max.unsqueeze(cdim))
    vv = _acc(v)
    return (scale.unsqueeze(cdim) * p * (vv - (p * vv).sum(dim=cdim, keepdim=True))).to(logits.dtype)


def _ce_bwd_setup(ctx, inputs, output):
    grad_loss, logits, target, weight, lse, denom, ignore_index, label_smoothing, reduction = inputs
    ctx.save_for_backward(grad_loss, logits, target, weight, lse, denom)
    ctx.args = (ignore_index, label_smoothing, reduction)


def _ce_bwd_backward(ctx, v):
    grad_loss, logits, target, weight, lse, denom = ctx.saved_tensors
    ignore_index, eps, reduction = ctx.args
    gg = gz = None
    if ctx.needs_input_grad[0]:
        gg = _grad_of_grad_loss(
            lambda g: _call("masked_cross_entropy_bwd", g, logits, target, weight, lse, denom, *ctx.args),
            grad_loss,
            v,
            _class_dim(logits),
        )
    if ctx.needs_input_grad[1]:
        # The logits Hessian of pixel p is A_p (diag(p) - p p^T), A_p = (1 - eps) w_y + (eps / C) W; the
        # smoothing term is left out without smoothing (an inf weight of an absent class stays harmless).
        t = target.long()
        valid = t != ignore_index
        C = logits.shape[_class_dim(logits)]
        if weight is None:
            curvature = torch.ones_like(lse)
        else:
            w = _acc(weight)
            curvature = (1 - eps) * w[torch.where(valid, t, 0)]
            if eps > 0:
                curvature = curvature + (eps / C) * w.sum()
        scale = _mean_scale(grad_loss, denom, reduction) * valid * curvature
        gz = _softmax_hvp(logits, lse, v, scale)
    return gg, gz, None, None, None, None, None, None, None


def _soft_ce_bwd_setup(ctx, inputs, output):
    grad_loss, logits, target_logits, mask, lse, denom, reduction = inputs
    ctx.save_for_backward(grad_loss, logits, target_logits, mask, lse, denom)
    ctx.reduction = reduction


def _soft_ce_bwd_backward(ctx, v):
    grad_loss, logits, target_logits, mask, lse, denom = ctx.saved_tensors
    gg = gz = None
    if ctx.needs_input_grad[0]:
        gg = _grad_of_grad_loss(
            lambda g: _call("soft_cross_entropy_bwd", g, logits, target_logits, mask, lse, denom, ctx.reduction),
            grad_loss,
            v,
            _class_dim(logits),
        )
    if ctx.needs_input_grad[1]:
        valid = _valid_pixels(mask, lse.shape, _class_dim(logits), lse.device)
        gz = _softmax_hvp(logits, lse, v, _mean_scale(grad_loss, denom, ctx.reduction) * valid)
    return gg, gz, None, None, None, None, None


def _l1_bwd_setup(ctx, inputs, output):
    grad_loss, pred, target, mask, denom, invalid_value, reduction = inputs
    ctx.save_for_backward(grad_loss, pred, target, mask, denom)
    ctx.args = (invalid_value, reduction)


def _l1_bwd_backward(ctx, v):
    grad_loss, pred, target, mask, denom = ctx.saved_tensors
    gg = None
    if ctx.needs_input_grad[0]:
        gg = _grad_of_grad_loss(
            lambda g: _call("masked_l1_loss_bwd", g, pred, target, mask, denom, *ctx.args), grad_loss, v, 1
        )
    return gg, None, None, None, None, None, None


def _eager_second_order(loss_fn, inputs, grad_loss, v, needs):
    """Gradients of ``<v, d(grad_loss * loss_fn(inputs))/d inputs>`` w.r.t. (grad_loss, *inputs), by
    double autograd through ``loss_fn`` (which mirrors the op's forward): used where the closed form is long."""
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in inputs]
        g = grad_loss.detach().requires_grad_()
        firsts = torch.autograd.grad(loss_fn(*xs), xs, g, create_graph=True)
        pairs = [(f, vi) for f, vi in zip(firsts, v) if vi is not None]
        wrt = [g, *xs]
        out = torch.autograd.grad([f for f, _ in pairs], wrt, [vi for _, vi in pairs], allow_unused=True)
    return [o if (n and o is not None) else (torch.zeros_like(w) if n else None) for o, w, n in zip(out, wrt, needs)]


def _cos_per_pixel(a: Tensor, b: Tensor, eps: float, dim: int) -> Tensor:
    """1 - cos per pixel exactly as the op computes it (in float64): a norm at or below eps is floored to
    the constant eps, so the loss is linear in that vector there (no derivative through the floor)."""
    a, b = a.double(), b.double()
    if a.dim() == 0:
        a, b = a.unsqueeze(0), b.unsqueeze(0)

    def floored_norm(x):
        sq = (x * x).sum(dim)
        big = sq > eps * eps
        return torch.where(big, torch.sqrt(torch.where(big, sq, torch.ones_like(sq))), torch.full_like(sq, eps))

    return 1 - (a * b).sum(dim) / floored_norm(a) / floored_norm(b)


def _cos_bwd_setup(ctx, inputs, output):
    grad_loss, a, b, mask, denom, eps, reduction, dim = inputs
    ctx.save_for_backward(grad_loss, a, b, mask, denom)
    ctx.args = (eps, reduction, dim)


def _cos_bwd_backward(ctx, va, vb):
    grad_loss, a, b, mask, denom = ctx.saved_tensors
    eps, reduction, dim = ctx.args

    def loss_fn(a_, b_):
        per = _cos_per_pixel(a_, b_, eps, dim)
        cdim = dim % max(a_.dim(), 1)
        per = torch.where(_valid_pixels(mask, per.shape, cdim, per.device), per, torch.zeros_like(per))
        if reduction == "none":
            return per
        return per.sum() * (_mean_scale(torch.ones_like(grad_loss), denom, reduction) if reduction == "mean" else 1)

    gg, ga, gb = _eager_second_order(loss_fn, (a, b), grad_loss, (va, vb), ctx.needs_input_grad[:3])
    return gg, ga, gb, None, None, None, None, None


def _gate_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gate_bwd_backward(ctx, vx, vg):
    grad_out, x, gate_logits = ctx.saved_tensors
    return tuple(
        _eager_second_order(
            lambda x_, g_: x_.double() * torch.sigmoid(g_.double()),
            (x, gate_logits),
            grad_out,
            (vx, vg),
            ctx.needs_input_grad,
        )
    )


# ----------------------------------------------------------------------------------------------
# vmap batching rules (torch.library.register_vmap; they replace PyTorch's slow per-sample fallback).
# sigmoid_gate is elementwise: the batch is one more leading dim. A loss sees the vmapped dim as more
# pixels: merged into N (the class dim stays 1; a per-sample (C,) input becomes (B, C)), or, for
# cosine_similarity_loss, kept in front with dim shifted by one. Backward calls of mean/sum become
# reduction="none" calls with each sample's upstream scale (grad_loss / denom) at its pixels. Forward
# calls of mean/sum (per-sample denominators) and batched class weights run once per sample.


def _vmap_gate(op):
    def rule(info, in_dims, *args):
        moved = [a.movedim(d, 0) if d is not None else a.expand(info.batch_size, *a.shape) for a, d in zip(args, in_dims)]
        out = op(*moved)
        return out, (0,) * len(out) if isinstance(out, tuple) else 0

    return rule


def _vmap_loss(name):
    op = getattr(_lib, name).default
    roles, red_at = _KERNELS[name].vmap_roles
    cosine = name.startswith("cosine")

    def per_sample(info, in_dims, args):
        outs = [op(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)])
                for i in range(info.batch_size)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
        return torch.stack(outs), 0

    def rule(info, in_dims, *args):
        args, reduction, batch = list(args), args[red_at], info.batch_size
        weight_batched = any(r == "w" and d is not None for r, d in zip(roles, in_dims))
        if weight_batched or (roles[0] != "g" and reduction != "none"):
            return per_sample(info, in_dims, args)
        for i, (a, d) in enumerate(zip(args, in_dims)):
            if isinstance(a, Tensor) and roles[i] != "w":
                args[i] = a.movedim(d, 0) if d is not None else a.expand(batch, *a.shape)
        x = args[roles.index("x")]
        if roles[0] == "g":  # a per-pixel upstream gradient; the (unused) denominator one 0-D value
            g, d = args[0], args[roles.index("d")]
            if reduction != "none":
                scale = _mean_scale(g, d, reduction).to(g.dtype)
                none_shape = x.shape if name.startswith("masked_l1") else _pixel_shape(x, args, cosine)
                args[0] = scale.view(batch, *[1] * (len(none_shape) - 1)).expand(none_shape)
                args[red_at] = "none"
            args[roles.index("d")] = torch.ones((), dtype=d.dtype, device=d.device)
        scalar_samples = cosine and x.dim() == 1  # per-sample 0-D vectors: one channel each
        fold = not cosine and x.dim() >= 3  # per-sample (N, C, ...): merge the batch into N
        if cosine:  # the batch joins the leading dims; dim moves one to the right
            args = [a.unsqueeze(-1) if r == "x" and scalar_samples else a for a, r in zip(args, roles)]
            args[-1] = (args[-1] % max(x.dim() - 1, 1)) + 1
        if fold:
            args = [a.flatten(0, 1) if isinstance(a, Tensor) and r in "xpg" and a.dim() >= 2 else a
                    for a, r in zip(args, roles)]
        out = op(*args)
        outs = list(out) if isinstance(out, tuple) else [out]
        if fold:
            outs = [o.unflatten(0, (batch, -1)) if o.dim() >= 1 else o for o in outs]
        if scalar_samples and roles[0] == "g":
            outs = [o.squeeze(-1) for o in outs]
        outs = [o if o.dim() >= 1 else o.expand(batch) for o in outs]  # a denominator of the whole batch
        return (tuple(outs), (0,) * len(outs)) if isinstance(out, tuple) else (outs[0], 0)

    return rule


def _pixel_shape(x: Tensor, args, cosine: bool) -> tuple:
    """Batched pixel shape of x (batch first): without its class dim (cosine: without dim)."""
    cdim = ((args[-1] % max(x.dim() - 1, 1)) + 1) if cosine else (2 if x.dim() >= 3 else 1)
    return tuple(s for i, s in enumerate(x.shape) if i != cdim)


# ----------------------------------------------------------------------------------------------
# The op table: one entry per op, from which the autograd, the vmap rules, the op tests' list
# (tests/ops/op_cases.py) and the benchmark's list (benchmarks/bench_ops.py) are driven. Its C++ twin,
# csrc/op_table.h, holds the schemas and registers the kernels.


@dataclass(frozen=True)
class KernelSpec:
    """One internal op ``torch.ops.xtc_ext.<name>`` and its Python-side registrations.

    Attributes:
        name: the internal op (``<op>_fwd``, ``<op>_bwd``, or the public name of an op without wrapper).
        setup_context, backward: its autograd (``torch.library.register_autograd`` and the
            ``torch.autograd.Function`` that :mod:`torch.func` sees).
        vmap_roles: its batching rule: None for an elementwise op (the batch is one more leading dim),
            else ``(roles, reduction_position)``; roles has one letter per argument: ``x`` an input with
            a class dim, ``p`` per-pixel, ``w`` class weights, ``g`` grad_loss, ``d`` denom, ``-`` not a
            tensor.
    """

    name: str
    setup_context: Callable
    backward: Callable
    vmap_roles: tuple[str, int] | None


@dataclass(frozen=True)
class OpSpec:
    """One op: its public function (``xtc_ext.ops.<name>``, ``xtc_ext.reference.<name>``,
    ``torch.ops.xtc_ext.<name>``) and its internal ops, forward first."""

    name: str
    kernels: tuple[KernelSpec, ...]

    @property
    def internal(self) -> tuple[str, ...]:
        """The internal ops other than the public one (what tests/ops list per op)."""
        return tuple(k.name for k in self.kernels if k.name != self.name)


OP_TABLE: tuple[OpSpec, ...] = (
    OpSpec("masked_cross_entropy", (
        KernelSpec("masked_cross_entropy_fwd", _ce_setup, _ce_backward, ("xpw---", 5)),
        KernelSpec("masked_cross_entropy_bwd", _ce_bwd_setup, _ce_bwd_backward, ("gxpwpd---", 8)),
    )),
    OpSpec("soft_cross_entropy", (
        KernelSpec("soft_cross_entropy_fwd", _soft_ce_setup, _soft_ce_backward, ("xxp-", 3)),
        KernelSpec("soft_cross_entropy_bwd", _soft_ce_bwd_setup, _soft_ce_bwd_backward, ("gxxppd-", 6)),
    )),
    OpSpec("masked_l1_loss", (
        KernelSpec("masked_l1_loss_fwd", _l1_setup, _l1_backward, ("xxp--", 4)),
        KernelSpec("masked_l1_loss_bwd", _l1_bwd_setup, _l1_bwd_backward, ("gxxpd--", 6)),
    )),
    OpSpec("cosine_similarity_loss", (
        KernelSpec("cosine_similarity_loss_fwd", _cos_setup, _cos_backward, ("xxp---", 4)),
        KernelSpec("cosine_similarity_loss_bwd", _cos_bwd_setup, _cos_bwd_backward, ("gxxpd---", 6)),
    )),
    OpSpec("sigmoid_gate", (
        KernelSpec("sigmoid_gate", _gate_setup, _gate_backward, None),
        KernelSpec("sigmoid_gate_bwd", _gate_bwd_setup, _gate_bwd_backward, None),
    )),
)
_KERNELS = {k.name: k for spec in OP_TABLE for k in spec.kernels}

for _kernel in _KERNELS.values():
    _register_autograd(_kernel.name, _kernel.setup_context, _kernel.backward)
    _rule = _vmap_gate(getattr(_lib, _kernel.name).default) if _kernel.vmap_roles is None else _vmap_loss(_kernel.name)
    torch.library.register_vmap(f"xtc_ext::{_kernel.name}", _rule, lib=_autograd_lib)
