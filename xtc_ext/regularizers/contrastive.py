"""Cross-task contrastive regularization: a training-only triplet loss on task features.

Yang, Ye, Xu, "Contrastive Multi-Task Dense Prediction", AAAI 2023 (arXiv 2307.07934).  What the
paper states and what is a default chosen here: ``docs/contrastive.md``.  In short, at every step
and for every target task ``t`` (a task whose host exposes its pre-head feature map, see
:mod:`python_models.interface`):

1. a source task ``s != t`` is drawn uniformly from the tasks with labels, from the training loop's
   generator;
2. the source labels are brought to the feature grid (nearest neighbour) and ``K`` triplets
   ``(anchor, positive, negative)`` per image are drawn with the source's criterion
   (:mod:`xtc_ext.regularizers.sampling`);
3. the features of the drawn pixels only are gathered and projected by the ``(t, s)`` projector
   (a pointwise MLP) onto the unit sphere: memory ``O(K D)`` per image, never a projected map;
4. ``L_t = mean over valid triplets of max(0, ||z_a - z_p|| - ||z_a - z_n|| + margin)`` (S2),
   and the regularizer returns ``mean_t L_t`` (S3 without the weight lambda, which the caller
   applies).

The projectors feed only this loss: they are not part of the host model, so inference costs
nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .sampling import (
    SOURCE_KINDS,
    Criterion,
    SourceGrid,
    Triplets,
    batch_grid,
    check_label,
    cross_distance,
    draw_uniforms,
    make_criterion,
    negative_bound,
    num_uniforms,
    sample_pool,
    sample_triplets,
    to_source_grid,
)

__all__ = [
    "MINING",
    "ContrastiveOutput",
    "MaskedBatchNorm1d",
    "Projector",
    "CrossTaskContrastive",
    "triplet_margin_loss",
    "embedding_distance",
]

MINING = ("random", "semihard", "closest")
"""Negative mining strategies of :class:`CrossTaskContrastive` (``docs/contrastive.md``, "Sampling"):
``"random"`` the drawn negative; ``"semihard"`` FaceNet's rule (Schroff, Kalenichenko, Philbin, CVPR 2015,
§3.2): the candidate nearest to the anchor among those farther than the positive, else the farthest;
``"closest"`` the rule of this project's specification: the closest valid negative among the candidates."""

# Squared-distance floor: keeps the gradient of the square root finite for coinciding embeddings
# (a distance below 1e-6 reads as 1e-6, with zero gradient).
_SQ_EPS = 1e-12


class ContrastiveOutput(NamedTuple):
    """Result of :meth:`CrossTaskContrastive.forward`.

    Fields:
        loss: float32 scalar, ``mean_t per_target[t]`` (S3 without lambda); 0 with zero gradient
            when no target has a valid triplet.
        per_target: target -> float32 scalar ``L_t`` (S2), 0 with zero gradient without a valid
            triplet.
        sources: target -> the source task drawn at this step (log it).
        num_triplets: target -> int64 scalar tensor, valid triplets over the batch (a tensor, so
            reading it is the caller's choice of a host synchronisation).
        triplets: target -> :class:`~xtc_ext.regularizers.sampling.Triplets` ``[N, K]`` pixel
            indices ``y * w + x`` on that target's feature grid, batch indices ``n * h * w + y * w + x``
            with ``cross_image`` (after mining when enabled).
    """

    loss: Tensor
    per_target: Dict[str, Tensor]
    sources: Dict[str, str]
    num_triplets: Dict[str, Tensor]
    triplets: Dict[str, Triplets]


