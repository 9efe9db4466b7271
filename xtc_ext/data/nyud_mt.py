"""NYUD-v2 in Vandenhende et al.'s ``NYUD_MT`` layout (``--dataset nyudmt``): semantic
segmentation (40 classes), depth and surface normals, the NYUD-v2 data of MT-CP (MT-CP paper §4.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import FolderDataset
from .io import (check_depth_array, check_same_size, load_npy, read_id_file, read_label_png, read_rgb_image,
                 rgb_tensor)
from .normals import resize_sample_with_normals, unit_normals_hw3
from .registry import DATASETS, BuildRequest, DatasetSpec, PathLike
from .transforms import Sample

__all__ = ["NYUDMT", "NYUD_MT"]


class NYUDMT(FolderDataset):
    """NYUD-v2 in Vandenhende's ``NYUD_MT`` layout, the MT-CP NYUD data.

    Layout under ``root``::

        gt_sets/{split}.txt        ids, one per line (795 train / 654 val)
        images/<id>.jpg            RGB image (grayscale JPEGs are converted)
        segmentation/<id>.png      uint8 single channel ('L' or raw 'P' indices):
                                   0 = unlabelled, 1..40 = NYU-40 classes
        depth/<id>.npy             float metres, 0 = invalid; shape (H,W) or (H,W,1)
        normals/<id>.npy           (H,W,3) float surface normals (unit vectors),
                                   zero vector = invalid

    (``edge/<id>.npy`` of the release is not read; MT-CP does not use it.)

    Conversion: label 0 -> -1 (ignore; the authors' 255), k -> k-1 (40 classes
    0..39); depth as stored (metres; "depth_valid" = depth > 0); normals
    renormalised to unit length where ``|n| > 0`` ("normals_valid" = ``|n| > 0``,
    zero vectors stay 0; the authors mark them 255). Resize to ``size``: image
    bilinear (antialias, align_corners=False; the authors use cubic), labels, depth,
    masks and normals nearest (``nearest-exact``), then the normals renormalised.
    The default size 480x640 is the native NYUD size, as in MT-CP's ``FixedResize``.

    Augmentation (``augment=True``): :func:`augment_sample`: random scale crop with
    s in {1.0, 1.2, 1.5} (MT-CP's ``ScaleNRotate`` scale set; it zooms about the
    image centre instead of cropping at a random position, rotation 0), depth
    divided by s (``depth_scaling="divide"``, as MT-CP), normals unchanged by the
    crop; horizontal flip with p = 0.5 that mirrors every map and **negates the x
    component of the normals** (MT-CP's ``RandomHorizontalFlip``). Then, if
    ``normalize``, ImageNet normalisation (MT-CP normalises).

    Not applied here (it belongs to the loss / evaluation): the MT-CP authors' depth cap
    of 6.5535 m (docs/fidelity.md, "MT-CP losses and LPS" and "Metrics").

    Args:
        root: dataset folder (the ``NYUD_MT`` release).
        split: split name; ids are read from ``gt_sets/{split}.txt``.
        size: output (H, W) or None (native). Default (480, 640).
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        depth_scaling: depth rescaling of the scale crop; default "divide" (metric
            depth); see :class:`AugmentParams`.

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..39},
    "depth" float32 [1,H,W] metres (0 invalid), "depth_valid" bool [1,H,W],
    "normals" float32 [3,H,W] (x, y, z unit vectors as stored in the release;
    0 where invalid), "normals_valid" bool [1,H,W], "name" str (the id).

    Raises:
        FileNotFoundError: (at construction) missing root or split file, or a
            missing image / segmentation / depth / normals file of a listed id; the
            message names the path.
        ValueError: bad ``size`` / ``depth_scaling``, a split file without ids (at
            construction); (at ``__getitem__``) unreadable file, label not 8-bit
            single channel or with a value > 40, depth not (H,W) / (H,W,1), normals
            not (H,W,3), non-finite values, negative depth, or sizes that differ
            from the image; the message names the file.

    Source: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks"
    (TPAMI 2021), ``data/nyud.py::NYUD_MT`` and ``data/custom_transforms.py``;
    the MT-CP authors' ``data/nyud2.py`` (MT-CP paper §4.1); deviations in
    docs/fidelity.md, "Data and augmentation".
    """

    num_classes: int = 40

    def __init__(self, root: PathLike, split: str = "train",
                 size: Optional[Tuple[int, int]] = (480, 640), augment: bool = False,
                 normalize: bool = True, depth_scaling: str = "divide") -> None:
        super().__init__(root, split=split, size=size, augment=augment, normalize=normalize,
                         depth_scaling=depth_scaling)
        self.split_file = self.root / "gt_sets" / f"{self.split}.txt"
        ids = read_id_file(self.split_file)
        self.dirs = {"image": self.root / "images", "seg": self.root / "segmentation",
                     "depth": self.root / "depth", "normals": self.root / "normals"}
        #: ids of the split, in file order.
        self.frames: List[str] = ids
        for i in range(len(ids)):
            for p in self.frame_paths(i).values():
                if not p.is_file():
                    raise FileNotFoundError(f"missing file for id {ids[i]!r} (listed in "
                                            f"{self.split_file}): {p}")

    def __len__(self) -> int:
        return len(self.frames)

    def frame_paths(self, index: int) -> Dict[str, Path]:
        """Paths ``{"image", "seg", "depth", "normals"}`` of item ``index``."""
        fid = self.frames[index]
        return {"image": self.dirs["image"] / f"{fid}.jpg",
                "seg": self.dirs["seg"] / f"{fid}.png",
                "depth": self.dirs["depth"] / f"{fid}.npy",
                "normals": self.dirs["normals"] / f"{fid}.npy"}

    def __getitem__(self, index: int) -> Sample:
        """Load item ``index``; see the class docstring for the returned dict."""
        paths = self.frame_paths(index)
        p_img, p_seg, p_dep, p_nrm = paths["image"], paths["seg"], paths["depth"], paths["normals"]
        rgb = read_rgb_image(p_img)
        label = read_label_png(p_seg, 40, "0 = unlabelled or 1..40")

        dep = load_npy(p_dep)
        if dep.ndim == 3 and dep.shape[2] == 1:
            dep = dep[:, :, 0]
        if dep.ndim != 2:
            raise ValueError(f"{p_dep} has shape {dep.shape}, expected (H, W) or (H, W, 1)")
        dep = check_depth_array(dep, p_dep, "metres")

        nrm = load_npy(p_nrm)
        if nrm.ndim != 3 or nrm.shape[2] != 3:
            raise ValueError(f"{p_nrm} has shape {nrm.shape}, expected (H, W, 3)")
        nrm = nrm.astype(np.float32)
        if not np.isfinite(nrm).all():
            raise ValueError(f"{p_nrm} contains non-finite normal values")
        check_same_size((p_img, rgb), (p_seg, label), (p_dep, dep), (p_nrm, nrm))

        depth_t = torch.from_numpy(dep)[None].contiguous()
        normals, normals_valid = unit_normals_hw3(nrm)
        sample: Sample = {
            "image": rgb_tensor(rgb),
            "seg": torch.from_numpy(label.astype(np.int64) - 1),  # 0 -> -1, k -> k-1
            "depth": depth_t,
            "depth_valid": depth_t > 0,
            "normals": torch.from_numpy(normals),
            "normals_valid": torch.from_numpy(normals_valid)[None],
            "name": self.frames[index],
        }
        sample = resize_sample_with_normals(sample, self.size)
        return self.finish(sample)

    def __repr__(self) -> str:
        return (f"NYUDMT(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.size}, augment={self.augment}, normalize={self.normalize})")


def _build(root: Path, split: str, request: BuildRequest) -> Dataset:
    return NYUDMT(root, split=split, size=request.size, augment=request.augment, normalize=request.normalize,
                  depth_scaling=request.depth_scaling)


NYUD_MT = DATASETS.register(DatasetSpec(
    name="nyudmt",
    summary="NYUD-v2 in Vandenhende's NYUD_MT layout (images, segmentation, depth, normals, gt_sets; "
    "resized, see --size); test split: val",
    classes=(40,),
    tasks=("semseg", "depth", "normals"),
    default_size=(480, 640),
    depth_unit="m",
    default_depth_scaling="divide",
    factory=_build,
    release_sizes={"train": 795, "val": 654},
))
"""The ``--dataset nyudmt`` spec: ``val`` (654 images) is the NYUD-v2 test split MT-CP reports on;
model selection uses a held-out part of ``train`` (795 images)."""
