"""The base class of the datasets: the options every reader shares and the check of its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from .registry import IGNORE_INDEX, PathLike
from .transforms import Sample, check_depth_scaling, check_size, finish_sample

__all__ = ["FolderDataset"]


class FolderDataset(torch.utils.data.Dataset):
    """A map-style dataset read from the folder ``root``, returning sample dicts.

    Sets the attributes ``root`` (Path), ``split`` (str, when given), ``size`` ((H, W) or None),
    ``augment``, ``normalize`` and ``depth_scaling``, which :func:`xtc_ext.data.splits.split_train_val`
    and :meth:`finish` rely on, after checking them.

    Args:
        root: the dataset's folder.
        split: split name, or None for a single-split layout (no ``split`` attribute).
        size: output (H, W) or None (stored size).
        augment: apply :func:`xtc_ext.data.transforms.augment_sample` in :meth:`finish`.
        normalize: ImageNet-normalise the image in :meth:`finish`.
        depth_scaling: depth rescaling of the scale crop, one of ``DEPTH_SCALINGS``.

    Raises:
        ValueError: bad ``size`` or ``depth_scaling``.
        FileNotFoundError: ``root`` is not a folder (named).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: PathLike, *, split: Optional[str] = None, size: Optional[Sequence[int]] = None,
                 augment: bool = False, normalize: bool = True, depth_scaling: str = "none") -> None:
        self.root = Path(root)
        if split is not None:
            self.split = str(split)
        self.size = check_size(size)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.depth_scaling = check_depth_scaling(depth_scaling)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")

    def finish(self, sample: Sample) -> Sample:
        """The last steps of ``__getitem__``: augmentation and normalisation as configured
        (:func:`xtc_ext.data.transforms.finish_sample`)."""
        return finish_sample(sample, self.augment, self.normalize, self.depth_scaling)