def embedding_distance(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean (not squared) distance over the last dimension, ``[..., D] x [..., D] -> [...]``.

    ``sqrt(max(||x - y||^2, 1e-12))``: equal to ``||x - y||`` above 1e-6, finite gradient everywhere.
    """
    return (x - y).square().sum(dim=-1).clamp_min(_SQ_EPS).sqrt()


def triplet_margin_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, valid: Tensor, margin: float
) -> Tuple[Tensor, Tensor]:
    """Triplet loss with margin averaged over the valid triplets (``docs/contrastive.md``, S2).

    ``mean_{valid} max(0, d(a, p) - d(a, n) + margin)`` with ``d`` = :func:`embedding_distance`.

    Args:
        anchor, positive, negative: float ``[..., D]`` embeddings (unit vectors here, but any work).
        valid: bool ``[...]``; invalid triplets contribute nothing, not even a gradient.
        margin: ``m > 0``.

    Returns:
        ``(loss, count)``: scalar of the embeddings' dtype (0 with zero gradient when ``count`` is 0)
        and the int64 scalar number of valid triplets.
    """
    hinge = (embedding_distance(anchor, positive) - embedding_distance(anchor, negative) + margin).clamp_min(0)
    hinge = torch.where(valid, hinge, torch.zeros((), dtype=hinge.dtype, device=hinge.device))
    count = valid.sum()
    return hinge.sum() / count.clamp_min(1).to(hinge.dtype), count


def _reads_pixel_vectors(feat: Tensor) -> bool:
    """True for a channels_last (and not also contiguous) map ``[N, C, h, w]``: its ``C`` values of a pixel
    are adjacent in memory, so it is read as ``[N*h*w, C]`` pixel vectors."""
    return not feat.is_contiguous() and feat.is_contiguous(memory_format=torch.channels_last)


class _GatherPixels(torch.autograd.Function):
    """``[N, C, h, w]`` features at pixel indices ``[N, R]`` -> rows ``[N, R, C]``.

    As ``feat.flatten(2).gather(2, index[:, None].expand(N, C, R)).transpose(1, 2)``, but read in the
    features' own memory layout: a channels_last map (``--channels-last``) is gathered as ``[N, h*w, C]``
    pixel vectors without the full-map copy a ``reshape`` would make. The backward returns a fresh
    full-size gradient (zeros, then ``index_add_`` / ``scatter_add_``) in that same layout: autograd
    then adds the prediction head's gradient on the same map into it in place, and the layers below
    receive the layout they produced (a contiguous gradient for a channels_last map cost a strided add,
    a slower upsampling backward and slower ReLU backward: 27 % of the step instead of 13 %).
    """

    @staticmethod
    def forward(ctx, feat: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        N, C, h, w = feat.shape
        R = index.shape[1]
        ctx.channels_last = _reads_pixel_vectors(feat)
        ctx.feat_shape = feat.shape
        if ctx.channels_last:  # [N * h * w, C] pixel vectors, rows picked by their flat index
            flat = (index + torch.arange(N, device=index.device).unsqueeze(1) * (h * w)).view(-1)
            ctx.save_for_backward(flat)
            return feat.permute(0, 2, 3, 1).view(N * h * w, C).index_select(0, flat).view(N, R, C)
        ctx.save_for_backward(index)
        return feat.reshape(N, C, h * w).gather(2, index.unsqueeze(1).expand(N, C, R)).transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        N, C, h, w = ctx.feat_shape
        # ``out`` is returned itself, never a view of another tensor: autograd adds into it in place only
        # when it holds the last reference to it and to its storage
        if ctx.channels_last:  # index_add_: no float32 round trip for bfloat16, unlike scatter_add_
            out = torch.empty(ctx.feat_shape, dtype=grad.dtype, device=grad.device,
                              memory_format=torch.channels_last).zero_()
            out.permute(0, 2, 3, 1).view(N * h * w, C).index_add_(0, index, grad.reshape(-1, C))
            return out, None
        R = index.shape[1]
        out = grad.new_zeros(ctx.feat_shape)
        out.view(N, C, h * w).scatter_add_(2, index.unsqueeze(1).expand(N, C, R), grad.transpose(1, 2))
        return out, None


class _MaskedBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of ``x`` ``[R, C]`` with statistics over the rows where ``m`` ``[R]`` is 1.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with ``mean`` and biased ``var`` over the
    masked rows; returns ``(y, mean, var)`` (``mean``/``var`` without gradient).  Backward, with
    ``xhat`` the normalised rows, ``n = sum(m)``, ``db = sum_rows(dy)`` and
    ``dw = sum_rows(dy * xhat)`` (sums over all rows: the statistics shift every row)::

        dx = weight / sqrt(var + eps) * (dy - m * (db + xhat * dw) / n)

    so an unmasked row gets ``weight / sqrt(var + eps) * dy``: 0 when its output is unused.
    """

    @staticmethod
    def forward(ctx, x: Tensor, m: Tensor, weight: Tensor, bias: Tensor, eps: float):  # type: ignore[override]
        n = m.sum().clamp_min(1)
        mean = torch.mv(x.t(), m) / n  # two-pass: the mean, then the variance of x - mean
        xhat = x - mean
        var = torch.mv(xhat.square().t(), m) / n
        invstd = torch.rsqrt(var + eps)
        xhat.mul_(invstd)
        ctx.save_for_backward(xhat, invstd, weight, m, n)
        ctx.mark_non_differentiable(mean, var)
        return torch.addcmul(bias, xhat, weight), mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor, _mean: Tensor, _var: Tensor):  # type: ignore[override]
        xhat, invstd, weight, m, n = ctx.saved_tensors
        db = dy.sum(dim=0)
        dw = (dy * xhat).sum(dim=0)
        corr = torch.addcmul(db / n, xhat, dw / n).mul_(m.unsqueeze(1))
        dx = dy.sub(corr).mul_(weight * invstd)
        return dx, None, dw, db, None


