"""Triplet sampling for the cross-task contrastive regularizer (``docs/contrastive.md``).

A *source* task's ground truth decides which pixels of a *target* task's feature map are positives
and negatives of an anchor.  Each source kind has a label-space distance ``delta(i, j)`` between two
pixels and two thresholds ``tau_pos < tau_neg`` (the gap is a dead zone); a triplet ``(a, p, n)`` is
valid when (``docs/contrastive.md``, section "Criteria", equation S1)::

    delta(a, p) <= tau_pos,  p != a,   and   delta(a, n) >= tau_neg,

with all three pixels valid.  Depth sources may use the *ordering* criterion instead (``docs/contrastive.md``,
section "Criteria", equation S1'): no absolute thresholds, only

    delta(a, n) - delta(a, p) >= gamma,  p != a.

Kinds (:data:`SOURCE_KINDS`):

=============  =====================================  ==========================  ===================
kind           label (``[N, ., H, W]``)               ``delta(i, j)``             tau_pos / tau_neg
=============  =====================================  ==========================  ===================
categorical    int class ids, ``ignore_index``/<0     0 same class, 1 otherwise   0 / 1
binary         float in [0, 1], outside / NaN void    0 same side of 0.5, else 1  0 / 1
edge           as binary (1 = edge pixel)             as binary                   0 / 1
depth          float metres, <=0 / NaN / inf void     ``|log d_i - log d_j|``     0.05 / 0.20
normals        float 3-vectors, zero / non-finite     ``1 - cos(angle)``          angles 11.25 / 30 deg
=============  =====================================  ==========================  ===================

Everything is vectorised over the batch (no host synchronisation, no loop over pixels) and exact:
the anchors are drawn from the valid pixels (class-balanced for categorical and binary sources),
each positive uniformly from the anchor's positive set and each negative uniformly from its negative
set.  For the 1-D kinds (categorical, binary, depth) the valid pixels are sorted by their key, so
both sets are index ranges found with ``searchsorted`` (``O(L log L)`` per image for ``L`` pixels);
for normals they are masks over the ``K x L`` anchor-pixel pairs, processed in chunks.  With
``cross_image`` the anchors stay in their image and the positives and negatives are drawn from the
whole batch (:func:`batch_grid`).  All
randomness comes from a tensor of uniforms in [0, 1) that the caller draws from its generator
(:func:`draw_uniforms`), so a sample is a pure function of the labels and that tensor.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SOURCE_KINDS",
    "BALANCED_KINDS",
    "Criterion",
    "SourceGrid",
    "Triplets",
    "DEPTH_CRITERIA",
    "make_criterion",
    "check_label",
    "to_source_grid",
    "batch_grid",
    "pair_distance",
    "negative_bound",
    "cross_distance",
    "draw_uniforms",
    "sample_triplets",
    "sample_pool",
    "num_uniforms",
]

SOURCE_KINDS = ("categorical", "binary", "edge", "depth", "normals")
"""Kinds of source-task ground truth, see the module docstring."""

BALANCED_KINDS = ("categorical", "binary", "edge")
"""Kinds whose anchors are drawn class-balanced."""

DEPTH_CRITERIA = ("thresholds", "ordering")
"""Criteria of a depth source: S1's absolute thresholds, or S1''s relative order (module docstring)."""

# |delta| threshold of a different class for integer keys: any value in (0, 1] works; 0.5 keeps
# the comparison far from rounding.
_CLASS_GAP = 0.5
# Pairs of anchors x pixels processed at once by the normals sampler (bounds its memory).
_NORMALS_CHUNK = 1 << 22


class Criterion(NamedTuple):
    """Positive/negative rule of one source kind on ``delta`` (see the module docstring).

    Fields:
        kind: one of :data:`SOURCE_KINDS`.
        positive: ``tau_pos``, in ``delta`` units (log-depth for depth, ``1 - cos`` for normals).
        negative: ``tau_neg > tau_pos``, same units.
        gap: ``None`` for the thresholds (S1); else ``gamma > 0`` of the ordering criterion (S1', depth
            only, ``delta`` units), which then decides alone: ``positive`` and ``negative`` only split the
            pixels of the anchor-distance figure (:mod:`xtc_ext.regularizers.figures`).
    """

    kind: str
    positive: float
    negative: float
    gap: Optional[float] = None


