"""NYUv2 frames stored as PNG files (``--dataset frames``), and the ten real frames shipped with
the package.

:data:`NYUV2_TEST10` is the folder of ten real frames of the official NYU Depth V2 labelled test
split (Silberman et al., ECCV 2012), installed with the package as package data (its ``README.md``
gives their indices, provenance and licence). It is the default data of ``python -m xtc_ext.train``:
enough for smoke training, evaluation, figures and loader tests, far too few for accuracy numbers
comparable with papers. Normals for MT-CP on these frames are derived from their depth
(:func:`xtc_ext.data.normals.normals_from_depth`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import FolderDataset
from .io import check_same_size, read_label_png, read_rgb_png, read_uint16_png, rgb_tensor
from .normals import normals_from_depth, resize_sample_with_normals
from .registry import DATASETS, BuildRequest, DatasetSpec, PathLike
from .transforms import Sample, resize_sample

__all__ = ["NYU13_CLASS_NAMES", "NYUV2_TEST10", "NYUv2Frames", "FRAMES"]

#: The ten packaged NYUv2 test frames (``rgb/``, ``depth/``, ``label13/``, ``label40/``, 640x480),
#: inside the installed package: the default root of ``--dataset frames``.
NYUV2_TEST10: Path = Path(__file__).resolve().parent / "nyuv2_test10"

#: NYU-13 class names in label order 0..12: label L of the ``label13/`` maps is class L-1
#: (0 = unlabelled), the convention of MTAN's preprocessed NYUv2 and the XTasC-Net code.
NYU13_CLASS_NAMES: Tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)


class NYUv2Frames(FolderDataset):
    """NYUv2 frames stored as PNG files (the layout of the packaged :data:`NYUV2_TEST10`).

    Layout under ``root``::

        rgb/NNNN.png       RGB uint8 (mode "RGB")
        depth/NNNN.png     uint16 depth in millimetres, 0 = invalid (mode "I;16*";
                           mode "I" is accepted when the values fit 0..65535)
        label13/NNNN.png   uint8 single channel (mode "L" or palette "P" indices),
        label40/NNNN.png   0 = unlabelled, classes 1..K

    Conversion: label 0 -> -1 (ignore), labels 1..K -> 0..K-1; depth uint16 mm ->
    float32 metres (/1000), 0 stays 0 (invalid); "depth_valid" = depth > 0. Resize to
    ``size`` = (H, W): image bilinear (antialias, align_corners=False), labels,
    depth and depth_valid nearest (``nearest-exact``, pixel-centre aligned; depth
    values are not rescaled). ``size=None`` keeps the native resolution. Then, if
    ``augment``, :func:`augment_sample` (global torch RNG, ``depth_scaling``); then,
    if ``normalize``, ImageNet normalisation.

    Args:
        root: dataset folder.
        size: output (H, W) or None. Default (240, 320).
        classes: 13 (reads ``label13/``) or 40 (reads ``label40/``).
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        frames: optional explicit list of frame ids (``"0001"`` or ``"0001.png"``);
            default: the sorted stems of ``rgb/*.png``.
        depth_scaling: depth rescaling of the scale crop, default "divide" (metric
            depth, MTAN / XTasC-Net NYUv2); see :class:`AugmentParams`.
        with_normals: also return surface normals computed by
            :func:`normals_from_depth` from the **full-resolution** depth (NYUv2
            colour-camera intrinsics, scaled if the stored frames are not 640x480),
            before resizing; they are then resized like :class:`NYUDMT`'s (nearest,
            renormalised) and flipped with x negated by the augmentation.

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..K-1},
    "depth" float32 [1,H,W] metres (0 invalid), "depth_valid" bool [1,H,W]
    (depth > 0, cropped/flipped with the depth), "name" str (the frame id); with
    ``with_normals``, also "normals" float32 [3,H,W] (unit vectors, camera frame x
    right, y down, z forward, 0 where invalid; an approximation, see
    :func:`normals_from_depth`) and "normals_valid" bool [1,H,W].

    Raises:
        FileNotFoundError: (at construction) missing root, sub-folder or any frame
            file, or no ``rgb/*.png``; the message names the path.
        ValueError: ``classes`` not in {13, 40}, bad ``size`` or ``depth_scaling``;
            (at ``__getitem__``) unreadable file, image not RGB, depth not 16-bit,
            label not 8-bit single channel, sizes that differ between
            rgb/depth/label, or a label value > K (the message names the file, and
            the bad value for labels).

    Source: NYU Depth v2 (Silberman et al., ECCV 2012) labelled test frames; label
    and depth conventions of MTAN / XTasC-Net (XTasC-Net paper §V-A: void classes
    and depth 0 are masked out).
    """

    def __init__(self, root: PathLike, size: Optional[Tuple[int, int]] = (240, 320),
                 classes: int = 13, augment: bool = False, normalize: bool = True,
                 frames: Optional[Sequence[str]] = None, depth_scaling: str = "divide",
                 with_normals: bool = False) -> None:
        if classes not in (13, 40):
            raise ValueError(f"classes must be 13 or 40, got {classes!r}")
        super().__init__(root, size=size, augment=augment, normalize=normalize, depth_scaling=depth_scaling)
        self.num_classes = int(classes)
        self.with_normals = bool(with_normals)
        self.rgb_dir = self.root / "rgb"
        self.depth_dir = self.root / "depth"
        self.label_dir = self.root / f"label{self.num_classes}"
        for d in (self.rgb_dir, self.depth_dir, self.label_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"dataset folder not found: {d}")
        if frames is None:
            ids = sorted(p.stem for p in self.rgb_dir.glob("*.png"))
            if not ids:
                raise FileNotFoundError(f"no frames (*.png) in {self.rgb_dir}")
        else:
            if isinstance(frames, (str, bytes)):
                raise ValueError("frames must be a sequence of frame ids, not a single string")
            ids = []
            for f in frames:
                if not isinstance(f, str) or not f:
                    raise ValueError(f"frame ids must be non-empty strings, got {f!r}")
                ids.append(f[:-4] if f.lower().endswith(".png") else f)
        for fid in ids:
            for d in (self.rgb_dir, self.depth_dir, self.label_dir):
                p = d / f"{fid}.png"
                if not p.is_file():
                    raise FileNotFoundError(f"missing file for frame {fid!r}: {p}")
        self.frames: List[str] = list(ids)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        """Load frame ``index``; see the class docstring for the returned dict."""
        fid = self.frames[index]
        p_rgb = self.rgb_dir / f"{fid}.png"
        p_depth = self.depth_dir / f"{fid}.png"
        p_label = self.label_dir / f"{fid}.png"
        rgb = read_rgb_png(p_rgb)
        depth = read_uint16_png(p_depth, "depth").astype(np.float32) / 1000.0
        label = read_label_png(p_label, self.num_classes,
                                f"0 = unlabelled or 1..{self.num_classes}")
        check_same_size((p_rgb, rgb), (p_depth, depth), (p_label, label))
        depth_t = torch.from_numpy(depth)[None].contiguous()
        sample: Sample = {
            "image": rgb_tensor(rgb),
            "seg": torch.from_numpy(label.astype(np.int64) - 1),  # 0 -> -1, k -> k-1
            "depth": depth_t,
            "depth_valid": depth_t > 0,
            "name": fid,
        }
        if self.with_normals:
            normals, normals_valid = normals_from_depth(depth_t)
            sample["normals"] = normals
            sample["normals_valid"] = normals_valid
            sample = resize_sample_with_normals(sample, self.size)
        else:
            sample = resize_sample(sample, self.size)
        return self.finish(sample)

    def __repr__(self) -> str:
        return (f"NYUv2Frames(root={str(self.root)!r}, n={len(self)}, size={self.size}, "
                f"classes={self.num_classes}, augment={self.augment}, normalize={self.normalize}"
                + (", with_normals=True)" if self.with_normals else ")"))


def _build(root: Path, split: str, request: BuildRequest) -> Dataset:
    # one split: ``split`` is not used; normals are derived from depth only when asked for
    return NYUv2Frames(root, size=request.size, classes=request.classes, augment=request.augment,
                       normalize=request.normalize, depth_scaling=request.depth_scaling,
                       with_normals="normals" in request.tasks)


FRAMES = DATASETS.register(DatasetSpec(
    name="frames",
    summary="NYUv2 frames as PNG files (rgb/, depth/ in mm, label13/ or label40/; the ten real test "
    "frames ship in the package); one split: the test reads the training frames again",
    classes=(13, 40),
    tasks=("semseg", "depth", "normals"),
    default_size=(96, 128),
    val_fraction=0.0,
    test_split=None,
    test_description="the training frames",
    depth_unit="m",
    default_depth_scaling="divide",
    default_root=NYUV2_TEST10,
    factory=_build,
    class_name_tables={13: NYU13_CLASS_NAMES},
))
"""The ``--dataset frames`` spec. The layout has no test split: the test reads the (non-augmented)
training frames again, and ``--val-fraction`` defaults to 0 (no selection)."""
