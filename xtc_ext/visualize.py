"""Qualitative figures: input, segmentation and depth (ground truth vs prediction).

Uses matplotlib's object-oriented API with the Agg canvas (no pyplot, no global
state, no display needed), so it is safe inside training loops and on headless
machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from .data import IMAGENET_MEAN, IMAGENET_STD, NYU13_CLASS_NAMES

__all__ = ["denormalize", "segmentation_palette", "colorize_segmentation", "save_prediction_figure",
           "save_single_task_figure", "save_prediction_figures"]


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation and clamp to [0, 1].

    Args:
        image: float tensor ``[3,H,W]`` or ``[N,3,H,W]``, normalised with
            ``IMAGENET_MEAN`` / ``IMAGENET_STD`` (see :mod:`xtc_ext.data`).

    Returns:
        Float tensor of the same shape and device, ``image * std + mean`` clamped
        to [0, 1].

    Raises:
        ValueError: if the channel dimension is not 3.
    """
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"denormalize expects [3,H,W] or [N,3,H,W], got {tuple(image.shape)}")
    image = image.float() if not image.is_floating_point() else image
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)


def segmentation_palette(num_classes: int) -> np.ndarray:
    """Fixed colour table for ``num_classes`` classes.

    Returns:
        uint8 array ``[num_classes, 3]`` (RGB). Classes 0..19 use matplotlib's
        ``tab20``, 20..59 ``tab20b`` then ``tab20c``, beyond that evenly spaced
        ``hsv`` hues. The same index always gets the same colour.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    cols = []
    for name in ("tab20", "tab20b", "tab20c"):
        cols.extend(colormaps[name].colors)
    cols = np.asarray(cols, dtype=np.float64)[:, :3]
    if num_classes > len(cols):
        extra = colormaps["hsv"](np.linspace(0, 1, num_classes - len(cols), endpoint=False))[:, :3]
        cols = np.concatenate([cols, extra], axis=0)
    return np.round(cols[:num_classes] * 255).astype(np.uint8)


def colorize_segmentation(seg: torch.Tensor, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Map a label map to RGB with :func:`segmentation_palette`; ignore pixels black.

    Args:
        seg: integer tensor ``[H,W]`` with values in [0, num_classes) or ``ignore_index``.

    Returns:
        uint8 array ``[H,W,3]``.

    Raises:
        ValueError: wrong shape/dtype or a value outside [0, num_classes) that is
            not ``ignore_index``.
    """
    if seg.dim() != 2 or seg.is_floating_point():
        raise ValueError(f"segmentation must be an integer [H,W] tensor, got {seg.dtype} "
                         f"{tuple(seg.shape)}")
    s = seg.detach().cpu().numpy().astype(np.int64)
    ign = s == ignore_index
    bad = ~ign & ((s < 0) | (s >= num_classes))
    if bad.any():
        raise ValueError(f"segmentation contains value {int(s[bad][0])} outside [0, {num_classes}) "
                         f"that is not ignore_index={ignore_index}")
    pal = segmentation_palette(num_classes)
    out = pal[np.where(ign, 0, s)]
    out[ign] = 0
    return out