class SourceGrid(NamedTuple):
    """A source task's ground truth on the target feature grid (``L = h * w`` pixels, row-major).

    Fields:
        kind: one of :data:`SOURCE_KINDS`.
        key: float32 ``[N, L]`` (class id, binary side or log-depth) or ``[N, L, 3]`` unit normals;
            0 at invalid pixels.
        valid: bool ``[N, L]``.
    """

    kind: str
    key: Tensor
    valid: Tensor


class Triplets(NamedTuple):
    """Sampled triplets: ``K`` per image, as pixel indices ``y * w + x`` on the feature grid.

    Fields:
        anchor, positive, negative: int64 ``[N, K]``.  Where ``valid`` is False the positive and the
            negative are set to the anchor (a valid pixel whenever the image has one).
        valid: bool ``[N, K]``: the triplet satisfies the criterion (checked on the drawn pixels).
    """

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    valid: Tensor


def make_criterion(
    kind: str,
    depth_thresholds: Sequence[float] = (0.05, 0.20),
    normals_thresholds_deg: Sequence[float] = (11.25, 30.0),
    depth_criterion: str = "thresholds",
    depth_gap: float = 0.15,
) -> Criterion:
    """The :class:`Criterion` of a source kind.

    Args:
        kind: one of :data:`SOURCE_KINDS`.
        depth_thresholds: ``(tau_pos, tau_neg)`` on ``|log d_a - log d_j|`` (natural log,
            dimensionless), ``0 <= tau_pos < tau_neg``.
        normals_thresholds_deg: ``(tau_pos, tau_neg)`` on the angle between normals, degrees,
            ``0 <= tau_pos < tau_neg <= 180``.
        depth_criterion: one of :data:`DEPTH_CRITERIA`: ``"thresholds"`` (S1) or ``"ordering"`` (S1':
            ``delta(a, n) - delta(a, p) >= depth_gap``; for categorical and binary sources the two
            criteria coincide, so only depth offers the choice).
        depth_gap: ``gamma > 0`` of the ordering criterion, in log-depth (default 0.15, the width of the
            default thresholds' dead zone); unused with ``"thresholds"``.

    Raises:
        ValueError: unknown ``kind`` or ``depth_criterion``; thresholds not two finite numbers in
            increasing order in their range; ``depth_gap`` not a finite number > 0 (the message names the
            argument).
    """
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r}, expected one of {SOURCE_KINDS}")
    if depth_criterion not in DEPTH_CRITERIA:
        raise ValueError(f"depth_criterion must be one of {DEPTH_CRITERIA}, got {depth_criterion!r}")
    if isinstance(depth_gap, bool) or not isinstance(depth_gap, (int, float)) or not 0 < depth_gap < math.inf:
        raise ValueError(f"depth_gap must be a finite number > 0, got {depth_gap!r}")
    if kind in BALANCED_KINDS:
        return Criterion(kind, 0.0, _CLASS_GAP)
    if kind == "depth":
        lo, hi = _check_pair("depth_thresholds", depth_thresholds, 0.0, math.inf)
        return Criterion(kind, lo, hi, float(depth_gap) if depth_criterion == "ordering" else None)
    lo, hi = _check_pair("normals_thresholds_deg", normals_thresholds_deg, 0.0, 180.0)
    return Criterion(kind, 1.0 - math.cos(math.radians(lo)), 1.0 - math.cos(math.radians(hi)))


def _check_pair(name: str, pair: Sequence[float], low: float, high: float) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (tau_pos, tau_neg), got {pair!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo < hi <= high):
        raise ValueError(f"{name} must satisfy {low} <= tau_pos < tau_neg <= {high}, got {pair!r}")
    return lo, hi


# --------------------------------------------------------------------------------------------
# Labels on the feature grid


def _spatial(label: Tensor, channels: int, name: str) -> Tensor:
    """``label`` as ``[N, channels, H, W]``; ``[N, H, W]`` is accepted when ``channels == 1``."""
    if label.dim() == 3 and channels == 1:
        label = label.unsqueeze(1)
    if label.dim() != 4 or label.shape[1] != channels:
        want = "[N, H, W] or [N, 1, H, W]" if channels == 1 else f"[N, {channels}, H, W]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(label.shape)}")
    return label


def _nearest(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Nearest-neighbour resampling to ``size`` (pixel centres, ``nearest-exact``); no copy if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="nearest-exact")


