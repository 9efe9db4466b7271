"""Pictures and files of one image's predictions: per task a viewable PNG and the raw values, and a sheet.

Per task (``<stem>`` is the input file's name without suffix):

===============  =======================================================================================
task             files
===============  =======================================================================================
``semseg``,      ``<stem>_<task>.png``: the labels in the segmentation palette
``human_parts``  (:func:`xtc_ext.visualize.segmentation_palette`) with a legend of the classes present (name
                 and colour, by area); ``<stem>_<task>_labels.png``: the raw class indices (8-bit grey, 16-bit
                 beyond 256 classes), pixel-aligned with the input
``depth``        ``<stem>_depth.png``: viridis from the image's minimum to its maximum with a colour bar in
                 the dataset's depth unit; ``<stem>_depth.npy``: float32 ``[H, W]`` in that unit; metric depth
                 also ``<stem>_depth_mm.png``: 16-bit millimetres (NYUv2's depth PNG convention, clipped to
                 0..65535)
``normals``      ``<stem>_normals.png``: unit normals as RGB ``(n + 1) / 2``
``sal``          ``<stem>_sal.png``: the saliency probability ``sigmoid(logit)`` as 8-bit grey
===============  =======================================================================================

and ``<stem>_sheet.png`` (with ``--sheet``): the input and every task's picture side by side, titled.
Every file is written atomically (:func:`xtc_ext.engine.checkpoint.atomic_write`): complete or absent.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from xtc_ext.engine.checkpoint import atomic_write
from xtc_ext.tasks import get_task
from xtc_ext.visualize import segmentation_palette

__all__ = ["TaskPicture", "task_picture", "write_task_files", "write_sheet"]


def _figure_kind(task: str) -> str:
    """How the task's prediction is drawn, its :attr:`xtc_ext.tasks.TaskSpec.figure`: class labels (``labels``),
    a scalar map with a colour bar (``scalar``), unit vectors as RGB (``normals``), a probability in grey
    (``probability``). Raises ValueError for an unknown task (named)."""
    return get_task(task).figure

_FONT_SIZE = 13
_PAD = 6


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


class TaskPicture:
    """One task's prediction at the input's size, ready to draw.

    Attributes:
        task: the task name; ``kind``: its figure kind (:attr:`xtc_ext.tasks.TaskSpec.figure`).
        values: ``labels``: int64 ``[H, W]`` class indices; ``scalar``: float32 ``[H, W]``; ``normals``: float32
            ``[3, H, W]`` unit vectors; ``probability``: float32 ``[H, W]`` in [0, 1].
        num_classes, class_names: of a ``labels`` task; ``unit``: of a ``scalar`` task.
    """

    def __init__(self, task: str, values: Tensor, *, num_classes: int = 0,
                 class_names: Optional[Sequence[str]] = None, unit: str = "") -> None:
        self.task, self.kind, self.values = task, _figure_kind(task), values
        self.num_classes, self.class_names, self.unit = num_classes, class_names, unit

    def colours(self, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """The picture without legend or colour bar, uint8 ``[H, W, 3]``, at ``size`` ``(H, W)`` if given
        (nearest for labels, bilinear for the others)."""
        v = self.values
        if size is not None and tuple(v.shape[-2:]) != tuple(size):
            if self.kind == "labels":
                v = torch.nn.functional.interpolate(v[None, None].float(), size=size, mode="nearest")[0, 0].long()
            else:
                planes = v[None] if v.dim() == 3 else v[None, None]
                v = torch.nn.functional.interpolate(planes, size=size, mode="bilinear", align_corners=False)[0]
                v = v if self.kind == "normals" else v[0]
        a = v.numpy()
        if self.kind == "labels":
            return segmentation_palette(max(self.num_classes, 1))[a]
        if self.kind == "normals":
            return np.round((np.clip(a, -1.0, 1.0).transpose(1, 2, 0) + 1.0) * 127.5).astype(np.uint8)
        if self.kind == "probability":
            grey = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        lo, hi = self.value_range()
        return np.round(colormaps["viridis"]((a - lo) / (hi - lo))[..., :3] * 255.0).astype(np.uint8)

    def value_range(self) -> Tuple[float, float]:
        """``(min, max)`` of a scalar map (widened by 0.5 each way when flat)."""
        lo, hi = float(self.values.min()), float(self.values.max())
        return (lo - 0.5, hi + 0.5) if not hi > lo else (lo, hi)

    def decorated(self, size: Optional[Tuple[int, int]] = None) -> Image.Image:
        """:meth:`colours` with, on the right, the legend of the classes present (labels) or a colour bar with
        five ticks in :attr:`unit` (scalar); the others unchanged."""
        body = Image.fromarray(self.colours(size))
        if self.kind == "labels":
            return _with_legend(body, self._legend_entries())
        if self.kind == "scalar":
            return _with_colour_bar(body, *self.value_range(), self.unit)
        return body

    def _legend_entries(self) -> List[Tuple[str, Tuple[int, int, int]]]:
        counts = torch.bincount(self.values.flatten(), minlength=self.num_classes)
        present = [int(c) for c in torch.argsort(counts, descending=True, stable=True) if counts[c] > 0]
        palette = segmentation_palette(max(self.num_classes, 1))
        names = self.class_names
        return [((names[c] if names is not None and c < len(names) else f"class {c}"), tuple(int(x) for x in palette[c]))
                for c in present]


def _canvas(body: Image.Image, extra_width: int, extra_height: int = 0) -> Image.Image:
    canvas = Image.new("RGB", (body.width + extra_width, max(body.height, extra_height)), "white")
    canvas.paste(body, (0, 0))
    return canvas


def _with_legend(body: Image.Image, entries: Sequence[Tuple[str, Tuple[int, int, int]]]) -> Image.Image:
    font = _font()
    line = _FONT_SIZE + 5
    width = 2 * _PAD + line + max((int(ImageDraw.Draw(body).textlength(n, font=font)) for n, _ in entries), default=0)
    canvas = _canvas(body, width, 2 * _PAD + line * len(entries))
    draw = ImageDraw.Draw(canvas)
    for k, (name, colour) in enumerate(entries):
        x, y = body.width + _PAD, _PAD + k * line
        draw.rectangle((x, y, x + line - 5, y + line - 5), fill=colour)
        draw.text((x + line, y), name, fill="black", font=font)
    return canvas


def _with_colour_bar(body: Image.Image, lo: float, hi: float, unit: str) -> Image.Image:
    font = _font()
    height = max(body.height, 100)
    bar_w, bar_h = 14, height - 2 * _PAD - _FONT_SIZE - 4
    ticks = np.linspace(lo, hi, 5)
    labels = [f"{t:.2f}" for t in ticks]
    text_w = max(int(ImageDraw.Draw(body).textlength(s, font=font)) for s in labels + [unit])
    canvas = _canvas(body, 3 * _PAD + bar_w + text_w, height)
    x0, y0 = body.width + _PAD, _PAD + _FONT_SIZE + 4
    ramp = colormaps["viridis"](np.linspace(1.0, 0.0, bar_h))[:, :3]
    strip = np.repeat(np.round(ramp * 255.0).astype(np.uint8)[:, None, :], bar_w, axis=1)
    canvas.paste(Image.fromarray(strip), (x0, y0))
    draw = ImageDraw.Draw(canvas)
    draw.text((x0, _PAD - 2), unit, fill="black", font=font)
    for t, s in zip(ticks, labels):
        y = y0 + int(round((hi - t) / (hi - lo) * (bar_h - 1)))
        draw.line((x0 + bar_w, y, x0 + bar_w + 3, y), fill="black")
        draw.text((x0 + bar_w + _PAD, min(max(y - _FONT_SIZE // 2, y0 - 4), y0 + bar_h - _FONT_SIZE)), s,
                  fill="black", font=font)
    return canvas


def task_picture(task: str, prediction: Tensor, *, class_names: Optional[Sequence[str]] = None,
                 depth_unit: Optional[str] = None) -> TaskPicture:
    """The :class:`TaskPicture` of one task's prediction at the input's size.

    Args:
        task: a registered task (:mod:`xtc_ext.tasks`).
        prediction: float ``[C_t, H, W]``: logits (semseg, human_parts: argmax; sal: sigmoid), depth ``[1, H, W]``
            in ``depth_unit``, normals ``[3, H, W]`` (normalised here; zero vectors stay zero).

    Raises:
        ValueError: an unknown task (named), or a channel count that does not fit it.
    """
    kind, channels = _figure_kind(task), int(prediction.shape[0])
    expected = {"scalar": 1, "probability": 1, "normals": 3}.get(kind)
    if prediction.dim() != 3 or (expected is not None and channels != expected):
        raise ValueError(f"prediction of {task!r} must be [{expected or 'C'}, H, W], got {tuple(prediction.shape)}")
    p = prediction.float()
    if kind == "labels":
        return TaskPicture(task, p.argmax(0), num_classes=channels, class_names=class_names)
    if kind == "normals":
        return TaskPicture(task, torch.nn.functional.normalize(p, dim=0))
    if kind == "probability":
        return TaskPicture(task, torch.sigmoid(p[0]))
    return TaskPicture(task, p[0], unit=depth_unit or "")


def _save_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _save_npy(path: Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array)
        tmp.write_bytes(buffer.getvalue())

    return atomic_write(path, write)


def write_task_files(picture: TaskPicture, out_dir: Path, stem: str) -> List[Path]:
    """Write one task's files (module docstring) and return their paths.

    Raises:
        OSError: a file cannot be written (named; no partial file is left).
    """
    base = Path(out_dir) / f"{stem}_{picture.task}"
    paths = [_save_png(base.with_name(base.name + ".png"), picture.decorated())]
    if picture.kind == "labels":
        labels = picture.values.numpy()
        raw = labels.astype(np.uint8) if picture.num_classes <= 256 else labels.astype(np.uint16)
        paths.append(_save_png(base.with_name(base.name + "_labels.png"), Image.fromarray(raw)))
    elif picture.kind == "scalar":
        values = picture.values.numpy().astype(np.float32)
        paths.append(_save_npy(base.with_name(base.name + ".npy"), values))
        if picture.unit == "m":
            mm = np.clip(np.round(values * 1000.0), 0, 65535).astype(np.uint16)
            paths.append(_save_png(base.with_name(base.name + "_mm.png"), Image.fromarray(mm)))
    return paths


def write_sheet(path: Path, image: Tensor, pictures: Sequence[TaskPicture], title: str,
                height_limits: Tuple[int, int] = (240, 480)) -> Path:
    """The input and every task's picture side by side, each titled, at one height (the input's, clamped to
    ``height_limits``), as a PNG at ``path``.

    Args:
        image: float ``[3, H, W]`` RGB in [0, 1] (the input, not normalised).
        pictures: the tasks' pictures at the input's size.
        title: the sheet's caption (e.g. the input file and the model).
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    sh = min(max(h, height_limits[0]), height_limits[1])
    size = (sh, max(1, round(w * sh / h)))
    rgb = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                                          antialias=True)[0].clamp(0, 1)
    panels: List[Tuple[str, Image.Image]] = [("input", Image.fromarray(
        np.round(rgb.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)))]
    panels += [(p.task, p.decorated(size)) for p in pictures]
    font = _font()
    head = _FONT_SIZE + 2 * _PAD
    width = sum(p.width for _, p in panels) + _PAD * (len(panels) + 1)
    height = head + _FONT_SIZE + _PAD + max(p.height for _, p in panels) + _PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, _PAD), title, fill="black", font=font)
    x = _PAD
    for name, panel in panels:
        draw.text((x, head), name, fill="black", font=font)
        sheet.paste(panel, (x, head + _FONT_SIZE + _PAD))
        x += panel.width + _PAD
    return _save_png(Path(path), sheet)