def save_prediction_figure(path: Union[str, "os.PathLike[str]"], image: torch.Tensor,
                           seg_gt: torch.Tensor, seg_pred: torch.Tensor,
                           depth_gt: torch.Tensor, depth_pred: torch.Tensor,
                           num_classes: int, ignore_index: int = -1,
                           title: Optional[str] = None, *,
                           class_names: Optional[Sequence[str]] = None,
                           image_normalized: bool = True, dpi: int = 100) -> Path:
    """Save a 2x3 qualitative figure for ONE frame as an RGB image (PNG by default).

    Layout::

        input RGB        | GT segmentation | predicted segmentation (+ class legend)
        seg error map    | GT depth        | predicted depth

    * Segmentation panels share one fixed palette (:func:`segmentation_palette`);
      ignore pixels are black. The legend lists the classes present in GT or
      prediction (``class_names``, default NYU-13 names when ``num_classes == 13``).
    * Error map: green = correct, red = wrong, black = ignored; the title gives
      pixel accuracy over non-ignored pixels.
    * Depth panels share ``vmin``/``vmax`` = min/max of the valid GT (target > 0)
      and a colorbar in metres; invalid GT pixels are black in the GT panel. The
      prediction panel shows every pixel (values outside the range are clipped
      to the colormap ends). The title gives the frame's mean |error| over valid pixels.

    Args:
        path: output file; parent folders are created. Without a suffix, PNG.
        image: float ``[3,H,W]`` CPU tensor, ImageNet-normalised (or in [0, 1]
            with ``image_normalized=False``).
        seg_gt: integer ``[H,W]`` in [0, C) or ``ignore_index``.
        seg_pred: integer ``[H,W]`` labels, or float ``[C,H,W]`` logits (argmax).
        depth_gt: float ``[1,H,W]`` (or ``[H,W]``), metres, 0 = invalid.
        depth_pred: float ``[1,H,W]`` (or ``[H,W]``), metres.
        num_classes: C.
        ignore_index: ignore value of ``seg_gt`` (default -1).
        title: optional figure title.
        class_names: optional C names for the legend.
        image_normalized: whether ``image`` is ImageNet-normalised.
        dpi: resolution (the figure is 15 x 8.5 inches).

    Returns:
        The written path.

    Raises:
        ValueError: on wrong shapes, mismatched sizes or out-of-range labels.
    """

    image = image.detach().cpu()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3,H,W], got {tuple(image.shape)}")
    H, W = int(image.shape[1]), int(image.shape[2])
    seg_gt = seg_gt.detach().cpu()
    seg_pred = seg_pred.detach().cpu()
    if seg_pred.dim() == 3 and seg_pred.is_floating_point():
        if seg_pred.shape[0] != num_classes:
            raise ValueError(f"seg_pred logits have {seg_pred.shape[0]} channels, expected {num_classes}")
        seg_pred = seg_pred.argmax(0)

    def _depth2d(d: torch.Tensor, name: str) -> np.ndarray:
        d = d.detach().cpu()
        if d.dim() == 3 and d.shape[0] == 1:
            d = d[0]
        if d.dim() != 2:
            raise ValueError(f"{name} must be [1,H,W] or [H,W], got {tuple(d.shape)}")
        return d.float().numpy()

    dgt = _depth2d(depth_gt, "depth_gt")
    dpr = _depth2d(depth_pred, "depth_pred")
    for name, shp in (("seg_gt", tuple(seg_gt.shape)), ("seg_pred", tuple(seg_pred.shape)),
                      ("depth_gt", dgt.shape), ("depth_pred", dpr.shape)):
        if tuple(shp) != (H, W):
            raise ValueError(f"{name} has spatial shape {shp}, expected ({H}, {W}) like image")

    rgb = denormalize(image) if image_normalized else image.float().clamp(0, 1)
    rgb = rgb.permute(1, 2, 0).numpy()
    col_gt = colorize_segmentation(seg_gt, num_classes, ignore_index)
    col_pr = colorize_segmentation(seg_pred, num_classes, ignore_index)

    g = seg_gt.numpy().astype(np.int64)
    p = seg_pred.numpy().astype(np.int64)
    valid_seg = g != ignore_index
    correct = valid_seg & (g == p)
    err = np.zeros((H, W, 3), dtype=np.uint8)
    err[correct] = (40, 170, 60)
    err[valid_seg & ~correct] = (220, 30, 30)
    n_valid = int(valid_seg.sum())
    acc_txt = f"{100.0 * correct.sum() / n_valid:.1f}%" if n_valid else "n/a"

    valid_d = dgt > 0
    if valid_d.any():
        vmin, vmax = float(dgt[valid_d].min()), float(dgt[valid_d].max())
    elif np.isfinite(dpr).any():
        vmin, vmax = float(np.nanmin(dpr[np.isfinite(dpr)])), float(np.nanmax(dpr[np.isfinite(dpr)]))
    else:
        vmin, vmax = 0.0, 1.0
    if not vmax > vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    abs_txt = f"{np.abs(dpr[valid_d] - dgt[valid_d]).mean():.3f} m" if valid_d.any() else "n/a"

    cmap = colormaps["viridis"].with_extremes(bad="black")

    fig = Figure(figsize=(15, 8.5), dpi=dpi, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(rgb, interpolation="nearest")
    axes[0, 0].set_title("input RGB")
    axes[0, 1].imshow(col_gt, interpolation="nearest")
    axes[0, 1].set_title("GT segmentation")
    axes[0, 2].imshow(col_pr, interpolation="nearest")
    axes[0, 2].set_title("predicted segmentation")
    axes[1, 0].imshow(err, interpolation="nearest")
    axes[1, 0].set_title(f"seg errors (green ok, red wrong), acc {acc_txt}")

    if class_names is None and num_classes == len(NYU13_CLASS_NAMES):
        class_names = NYU13_CLASS_NAMES
    pal = segmentation_palette(num_classes) / 255.0
    present = np.unique(np.concatenate([g[valid_seg], p[(p >= 0) & (p < num_classes)]]))
    present = [int(c) for c in present if 0 <= c < num_classes][:40]
    handles = [Patch(facecolor=pal[c], edgecolor="none",
                     label=(class_names[c] if class_names is not None and c < len(class_names)
                            else f"class {c}")) for c in present]
    if handles:
        axes[0, 2].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                          fontsize=7, frameon=False, ncol=1 if len(handles) <= 20 else 2)

    im_gt = axes[1, 1].imshow(np.ma.masked_where(~valid_d, dgt), cmap=cmap, vmin=vmin, vmax=vmax,
                              interpolation="nearest")
    axes[1, 1].set_title("GT depth (invalid black)")
    im_pr = axes[1, 2].imshow(dpr, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axes[1, 2].set_title(f"predicted depth, abs err {abs_txt}")
    for ax, im in ((axes[1, 1], im_gt), (axes[1, 2], im_pr)):
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label("depth (m)")
    if title:
        fig.suptitle(title)

    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(buf).save(path, format=None if path.suffix else "PNG")
    return path


def save_single_task_figure(path: Union[str, "os.PathLike[str]"], image: torch.Tensor, gt: torch.Tensor,
                            pred: torch.Tensor, task: str, num_classes: int, *, ignore_index: int = -1,
                            title: str = "", depth_unit: str = "m", image_normalized: bool = True) -> Path:
    """Save a 1x3 figure (input, ground truth, prediction) of one task of ONE frame as a PNG.

    Args:
        path: output file; parent folders are created.
        image: float ``[3,H,W]`` CPU tensor (ImageNet-normalised unless ``image_normalized=False``).
        gt: ``task == "semseg"``: integer ``[H,W]`` labels (``ignore_index`` = void, drawn black);
            ``"depth"``: float ``[1,H,W]`` or ``[H,W]`` (0 = invalid, drawn white).
        pred: integer ``[H,W]`` labels, or float depth ``[1,H,W]`` / ``[H,W]`` in ``depth_unit``.
        task: ``"semseg"`` or ``"depth"``.
        num_classes: C (palette of the segmentation panels).
        ignore_index, title, depth_unit, image_normalized: as named.

    Returns:
        The written path.

    Raises:
        ValueError: ``task`` is neither ``"semseg"`` nor ``"depth"``.
    """

    if task not in ("semseg", "depth"):
        raise ValueError(f"save_single_task_figure: task must be 'semseg' or 'depth', got {task!r}")
    img = image.detach().cpu()
    rgb = (denormalize(img) if image_normalized else img.clamp(0, 1)).permute(1, 2, 0).numpy()
    fig = Figure(figsize=(13, 4), dpi=100, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(rgb)
    axes[0].set_title("input RGB")
    if task == "semseg":
        axes[1].imshow(colorize_segmentation(gt, num_classes, ignore_index))
        axes[1].set_title("GT segmentation (void black)")
        axes[2].imshow(colorize_segmentation(pred, num_classes, ignore_index))
        axes[2].set_title("predicted segmentation")
    else:
        g = gt.detach().cpu().float().reshape(gt.shape[-2:]).numpy()
        p = pred.detach().cpu().float().reshape(pred.shape[-2:]).numpy()
        valid = g > 0
        vmin, vmax = (float(g[valid].min()), float(g[valid].max())) if valid.any() else (float(p.min()), float(p.max()))
        if not vmax > vmin:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        im = axes[1].imshow(np.ma.masked_where(~valid, g), vmin=vmin, vmax=vmax, cmap="viridis")
        axes[1].set_title("GT depth (invalid white)")
        axes[2].imshow(p, vmin=vmin, vmax=vmax, cmap="viridis")
        axes[2].set_title("predicted depth")
        fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.03).set_label(depth_unit)
    fig.suptitle(title)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(buf).save(path)
    return path


@torch.no_grad()
def save_prediction_figures(predict: Callable[[torch.Tensor], Dict[str, torch.Tensor]], data, indices: Iterable[int],
                            out_dir: Union[str, "os.PathLike[str]"], *, num_classes: int,
                            class_names: Optional[Sequence[str]] = None, depth_unit: str = "m", title: str = "",
                            image_normalized: bool = True, ignore_index: int = -1) -> List[Path]:
    """PNG figures of a model's semantic-segmentation and depth predictions on ``data[i]`` for ``i`` in ``indices``,
    written as ``out_dir/{k:02d}_{name}.png``: :func:`save_prediction_figure` when the predictions hold both
    ``semseg`` and ``depth``, :func:`save_single_task_figure` when they hold one of them, nothing otherwise.

    Args:
        predict: ``predict(image [1,3,H,W] on the model's device) -> {task: [1,C_t,H,W]}``.
        data: a dataset of samples with ``image``, ``seg`` / ``depth`` targets and ``name``.
        indices: the samples to draw.
        out_dir: output folder.
        num_classes, class_names, depth_unit, title, image_normalized, ignore_index: as in
            :func:`save_prediction_figure`.

    Returns:
        The written paths, in order.
    """
    paths: List[Path] = []
    for k, i in enumerate(indices):
        sample = data[i]
        preds = predict(sample["image"].unsqueeze(0))
        name = sample.get("name", i)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
        path = Path(out_dir) / f"{k:02d}_{safe}.png"
        caption = f"{title}, sample {name}" if title else f"sample {name}"
        seg = preds["semseg"][0].argmax(0).cpu() if "semseg" in preds else None
        depth = preds["depth"][0].float().cpu() if "depth" in preds else None
        if seg is not None and depth is not None:
            paths.append(save_prediction_figure(
                path, sample["image"], sample["seg"], seg, sample["depth"], depth, num_classes,
                ignore_index=ignore_index, title=f"{caption} (depth in {depth_unit})", class_names=class_names,
                image_normalized=image_normalized))
        elif seg is not None or depth is not None:
            task, gt, pred = ("semseg", sample["seg"], seg) if seg is not None else ("depth", sample["depth"], depth)
            paths.append(save_single_task_figure(path, sample["image"], gt, pred, task, num_classes,
                                                 ignore_index=ignore_index, title=caption, depth_unit=depth_unit,
                                                 image_normalized=image_normalized))
    return paths