def check_label(
    kind: str, label: Tensor, valid: Optional[Tensor] = None, ignore_index: int = -1, name: str = "label"
) -> Tensor:
    """Check a source label (and its optional mask) for :func:`to_source_grid`; return it as ``[N, c, H, W]``.

    Shapes only (no value is read, so no host synchronisation).  Raises as :func:`to_source_grid`.
    """
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r}, expected one of {SOURCE_KINDS}")
    if not isinstance(label, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(label).__name__}")
    lab = _spatial(label, 3 if kind == "normals" else 1, name)
    if lab.shape[-1] == 0 or lab.shape[-2] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(label.shape)}")
    if kind == "categorical" and (lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool):
        raise TypeError(f"{name}: categorical labels must be an integer tensor, got {lab.dtype}")
    if kind in ("depth", "normals") and not lab.is_floating_point():
        raise TypeError(f"{name}: {kind} labels must be a floating-point tensor, got {lab.dtype}")
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
            raise TypeError(f"valid mask of {name} must be a bool tensor, got {getattr(valid, 'dtype', type(valid))}")
        v = _spatial(valid, 1, f"valid mask of {name}")
        if v.shape[0] != lab.shape[0] or v.shape[-2:] != lab.shape[-2:]:
            raise ValueError(
                f"valid mask of {name} has shape {tuple(valid.shape)}, expected [N, (1,) H, W] with "
                f"N, H, W = {(lab.shape[0], *lab.shape[-2:])}"
            )
    return lab


def to_source_grid(
    kind: str,
    label: Tensor,
    size: Tuple[int, int],
    valid: Optional[Tensor] = None,
    ignore_index: int = -1,
    binary_threshold: float = 0.5,
    name: str = "label",
) -> SourceGrid:
    """Bring a source task's ground truth to the feature grid ``size = (h, w)`` (nearest neighbour).

    Args:
        kind: one of :data:`SOURCE_KINDS`.
        label: the ground truth at any resolution ``H x W``:
            categorical int ``[N, H, W]`` / ``[N, 1, H, W]`` class ids (``ignore_index`` and negative
            ids are void); binary / edge ``[N, 1, H, W]`` / ``[N, H, W]`` float (or int / bool) in [0, 1],
            side ``label >= binary_threshold``, outside [0, 1] (e.g. 255), NaN or ``ignore_index`` void; depth
            ``[N, 1, H, W]`` float metres, ``<= 0`` or non-finite void; normals ``[N, 3, H, W]``
            float (normalised here), zero or non-finite void.
        size: ``(h, w)`` of the target feature map.  Nearest neighbour samples pixel centres
            (``F.interpolate(mode="nearest-exact")``); nothing is resampled when sizes are equal.
        valid: optional bool ``[N, H, W]`` / ``[N, 1, H, W]`` mask (same ``H x W``); False = void.
        ignore_index: void value of categorical, binary and edge labels (the task's
            :attr:`~xtc_ext.tasks.TaskSpec.void`).
        binary_threshold: side threshold of binary labels.
        name: the argument's name in error messages (e.g. ``"labels['sal']"``).

    Returns:
        :class:`SourceGrid` with ``L = h * w`` (no gradient flows into it).

    Raises:
        ValueError: unknown ``kind``; ``label`` or ``valid`` of the wrong shape.
        TypeError: a categorical label that is not integer, a depth or normals label that is not
            floating, a ``valid`` that is not bool.
    """
    lab = check_label(kind, label, valid, ignore_index, name).detach()
    n, h, w = lab.shape[0], int(size[0]), int(size[1])
    lab = _nearest(lab.float(), (h, w))  # class ids are exact in float32 up to 2**24
    if kind == "categorical":
        ok = (lab >= 0) & (lab != float(ignore_index))
        key = lab
    elif kind in ("binary", "edge"):
        ok = (lab >= 0) & (lab <= 1) & (lab != float(ignore_index))  # False for NaN and for 255
        key = (lab >= binary_threshold).float()
    elif kind == "depth":
        ok = torch.isfinite(lab) & (lab > 0)
        key = torch.log(torch.where(ok, lab, torch.ones_like(lab)))
    else:
        finite = torch.isfinite(lab).all(dim=1, keepdim=True)
        lab = torch.where(finite, lab, torch.zeros_like(lab))
        scale = lab.abs().amax(dim=1, keepdim=True)  # scale first: tiny vectors normalise exactly
        ok = finite & (scale > 0)
        key = F.normalize(lab / torch.where(ok, scale, torch.ones_like(scale)), dim=1)
    if valid is not None:
        ok = ok & _nearest(_spatial(valid, 1, name).float(), (h, w)).bool()
    ok = ok.reshape(n, h * w)
    if kind == "normals":
        key = key.reshape(n, 3, h * w).transpose(1, 2)
        key = torch.where(ok.unsqueeze(-1), key, torch.zeros_like(key))
    else:
        key = torch.where(ok, key.reshape(n, h * w), torch.zeros((), device=key.device))
    return SourceGrid(kind, key.contiguous(), ok)


