"""The fused loss ops: public API, autograd (including double backward) and fake kernels.

Every op is also reachable as ``torch.ops.xtc_ext.<name>`` once :mod:`xtc_ext` is imported.
Shared semantics (design brief):

- Inputs are NCHW, float16/bfloat16/float32/float64, all operands of one dtype; accumulation is
  float32 (float64 for float64 inputs) and the loss is returned in float32 (float64).
- ``reduction``: ``"mean"`` over the valid pixels of the whole batch, ``"sum"``, or ``"none"``.
  A mean with no valid pixel is 0 with zero gradient (PyTorch returns NaN there).
- No host synchronisation: the valid-pixel count stays on the tensor's device. Reductions add
  fixed per-block partial sums in a fixed order, so results are bitwise deterministic.
- Backward is correct for any upstream gradient, never overwrites saved tensors (safe with
  ``retain_graph=True`` and repeated backward) and is itself differentiable (double backward,
  e.g. for GradNorm), with respect to the upstream gradient and the inputs.
- Bad input raises ``ValueError`` (shape, value), ``TypeError`` (dtype) or ``RuntimeError``
  (device) naming the argument; labels out of range are never used as memory offsets.

Internal ops: ``<name>_fwd`` returns the loss plus what the backward needs: for the two
cross-entropies ``lse_minus_max = log sum_c exp(z_c - max_c z)`` per pixel (one fp32 per pixel,
bounded by log C, so exact to fp32 rounding however large the logits), and the device-side
denominator; ``<name>_bwd`` recomputes the max and the softmax from it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from xtc_ext import reference as _reference

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
    weights). These are ``torch.nn.functional.cross_entropy``'s definitions, except that a mean over
    nothing is 0 (not NaN). XTasC-Net paper Eq. 12 (direct segmentation loss) and the Align-Net
    transfer loss (Eq. 8).

    Args:
        logits: ``[N, C, H, W]`` float16/bfloat16/float32/float64 raw scores, ``C >= 1``.
        target: ``[N, H, W]`` int64 or uint8 class indices in ``[0, C)`` or ``ignore_index``.
        ignore_index: label value of pixels to ignore (-1 for NYUv2/MTAN, 250 Cityscapes/XTasC, 255 Vandenhende).
        weight: optional ``[C]`` floating class weights (any float dtype; used in float32).
        label_smoothing: ``eps`` in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64 for float64 logits) scalar, or ``[N, H, W]`` for ``reduction="none"``.
        Gradient flows to ``logits`` only.

    Raises:
        ValueError: wrong rank/shape (logits, target, weight), bad ``reduction`` or ``label_smoothing``,
            or a target class index outside ``[0, C)`` that is not ``ignore_index``.
        TypeError: logits or weight not floating point, or target not int64/uint8.
        RuntimeError: tensors on different devices.
    """
    return _lib.masked_cross_entropy(logits, target, ignore_index, weight, label_smoothing, reduction)


def masked_l1_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    invalid_value: float | None = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """L1 (absolute) error over valid elements: depth loss and depth consistency.

    Element ``(n,c,h,w)`` is valid when ``target != invalid_value`` (skipped if ``invalid_value`` is
    None) and ``mask[n,h,w]`` is nonzero (if a mask is given). XTasC-Net paper Eq. 14 (direct depth
    loss, pixels with depth 0 masked) and Eq. 15 (depth consistency against the detached direct
    prediction: pass that as ``target``, ``invalid_value=None`` and the ground-truth validity as ``mask``).

    Args:
        pred: ``[N, C, H, W]`` float16/bfloat16/float32/float64 (depth: ``C = 1``, metres).
        target: same shape and dtype as ``pred``.
        mask: optional ``[N, 1, H, W]`` or ``[N, H, W]`` tensor of any dtype, nonzero = valid.
        invalid_value: target value marking invalid elements (0 = missing depth), or None.
        reduction: ``"mean"`` (over valid elements of the batch), ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64) scalar, or a ``[N, C, H, W]`` per-element loss (0 where invalid) for
        ``"none"``. Gradients ``sign(pred - target)`` (0 at equality) to ``pred`` and its negative
        to ``target`` when it requires grad.

    Raises:
        ValueError: wrong rank, shape mismatch, bad mask shape or ``reduction``.
        TypeError: non-floating inputs or mismatched dtypes.
        RuntimeError: tensors on different devices.
    """
    return _lib.masked_l1_loss(pred, target, mask, invalid_value, reduction)


