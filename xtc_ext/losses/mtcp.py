"""The MT-CP training loss (paper §3.5 Eq. 7, §4.2), computed with the fused ops or the eager references.

Per-task losses (each a mean over the valid pixels of the whole batch, 0 with zero gradient when no
pixel is valid, never NaN), one per loss kind of the task registry (:attr:`xtc_ext.tasks.TaskSpec.loss`,
:data:`LOSSES`):

- :func:`segmentation_loss` (``"cross_entropy"``: ``"semseg"``, ``"human_parts"``): cross-entropy, pixels labelled
  ``ignore_index`` (-1, the project's convention; the readers map the datasets' 255 to -1) excluded.
- :func:`depth_loss` (``"l1"``: ``"depth"``): L1 over pixels with ``target > 0`` (metres). No depth cap by default:
  the authors' 6.5535 m cap is a bug (docs/fidelity.md, "MT-CP losses and LPS"); ``depth_cap`` offers it.
- :func:`normals_loss` (``"normals"``: ``"normals"``): cosine distance between the unit-normalised prediction and the
  target (``kind="cosine"``, default), or the paper's "L1 with normalisation" (``kind="l1"``), over
  pixels whose target is not the zero vector.
- :func:`balanced_bce` (``"balanced_bce"``: ``"sal"``, ``"edge"``): class-balanced binary cross-entropy on logits, pixels with a
  negative target (-1) ignored.

:class:`MTCPLoss` assembles them with the task weighting (normally :class:`xtc_ext.weighting.LPS`), the
intermediate (trace-back) predictions and the CFM coherence loss (Eq. 7, reconstructed).

Units: depth losses in metres, cross-entropies in nats, the cosine loss is dimensionless in [0, 2].
All losses are float32 scalars (float64 for float64 inputs). Source: MT-CP paper §3.5 and §4.2;
docs/fidelity.md, "MT-CP losses and LPS" (the authors' losses, training loss, LPS and their bugs).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from xtc_ext.losses.common import LOSS_IMPLS, check_choice, check_nchw, to_accumulation
from xtc_ext.tasks import get_task
from xtc_ext.weighting import Weighting, build_weighting

__all__ = [
    "LOSSES",
    "NORMALS_KINDS",
    "LOSS_IMPLS",
    "segmentation_loss",
    "depth_loss",
    "normals_loss",
    "balanced_bce",
    "task_loss",
    "MTCPLossTerms",
    "MTCPLoss",
]

NORMALS_KINDS = ("cosine", "l1")
"""``normals_loss(kind=...)`` choices."""


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = -1, impl: str = "fused") -> Tensor:
    """Cross-entropy over the valid pixels of the batch: semantic segmentation and human parts.

    The authors' ``SoftMaxwithLoss`` (``NLLLoss(log_softmax)`` with ``ignore_index=255``,
    the MT-CP authors' code) with the project's ``ignore_index = -1``. A batch whose pixels
    are all ignored (e.g. PASCAL images without persons, for human parts) gives 0 with zero gradient,
    where the authors' PyTorch loss returns NaN (§3.2 item 17).

    Args:
        logits: ``[N, C, H, W]`` float raw scores.
        target: ``[N, H, W]`` int64 (or uint8) labels in ``[0, C)`` or ``ignore_index``.
        ignore_index: label of ignored pixels (default -1).
        impl: ``"fused"`` (:func:`xtc_ext.ops.masked_cross_entropy`) or ``"eager"`` (its reference).

    Returns:
        float32 (float64) scalar in nats.

    Raises:
        ValueError: unknown ``impl``; from the op: shapes, a label outside ``[0, C)`` that is not
            ``ignore_index``. TypeError: dtypes. RuntimeError: devices.
    """
    check_choice("loss impl", impl, LOSS_IMPLS)
    return LOSS_IMPLS[impl].masked_cross_entropy(logits, target, ignore_index)


def depth_loss(pred: Tensor, target: Tensor, depth_cap: float | None = None, impl: str = "fused") -> Tensor:
    """Mean absolute depth error (metres) over valid pixels: ``target > 0`` (and ``target < depth_cap``).

    The paper's L1 depth loss (§4.2). The authors' ``DepthLoss('l1')`` also drops pixels at or beyond
    ``65535 * 0.01 * 0.01 = 6.5535`` m (a bug: NYUD depth reaches
    about 10 m); that cap is off by default and available as ``depth_cap=6.5535``. NaN targets are
    invalid (``NaN > 0`` is false).

    Args:
        pred: ``[N, 1, H, W]`` float depth in metres (no output activation in MT-CP).
        target: ``[N, 1, H, W]`` float depth in metres, 0 (or negative / NaN) = invalid; cast to the
            dtype of ``pred``.
        depth_cap: if given, pixels with ``target >= depth_cap`` (metres) are also invalid.
        impl: ``"fused"`` (:func:`xtc_ext.ops.masked_l1_loss`) or ``"eager"``.

    Returns:
        float32 (float64) scalar in metres.

    Raises:
        ValueError: unknown ``impl``; shapes not ``[N,1,H,W]`` or not equal; ``depth_cap <= 0``.
        TypeError / RuntimeError: from the op (dtypes, devices).
    """
    check_choice("loss impl", impl, LOSS_IMPLS)
    check_nchw("depth pred", pred, 1)
    check_nchw("depth target", target, 1)
    if depth_cap is not None and not depth_cap > 0:
        raise ValueError(f"depth_cap must be > 0 (metres) or None, got {depth_cap}")
    target = target.to(pred.dtype)
    valid = target > 0
    if depth_cap is not None:
        valid = valid & (target < depth_cap)
    return LOSS_IMPLS[impl].masked_l1_loss(pred, target, mask=valid, invalid_value=None)


def normals_loss(pred: Tensor, target: Tensor, kind: str = "cosine", impl: str = "fused") -> Tensor:
    """Surface-normal loss between the unit-normalised prediction and the target, over valid pixels.

    ``n = F.normalize(pred, dim=1)`` (the MT-CP heads do not normalise their output); a pixel is valid
    when its target is not the zero vector (norm > 0). Then

    - ``kind="cosine"`` (default): mean over valid pixels of ``1 - cos(n, target)``
      (:func:`xtc_ext.ops.cosine_similarity_loss`), in [0, 2];
    - ``kind="l1"``: the paper's "L1 loss with normalisation" (§4.2; Vandenhende's ``NormalsLoss(
      normalize=True, norm=1)``): mean over the valid *elements* (3 per valid pixel) of
      ``|n - target|``, i.e. the per-pixel L1 norm divided by 3 (:func:`xtc_ext.ops.masked_l1_loss`).

    The authors' code trains with the MSE of the *unnormalised* output instead (reference-
    implementations.md §2.6, §3.2 item 8). Both kinds are computed in float32 (float64 for float64
    input); the target should hold unit vectors (it is not renormalised).

    Args:
        pred: ``[N, 3, H, W]`` float raw normals.
        target: ``[N, 3, H, W]`` float unit normals, zero vector = invalid.
        kind: ``"cosine"`` or ``"l1"``.
        impl: ``"fused"`` or ``"eager"``.

    Returns:
        float32 (float64) scalar.

    Raises:
        ValueError: unknown ``kind`` or ``impl``; shapes not ``[N,3,H,W]`` or not equal.
        RuntimeError: from the op (devices).
    """
    check_choice("normals loss kind", kind, NORMALS_KINDS)
    check_choice("loss impl", impl, LOSS_IMPLS)
    check_nchw("normals pred", pred, 3)
    check_nchw("normals target", target, 3)
    if pred.shape != target.shape:
        raise ValueError(f"normals pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    n = F.normalize(to_accumulation(pred), dim=1, eps=1e-12)
    t = target.to(n.dtype)
    valid = (t != 0).any(dim=1, keepdim=True)
    if kind == "cosine":
        return LOSS_IMPLS[impl].cosine_similarity_loss(n, t, mask=valid)
    return LOSS_IMPLS[impl].masked_l1_loss(n, t, mask=valid, invalid_value=None)


def balanced_bce(logits: Tensor, target: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy on logits (saliency), pixels with ``target < 0`` ignored.

    Over the valid pixels (``target >= 0``) of the whole batch: ``y = target >= 0.5``,
    ``w = #neg / #valid`` (a constant: the counts carry no gradient), the stable per-pixel
    ``l = BCE-with-logits(x, y) = max(x, 0) - x y + log(1 + exp(-|x|))``, and

        ``loss = (w * sum_{y=1} l + (1 - w) * sum_{y=0} l) / #valid``.

    This is Vandenhende's / the MT-CP authors' ``BalancedCrossEntropyLoss(size_average=True)``
    except that it ignores pixels marked -1 (the authors' loss has
    no ignore handling, so there ``w`` and the denominator count every element); with no ignored pixel
    the two agree. No valid pixel gives 0 with zero gradient. Eager PyTorch (there is no fused op), so
    it is the same for ``impl="fused"`` and ``"eager"``.

    Args:
        logits: ``[N, 1, H, W]`` float saliency logits (sigmoid not applied).
        target: ``[N, 1, H, W]`` float saliency in [0, 1] (binary in practice), -1 = ignored.

    Returns:
        float32 (float64) scalar in nats.

    Raises:
        ValueError: shapes not ``[N,1,H,W]`` or not equal. TypeError: non-floating logits.
    """
    check_nchw("saliency logits", logits, 1)
    check_nchw("saliency target", target, 1)
    if logits.shape != target.shape:
        raise ValueError(f"saliency logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if not logits.is_floating_point():
        raise TypeError(f"saliency logits must be floating point, got {logits.dtype}")
    x = to_accumulation(logits)
    t = target.to(x.dtype)
    valid = t >= 0
    pos = valid & (t >= 0.5)
    neg = valid & ~pos
    ell = F.binary_cross_entropy_with_logits(x, pos.to(x.dtype), reduction="none")
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    sum_pos = torch.where(pos, ell, zero).sum()
    sum_neg = torch.where(neg, ell, zero).sum()
    n_valid = valid.sum().to(x.dtype)
    denom = n_valid.clamp(min=1)
    w = neg.sum().to(x.dtype) / denom
    return (w * sum_pos + (1 - w) * sum_neg) / denom


class _Options(NamedTuple):
    impl: str
    normals_kind: str
    depth_cap: float | None
    ignore_index: int


LOSSES = {
    "cross_entropy": lambda pred, target, o: segmentation_loss(pred, target, o.ignore_index, o.impl),
    "l1": lambda pred, target, o: depth_loss(pred, target, o.depth_cap, o.impl),
    "normals": lambda pred, target, o: normals_loss(pred, target, o.normals_kind, o.impl),
    "balanced_bce": lambda pred, target, o: balanced_bce(pred, target),
}
"""Loss kind (:data:`xtc_ext.tasks.LOSS_KINDS`) -> ``loss(pred, target, options)``: the functions above."""


def task_loss(
    task: str,
    pred: Tensor,
    target: Tensor,
    impl: str = "fused",
    normals_kind: str = "cosine",
    depth_cap: float | None = None,
    ignore_index: int = -1,
) -> Tensor:
    """The loss of one task: the function of its registered loss kind (:attr:`xtc_ext.tasks.TaskSpec.loss`,
    :data:`LOSSES`): e.g. ``"semseg"`` -> :func:`segmentation_loss`, ``"sal"`` -> :func:`balanced_bce`.

    Raises:
        ValueError: unknown ``task`` (the registered ones listed) or ``impl``; the errors of the task's loss
            function.
    """
    kind = get_task(task).loss
    check_choice("loss impl", impl, LOSS_IMPLS)
    return LOSSES[kind](pred, target, _Options(impl, normals_kind, depth_cap, ignore_index))


class MTCPLossTerms(NamedTuple):
    """What :class:`MTCPLoss` returns for one batch.

    ``total``: scalar to backpropagate (Eq. 7, reconstructed).
    ``per_task_final``: float ``[T]``, the raw losses of the final predictions in ``MTCPLoss.tasks``
    order (with autograd history; detach them and average over the epoch for ``weighting.epoch_end``).
    ``per_task_intermediate``: float ``[T]``, per task the sum over the intermediate predictions of their
    raw losses (0 for a task without intermediate predictions).
    ``coherence``: scalar, the CFM coherence loss as given by the model (0 if none).
    """

    total: Tensor
    per_task_final: Tensor
    per_task_intermediate: Tensor
    coherence: Tensor


def _field(output: Any, name: str) -> Any:
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


class MTCPLoss:
    """The MT-CP training loss (paper Eq. 7, reconstructed; docs/fidelity.md, "MT-CP losses and LPS").

        ``total = weighting([L_t(final)]_t) + intermediate_weight * sum_t sum_s L_t^{(s)}
                 + coherence_weight * L_coh``

    - ``weighting`` combines the raw final-prediction losses ``[T]``. With :class:`~xtc_ext.weighting.LPS`
      (default ``"lps"``) that is ``sum_t sg(w_t) log(1 + L_t + eps)`` (Eqs. 3-6), actually applied to
      the gradient (the authors' code computes the LPS weights and then trains with the plain sum,
      §3.2 item 1). ``"equal"`` gives the Table 4 "EW" scheme (raw sum).
    - ``L_t^{(s)}``: the same task loss on each intermediate (trace-back, SRM) prediction, **raw and
      unweighted** with factor ``intermediate_weight = 0.5`` as in the authors' code (whether the paper
      weights or log-projects them is unrecoverable). All intermediate predictions count, for every
      task (the authors' PASCAL code keeps only the last human-parts one, a typo, §2.7); the
      intermediate normals use the normals loss (the authors' code uses the depth L1 class there).
    - ``L_coh``: the CFM cosine-distance coherence loss the model returns (paper §3.3). The paper gives
      no weight; the authors' dead code path suggests 0.01, the default here (their active code returns
      an empty tensor and never uses it, §3.2 item 5). An empty tensor or None counts as 0.

    The per-task losses are the functions of this module (masked means over valid pixels; see
    :func:`task_loss`). Intermediate predictions must already have the target's spatial size (the
    MT-CP heads upsample them to the input size).

    Args:
        tasks: registered task names (:mod:`xtc_ext.tasks`) in order, without repeats (e.g.
            ``("semseg", "depth", "normals")`` for NYUD-v2).
        weighting: a :class:`~xtc_ext.weighting.Weighting` with ``num_tasks == len(tasks)``, or a
            ``WEIGHTINGS`` name built with ``len(tasks)`` tasks (default ``"lps"``; GradNorm needs an
            instance). It is held by reference: move it to the training device, put it in the
            checkpoint, and call its ``epoch_end`` with the epoch means of ``per_task_final``. None: no
            weighting, only :meth:`parts` and :meth:`added_terms` (the training engine applies the run's).
        coherence_weight: factor of the coherence loss, >= 0 (default 0.01).
        intermediate_weight: factor of the intermediate losses, >= 0 (default 0.5, the authors' code).
        normals_kind: ``"cosine"`` (default) or ``"l1"`` (see :func:`normals_loss`).
        impl: ``"fused"`` (:mod:`xtc_ext.ops`) or ``"eager"`` (:mod:`xtc_ext.reference`).
        depth_cap: optional depth cap in metres (None: no cap; see :func:`depth_loss`).
        ignore_index: ignored label of the segmentation targets (default -1).

    Raises:
        ValueError: empty, unknown or repeated tasks; negative weights; unknown ``normals_kind`` or
            ``impl``; a weighting whose ``num_tasks`` differs from ``len(tasks)``.
        TypeError: ``weighting`` neither a ``Weighting``/module nor a name.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weighting: Weighting | str | None = "lps",
        coherence_weight: float = 0.01,
        intermediate_weight: float = 0.5,
        normals_kind: str = "cosine",
        impl: str = "fused",
        depth_cap: float | None = None,
        ignore_index: int = -1,
    ) -> None:
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError("MTCPLoss needs at least one task")
        for t in tasks:
            get_task(t)
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"MTCPLoss: repeated task in {tasks}")
        for name, value in (("coherence_weight", coherence_weight), ("intermediate_weight", intermediate_weight)):
            if not value >= 0:
                raise ValueError(f"MTCPLoss: {name} must be >= 0, got {value}")
        check_choice("normals loss kind", normals_kind, NORMALS_KINDS)
        check_choice("loss impl", impl, LOSS_IMPLS)
        if depth_cap is not None and not depth_cap > 0:
            raise ValueError(f"depth_cap must be > 0 (metres) or None, got {depth_cap}")
        if isinstance(weighting, str):
            weighting = build_weighting(weighting, len(tasks))
        elif weighting is not None and not isinstance(weighting, torch.nn.Module):
            raise TypeError(f"weighting must be a Weighting module or a name, got {type(weighting).__name__}")
        n = getattr(weighting, "num_tasks", len(tasks))
        if n != len(tasks):
            raise ValueError(f"MTCPLoss: weighting has num_tasks={n} but there are {len(tasks)} tasks {tasks}")
        self.tasks = tasks
        self.weighting = weighting
        self.coherence_weight = float(coherence_weight)
        self.intermediate_weight = float(intermediate_weight)
        self.normals_kind = normals_kind
        self.impl = impl
        self.depth_cap = depth_cap
        self.ignore_index = int(ignore_index)

    def task_loss(self, task: str, pred: Tensor, target: Tensor) -> Tensor:
        """The raw loss of one prediction of ``task`` against its target (see :func:`task_loss`)."""
        return task_loss(task, pred, target, self.impl, self.normals_kind, self.depth_cap, self.ignore_index)

    def __call__(self, output: Any, targets: Mapping[str, Tensor]) -> MTCPLossTerms:
        """Compute the loss of one batch.

        Args:
            output: the model output, an object with attributes (or a mapping with keys)
                ``predictions`` (dict task -> final prediction), ``intermediate`` (dict task -> list of
                intermediate predictions; may be None or miss tasks) and ``coherence_loss`` (scalar
                tensor, or None / an empty tensor for none). Prediction shapes: semseg / human_parts
                logits ``[N,C,H,W]``; depth ``[N,1,H,W]`` metres; normals ``[N,3,H,W]`` (unnormalised);
                sal logits ``[N,1,H,W]``.
            targets: dict task -> target: semseg / human_parts ``[N,H,W]`` int64 (-1 ignored); depth
                ``[N,1,H,W]`` metres (0 invalid); normals ``[N,3,H,W]`` unit vectors (zero invalid);
                sal ``[N,1,H,W]`` float in [0, 1] (-1 ignored).

        Returns:
            :class:`MTCPLossTerms` (``total``: ``weighting(final) +`` the :meth:`added_terms` in order).

        Raises:
            KeyError: a task of ``self.tasks`` missing from the predictions or the targets.
            ValueError: a coherence loss with more than one element; the loss functions' errors; a loss built
                without a weighting (``weighting=None``: use :meth:`parts`).
        """
        if self.weighting is None:
            raise ValueError("MTCPLoss built with weighting=None: the caller weights the parts() itself")
        final_vec, inter_vec, coh = self.parts(output, targets)
        total = self.weighting(final_vec)
        for term in self.added_terms(inter_vec, coh).values():
            total = total + term
        return MTCPLossTerms(total, final_vec, inter_vec, coh)

    def added_terms(self, per_task_intermediate: Tensor, coherence: Tensor) -> Dict[str, Tensor]:
        """The unweighted terms added to the weighted final losses, in order: ``{"intermediate":
        intermediate_weight * sum_t per_task_intermediate[t], "coherence": coherence_weight * coherence}``."""
        return {"intermediate": self.intermediate_weight * per_task_intermediate.sum(),
                "coherence": self.coherence_weight * coherence}

    def parts(self, output: Any, targets: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(per_task_final [T], per_task_intermediate [T], coherence [])`` of one batch, as in
        :class:`MTCPLossTerms`, without the weighting (arguments and errors as :meth:`__call__`)."""
        predictions = _field(output, "predictions")
        if predictions is None:
            raise KeyError("MTCPLoss: the model output has no 'predictions'")
        intermediate = _field(output, "intermediate") or {}
        coherence = _field(output, "coherence_loss")
        finals: List[Tensor] = []
        inters: List[Tensor] = []
        for task in self.tasks:
            if task not in predictions:
                raise KeyError(f"MTCPLoss: no prediction for task {task!r} (has {sorted(predictions)})")
            if task not in targets:
                raise KeyError(f"MTCPLoss: no target for task {task!r} (has {sorted(targets)})")
            target = targets[task]
            final = self.task_loss(task, predictions[task], target)
            finals.append(final)
            inter = final.new_zeros(())
            for pred in intermediate.get(task, None) or ():
                inter = inter + self.task_loss(task, pred, target)
            inters.append(inter)
        dtype = torch.promote_types(finals[0].dtype, torch.float32)
        for t in finals[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        final_vec = torch.stack([t.to(dtype) for t in finals])
        inter_vec = torch.stack([t.to(dtype) for t in inters])
        if coherence is None or (isinstance(coherence, Tensor) and coherence.numel() == 0):
            coh = final_vec.new_zeros(())
        elif isinstance(coherence, Tensor):
            if coherence.numel() != 1:
                raise ValueError(f"MTCPLoss: coherence_loss must be a scalar, got shape {tuple(coherence.shape)}")
            coh = coherence.reshape(()).to(dtype)
        else:
            coh = final_vec.new_tensor(float(coherence))
        return final_vec, inter_vec, coh

    def __repr__(self) -> str:
        return (
            f"MTCPLoss(tasks={self.tasks}, weighting={type(self.weighting).__name__}, "
            f"coherence_weight={self.coherence_weight}, intermediate_weight={self.intermediate_weight}, "
            f"normals_kind={self.normals_kind!r}, impl={self.impl!r}, depth_cap={self.depth_cap})"
        )