def batch_grid(grid: SourceGrid) -> SourceGrid:
    """The batch's pixels as one pool for every image: ``key`` ``[N, N L(, 3)]`` and ``valid`` ``[N, N L]``
    (expanded views, no copy), pixel ``n L + y w + x`` being pixel ``y w + x`` of image ``n``.

    The grid of cross-image sampling (``docs/contrastive.md``, section "Sampling"): the positives and
    negatives of image ``n``'s anchors are drawn from the ``N L`` pixels of row ``n``.
    """
    N, L = grid.valid.shape
    key = grid.key.reshape(1, N * L, *grid.key.shape[2:]).expand(N, *([-1] * (grid.key.dim() - 1)))
    return SourceGrid(grid.kind, key, grid.valid.reshape(1, N * L).expand(N, -1))


# --------------------------------------------------------------------------------------------
# Label-space distances


def _gather_key(grid: SourceGrid, index: Tensor) -> Tensor:
    """Keys at pixel indices ``index`` ``[N, ...]`` -> ``[N, ...]`` (``[N, ..., 3]`` for normals)."""
    flat = index.reshape(index.shape[0], -1)
    if grid.kind == "normals":
        out = grid.key.gather(1, flat.unsqueeze(-1).expand(-1, -1, 3))
        return out.reshape(*index.shape, 3)
    return grid.key.gather(1, flat).reshape(index.shape)


def pair_distance(grid: SourceGrid, i: Tensor, j: Tensor) -> Tensor:
    """``delta(i, j)`` for pixel indices ``i``, ``j`` of the same shape ``[N, ...]`` -> float32 ``[N, ...]``.

    ``|key_i - key_j|`` for the 1-D kinds, ``1 - <n_i, n_j>`` for normals.  Validity is not checked.
    """
    a, b = _gather_key(grid, i), _gather_key(grid, j)
    if grid.kind == "normals":
        return 1.0 - (a * b).sum(-1)
    return (a - b).abs()


def cross_distance(grid: SourceGrid, i: Tensor, j: Tensor) -> Tensor:
    """``delta`` between every ``i`` ``[N, K]`` and every ``j`` ``[N, M]`` -> float32 ``[N, K, M]``."""
    a, b = _gather_key(grid, i), _gather_key(grid, j)
    if grid.kind == "normals":
        with torch.autocast(a.device.type, enabled=False):  # float32 label geometry under autocast
            return 1.0 - torch.bmm(a, b.transpose(1, 2))
    return (a.unsqueeze(2) - b.unsqueeze(1)).abs()


def negative_bound(grid: SourceGrid, crit: Criterion, anchor: Tensor, positive: Tensor) -> Union[float, Tensor]:
    """The least ``delta(a, n)`` of a negative of the triplets ``(anchor, positive, .)`` ``[N, K]``:
    ``tau_neg`` (a float) for the thresholds, ``delta(a, p) + gamma`` (float32 ``[N, K]``) for the ordering."""
    if crit.gap is None:
        return crit.negative
    return pair_distance(grid, anchor, positive) + crit.gap


def _satisfies(grid: SourceGrid, crit: Criterion, a: Tensor, p: Tensor, n: Tensor) -> Tensor:
    """bool ``[N, K]``: the triplets' label distances meet ``crit`` (validity and ``p != a`` not checked)."""
    neg_ok = pair_distance(grid, a, n) >= negative_bound(grid, crit, a, p)
    return neg_ok if crit.gap is not None else (pair_distance(grid, a, p) <= crit.positive) & neg_ok


# --------------------------------------------------------------------------------------------
# Sampling


def num_uniforms(anchors: int, pool: int = 0) -> int:
    """Uniforms per image that :func:`sample_triplets` (``3 K + 1``) and :func:`sample_pool` (``M``) use."""
    return 3 * anchors + 1 + pool


