"""The shared reader of MTAN's preprocessed ``.npy`` layouts (NYUv2 and Cityscapes).

MTAN (Liu et al., CVPR 2019) released NYUv2 and Cityscapes as one ``.npy`` file per image and
target: ``root/{split}/{image,<label>,depth}/{i}.npy`` with contiguous indices i = 0..N-1. The
XTasC-Net authors train on the NYUv2 files (XTasC-Net paper §V-A). :class:`MTANNpyDataset` reads
both; :class:`xtc_ext.data.nyuv2.MTANNYUv2` and :class:`xtc_ext.data.cityscapes.MTANCityscapes`
fix the label folder, the classes and the depth unit.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .base import FolderDataset
from .io import check_depth_array, load_npy
from .registry import IGNORE_INDEX, PathLike
from .transforms import Sample

__all__ = ["MTANNpyDataset"]


class MTANNpyDataset(FolderDataset):
    """Reader of MTAN's preprocessed layout ``root/{split}/{image,<label>,depth}/{i}.npy``.

    Subclasses fix the label folder, the number of classes, the depth units
    (``_depth_unit``), an optional upper bound of the depth values
    (``depth_max``) and the default ``depth_scaling``. See
    :class:`xtc_ext.data.nyuv2.MTANNYUv2` and
    :class:`xtc_ext.data.cityscapes.MTANCityscapes` for the file contents and the
    returned samples.

    Args:
        root: folder containing the split folders.
        split: split folder name.
        label_folder: name of the label folder inside the split folder.
        num_classes: labels must lie in {-1, 0..num_classes-1}.
        augment, normalize, depth_scaling: as :func:`xtc_ext.data.transforms.finish_sample`.

    Raises:
        FileNotFoundError: (at construction) missing root, split or sub-folder, no
            ``image/*.npy``, or a gap in the indices; the message names the path.
        ValueError: bad ``depth_scaling``; (at ``__getitem__``) see the subclasses.
    """

    #: Largest accepted depth value (None: unbounded); checked with a 1e-4 tolerance.
    depth_max: Optional[float] = None
    _depth_unit: str = "metres"

    def __init__(self, root: PathLike, split: str, label_folder: str, num_classes: int,
                 augment: bool, normalize: bool, depth_scaling: str) -> None:
        super().__init__(root, split=split, augment=augment, normalize=normalize, depth_scaling=depth_scaling)
        self.num_classes = int(num_classes)
        self.split_dir = self.root / self.split
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"split folder not found: {self.split_dir}")
        self.dirs = {"image": self.split_dir / "image", "label": self.split_dir / label_folder,
                     "depth": self.split_dir / "depth"}
        for d in self.dirs.values():
            if not d.is_dir():
                raise FileNotFoundError(f"dataset folder not found: {d}")
        n = sum(1 for _ in self.dirs["image"].glob("*.npy"))
        if n == 0:
            raise FileNotFoundError(f"no *.npy files in {self.dirs['image']}")
        for i in range(n):
            for d in self.dirs.values():
                p = d / f"{i}.npy"
                if not p.is_file():
                    raise FileNotFoundError(
                        f"missing file {p} (indices must be contiguous 0..{n - 1}, "
                        f"N = {n} files in {self.dirs['image']})")
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Sample:
        """Load sample ``index``; see the subclass docstring for the returned dict."""
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} samples")
        p_img = self.dirs["image"] / f"{index}.npy"
        p_lab = self.dirs["label"] / f"{index}.npy"
        p_dep = self.dirs["depth"] / f"{index}.npy"

        img = load_npy(p_img)
        if img.ndim != 3 or (img.shape[2] != 3 and img.shape[0] != 3):
            raise ValueError(f"{p_img} has shape {img.shape}, expected (H, W, 3) or (3, H, W)")
        img = img.astype(np.float32)
        if not np.isfinite(img).all():
            raise ValueError(f"{p_img} contains non-finite values")
        if img.size and (img.min() < -1e-6 or img.max() > 1.0 + 1e-6):
            raise ValueError(f"{p_img} has values in [{img.min():.4g}, {img.max():.4g}], "
                             f"expected RGB in [0, 1]")

        lab = load_npy(p_lab)
        if lab.ndim != 2:
            raise ValueError(f"{p_lab} has shape {lab.shape}, expected (H, W)")
        H, W = lab.shape
        # The label fixes (H, W), which tells (H, W, 3) from (3, H, W) even when H or W is 3.
        if img.shape == (H, W, 3):
            img_chw = np.transpose(img, (2, 0, 1))
        elif img.shape == (3, H, W):
            img_chw = img
        else:
            raise ValueError(f"{p_lab} has shape {lab.shape}, which does not match the image "
                             f"{p_img} of shape {img.shape} (expected (H, W, 3) or (3, H, W))")
        if np.issubdtype(lab.dtype, np.floating):
            if not np.isfinite(lab).all():
                raise ValueError(f"{p_lab} contains non-finite label values")
            nonint = lab != np.round(lab)
            if nonint.any():
                raise ValueError(f"{p_lab} contains non-integer label value "
                                 f"{lab[nonint].flat[0]!r}")
        lab = lab.astype(np.int64)
        bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= self.num_classes))
        if bad.any():
            raise ValueError(f"{p_lab} contains label value {int(lab[bad].flat[0])} outside "
                             f"{{-1, 0..{self.num_classes - 1}}}")

        dep = load_npy(p_dep)
        if dep.shape != (H, W, 1):
            raise ValueError(f"{p_dep} has shape {dep.shape}, expected ({H}, {W}, 1) matching {p_img}")
        dep = check_depth_array(dep, p_dep, self._depth_unit, self.depth_max)

        depth_t = torch.from_numpy(dep).permute(2, 0, 1).contiguous()
        sample: Sample = {
            "image": torch.from_numpy(np.clip(img_chw, 0.0, 1.0)).contiguous(),
            "seg": torch.from_numpy(lab).contiguous(),
            "depth": depth_t,
            "depth_valid": depth_t > 0,
            "name": f"{self.split}/{index}",
        }
        return self.finish(sample)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, augment={self.augment}, normalize={self.normalize}, "
                f"depth_scaling={self.depth_scaling!r})")
