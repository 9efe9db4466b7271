"""Qualitative figures: the input and, per task the model predicts, the ground truth next to the prediction.

Each task is drawn by the panel of its figure kind (:attr:`xtc_ext.tasks.TaskSpec.figure`, :data:`PANELS`):
class maps in the segmentation palette with a legend (void black, listed), scalar maps in viridis with a colour
bar in the task's unit, unit vectors as RGB, probability maps in grey.

Uses matplotlib's object-oriented API with the Agg canvas (no pyplot, no global
state, no display needed), so it is safe inside training loops and on headless
machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from .data import IMAGENET_MEAN, IMAGENET_STD
from .tasks import TaskSpec, get_task

__all__ = ["denormalize", "segmentation_palette", "colorize_segmentation", "Panels", "PANELS", "save_prediction_figure",
           "save_prediction_figures"]

_VOID_RGB = (0, 0, 0)
_VOID_PROBABILITY_RGB = (220, 30, 30)


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


class Panels(NamedTuple):
    """The two images of one task's row and what goes with them.

    ``gt``, ``pred``: uint8 ``[H, W, 3]`` RGB, or float ``[H, W]`` (masked where void) drawn with ``cmap``
    between ``vmin`` and ``vmax``; ``caption``: the prediction panel's title; ``legend``: (colour, label)
    entries beside the prediction (void included); ``colorbar``: the colour bar's label, or None.
    """

    gt: np.ndarray
    pred: np.ndarray
    caption: str
    legend: List[Tuple[Tuple[float, float, float], str]]
    colorbar: Optional[str]
    cmap: Optional[str] = None
    vmin: float = 0.0
    vmax: float = 1.0


def _plane(t: torch.Tensor, name: str, channels: int = 1) -> np.ndarray:
    """A ``[channels, H, W]`` (or ``[H, W]`` when 1) tensor as float32 numpy ``[channels, H, W]``."""
    t = t.detach().cpu().float()
    if t.dim() == 2 and channels == 1:
        t = t[None]
    if t.dim() != 3 or t.shape[0] != channels:
        raise ValueError(f"{name} must be [{channels},H,W]" + (" or [H,W]" if channels == 1 else "")
                         + f", got {tuple(t.shape)}")
    return t.numpy()


def _label_panels(spec: TaskSpec, gt: torch.Tensor, pred: torch.Tensor, valid: Optional[np.ndarray],
                  class_names: Optional[Sequence[str]], unit: Optional[str]) -> Panels:
    if pred.dim() != 3 or not pred.is_floating_point():
        raise ValueError(f"{spec.name} prediction must be float [C,H,W] logits, got {pred.dtype} {tuple(pred.shape)}")
    num_classes = int(pred.shape[0])
    labels = pred.detach().cpu().argmax(0)
    void = int(spec.void)
    g = gt.detach().cpu()
    col_gt = colorize_segmentation(g, num_classes, void)
    col_pr = colorize_segmentation(labels, num_classes, void)
    g, p = g.numpy().astype(np.int64), labels.numpy()
    ok = g != void
    acc = f"{100.0 * (g == p)[ok].mean():.1f}%" if ok.any() else "n/a"
    pal = segmentation_palette(num_classes) / 255.0
    present = [int(c) for c in np.unique(np.concatenate([g[ok], p.ravel()])) if 0 <= c < num_classes][:40]
    names = class_names if spec.channels is None else None
    legend = [(tuple(pal[c]), names[c] if names is not None and c < len(names) else f"class {c}") for c in present]
    legend.append((tuple(v / 255.0 for v in _VOID_RGB), f"void ({void})"))
    return Panels(col_gt, col_pr, f"predicted {spec.title}, pixel acc {acc}", legend, None)


def _scalar_panels(spec: TaskSpec, gt: torch.Tensor, pred: torch.Tensor, valid: Optional[np.ndarray],
                   class_names: Optional[Sequence[str]], unit: Optional[str]) -> Panels:
    g, p = _plane(gt, f"{spec.name} target")[0], _plane(pred, f"{spec.name} prediction")[0]
    ok = np.isfinite(g) & (g > spec.void) if valid is None else valid
    finite = p[np.isfinite(p)]
    vmin, vmax = ((float(g[ok].min()), float(g[ok].max())) if ok.any() else
                  (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
    if not vmax > vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    err = f"{np.abs(p[ok] - g[ok]).mean():.3f} {unit or ''}".rstrip() if ok.any() else "n/a"
    return Panels(np.ma.masked_where(~ok, g), p, f"predicted {spec.title}, abs err {err}", [],
                  f"{spec.title} ({unit})" if unit else spec.title, "viridis", vmin, vmax)


def _normals_panels(spec: TaskSpec, gt: torch.Tensor, pred: torch.Tensor, valid: Optional[np.ndarray],
                    class_names: Optional[Sequence[str]], unit: Optional[str]) -> Panels:
    g, p = _plane(gt, f"{spec.name} target", 3), _plane(pred, f"{spec.name} prediction", 3)
    ok = (np.abs(g) > 0).any(0) & np.isfinite(g).all(0) if valid is None else valid
    p = p / np.maximum(np.linalg.norm(p, axis=0, keepdims=True), 1e-12)
    angle = np.degrees(np.arccos(np.clip((p * g).sum(0), -1.0, 1.0)))
    err = f"{angle[ok].mean():.1f} deg" if ok.any() else "n/a"

    def rgb(n: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.round((np.clip(n, -1, 1).transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        out[~mask] = _VOID_RGB
        return out

    legend = [(tuple(v / 255.0 for v in _VOID_RGB), "void (zero vector)")]
    return Panels(rgb(g, ok), rgb(p, np.ones_like(ok)), f"predicted {spec.title}, mean angle {err}", legend, None)


def _probability_panels(spec: TaskSpec, gt: torch.Tensor, pred: torch.Tensor, valid: Optional[np.ndarray],
                        class_names: Optional[Sequence[str]], unit: Optional[str]) -> Panels:
    g = _plane(gt, f"{spec.name} target")[0]
    p = torch.sigmoid(torch.as_tensor(_plane(pred, f"{spec.name} prediction")[0])).numpy()
    ok = (g >= 0) & (g <= 1) & (g != spec.void) if valid is None else valid

    def rgb(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.repeat(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        out[~mask] = _VOID_PROBABILITY_RGB
        return out

    legend = [(tuple(v / 255.0 for v in _VOID_PROBABILITY_RGB), f"void ({spec.void:g} or outside [0, 1])")]
    return Panels(rgb(g, ok), rgb(p, np.ones_like(ok)), f"predicted {spec.title} (sigmoid)", legend, None)


PANELS: Dict[str, Callable[..., Panels]] = {
    "labels": _label_panels,
    "scalar": _scalar_panels,
    "normals": _normals_panels,
    "probability": _probability_panels,
}
"""Figure kind (:data:`xtc_ext.tasks.FIGURE_KINDS`) -> ``panels(spec, gt, pred, valid, class_names, unit)``."""


def save_prediction_figure(path: Union[str, "os.PathLike[str]"], image: torch.Tensor,
                           targets: Mapping[str, torch.Tensor], predictions: Mapping[str, torch.Tensor], *,
                           valid: Optional[Mapping[str, torch.Tensor]] = None,
                           class_names: Optional[Sequence[str]] = None, units: Optional[Mapping[str, str]] = None,
                           title: Optional[str] = None, image_normalized: bool = True, dpi: int = 100) -> Path:
    """Save a qualitative figure of ONE frame as an RGB PNG: the input, then one row per task of ``predictions``
    (in that order): ground truth | prediction, drawn by the task's figure kind (:data:`PANELS`).

    Args:
        path: output file; parent folders are created. Without a suffix, PNG.
        image: float ``[3,H,W]`` CPU tensor, ImageNet-normalised (or in [0, 1] with ``image_normalized=False``).
        targets: task -> its target as in a sample (``[H,W]`` int labels with the task's void value,
            ``[1,H,W]`` depth / saliency, ``[3,H,W]`` normals).
        predictions: registered task name -> ``[C_t,H,W]`` prediction (logits for label and probability
            tasks); every task needs a target.
        valid: optional task -> bool ``[1,H,W]`` validity mask of the target (the readers' ``*_valid``).
        class_names: names of the dataset's classes (legend of the tasks with the dataset's class count).
        units: task -> unit of its values (default the task's :attr:`~xtc_ext.tasks.TaskSpec.unit`).
        title: optional figure title.
        image_normalized: whether ``image`` is ImageNet-normalised.
        dpi: resolution (each row is 4 inches high).

    Returns:
        The written path.

    Raises:
        ValueError: wrong shapes, mismatched sizes, labels out of range, no prediction, a task without a
            target or an unregistered task (named).
    """
    image = image.detach().cpu()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3,H,W], got {tuple(image.shape)}")
    if not predictions:
        raise ValueError("save_prediction_figure: predictions is empty")
    size = tuple(image.shape[1:])
    rows = []
    for task, pred in predictions.items():
        spec = get_task(task)
        if task not in targets:
            raise ValueError(f"save_prediction_figure: no target for task {task!r}")
        for what, t in (("target", targets[task]), ("prediction", pred)):
            if tuple(t.shape[-2:]) != size:
                raise ValueError(f"{task} {what} has spatial shape {tuple(t.shape[-2:])}, expected {size} like image")
        mask = None if valid is None or task not in valid else valid[task].detach().cpu().reshape(size).numpy()
        unit = (units or {}).get(task, spec.unit)
        rows.append(PANELS[spec.figure](spec, targets[task], pred, mask, class_names, unit))
    rgb = (denormalize(image) if image_normalized else image.float().clamp(0, 1)).permute(1, 2, 0).numpy()
    fig = Figure(figsize=(15, 1 + 4 * len(rows)), dpi=dpi, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(rgb, interpolation="nearest")
    axes[0, 0].set_title("input RGB")
    for (task, row), ax in zip(zip(predictions, rows), axes):
        cmap = colormaps[row.cmap].with_extremes(bad="black") if row.cmap else None
        im = ax[1].imshow(row.gt, cmap=cmap, vmin=row.vmin, vmax=row.vmax, interpolation="nearest")
        ax[1].set_title(f"GT {get_task(task).title}")
        ax[2].imshow(row.pred, cmap=cmap, vmin=row.vmin, vmax=row.vmax, interpolation="nearest")
        ax[2].set_title(row.caption)
        if row.colorbar:
            fig.colorbar(im, ax=ax[1:].tolist(), fraction=0.046, pad=0.02).set_label(row.colorbar)
        if row.legend:
            handles = [Patch(facecolor=c, edgecolor="grey", label=label) for c, label in row.legend]
            ax[2].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
                         ncol=1 if len(handles) <= 20 else 2)
    if title:
        fig.suptitle(title)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(buf).save(path, format=None if path.suffix else "PNG")
    return path


@torch.no_grad()
def save_prediction_figures(predict: Callable[[torch.Tensor], Dict[str, torch.Tensor]], data, indices: Iterable[int],
                            out_dir: Union[str, "os.PathLike[str]"], *, class_names: Optional[Sequence[str]] = None,
                            depth_unit: Optional[str] = None, title: str = "",
                            image_normalized: bool = True) -> List[Path]:
    """PNG figures (:func:`save_prediction_figure`) of every task a model predicts on ``data[i]`` for ``i`` in
    ``indices``, written as ``out_dir/{k:02d}_{name}.png``.

    Args:
        predict: ``predict(image [1,3,H,W] on the model's device) -> {task: [1,C_t,H,W]}``.
        data: a dataset of samples with ``image``, ``name`` and the target of each predicted task under its
            :attr:`~xtc_ext.tasks.TaskSpec.sample_key` (with its ``*_valid`` mask where the readers give one).
        indices: the samples to draw.
        out_dir: output folder.
        class_names, title, image_normalized: as in :func:`save_prediction_figure`.
        depth_unit: the dataset's depth unit (default the depth task's).

    Returns:
        The written paths, in order.

    Raises:
        KeyError: a sample without the target of a predicted task (the sample key named).
    """
    paths: List[Path] = []
    units = {"depth": depth_unit} if depth_unit else None
    for k, i in enumerate(indices):
        sample = data[i]
        preds = {t: p[0].float().cpu() for t, p in predict(sample["image"].unsqueeze(0)).items()}
        keys = {t: get_task(t).sample_key for t in preds}
        missing = [key for key in keys.values() if key not in sample]
        if missing:
            raise KeyError(f"save_prediction_figures: sample {i} has no {missing[0]!r} target")
        name = sample.get("name", i)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
        paths.append(save_prediction_figure(
            Path(out_dir) / f"{k:02d}_{safe}.png", sample["image"], {t: sample[key] for t, key in keys.items()},
            preds, valid={t: sample[f"{key}_valid"] for t, key in keys.items() if f"{key}_valid" in sample},
            class_names=class_names, units=units, title=f"{title}, sample {name}" if title else f"sample {name}",
            image_normalized=image_normalized))
    return paths