def draw_uniforms(generator: torch.Generator, batch: int, count: int, device: torch.device) -> Tensor:
    """``[batch, count]`` float64 uniforms in [0, 1) drawn from the CPU ``generator``, sent to ``device``.

    The amount drawn depends only on ``batch`` and ``count`` (never on the labels), so the
    generator's state after a step is a function of its state before: checkpointing it makes a
    resumed run draw the same samples.
    """
    u = torch.rand((batch, count), generator=generator, dtype=torch.float64)
    return u.to(device, non_blocking=True)


def _pick(u: Tensor, count: Tensor) -> Tensor:
    """``floor(u * count)`` clamped to ``[0, count - 1]`` (0 where ``count <= 0``), int64."""
    r = torch.floor(u * count.to(u.dtype)).long()
    return torch.minimum(r, (count - 1).clamp_min(0))


def _ranked(grid: SourceGrid) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(order [N, L], n_valid [N], sorted_key [N, L] | None)``: valid pixels first (sorted by key for
    the 1-D kinds, invalid ones as +inf at the end; in pixel order for normals)."""
    n_valid = grid.valid.sum(dim=1)
    if grid.kind == "normals":
        order = torch.sort((~grid.valid).to(torch.uint8), dim=1, stable=True).indices
        return order, n_valid, None
    key = torch.where(grid.valid, grid.key, torch.full((), math.inf, device=grid.key.device))
    sorted_key, order = torch.sort(key, dim=1, stable=True)
    return order, n_valid, sorted_key


def _balanced_anchor_ranks(sorted_key: Tensor, n_valid: Tensor, u_anchor: Tensor, u_shift: Tensor) -> Tuple[Tensor, Tensor]:
    """Class-balanced anchor ranks ``[N, K]`` in the sorted order, and ``[N]`` "has an eligible class".

    Eligible classes have at least two valid pixels (so a positive exists).  Anchor ``i`` takes the
    eligible class ``(i + shift) mod m`` (``m`` classes, ``shift`` uniform in ``[0, m)``: the quotas
    differ by at most one), then a uniform pixel of that class (with replacement).
    """
    N, L = sorted_key.shape
    K = u_anchor.shape[1]
    pos = torch.arange(L, device=sorted_key.device).expand(N, L)
    start = torch.ones_like(sorted_key, dtype=torch.bool)
    start[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    run_len = torch.searchsorted(sorted_key, sorted_key, right=True) - pos
    eligible = start & (pos < n_valid.unsqueeze(1)) & (run_len >= 2)
    m = eligible.sum(dim=1)
    slot = (torch.arange(K, device=m.device) + _pick(u_shift, m).unsqueeze(1)) % m.clamp_min(1).unsqueeze(1)
    first = torch.searchsorted(eligible.cumsum(dim=1), slot + 1).clamp_max(L - 1)
    return first + _pick(u_anchor, run_len.gather(1, first)), m > 0


def _anchor_ranks(grid: SourceGrid, sk: Tensor, n_valid: Tensor, u: Tensor, K: int) -> Tuple[Tensor, Tensor]:
    """1-D kinds: ``K`` anchor ranks ``[N, K]`` in the sorted order ``sk`` and "has an anchor" (``[N, 1]``)."""
    if grid.kind in BALANCED_KINDS:
        ra, found = _balanced_anchor_ranks(sk, n_valid, u[:, :K], u[:, 3 * K])
        return ra, found.unsqueeze(1)
    nv = n_valid.unsqueeze(1)
    return _pick(u[:, :K], nv), nv > 0


def _draw_anchors(grid: SourceGrid, u: Tensor, K: int) -> Tuple[Tensor, Tensor]:
    """The anchors alone, as the per-image samplers draw them: pixel indices ``[N, K]`` and "has an anchor"."""
    order, n_valid, sk = _ranked(grid)
    if sk is None:
        return order.gather(1, _pick(u[:, :K], n_valid.unsqueeze(1))), (n_valid > 0).unsqueeze(1)
    ra, found = _anchor_ranks(grid, sk, n_valid, u, K)
    return order.gather(1, ra.clamp_max(sk.shape[1] - 1)), found


def _sample_sorted(
    grid: SourceGrid, crit: Criterion, u: Tensor, K: int, anchor: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """1-D kinds: ``(anchor, positive, negative)`` pixel indices and the "sets non-empty" mask.

    ``anchor``: given pixel indices ``[N, K]`` (cross-image sampling), else drawn here.  With the ordering
    criterion the positive is uniform over the pixels that have a negative (``delta(a, p) <= reach - gamma``,
    ``reach`` the anchor's largest ``delta`` to a valid pixel), then the negative uniform over
    ``delta(a, n) >= delta(a, p) + gamma``.
    """
    order, n_valid, sk = _ranked(grid)
    assert sk is not None
    L = sk.shape[1]
    nv = n_valid.unsqueeze(1)
    if anchor is None:
        ra, found = _anchor_ranks(grid, sk, n_valid, u, K)
    else:  # the given pixels' ranks in this order
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=order.device).expand_as(order))
        ra, found = rank.gather(1, anchor), grid.valid.gather(1, anchor)
    ra = ra.clamp_max(L - 1)
    ka = sk.gather(1, ra)
    radius: Union[float, Tensor] = crit.positive
    if crit.gap is not None:  # the positives that leave a negative
        reach = torch.maximum(ka - sk[:, :1], sk.gather(1, (nv - 1).clamp_min(0)) - ka)
        radius = reach - crit.gap
    # positives: ranks [lo, hi) minus the anchor itself
    lo = torch.searchsorted(sk, ka - radius)
    hi = torch.searchsorted(sk, ka + radius, right=True)
    rp = lo + _pick(u[:, K:2 * K], hi - lo - 1)
    rp = rp + (rp >= ra).long()
    bound: Union[float, Tensor] = crit.negative
    if crit.gap is not None:
        bound = (sk.gather(1, rp.clamp(0, L - 1)) - ka).abs() + crit.gap
    # negatives: ranks [0, below) and [above, n_valid)
    below = torch.searchsorted(sk, ka - bound, right=True)
    above = torch.searchsorted(sk, ka + bound)
    n_neg = below + (nv - above)
    rn = _pick(u[:, 2 * K:3 * K], n_neg)
    rn = torch.where(rn < below, rn, rn - below + above)
    ok = found & (hi - lo >= 2) & (n_neg >= 1)
    a, p, n = order.gather(1, torch.cat([ra, rp, rn], dim=1).clamp(0, L - 1)).split(K, dim=1)
    return a, p, n, ok


def _nth_true(mask: Tensor, u: Tensor) -> Tuple[Tensor, Tensor]:
    """A uniform True position of each row of ``mask`` ``[R, L]`` (``u`` ``[R]``) and "row has one"."""
    cs = mask.cumsum(dim=1)
    count = cs[:, -1]
    idx = torch.searchsorted(cs, (_pick(u, count) + 1).unsqueeze(1)).squeeze(1)
    return idx.clamp_max(mask.shape[1] - 1), count > 0


def _sample_normals(
    grid: SourceGrid, crit: Criterion, u: Tensor, K: int, anchor: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normals: anchors uniform over valid pixels (or the given ``anchor`` ``[N, K]``); positive / negative
    sets as ``K x L`` masks."""
    if crit.gap is not None:
        raise ValueError("the ordering criterion is defined for depth sources only, got a normals criterion")
    order, n_valid, _ = _ranked(grid)
    N, L = grid.valid.shape
    a = order.gather(1, _pick(u[:, :K], n_valid.unsqueeze(1))) if anchor is None else anchor
    pos = torch.empty_like(a)
    neg = torch.empty_like(a)
    ok = torch.empty_like(a, dtype=torch.bool)
    pix = torch.arange(L, device=a.device)
    usable = grid.valid.unsqueeze(1)
    step = max(1, _NORMALS_CHUNK // max(1, N * L))
    for k0 in range(0, K, step):
        ks = slice(k0, min(K, k0 + step))
        with torch.autocast(a.device.type, enabled=False):  # float32 label geometry under autocast
            delta = 1.0 - torch.bmm(_gather_key(grid, a[:, ks]), grid.key.transpose(1, 2))  # [N, k, L]
        pmask = usable & (delta <= crit.positive) & (pix != a[:, ks].unsqueeze(2))
        nmask = usable & (delta >= crit.negative)
        k = delta.shape[1]
        p, p_ok = _nth_true(pmask.reshape(N * k, L), u[:, K + k0:K + k0 + k].reshape(-1))
        n, n_ok = _nth_true(nmask.reshape(N * k, L), u[:, 2 * K + k0:2 * K + k0 + k].reshape(-1))
        pos[:, ks], neg[:, ks] = p.view(N, k), n.view(N, k)
        ok[:, ks] = (p_ok & n_ok).view(N, k)
    has_anchor = (n_valid > 0).unsqueeze(1) if anchor is None else grid.valid.gather(1, anchor)
    return a, pos, neg, ok & has_anchor


def sample_triplets(
    grid: SourceGrid, crit: Criterion, anchors: int, uniforms: Tensor, cross_image: bool = False
) -> Triplets:
    """Draw ``K = anchors`` triplets per image satisfying ``crit`` (module docstring; exact sampling).

    Anchors: uniform over the valid pixels, with replacement; class-balanced for
    :data:`BALANCED_KINDS` (equal quotas, within one, over the classes with at least two valid pixels).
    Positive: uniform over the anchor's positive set minus the anchor.  Negative: uniform over its
    negative set.  An anchor whose positive or negative set is empty (an image with one class, no
    valid pixel, no pair outside the dead zone) gives an invalid triplet.  The criterion is checked
    again on the drawn pixels, so every valid triplet satisfies it in the arithmetic of
    :func:`pair_distance`.  With the ordering criterion (``crit.gap``, depth only) the positive is
    uniform over the anchor's pixels that have a negative, the negative uniform over
    ``delta(a, n) >= delta(a, p) + gamma``.

    Args:
        grid: the source labels on the target feature grid (:func:`to_source_grid`).
        crit: the source's :class:`Criterion` (its kind must be ``grid.kind``).
        anchors: ``K >= 1``.
        uniforms: float64 ``[N, >= 3 K + 1]`` in [0, 1) on the grid's device (:func:`draw_uniforms`);
            columns ``[0, K)`` anchors, ``[K, 2K)`` positives, ``[2K, 3K)`` negatives, ``3K`` the
            class-quota shift.
        cross_image: ``docs/contrastive.md`` section "Sampling": the anchors are drawn per image as
            above, the positive and the negative from the valid pixels of the whole batch
            (:func:`batch_grid`; an anchor's own image included).  The returned indices are then
            batch indices ``n L + y w + x`` into :func:`batch_grid`.

    Returns:
        :class:`Triplets` ``[N, K]``.

    Raises:
        ValueError: ``anchors < 1``; ``uniforms`` of the wrong shape; kinds differ; an ordering
            criterion of a normals source.
    """
    N = grid.valid.shape[0]
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 1:
        raise ValueError(f"anchors must be an int >= 1, got {anchors!r}")
    if uniforms.dim() != 2 or uniforms.shape[0] != N or uniforms.shape[1] < 3 * anchors + 1:
        raise ValueError(f"uniforms must have shape [{N}, >= {3 * anchors + 1}], got {tuple(uniforms.shape)}")
    if crit.kind != grid.kind:
        raise ValueError(f"criterion kind {crit.kind!r} differs from the labels' kind {grid.kind!r}")
    sampler = _sample_normals if grid.kind == "normals" else _sample_sorted
    if cross_image:
        a, found = _draw_anchors(grid, uniforms, anchors)
        a = a + torch.arange(N, device=a.device).unsqueeze(1) * grid.valid.shape[1]
        grid = batch_grid(grid)
        a, p, n, ok = sampler(grid, crit, uniforms, anchors, a)
        ok = ok & found
    else:
        a, p, n, ok = sampler(grid, crit, uniforms, anchors)
    va = grid.valid.gather(1, a)
    ok = ok & va & grid.valid.gather(1, p) & grid.valid.gather(1, n) & (p != a)
    ok = ok & _satisfies(grid, crit, a, p, n)
    return Triplets(a, torch.where(ok, p, a), torch.where(ok, n, a), ok)


def sample_pool(grid: SourceGrid, uniforms: Tensor) -> Tuple[Tensor, Tensor]:
    """``M`` candidate pixels per image, uniform over the valid pixels (with replacement).

    Args:
        grid: :class:`SourceGrid`.
        uniforms: float64 ``[N, M]`` in [0, 1).

    Returns:
        ``(pixels int64 [N, M], valid bool [N, M])`` (``valid`` False only in images without a valid
        pixel).
    """
    order, n_valid, _ = _ranked(grid)
    pix = order.gather(1, _pick(uniforms, n_valid.unsqueeze(1)))
    return pix, grid.valid.gather(1, pix)
