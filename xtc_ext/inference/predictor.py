"""Predictions of a trained model on the user's images, written as pictures and raw values.

:func:`predict_files` reads the images, fits them to the model (:mod:`xtc_ext.inference.images`), runs the
recipe's inference predictions in batches (images of one network size together) under the run's autocast and
memory format, maps every prediction back to its input's size and writes the files of
:mod:`xtc_ext.inference.render`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from xtc_ext.engine.runtime import autocast, progress_bar
from xtc_ext.inference.images import Geometry, prepare, read_image, restore
from xtc_ext.inference.loading import InferenceModel, TrainedModel
from xtc_ext.inference.render import task_picture, write_sheet, write_task_files

__all__ = ["PredictOptions", "output_stems", "predict_files"]

log = logging.getLogger("xtc_ext.inference")


@dataclass
class PredictOptions:
    """How :func:`predict_files` runs.

    Attributes:
        device: where the model runs. ``amp``: autocast dtype (None: float32). ``channels_last``: NHWC images
            and model. ``batch_size``: images per forward pass (>= 1). ``size``: the network ``(H, W)``
            (multiples of 32), or None for the trained model's :attr:`TrainedModel.input_size`. ``sheet``: also
            write ``<stem>_sheet.png``. ``progress``: a tqdm bar when stderr is a terminal.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: Optional[torch.dtype] = None
    channels_last: bool = False
    batch_size: int = 4
    size: Optional[Tuple[int, int]] = None
    sheet: bool = True
    progress: bool = True


def output_stems(paths: Sequence[Path]) -> List[str]:
    """The output file prefix of each input: its name without suffix, made unique with ``-2``, ``-3``... when two
    inputs share a name (e.g. ``a/0001.png`` and ``b/0001.png``)."""
    seen: Dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _forward(net: InferenceModel, images: List[Tensor], options: PredictOptions) -> List[Tuple[Tensor, ...]]:
    fmt = torch.channels_last if options.channels_last else torch.contiguous_format
    batch = torch.stack(images).to(options.device, memory_format=fmt)
    with torch.no_grad(), autocast(options.device, options.amp):
        outputs = net(batch)
    return [tuple(o[i].float().cpu() for o in outputs) for i in range(len(images))]


def _write_image(trained: TrainedModel, path: Path, stem: str, image: Tensor, geometry: Geometry,
                 outputs: Tuple[Tensor, ...], out_dir: Path, sheet: bool) -> List[Path]:
    pictures = [task_picture(t, restore(o, geometry), class_names=trained.class_names(t),
                             depth_unit=trained.recipe.depth_unit) for t, o in zip(trained.tasks, outputs)]
    written: List[Path] = []
    for picture in pictures:
        written += write_task_files(picture, out_dir, stem)
    if sheet:
        title = f"{path.name} | {trained.recipe.name} | {trained.checkpoint.name}, epoch {trained.epoch}"
        written.append(write_sheet(out_dir / f"{stem}_sheet.png", image, pictures, title))
    return written


def predict_files(trained: TrainedModel, paths: Sequence[Path], out_dir: Path,
                  options: PredictOptions) -> Dict[Path, List[Path]]:
    """Predict every image of ``paths`` and write its files to ``out_dir`` (created).

    Args:
        trained: the model (:func:`~xtc_ext.inference.loading.load_trained_model`); moved to ``options.device``.
        paths: image files (checked beforehand by :func:`~xtc_ext.inference.images.check_images`).
        out_dir: output folder.
        options: see :class:`PredictOptions`.

    Returns:
        input path -> the files written for it, in input order.

    Raises:
        UsageError: an image that cannot be decoded (named). ``OSError``: an output that cannot be written
            (named; files are written atomically, none is left half-written).
    """
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")
    size = options.size if options.size is not None else trained.input_size
    fmt = torch.channels_last if options.channels_last else torch.contiguous_format
    trained.model.to(options.device, memory_format=fmt)
    net = InferenceModel(trained).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = output_stems(paths)
    written: Dict[Path, List[Path]] = {}
    for start in progress_bar(range(0, len(paths), options.batch_size), options.progress, desc="predict",
                              unit="batch"):
        chunk = range(start, min(start + options.batch_size, len(paths)))
        raw = {i: read_image(paths[i]) for i in chunk}
        fitted = {i: prepare(raw[i], size, trained.normalize) for i in chunk}
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i in chunk:
            groups.setdefault(fitted[i][1].network, []).append(i)
        for members in groups.values():
            outputs = _forward(net, [fitted[i][0] for i in members], options)
            for i, out in zip(members, outputs):
                written[paths[i]] = _write_image(trained, paths[i], stems[i], raw[i], fitted[i][1], out, out_dir,
                                                 options.sheet)
    log.info("predicted %d image(s) with %s; outputs in %s", len(paths), trained.recipe.name, out_dir)
    return {p: written[p] for p in paths}