def soft_cross_entropy(
    logits: Tensor, target_logits: Tensor, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy against the soft distribution ``softmax(target_logits)``; no gradient to the target.

    ``loss[n,h,w] = -sum_c softmax(target_logits)[n,c,h,w] * log_softmax(logits)[n,c,h,w]``.
    XTasC-Net paper Eq. 13: the segmentation consistency loss of the depth->segmentation transfer
    network against the (stop-gradient) direct segmentation prediction.

    Args:
        logits: ``[N, C, H, W]`` float16/bfloat16/float32/float64 (the transferred prediction).
        target_logits: same shape and dtype (the direct prediction's logits); treated as detached.
        mask: optional ``[N, 1, H, W]`` or ``[N, H, W]``, nonzero = valid pixel.
        reduction: ``"mean"`` (over valid pixels of the batch), ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64) scalar, or ``[N, H, W]`` for ``"none"`` (0 where masked).

    Raises:
        ValueError: wrong rank, shape mismatch, bad mask shape or ``reduction``.
        TypeError: non-floating inputs or mismatched dtypes.
        RuntimeError: tensors on different devices.
    """
    return _lib.soft_cross_entropy(logits, target_logits, mask, reduction)


def cosine_similarity_loss(
    a: Tensor, b: Tensor, mask: Tensor | None = None, eps: float = 1e-8, reduction: str = "mean"
) -> Tensor:
    """``1 - cos(a_p, b_p)`` per pixel over the channel dimension: MT-CP coherence and normals losses.

    ``cos = <a_p, b_p> / (max(|a_p|, eps) * max(|b_p|, eps))`` (``torch.nn.functional.cosine_similarity``'s
    eps rule). MT-CP paper §3 (coherence between main and auxiliary task representations) and its
    surface-normal loss on unit-normalised predictions.

    Args:
        a, b: ``[N, C, H, W]`` float16/bfloat16/float32/float64, same shape and dtype. Gradients flow to
            both; detach one in the caller for a one-sided loss.
        mask: optional ``[N, 1, H, W]`` or ``[N, H, W]``, nonzero = valid pixel.
        eps: floor of each norm, > 0.
        reduction: ``"mean"`` (over valid pixels of the batch), ``"sum"`` or ``"none"``.

    Returns:
        float32 (float64) scalar, or ``[N, H, W]`` for ``"none"`` (0 where masked).

    Raises:
        ValueError: wrong rank, shape mismatch, bad mask shape, ``eps <= 0`` or bad ``reduction``.
        TypeError: non-floating inputs or mismatched dtypes.
        RuntimeError: tensors on different devices.
    """
    return _lib.cosine_similarity_loss(a, b, mask, eps, reduction)


def sigmoid_gate(x: Tensor, gate_logits: Tensor) -> Tensor:
    """``x * sigmoid(gate_logits)`` elementwise, forward and backward fused (MT-CP CFM per-pixel gates).

    Args:
        x: float16/bfloat16/float32/float64 tensor of any shape (MT-CP: ``[N, C, H, W]`` features).
        gate_logits: same shape and dtype as ``x``.

    Returns:
        Tensor of ``x``'s shape and dtype (computed in float32, or float64). Gradients to both inputs.

    Raises:
        ValueError: shape mismatch. TypeError: non-floating or mismatched dtypes. RuntimeError: devices differ.
    """
    return _lib.sigmoid_gate(x, gate_logits)


# ----------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes and dtypes for torch.compile / FakeTensor tracing.


def _loss_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake_ce_like(op: str, logits: Tensor, other: Tensor, other_shape, reduction: str):
    torch._check(logits.dim() == 4, lambda: f"{op}: logits must be a 4-D tensor, got {tuple(logits.shape)}")
    N, _, H, W = logits.shape
    torch._check(tuple(other.shape) == tuple(other_shape(N, H, W, logits)), lambda: f"{op}: shape mismatch")
    lse = logits.new_empty((N, H, W), dtype=_loss_dtype(logits))
    loss = lse.new_empty((N, H, W) if reduction == "none" else ())
    return loss, lse, lse.new_empty(())


@torch.library.register_fake("xtc_ext::masked_cross_entropy_fwd")
def _(logits, target, weight, ignore_index, label_smoothing, reduction):
    return _fake_ce_like("masked_cross_entropy", logits, target, lambda N, H, W, x: (N, H, W), reduction)


@torch.library.register_fake("xtc_ext::soft_cross_entropy_fwd")
def _(logits, target_logits, mask, reduction):
    return _fake_ce_like("soft_cross_entropy", logits, target_logits, lambda N, H, W, x: x.shape, reduction)


@torch.library.register_fake("xtc_ext::masked_l1_loss_fwd")
def _(pred, target, mask, invalid_value, reduction):
    torch._check(pred.dim() == 4, lambda: f"masked_l1_loss: pred must be a 4-D tensor, got {tuple(pred.shape)}")
    torch._check(pred.shape == target.shape, lambda: "masked_l1_loss: target must have the shape of pred")
    loss = pred.new_empty(pred.shape if reduction == "none" else (), dtype=_loss_dtype(pred))
    return loss, loss.new_empty(())


@torch.library.register_fake("xtc_ext::cosine_similarity_loss_fwd")
def _(a, b, mask, eps, reduction):
    torch._check(a.dim() == 4, lambda: f"cosine_similarity_loss: a must be a 4-D tensor, got {tuple(a.shape)}")
    torch._check(a.shape == b.shape, lambda: "cosine_similarity_loss: b must have the shape of a")
    N, _, H, W = a.shape
    loss = a.new_empty((N, H, W) if reduction == "none" else (), dtype=_loss_dtype(a))
    return loss, loss.new_empty(())


@torch.library.register_fake("xtc_ext::cosine_similarity_loss_bwd")
def _(grad_loss, a, b, mask, denom, eps, reduction):
    return (
        torch.empty_like(a, memory_format=torch.contiguous_format),
        torch.empty_like(b, memory_format=torch.contiguous_format),
    )


@torch.library.register_fake("xtc_ext::sigmoid_gate")
def _(x, gate_logits):
    torch._check(x.shape == gate_logits.shape, lambda: "sigmoid_gate: gate_logits must have the shape of x")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("xtc_ext::sigmoid_gate_bwd")
def _(grad_out, x, gate_logits):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(x, memory_format=torch.contiguous_format),
    )


def _fake_grad(grad_loss, x, *rest):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


for _name in ("masked_cross_entropy_bwd", "masked_l1_loss_bwd", "soft_cross_entropy_bwd"):
    torch.library.register_fake(f"xtc_ext::{_name}", _fake_grad)


# ----------------------------------------------------------------------------------------------
# Autograd of the *_fwd ops: the backward calls the *_bwd op with the saved log-sum-exp.


def _ce_setup(ctx, inputs, output):
    logits, target, weight, ignore_index, label_smoothing, reduction = inputs
    _, lse, denom = output
    ctx.save_for_backward(logits, target, weight, lse, denom)
    ctx.args = (ignore_index, label_smoothing, reduction)


def _ce_backward(ctx, grad_loss, _grad_lse, _grad_denom):
    logits, target, weight, lse, denom = ctx.saved_tensors
    grad = _lib.masked_cross_entropy_bwd(grad_loss, logits, target, weight, lse, denom, *ctx.args)
    return grad, None, None, None, None, None


def _cos_setup(ctx, inputs, output):
    a, b, mask, eps, reduction = inputs
    ctx.save_for_backward(a, b, mask, output[1])
    ctx.args = (eps, reduction)


def _cos_backward(ctx, grad_loss, _grad_denom):
    a, b, mask, denom = ctx.saved_tensors
    grad_a, grad_b = _lib.cosine_similarity_loss_bwd(grad_loss, a, b, mask, denom, *ctx.args)
    return (
        grad_a if ctx.needs_input_grad[0] else None,
        grad_b if ctx.needs_input_grad[1] else None,
        None,
        None,
        None,
    )


def _gate_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gate_backward(ctx, grad_out):
    x, gate_logits = ctx.saved_tensors
    grad_x, grad_gate = _lib.sigmoid_gate_bwd(grad_out, x, gate_logits)
    return grad_x if ctx.needs_input_grad[0] else None, grad_gate if ctx.needs_input_grad[1] else None


def _soft_ce_setup(ctx, inputs, output):
    logits, target_logits, mask, reduction = inputs
    _, lse, denom = output
    ctx.save_for_backward(logits, target_logits, mask, lse, denom)
    ctx.reduction = reduction


def _soft_ce_backward(ctx, grad_loss, _grad_lse, _grad_denom):
    logits, target_logits, mask, lse, denom = ctx.saved_tensors
    grad = _lib.soft_cross_entropy_bwd(grad_loss, logits, target_logits, mask, lse, denom, ctx.reduction)
    return grad, None, None, None


def _l1_setup(ctx, inputs, output):
    pred, target, mask, invalid_value, reduction = inputs
    ctx.save_for_backward(pred, target, mask, output[1])
    ctx.args = (invalid_value, reduction)


def _l1_backward(ctx, grad_loss, _grad_denom):
    pred, target, mask, denom = ctx.saved_tensors
    grad = _lib.masked_l1_loss_bwd(grad_loss, pred, target, mask, denom, *ctx.args)
    grad_target = -grad if ctx.needs_input_grad[1] else None
    return grad, grad_target, None, None, None


torch.library.register_autograd("xtc_ext::masked_cross_entropy_fwd", _ce_backward, setup_context=_ce_setup)
torch.library.register_autograd("xtc_ext::soft_cross_entropy_fwd", _soft_ce_backward, setup_context=_soft_ce_setup)
torch.library.register_autograd("xtc_ext::masked_l1_loss_fwd", _l1_backward, setup_context=_l1_setup)
torch.library.register_autograd("xtc_ext::cosine_similarity_loss_fwd", _cos_backward, setup_context=_cos_setup)
torch.library.register_autograd("xtc_ext::sigmoid_gate", _gate_backward, setup_context=_gate_setup)


# ----------------------------------------------------------------------------------------------
# Double backward (autograd of the *_bwd ops). The input gradient is linear in grad_loss, so its
# derivative there is the backward evaluated at grad_loss = 1 contracted with the incoming v. For
# the two cross-entropies, the derivative with respect to the logits is the softmax Hessian-vector
# product s * p * (v - <p, v>) (s = per-pixel upstream scale); L1 has zero curvature. The saved
# ``lse_minus_max`` is named ``lse`` below.


def _acc(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _grad_of_grad_loss(bwd: Callable[[Tensor], Tensor], grad_loss: Tensor, v: Tensor) -> Tensor:
    prod = _acc(v) * _acc(bwd(torch.ones_like(grad_loss)))
    if grad_loss.dim() == 0:
        prod = prod.sum()
    elif prod.shape != grad_loss.shape:
        prod = prod.sum(dim=1)
    return prod.to(grad_loss.dtype)


def _pixel_scale(grad_loss: Tensor, denom: Tensor, reduction: str, valid: Tensor) -> Tensor:
    scale = grad_loss / denom if reduction == "mean" else grad_loss
    return _acc(scale) * valid


def _softmax_hvp(logits: Tensor, lse_minus_max: Tensor, v: Tensor, scale: Tensor) -> Tensor:
    z = _acc(logits)
    p = torch.exp(z - z.amax(dim=1, keepdim=True) - lse_minus_max.unsqueeze(1))
    vv = _acc(v)
    return (scale.unsqueeze(1) * p * (vv - (p * vv).sum(dim=1, keepdim=True))).to(logits.dtype)


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
            lambda g: _lib.masked_cross_entropy_bwd(g, logits, target, weight, lse, denom, *ctx.args), grad_loss, v
        )
    if ctx.needs_input_grad[1]:
        # The logits Hessian of pixel p is A_p (diag(p) - p p^T), A_p = (1 - eps) w_y + (eps / C) W.
        t = target.long()
        valid = t != ignore_index
        C = logits.shape[1]
        if weight is None:
            curvature = torch.ones_like(lse)
        else:
            w = _acc(weight)
            curvature = (1 - eps) * w[torch.where(valid, t, 0)] + (eps / C) * w.sum()
        gz = _softmax_hvp(logits, lse, v, _pixel_scale(grad_loss, denom, reduction, valid) * curvature)
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
            lambda g: _lib.soft_cross_entropy_bwd(g, logits, target_logits, mask, lse, denom, ctx.reduction),
            grad_loss,
            v,
        )
    if ctx.needs_input_grad[1]:
        valid = torch.ones_like(lse, dtype=torch.bool) if mask is None else mask
        gz = _softmax_hvp(logits, lse, v, _pixel_scale(grad_loss, denom, ctx.reduction, valid))
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
            lambda g: _lib.masked_l1_loss_bwd(g, pred, target, mask, denom, *ctx.args), grad_loss, v
        )
    return gg, None, None, None, None, None, None


def _eager_second_order(loss_fn, inputs, grad_loss, v, needs):
    """Gradients of ``<v, d(grad_loss * loss_fn(inputs))/d inputs>`` w.r.t. (grad_loss, *inputs), by
    double autograd through the eager reference ``loss_fn``: used where the closed form is long."""
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in inputs]
        g = grad_loss.detach().requires_grad_()
        firsts = torch.autograd.grad(loss_fn(*xs), xs, g, create_graph=True)
        pairs = [(f, vi) for f, vi in zip(firsts, v) if vi is not None]
        wrt = [g, *xs]
        out = torch.autograd.grad([f for f, _ in pairs], wrt, [vi for _, vi in pairs], allow_unused=True)
    return [o if (n and o is not None) else (torch.zeros_like(w) if n else None) for o, w, n in zip(out, wrt, needs)]


def _cos_bwd_setup(ctx, inputs, output):
    grad_loss, a, b, mask, denom, eps, reduction = inputs
    ctx.save_for_backward(grad_loss, a, b, mask, denom)
    ctx.args = (eps, reduction)


def _cos_bwd_backward(ctx, va, vb):
    grad_loss, a, b, mask, denom = ctx.saved_tensors
    eps, reduction = ctx.args

    def loss_fn(a_, b_):
        per = _reference.cosine_similarity_loss(a_, b_, mask, eps, "none")
        return per if reduction == "none" else per.sum() / (denom if reduction == "mean" else 1)

    gg, ga, gb = _eager_second_order(loss_fn, (a, b), grad_loss, (va, vb), ctx.needs_input_grad[:3])
    return gg, ga, gb, None, None, None, None


def _gate_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gate_bwd_backward(ctx, vx, vg):
    grad_out, x, gate_logits = ctx.saved_tensors
    return tuple(
        _eager_second_order(
            lambda x_, g_: x_ * torch.sigmoid(g_), (x, gate_logits), grad_out, (vx, vg), ctx.needs_input_grad
        )
    )


torch.library.register_autograd("xtc_ext::masked_cross_entropy_bwd", _ce_bwd_backward, setup_context=_ce_bwd_setup)
torch.library.register_autograd(
    "xtc_ext::cosine_similarity_loss_bwd", _cos_bwd_backward, setup_context=_cos_bwd_setup
)
torch.library.register_autograd("xtc_ext::sigmoid_gate_bwd", _gate_bwd_backward, setup_context=_gate_bwd_setup)
torch.library.register_autograd(
    "xtc_ext::soft_cross_entropy_bwd", _soft_ce_bwd_backward, setup_context=_soft_ce_bwd_setup
)
torch.library.register_autograd("xtc_ext::masked_l1_loss_bwd", _l1_bwd_backward, setup_context=_l1_bwd_setup)
