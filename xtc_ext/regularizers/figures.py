"""What the contrastive regularizer does, as a figure: distances from one anchor's embedding.

For one image, a target task and a source task: every pixel of the target feature map is embedded by
the ``(target, source)`` projector (at figure time only, in eval mode, without gradient), and the
figure shows

1. the source labels on the feature grid, void pixels grey, the anchor marked;
2. the Euclidean distance from the anchor's embedding to every pixel's embedding (unit vectors:
   0 to 2, same colour scale in every figure);
3. the histograms of that distance over the anchor's positive pixels and over its negative pixels
   (the source criterion, ``docs/contrastive.md`` section "Criteria").

Called before and after training with the same image, labels and ``seed``, it picks the same anchor,
so the two PNGs compare directly: a trained regularizer pulls the positive histogram towards 0 and
pushes the negative one out.  Matplotlib's object-oriented API with the Agg canvas (no pyplot).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .contrastive import CrossTaskContrastive, embedding_distance
from .sampling import SourceGrid, draw_uniforms, num_uniforms, pair_distance, sample_triplets

__all__ = ["DistanceFigure", "save_distance_figure"]

# Rows projected at once when embedding a whole map (bounds the figure's memory).
_CHUNK_ROWS = 1 << 15
# Anchors drawn to find one with a positive and a negative.
_CANDIDATES = 64


class DistanceFigure(NamedTuple):
    """What :func:`save_distance_figure` drew.

    Fields:
        path: the PNG written.
        target, source: the task pair.
        anchor: ``(y, x)`` on the feature grid.
        mean_positive, mean_negative: mean embedding distance from the anchor to its positive and its
            negative pixels (NaN for an empty set).
        num_positive, num_negative: sizes of those sets.
    """

    path: Path
    target: str
    source: str
    anchor: Tuple[int, int]
    mean_positive: float
    mean_negative: float
    num_positive: int
    num_negative: int


@torch.no_grad()
def _embed_map(reg: CrossTaskContrastive, target: str, source: str, feat: Tensor) -> Tensor:
    """``[1, C, h, w]`` -> float ``[h * w, D]`` embeddings, the projector in eval mode (restored after)."""
    proj = reg.projectors[target][source]
    was_training = proj.training
    proj.eval()
    try:
        rows = feat[0].flatten(1).t()
        return torch.cat([proj(rows[i:i + _CHUNK_ROWS]) for i in range(0, rows.shape[0], _CHUNK_ROWS)])
    finally:
        proj.train(was_training)


def _pick_anchor(reg: CrossTaskContrastive, source: str, grid: SourceGrid, seed: int) -> int:
    """The anchor of the first valid triplet drawn with ``seed`` (else the first valid pixel)."""
    gen = torch.Generator().manual_seed(seed)
    u = draw_uniforms(gen, 1, num_uniforms(_CANDIDATES), grid.valid.device)
    trip = sample_triplets(grid, reg.criteria[source], _CANDIDATES, u)
    ok = trip.valid[0].nonzero()
    if ok.numel():
        return int(trip.anchor[0, ok[0, 0]])
    return int(grid.valid[0].nonzero()[0, 0])


def _label_image(grid: SourceGrid, h: int, w: int) -> Tuple[np.ndarray, str]:
    """An image of the source labels on the grid (RGB for normals) and its colour map."""
    valid = grid.valid[0].view(h, w).cpu().numpy()
    if grid.kind == "normals":
        rgb = ((grid.key[0].view(h, w, 3).float().cpu().numpy() + 1.0) / 2.0).clip(0, 1)
        rgb[~valid] = 0.5
        return rgb, "none"
    img = np.ma.masked_array(grid.key[0].view(h, w).float().cpu().numpy(), mask=~valid)
    return img, {"categorical": "tab20", "binary": "gray", "edge": "gray", "depth": "magma"}[grid.kind]


def save_distance_figure(
    regularizer: CrossTaskContrastive,
    features: Mapping[str, Tensor],
    labels: Mapping[str, Tensor],
    path: Union[str, "os.PathLike[str]"],
    *,
    target: Optional[str] = None,
    source: Optional[str] = None,
    valid: Optional[Mapping[str, Tensor]] = None,
    anchor: Optional[Tuple[int, int]] = None,
    seed: int = 0,
    title: Optional[str] = None,
) -> DistanceFigure:
    """Save the anchor-distance figure of one image as a PNG (see the module docstring).

    Args:
        regularizer: the :class:`CrossTaskContrastive` whose projector is shown (left unchanged:
            eval mode only during the call, no gradient, no running-statistics update).
        features: target -> ``[1, C_t, h, w]`` features of ONE image (``out.features`` sliced with
            ``[i:i + 1]``); any float dtype.
        labels: task -> the ground truth of that image with a batch dimension of 1, as for
            :meth:`CrossTaskContrastive.forward`.
        path: PNG file to write (parent directories are created).
        target: target task (default: the regularizer's first target).
        source: source task (default: the target's first source).
        valid: optional task -> bool mask, as for :meth:`CrossTaskContrastive.forward`.
        anchor: ``(y, x)`` on the feature grid; default: drawn with ``seed`` among the pixels that
            have a positive and a negative (the same pixel for the same labels and seed).
        seed: seed of the anchor draw (a private generator; the training generator is not touched).
        title: figure title (default: target, source and anchor).

    Returns:
        :class:`DistanceFigure`.

    Raises:
        ValueError: unknown ``target`` / ``source``; a batch size other than 1; features or labels
            of the wrong shape; an ``anchor`` outside the grid or on a void pixel; labels without a
            valid pixel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = regularizer.targets[0] if target is None else target
    if target not in regularizer.targets:
        raise ValueError(f"target must be one of {regularizer.targets}, got {target!r}")
    source = regularizer.sources[target][0] if source is None else source
    if source not in regularizer.sources[target]:
        raise ValueError(f"source must be one of {regularizer.sources[target]} for target {target!r}, got {source!r}")
    feat = features[target] if target in features else None
    if feat is None or feat.dim() != 4 or feat.shape[0] != 1 or feat.shape[1] != regularizer.feature_channels[target]:
        raise ValueError(
            f"features[{target!r}] must be [1, {regularizer.feature_channels[target]}, h, w] (one image), got "
            f"{None if feat is None else tuple(feat.shape)}"
        )
    if source not in labels or labels[source].shape[0] != 1:
        raise ValueError(f"labels[{source!r}] must hold one image (batch size 1)")
    h, w = int(feat.shape[-2]), int(feat.shape[-1])
    mask = None if valid is None else valid.get(source)
    grid = regularizer.source_grid(source, labels[source].to(feat.device), (h, w), mask)
    if not bool(grid.valid.any()):
        raise ValueError(f"labels[{source!r}] has no valid pixel on the {h}x{w} feature grid")
    if anchor is None:
        a = _pick_anchor(regularizer, source, grid, seed)
    else:
        y, x = (int(v) for v in anchor)
        if not (0 <= y < h and 0 <= x < w) or not bool(grid.valid[0, y * w + x]):
            raise ValueError(f"anchor {anchor!r} must be a valid pixel (y, x) of the {h}x{w} feature grid")
        a = y * w + x

    z = _embed_map(regularizer, target, source, feat)
    dist = embedding_distance(z, z[a]).float().cpu()
    pix = torch.arange(h * w, device=grid.valid.device).unsqueeze(0)
    delta = pair_distance(grid, torch.full_like(pix, a), pix)[0]
    crit = regularizer.criteria[source]
    pos = (grid.valid[0] & (delta <= crit.positive) & (pix[0] != a)).cpu()
    neg = (grid.valid[0] & (delta >= crit.negative)).cpu()
    mean_p = float(dist[pos].mean()) if pos.any() else float("nan")
    mean_n = float(dist[neg].mean()) if neg.any() else float("nan")
    anchor_y, anchor_x = divmod(a, w)

    fig = Figure(figsize=(13.5, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_l, ax_d, ax_h = fig.subplots(1, 3)
    img, cmap = _label_image(grid, h, w)
    ax_l.imshow(img, cmap=None if cmap == "none" else cmap, interpolation="nearest")
    ax_l.set_title(f"source '{source}' on the {h}x{w} grid")
    im = ax_d.imshow(dist.view(h, w).numpy(), cmap="viridis", vmin=0.0, vmax=2.0, interpolation="nearest")
    ax_d.set_title(f"distance to the anchor, target '{target}'")
    fig.colorbar(im, ax=ax_d, fraction=0.046, pad=0.04)
    for ax in (ax_l, ax_d):
        ax.plot([anchor_x], [anchor_y], marker="s", markersize=8, markerfacecolor="none", markeredgecolor="red",
                markeredgewidth=2)
        ax.set_xticks([])
        ax.set_yticks([])
    bins = np.linspace(0.0, 2.0, 41)
    ax_h.hist(dist[pos].numpy(), bins=bins, alpha=0.6, density=True, label=f"positives ({int(pos.sum())})")
    ax_h.hist(dist[neg].numpy(), bins=bins, alpha=0.6, density=True, label=f"negatives ({int(neg.sum())})")
    ax_h.set_xlabel("embedding distance to the anchor")
    ax_h.set_title(f"mean: positives {mean_p:.3f}, negatives {mean_n:.3f}")
    ax_h.legend(loc="upper right")
    default_title = f"target {target}, source {source}, anchor (y={anchor_y}, x={anchor_x})"
    fig.suptitle(default_title if title is None else title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return DistanceFigure(out, target, source, (anchor_y, anchor_x), mean_p, mean_n, int(pos.sum()), int(neg.sum()))