class MaskedBatchNorm1d(nn.Module):
    """BatchNorm over rows ``[R, C]`` whose training statistics use only the rows where ``mask`` is True.

    Training mode: ``mean`` and biased ``var`` over the masked rows (float32), every row normalised
    with them, then the affine ``weight``/``bias``; the running statistics (momentum, unbiased
    variance, as :class:`torch.nn.BatchNorm1d`) are updated only when at least one row is masked in,
    without a host synchronisation.  Rows outside the mask neither enter the statistics nor receive
    a gradient through them, so a pixel that is in no valid triplet gets exactly zero gradient.
    ``mask=None`` is plain BatchNorm.  Eval mode: the running statistics.  Parameter and buffer names
    are those of ``nn.BatchNorm1d``; it is not an ``nn.BatchNorm1d`` (``convert_sync_batchnorm``
    leaves it alone: statistics stay per process).

    Forward: float ``[R, C]`` and bool ``[R]`` -> float32 ``[R, C]`` (float64 for float64 input).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """See the class docstring."""
        x = x if x.dtype == torch.float64 else x.float()
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        m = torch.ones_like(x[:, 0]) if mask is None else mask.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):  # statistics in float32 also under autocast
            y, mean, var = _MaskedBatchNorm.apply(x, m, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        with torch.no_grad():
            n = m.sum()
            seen = n > 0
            unbiased = var * (n / (n - 1).clamp_min(1))
            mom = self.momentum
            self.running_mean.copy_(torch.where(seen, (1 - mom) * self.running_mean + mom * mean, self.running_mean))
            self.running_var.copy_(torch.where(seen, (1 - mom) * self.running_var + mom * unbiased, self.running_var))
            self.num_batches_tracked.add_(seen.long())
        return y


class Projector(nn.Module):
    """Pointwise projection head of one (target, source) pair, applied to gathered pixels.

    ``fc1 = Linear(C, C) -> bn = BatchNorm -> ReLU -> fc2 = Linear(C, D)``, then L2 normalisation in
    float32: the 1x1-conv head of ``docs/contrastive.md`` (section "Projector") written on rows, so it
    runs on the matrix of the sampled pixels only.  The BatchNorm (:class:`MaskedBatchNorm1d`) takes
    its statistics over the rows of valid triplets.  PyTorch's default initialisation.

    Forward ``(rows [R, C], mask [R] bool | None)``: rows of any float dtype (cast to the weights'
    dtype outside autocast; the linear layers run in the autocast dtype inside) -> float32 ``[R, D]``
    unit rows (float64 for a float64 projector).
    """

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, in_channels)
        self.bn = MaskedBatchNorm1d(in_channels)
        self.fc2 = nn.Linear(in_channels, embed_dim)

    def forward(self, rows: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``[R, C]`` -> ``[R, D]`` unit rows; see the class docstring."""
        if not torch.is_autocast_enabled(rows.device.type):
            rows = rows.to(self.fc1.weight.dtype)
        out = self.fc2(F.relu(self.bn(self.fc1(rows), mask)))
        out = out if out.dtype == torch.float64 else out.float()
        return out / torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(1e-12)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class CrossTaskContrastive(nn.Module):
    """Cross-task contrastive regularizer (Yang, Ye, Xu, AAAI 2023; ``docs/contrastive.md``).

    Args:
        feature_channels: target task -> channels ``C_t`` of its feature map (a host's
            ``feature_channels``, :mod:`python_models.interface`).
        source_kinds: task with labels -> its kind, one of
            :data:`~xtc_ext.regularizers.sampling.SOURCE_KINDS` (a registered task's
            :attr:`~xtc_ext.tasks.TaskSpec.contrastive_kind`: ``"categorical"``: semseg,
            human_parts; ``"binary"``: sal; ``"edge"``: edge; ``"depth"``; ``"normals"``).  The sources
            of a target are these tasks minus itself, in this order.
        embed_dim: projection width ``D`` (128).
        margin: triplet margin ``m > 0`` on unit-vector distances in [0, 2] (0.5).
        anchors: anchors ``K >= 1`` per image and target (512); one positive and one negative each.
        depth_thresholds: ``(tau_pos, tau_neg)`` on ``|log d_a - log d_j|`` ((0.05, 0.20)).
        normals_thresholds_deg: ``(tau_pos, tau_neg)`` on the normals' angle, degrees ((11.25, 30)).
        mining: one of :data:`MINING`.  ``"random"`` (default): the drawn negative.  The other two
            choose among the candidates, the drawn negative and the ``M`` pool pixels that satisfy the
            negative criterion for the anchor, by their embedding distance to the anchor:
            ``"semihard"`` (FaceNet style) the nearest one that is still farther than the positive, and
            if none is farther, the farthest of them; ``"closest"`` (the specification's "semi-hard",
            ``docs/contrastive.md``) the nearest one, farther than the positive or not.
        semihard_pool: ``M >= 1`` candidate pixels per image for ``"semihard"`` and ``"closest"`` (1024).
        depth_criterion: ``"thresholds"`` (default, S1) or ``"ordering"`` (S1':
            ``delta(a, n) - delta(a, p) >= depth_gap``) for a depth source
            (:func:`~xtc_ext.regularizers.sampling.make_criterion`).
        depth_gap: ``gamma > 0`` of the ordering criterion, log-depth (0.15).
        cross_image: draw the positives and negatives from the whole batch instead of the anchor's
            image (False; ``docs/contrastive.md``, "Sampling").
        ignore_index: void value of categorical, binary and edge labels: one int for every source, or a
            mapping source -> void (a task's :attr:`~xtc_ext.tasks.TaskSpec.void`; a source missing from
            it gets -1) (-1).
        binary_threshold: side threshold of binary labels (0.5).

    Attributes:
        targets: target names (the order of the draws).  sources: target -> its source tasks.
        criteria: source -> :class:`~xtc_ext.regularizers.sampling.Criterion`.
        projectors: ``projectors[t][s]`` = :class:`Projector` (``C_t -> D``), one per pair.

    Forward: see :meth:`forward`.

    Raises:
        ValueError: empty ``feature_channels`` or bad channels; unknown kind in ``source_kinds``; a
            target with no source; ``embed_dim``, ``anchors`` or ``semihard_pool`` < 1;
            ``margin <= 0``; bad thresholds; unknown ``mining`` or ``depth_criterion``;
            ``depth_gap <= 0``.  Each message names the argument.
    """

    def __init__(
        self,
        feature_channels: Mapping[str, int],
        source_kinds: Mapping[str, str],
        *,
        embed_dim: int = 128,
        margin: float = 0.5,
        anchors: int = 512,
        depth_thresholds: Sequence[float] = (0.05, 0.20),
        normals_thresholds_deg: Sequence[float] = (11.25, 30.0),
        mining: str = "random",
        semihard_pool: int = 1024,
        ignore_index: Union[int, Mapping[str, float]] = -1,
        binary_threshold: float = 0.5,
        depth_criterion: str = "thresholds",
        depth_gap: float = 0.15,
        cross_image: bool = False,
    ) -> None:
        super().__init__()
        channels = self._check_tasks(feature_channels, source_kinds)
        self.embed_dim = _check_int("embed_dim", embed_dim, 1)
        self.anchors = _check_int("anchors", anchors, 1)
        self.semihard_pool = _check_int("semihard_pool", semihard_pool, 1)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (0 < margin < math.inf):
            raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        if not isinstance(binary_threshold, (int, float)) or not math.isfinite(binary_threshold):
            raise ValueError(f"binary_threshold must be a finite number, got {binary_threshold!r}")
        if not isinstance(cross_image, bool):
            raise ValueError(f"cross_image must be a bool, got {cross_image!r}")
        self.margin = float(margin)
        self.mining = mining
        self.cross_image = cross_image
        self.binary_threshold = float(binary_threshold)
        self.source_kinds: Dict[str, str] = dict(source_kinds)
        self.voids: Dict[str, float] = self._check_voids(ignore_index, self.source_kinds)
        rules = dict(depth_thresholds=depth_thresholds, normals_thresholds_deg=normals_thresholds_deg,
                     depth_criterion=depth_criterion, depth_gap=depth_gap)
        for kind in ("depth", "normals"):  # check every option, also when no source uses it
            make_criterion(kind, **rules)
        self.criteria: Dict[str, Criterion] = {s: make_criterion(k, **rules) for s, k in self.source_kinds.items()}
        self.feature_channels = channels
        self.targets: List[str] = list(channels)
        self.sources: Dict[str, List[str]] = {t: [s for s in self.source_kinds if s != t] for t in self.targets}
        self.projectors = nn.ModuleDict(
            {
                t: nn.ModuleDict({s: Projector(channels[t], self.embed_dim) for s in self.sources[t]})
                for t in self.targets
            }
        )

    @staticmethod
    def _check_tasks(feature_channels: Mapping[str, int], source_kinds: Mapping[str, str]) -> Dict[str, int]:
        if not isinstance(feature_channels, Mapping) or not feature_channels:
            raise ValueError(f"feature_channels must be a non-empty dict task -> channels, got {feature_channels!r}")
        if not isinstance(source_kinds, Mapping):
            raise ValueError(f"source_kinds must be a dict task -> kind, got {source_kinds!r}")
        for s, k in source_kinds.items():
            if not isinstance(s, str) or not s or "." in s:
                raise ValueError(f"source_kinds: task names must be non-empty strings without '.', got {s!r}")
            if k not in SOURCE_KINDS:
                raise ValueError(f"source_kinds[{s!r}]: unknown kind {k!r}, expected one of {SOURCE_KINDS}")
        channels: Dict[str, int] = {}
        for t, c in feature_channels.items():
            if not isinstance(t, str) or not t or "." in t:
                raise ValueError(f"feature_channels: task names must be non-empty strings without '.', got {t!r}")
            channels[t] = _check_int(f"feature_channels[{t!r}]", c, 1)
            if not any(s != t for s in source_kinds):
                raise ValueError(
                    f"target {t!r} has no source task: source_kinds must name at least one task other than "
                    f"it, got {list(source_kinds)}"
                )
        return channels

    @staticmethod
    def _check_voids(ignore_index: Union[int, Mapping[str, float]], sources: Sequence[str]) -> Dict[str, float]:
        if isinstance(ignore_index, Mapping):
            unknown = [s for s in ignore_index if s not in sources]
            if unknown:
                raise ValueError(f"ignore_index: {unknown[0]!r} is not a source task (sources: {list(sources)})")
            values = {s: ignore_index.get(s, -1) for s in sources}
        else:
            values = {s: ignore_index for s in sources}
        for s, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"ignore_index: the void value of {s!r} must be a finite number, got {v!r}")
        return {s: float(v) for s, v in values.items()}

    def extra_repr(self) -> str:
        """Hyper-parameters, for ``print(module)``."""
        return (
            f"targets={self.targets}, source_kinds={self.source_kinds}, embed_dim={self.embed_dim}, "
            f"margin={self.margin}, anchors={self.anchors}, mining={self.mining!r}"
            + (f", semihard_pool={self.semihard_pool}" if self.mining != "random" else "")
            + "".join(f", {s}: ordering gap={c.gap}" for s, c in self.criteria.items() if c.gap is not None)
            + (", cross_image=True" if self.cross_image else "")
        )

    # ----------------------------------------------------------------------------------------

    def draw_sources(self, generator: torch.Generator) -> Dict[str, str]:
        """Draw one source per target, uniformly among its sources, in the order of :attr:`targets`.

        One ``torch.randint`` on ``generator`` per target (also with a single source), so the
        number of draws is fixed.  Raises ValueError/TypeError for a bad ``generator``.
        """
        _check_generator(generator)
        out: Dict[str, str] = {}
        for t in self.targets:
            srcs = self.sources[t]
            out[t] = srcs[int(torch.randint(len(srcs), (1,), generator=generator))]
        return out

    def forward(
        self,
        features: Mapping[str, Tensor],
        labels: Mapping[str, Tensor],
        valid: Optional[Mapping[str, Tensor]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> ContrastiveOutput:
        """Regularization loss of one batch.

        Args:
            features: target -> float ``[N, C_t, h_t, w_t]`` pre-head features (``out.features`` of
                a host), any float dtype (bfloat16 under autocast); extra keys are ignored.
            labels: every task of ``source_kinds`` -> its ground truth at any resolution (shapes
                and conventions: :func:`~xtc_ext.regularizers.sampling.to_source_grid`; XTasC-Net:
                ``{"semseg": seg [N, H, W] int64, "depth": depth [N, 1, H, W] metres}``), on the
                features' device.  No gradient flows into them.
            valid: optional task -> bool ``[N, (1,) H, W]`` extra validity mask (False = void),
                e.g. the depth-validity mask of a dataset reader.
            generator: CPU ``torch.Generator`` owned by the training loop; all the randomness of
                the step (source draws, then per target ``N x (3K + 1 [+ M])`` uniforms) comes
                from it, so checkpointing its state makes resume exact.  Required.

        Returns:
            :class:`ContrastiveOutput`.

        Raises:
            ValueError: a missing target or source key; features not ``[N, C_t, h, w]`` floating;
                batch sizes or devices that differ; labels or masks of the wrong shape.
            TypeError: a non-tensor input, wrong label dtype, a missing or non-CPU ``generator``.
        """
        _check_generator(generator)
        n, device = self._check_inputs(features, labels, valid)
        valid = dict(valid or {})
        draws = self.draw_sources(generator)
        count = num_uniforms(self.anchors, self.semihard_pool if self.mining != "random" else 0)
        per_target: Dict[str, Tensor] = {}
        counts: Dict[str, Tensor] = {}
        trips: Dict[str, Triplets] = {}
        for t in self.targets:
            s = draws[t]
            u = draw_uniforms(generator, n, count, device)
            per_target[t], counts[t], trips[t] = self._target_loss(t, s, features[t], labels[s], valid.get(s), u)
        loss = torch.stack([per_target[t].float() for t in self.targets]).mean()
        return ContrastiveOutput(loss, per_target, draws, counts, trips)

    def project(self, target: str, source: str, rows: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Embed feature rows ``[R, C_t]`` with the ``(target, source)`` projector -> float32 ``[R, D]``
        (BatchNorm statistics over the rows where ``mask`` ``[R]`` is True, all rows when None)."""
        return self.projectors[target][source](rows, mask)

    def source_grid(self, source: str, label: Tensor, size: Tuple[int, int], valid: Optional[Tensor] = None) -> SourceGrid:
        """``labels[source]`` on a feature grid ``size = (h, w)`` with this regularizer's conventions."""
        return to_source_grid(
            self.source_kinds[source], label, size, valid, self.voids[source], self.binary_threshold,
            name=f"labels[{source!r}]",
        )

    def _target_loss(
        self, t: str, s: str, feat: Tensor, label: Tensor, mask: Optional[Tensor], u: Tensor
    ) -> Tuple[Tensor, Tensor, Triplets]:
        """``(L_t, valid triplet count, triplets)`` for target ``t`` with source ``s``."""
        N, C, h, w = feat.shape
        K = self.anchors
        grid = self.source_grid(s, label.detach(), (h, w), mask)
        trip = sample_triplets(grid, self.criteria[s], K, u, self.cross_image)
        if self.cross_image:  # indices into the batch's pixels from here on
            grid = batch_grid(grid)
        index = [trip.anchor, trip.positive, trip.negative]
        if self.mining != "random":
            pool, pool_ok = sample_pool(grid, u[:, 3 * K + 1:])
            index.append(pool)
        # Only the sampled pixels are gathered and projected.
        index = torch.cat(index, dim=1)  # [N, R]
        R = index.shape[1]
        in_stats = torch.zeros_like(index, dtype=torch.bool)  # BatchNorm statistics: valid triplets' rows
        in_stats[:, :3 * K] = trip.valid.repeat(1, 3)
        if self.cross_image:  # batch indices: rows of the [N*h*w, C] pixel vectors (a copy for NCHW maps)
            rows = feat.permute(0, 2, 3, 1).reshape(N * h * w, C).index_select(0, index.view(-1))
            z = self.project(t, s, rows, in_stats.view(-1)).view(N, R, -1)
        elif _reads_pixel_vectors(feat):  # whole C-vectors per pixel: any order reads the map well
            z = self.project(t, s, _GatherPixels.apply(feat, index).reshape(N * R, C), in_stats.view(-1))
            z = z.view(N, R, -1)
        else:  # channel rows: gather in increasing pixel order per image, then put back in sampling order
            sorted_idx, perm = torch.sort(index, dim=1)
            rows = _GatherPixels.apply(feat, sorted_idx)  # [N, R, C]
            z = self.project(t, s, rows.reshape(N * R, C), in_stats.gather(1, perm).view(-1)).view(N, R, -1)
            inverse = torch.empty_like(perm).scatter_(1, perm, torch.arange(R, device=perm.device).expand(N, R))
            z = z.gather(1, inverse.unsqueeze(-1).expand(N, R, z.shape[-1]))
        # split, not slices: one gradient buffer for z instead of one per slice
        za, zp, zn, *zpool = z.split([K, K, K] + ([R - 3 * K] if R > 3 * K else []), dim=1)
        if self.mining != "random":
            zn, trip = self._mine(grid, self.criteria[s], trip, za, zp, zn, zpool[0], pool, pool_ok, self.mining)
        loss, count = triplet_margin_loss(za, zp, zn, trip.valid, self.margin)
        return loss, count, trip

    @staticmethod
    def _mine(
        grid: SourceGrid, crit: Criterion, trip: Triplets, za: Tensor, zp: Tensor, zn: Tensor,
        zpool: Tensor, pool: Tensor, pool_ok: Tensor, mining: str,
    ) -> Tuple[Tensor, Triplets]:
        """Mined negatives ([N, K, D] embeddings and the triplets with their new negative pixels): the
        candidates are the random negative + the pool pixels that are negatives of the anchor (``pool``
        [N, M] indices into ``grid``); ``"semihard"`` picks the nearest one farther than the positive,
        else the farthest one; ``"closest"`` the nearest one."""
        with torch.no_grad():
            cand_d = torch.cat([embedding_distance(za, zn).unsqueeze(-1), torch.cdist(za, zpool)], dim=-1)
            bound = negative_bound(grid, crit, trip.anchor, trip.positive)
            bound = bound.unsqueeze(-1) if isinstance(bound, Tensor) else bound
            pool_neg = pool_ok.unsqueeze(1) & (cross_distance(grid, trip.anchor, pool) >= bound)
            cand_ok = torch.cat([torch.ones_like(pool_neg[..., :1]), pool_neg], dim=-1) & trip.valid.unsqueeze(-1)
            inf = torch.full((), math.inf, device=cand_d.device, dtype=cand_d.dtype)
            if mining == "closest":
                choice = torch.where(cand_ok, cand_d, inf).argmin(dim=-1)  # 0 = the random negative
            else:
                far = cand_ok & (cand_d > embedding_distance(za, zp).unsqueeze(-1))
                nearest_far = torch.where(far, cand_d, inf).argmin(dim=-1)
                farthest = torch.where(cand_ok, cand_d, -inf).argmax(dim=-1)
                choice = torch.where(far.any(dim=-1), nearest_far, farthest)  # 0 = the random negative
            from_pool = choice > 0
            j = (choice - 1).clamp_min(0)
        z_pool = zpool.gather(1, j.unsqueeze(-1).expand(-1, -1, zpool.shape[-1]))
        zn = torch.where(from_pool.unsqueeze(-1), z_pool, zn)
        negative = torch.where(from_pool, pool.gather(1, j), trip.negative)
        return zn, trip._replace(negative=negative)

    def _check_inputs(
        self, features: Mapping[str, Tensor], labels: Mapping[str, Tensor], valid: Optional[Mapping[str, Tensor]]
    ) -> Tuple[int, torch.device]:
        """Check keys, shapes, dtypes, batch sizes and devices; return ``(N, device)``."""
        if not isinstance(features, Mapping):
            raise TypeError(f"features must be a dict target -> tensor, got {type(features).__name__}")
        if not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a dict task -> tensor, got {type(labels).__name__}")
        if valid is not None and not isinstance(valid, Mapping):
            raise TypeError(f"valid must be None or a dict task -> bool tensor, got {type(valid).__name__}")
        ref: Optional[Tensor] = None
        for t in self.targets:
            if t not in features:
                raise ValueError(f"features has no entry for target {t!r} (got {list(features)})")
            f = features[t]
            if not isinstance(f, Tensor) or f.dim() != 4 or not f.is_floating_point() or 0 in (f.shape[0], *f.shape[2:]):
                raise ValueError(
                    f"features[{t!r}] must be a floating [N, C, h, w] tensor with N, h, w >= 1, got "
                    f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}"
                )
            if f.shape[1] != self.feature_channels[t]:
                raise ValueError(f"features[{t!r}] has {f.shape[1]} channels, expected {self.feature_channels[t]}")
            _check_batch(f"features[{t!r}]", f, ref)
            ref = f if ref is None else ref
        assert ref is not None
        for s, kind in self.source_kinds.items():
            if s not in labels:
                raise ValueError(f"labels has no entry for source task {s!r} (got {list(labels)})")
            mask = None if valid is None else valid.get(s)
            check_label(kind, labels[s], mask, self.voids[s], name=f"labels[{s!r}]")
            _check_batch(f"labels[{s!r}]", labels[s], ref)
            if mask is not None:
                _check_batch(f"valid[{s!r}]", mask, ref)
        return ref.shape[0], ref.device


def _check_batch(name: str, x: Tensor, ref: Optional[Tensor]) -> None:
    if ref is None:
        return
    if x.shape[0] != ref.shape[0]:
        raise ValueError(f"{name} has batch size {x.shape[0]}, expected {ref.shape[0]} (as the features)")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device}, the features on {ref.device}")


def _check_generator(generator: object) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (CPU) owned by the training loop, got {type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
