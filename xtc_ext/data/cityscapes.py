"""Cityscapes: the official files (``--dataset cityscapes``) and MTAN's preprocessed ``.npy``
layout (``--dataset cityscapes-mtan``), with the 7-category and 19-class label maps and the
disparity target of the XTasC-Net paper §V-A.

The depth target of both is **disparity/256** (``(p-1)/256**2`` of the disparity PNG value p,
clipped at :data:`CITYSCAPES_DEPTH_MAX`), an inverse-depth-like quantity, **not metres**; the
XTasC-Net paper §V-A trains on it "because the raw disparity values range from 0 to infinity".
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import FolderDataset
from .io import check_same_size, read_label_png, read_rgb_png, read_uint16_png, rgb_tensor
from .mtan import MTANNpyDataset
from .registry import DATASETS, IGNORE_INDEX, BuildRequest, DatasetSpec, PathLike
from .transforms import Sample, resize_sample

__all__ = [
    "CITYSCAPES7_CLASS_NAMES",
    "CITYSCAPES19_CLASS_NAMES",
    "CITYSCAPES_DEPTH_MAX",
    "cityscapes_label_table",
    "cityscapes_labels_to_train_ids",
    "cityscapes_disparity_to_depth",
    "CityscapesFiles",
    "MTANCityscapes",
    "CITYSCAPES",
    "CITYSCAPES_MTAN",
]

#: Cityscapes 7-category names in label order 0..6 (the XTasC-Net paper §V-A uses the 7-class labels).
CITYSCAPES7_CLASS_NAMES: Tuple[str, ...] = (
    "flat", "construction", "object", "nature", "sky", "human", "vehicle",
)
#: Cityscapes 19-class (trainId) names in label order 0..18 (Cordts et al., CVPR 2016).
CITYSCAPES19_CLASS_NAMES: Tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)
#: Upper clip of the Cityscapes depth target (disparity/256 units; 126 px of disparity).
#: MTAN's preprocessed Cityscapes depth has the same range [0, 0.4922].
CITYSCAPES_DEPTH_MAX: float = 0.4922

# Cityscapes label ids (cityscapesScripts ``labels.py``) -> class, grouped by the
# Cityscapes categories as the XTasC-Net authors' ``encode_segmt`` does.
_CS7_GROUPS: Tuple[Tuple[int, ...], ...] = (
    (7, 8, 9, 10),            # flat
    (11, 12, 13, 14, 15, 16),  # construction
    (17, 18, 19, 20),          # object
    (21, 22),                  # nature
    (23,),                     # sky
    (24, 25),                  # human
    (26, 27, 28, 29, 30, 31, 32, 33),  # vehicle
)
_CS19_VALID_IDS: Tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                    31, 32, 33)
_CS_MAX_ID = 33


# --------------------------------------------------------------------------- #
# label maps and the disparity target
# --------------------------------------------------------------------------- #
def cityscapes_label_table(classes: int = 7) -> np.ndarray:
    """Lookup table from Cityscapes label id to class index.

    Args:
        classes: 7 (categories) or 19 (the standard trainIds).

    Returns:
        int64 array of shape (34,): entry ``id`` (0..33) is the class index
        (0..classes-1) or ``IGNORE_INDEX`` (-1) for void.

        * 7 classes: ids 0..6 void; flat {7,8,9,10} -> 0, construction {11..16} -> 1,
          object {17..20} -> 2, nature {21,22} -> 3, sky {23} -> 4, human {24,25} -> 5,
          vehicle {26..33} -> 6 (ids 9, 10, 14-16, 18, 29, 30 are kept, unlike the
          19-class protocol).
        * 19 classes: void {0-6, 9, 10, 14, 15, 16, 18, 29, 30}; valid
          {7, 8, 11, 12, 13, 17, 19, 20, 21, ..., 28, 31, 32, 33} -> 0..18 in that
          order (``CITYSCAPES19_CLASS_NAMES``).

        Id -1 (license plate) is void in both; it is handled by
        :func:`cityscapes_labels_to_train_ids`, not by this table.

    Raises:
        ValueError: ``classes`` not in {7, 19}.

    Source: the XTasC-Net authors' ``dataloader.py::encode_segmt`` (7 categories,
    XTasC-Net paper §V-A), cityscapesScripts ``labels.py`` (Cordts et al., CVPR 2016).
    The authors' ignore value 250 is this project's ``IGNORE_INDEX`` (-1).
    """
    if classes not in (7, 19):
        raise ValueError(f"classes must be 7 or 19, got {classes!r}")
    table = np.full(_CS_MAX_ID + 1, IGNORE_INDEX, dtype=np.int64)
    if classes == 7:
        for c, ids in enumerate(_CS7_GROUPS):
            table[list(ids)] = c
    else:
        table[list(_CS19_VALID_IDS)] = np.arange(len(_CS19_VALID_IDS))
    return table


def cityscapes_labels_to_train_ids(ids: np.ndarray, classes: int = 7) -> np.ndarray:
    """Map Cityscapes label ids to class indices (void -> ``IGNORE_INDEX`` = -1).

    Args:
        ids: integer array of any shape with values in {-1, 0..33} (-1 = license
            plate, which never occurs in uint8 ``*_labelIds.png`` files).
        classes: 7 or 19; see :func:`cityscapes_label_table`.

    Returns:
        int64 array of the same shape, values in {-1, 0..classes-1}.

    Raises:
        ValueError: ``classes`` not in {7, 19}, non-integer dtype, or a value
            outside {-1, 0..33} (the message gives the value).

    Source: :func:`cityscapes_label_table` (Cordts et al., CVPR 2016; XTasC-Net
    paper §V-A).
    """
    table = cityscapes_label_table(classes)
    a = np.asarray(ids)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"label ids must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = (a < -1) | (a > _CS_MAX_ID)
    if bad.any():
        raise ValueError(f"label id {int(a[bad].flat[0])} outside {{-1, 0..{_CS_MAX_ID}}}")
    return np.where(a < 0, IGNORE_INDEX, table[np.clip(a, 0, _CS_MAX_ID)])


def cityscapes_disparity_to_depth(disparity: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cityscapes depth target and validity mask from raw disparity PNG values.

    For PNG value p (uint16): valid = p > 0; target = (p - 1) / 256**2 for valid
    pixels, clipped at ``CITYSCAPES_DEPTH_MAX`` = 0.4922 (126 px of disparity);
    invalid pixels get 0. Since the stored disparity is ``(p - 1) / 256`` pixels,
    the target is disparity/256 — inverse depth up to a constant
    (t ≈ 1.77 / Z[m] with Cityscapes' 0.2 m baseline and 2262 px focal length),
    **not metres**. It matches MTAN's preprocessed Cityscapes depth range. A value
    p == 1 gives target 0 but valid = True, as in the paper's mask (such pixels
    are dropped by metrics that use target > 0).

    Args:
        disparity: integer array of any shape with values in 0..65535.

    Returns:
        ``(target, valid)``: float32 array (disparity/256 units, in
        [0, 0.4922]) and bool array, both of the input's shape.

    Raises:
        ValueError: non-integer dtype or values outside 0..65535.

    Source: XTasC-Net paper §V-A ("inverse disparity values as the target") and the
    authors' ``dataloader.py::CityscapesDataset``.
    """
    p = np.asarray(disparity)
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"disparity must be an integer array, got dtype {p.dtype}")
    if p.size and (p.min() < 0 or p.max() > 65535):
        raise ValueError(f"disparity values outside 0..65535: [{p.min()}, {p.max()}]")
    valid = p > 0
    target = np.where(valid, (p.astype(np.float64) - 1.0) / 65536.0, 0.0)
    target = np.minimum(target, CITYSCAPES_DEPTH_MAX).astype(np.float32)
    return target, valid


# --------------------------------------------------------------------------- #
# the official files
# --------------------------------------------------------------------------- #
class CityscapesFiles(FolderDataset):
    """Cityscapes read from the official files, as the XTasC-Net Cityscapes loader does.

    Layout under ``root``::

        leftImg8bit/{split}/<city>/<name>_leftImg8bit.png     RGB uint8
        gtFine/{split}/<city>/<name>_gtFine_labelIds.png      uint8 label ids 0..33
        disparity/{split}/<city>/<name>_disparity.png         uint16 disparity

    Frames are the ``<city>/<name>_leftImg8bit.png`` files under
    ``leftImg8bit/{split}``, sorted by ``<name>`` (which starts with the city).
    Standard counts: 2975 train, 500 val (the authors report on val; use
    :func:`split_train_val` on train for model selection).

    Conversion (deviations from the authors' loader in docs/fidelity.md, "Data and
    augmentation"):

    * labels: :func:`cityscapes_labels_to_train_ids` (7 categories or 19 trainIds),
      void -> -1 (the authors' 250).
    * depth: :func:`cityscapes_disparity_to_depth`: target ``(p-1)/256**2`` clipped
      at 0.4922 — **disparity/256 (inverse-depth-like) units, not metres** — 0 where
      p == 0; "depth_valid" = p > 0 (p == 1: valid, target 0).
    * resize to ``size``: image bilinear with antialias (the authors resize the
      RGB with nearest neighbour, a bug not reproduced); labels, depth
      and depth_valid nearest (``nearest-exact``); disparity values are not rescaled
      with the image size (as in the authors' code).
    * if ``augment``: :func:`augment_sample` (scale crop + flip) with
      ``depth_scaling``; the mask is cropped with the data (the authors crop image,
      seg and depth but not the masks; not reproduced).
    * if ``normalize``: ImageNet normalisation (the authors normalise Cityscapes).

    ``depth_scaling`` defaults to ``"none"``: the authors' Cityscapes code does not
    rescale the disparity target under the scale crop, and results
    comparable with theirs need the same. Dividing by the scale (the NYUv2 rule for
    metric depth) would be wrong for an inverse-depth target; ``"multiply"`` is the
    geometrically consistent choice (a crop zoomed by s multiplies disparity by s;
    the target may then exceed 0.4922).

    Args:
        root: dataset folder containing ``leftImg8bit``, ``gtFine``, ``disparity``.
        split: "train", "val" or "test" folder name.
        classes: 7 or 19.
        size: output (H, W) or None (native 1024x2048). Default (128, 256), the
            XTasC-Net / MTAN Cityscapes resolution.
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        depth_scaling: "none" (default), "multiply" or "divide"; see above and
            :class:`AugmentParams`.

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..C-1},
    "depth" float32 [1,H,W] disparity/256 in [0, 0.4922] (0 invalid or p == 1),
    "depth_valid" bool [1,H,W], "name" str (``<name>``, e.g.
    ``"aachen_000000_000019"``).

    Raises:
        FileNotFoundError: (at construction) missing root or split folder, no
            frames, or a frame without its label or disparity file; the message
            names the missing path.
        ValueError: ``classes`` not in {7, 19}, bad ``size`` or ``depth_scaling``;
            (at ``__getitem__``) unreadable file, image not mode RGB, label not
            8-bit single channel or with an id > 33, disparity not 16-bit single
            channel, or sizes that differ between the three files (the message
            names the file).

    Source: Cordts et al., CVPR 2016 (data); XTasC-Net paper §V-A and the authors'
    ``dataloader.py::CityscapesDataset``; docs/fidelity.md, "Data and augmentation".
    """

    depth_max: float = CITYSCAPES_DEPTH_MAX

    _IMAGE_SUFFIX = "_leftImg8bit.png"
    _LABEL_SUFFIX = "_gtFine_labelIds.png"
    _DISPARITY_SUFFIX = "_disparity.png"

    def __init__(self, root: PathLike, split: str = "train", classes: int = 7,
                 size: Optional[Tuple[int, int]] = (128, 256), augment: bool = False,
                 normalize: bool = True, depth_scaling: str = "none") -> None:
        self._lut = cityscapes_label_table(classes)  # validates classes
        self.num_classes = int(classes)
        super().__init__(root, split=split, size=size, augment=augment, normalize=normalize,
                         depth_scaling=depth_scaling)
        self.image_dir = self.root / "leftImg8bit" / self.split
        self.label_dir = self.root / "gtFine" / self.split
        self.disparity_dir = self.root / "disparity" / self.split
        for d in (self.image_dir, self.label_dir, self.disparity_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"dataset folder not found: {d}")
        found = []
        for p in self.image_dir.glob(f"*/*{self._IMAGE_SUFFIX}"):
            if p.is_file():
                found.append((p.name[:-len(self._IMAGE_SUFFIX)], p.parent.name))
        if not found:
            raise FileNotFoundError(f"no frames (<city>/*{self._IMAGE_SUFFIX}) in {self.image_dir}")
        #: (city, name) of every frame, sorted by name.
        self.frames: List[Tuple[str, str]] = [(city, name) for name, city in sorted(found)]
        for i in range(len(self.frames)):
            for p in self.frame_paths(i)[1:]:
                if not p.is_file():
                    raise FileNotFoundError(f"missing file for frame {self.frames[i][1]!r}: {p}")

    def __len__(self) -> int:
        return len(self.frames)

    def frame_paths(self, index: int) -> Tuple[Path, Path, Path]:
        """(image, label, disparity) paths of frame ``index``."""
        city, name = self.frames[index]
        return (self.image_dir / city / f"{name}{self._IMAGE_SUFFIX}",
                self.label_dir / city / f"{name}{self._LABEL_SUFFIX}",
                self.disparity_dir / city / f"{name}{self._DISPARITY_SUFFIX}")

    def __getitem__(self, index: int) -> Sample:
        """Load frame ``index``; see the class docstring for the returned dict."""
        p_rgb, p_label, p_disp = self.frame_paths(index)
        rgb = read_rgb_png(p_rgb)
        ids = read_label_png(p_label, _CS_MAX_ID, f"Cityscapes label ids 0..{_CS_MAX_ID}")
        disp = read_uint16_png(p_disp, "disparity")
        check_same_size((p_rgb, rgb), (p_label, ids), (p_disp, disp))
        target, valid = cityscapes_disparity_to_depth(disp)
        sample: Sample = {
            "image": rgb_tensor(rgb),
            "seg": torch.from_numpy(self._lut[ids]).contiguous(),
            "depth": torch.from_numpy(target)[None].contiguous(),
            "depth_valid": torch.from_numpy(valid)[None].contiguous(),
            "name": self.frames[index][1],
        }
        sample = resize_sample(sample, self.size)
        return self.finish(sample)

    def __repr__(self) -> str:
        return (f"CityscapesFiles(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, size={self.size}, augment={self.augment}, "
                f"normalize={self.normalize}, depth_scaling={self.depth_scaling!r})")


# --------------------------------------------------------------------------- #
# MTAN's preprocessed .npy files
# --------------------------------------------------------------------------- #
class MTANCityscapes(MTANNpyDataset):
    """Cityscapes in MTAN's preprocessed ``.npy`` layout.

    Layout: ``root/{split}/{image,label_7,label_19,depth}/{i}.npy`` for i = 0..N-1
    contiguous, N = number of ``image/*.npy`` files; only the label folder of the
    chosen ``classes`` is read.

    File contents (MTAN convention):

    ===============  ==========  ==========================================
    file             shape       content
    ===============  ==========  ==========================================
    image/i.npy      (H, W, 3)   float RGB in [0, 1]; (3, H, W) is accepted
                                 (told apart using the label's shape)
    label_7/i.npy    (H, W)      integer-valued, -1 void, 0..6
                                 (``CITYSCAPES7_CLASS_NAMES``)
    label_19/i.npy   (H, W)      integer-valued, -1 void, 0..18
                                 (``CITYSCAPES19_CLASS_NAMES``)
    depth/i.npy      (H, W, 1)   disparity/256 units in [0, 0.4922]
                                 (``CITYSCAPES_DEPTH_MAX``), 0 = invalid;
                                 inverse-depth-like, **not metres**
    ===============  ==========  ==========================================

    "depth_valid" = depth > 0 (the preprocessed files have lost the p == 1 pixels
    that :class:`CityscapesFiles` marks valid with target 0). Size is taken from
    the data (128x256 for MTAN's files). Augmentation and normalisation as in
    :class:`CityscapesFiles` (``depth_scaling`` default "none", the authors'
    Cityscapes rule; see there why "divide" is wrong for disparity).

    Args:
        root: folder containing the split folders.
        split: split folder name, e.g. "train" or "val".
        classes: 7 (reads ``label_7/``) or 19 (reads ``label_19/``).
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        depth_scaling: see :class:`AugmentParams`; default "none".

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..C-1},
    "depth" float32 [1,H,W] disparity/256 (0 invalid), "depth_valid" bool [1,H,W],
    "name" str (``"{split}/{i}"``).

    Raises:
        FileNotFoundError: as :class:`MTANNYUv2` (the label folder is
            ``label_7``/``label_19``).
        ValueError: ``classes`` not in {7, 19}, bad ``depth_scaling``; (at
            ``__getitem__``) as :class:`MTANNYUv2`, with labels outside
            {-1, 0..C-1} and depth above 0.4922 (+1e-4) also rejected; the message
            names the file.

    Source: MTAN (Liu et al., CVPR 2019) ``create_dataset.py::CityScapes``; its depth
    has the range [0, 0.4922] of :func:`cityscapes_disparity_to_depth`.
    """

    depth_max: Optional[float] = CITYSCAPES_DEPTH_MAX
    _depth_unit = "disparity/256 units"

    def __init__(self, root: PathLike, split: str = "train", classes: int = 7,
                 augment: bool = False, normalize: bool = True,
                 depth_scaling: str = "none") -> None:
        if classes not in (7, 19):
            raise ValueError(f"classes must be 7 or 19, got {classes!r}")
        super().__init__(root, split, f"label_{int(classes)}", int(classes), augment, normalize,
                         depth_scaling)


# --------------------------------------------------------------------------- #
# registry entries
# --------------------------------------------------------------------------- #
def _build_files(root: Path, split: str, request: BuildRequest) -> Dataset:
    return CityscapesFiles(root, split=split, classes=request.classes, size=request.size, augment=request.augment,
                           normalize=request.normalize, depth_scaling=request.depth_scaling)


def _build_mtan(root: Path, split: str, request: BuildRequest) -> Dataset:
    return MTANCityscapes(root, split=split, classes=request.classes, augment=request.augment,
                          normalize=request.normalize, depth_scaling=request.depth_scaling)


_CLASS_NAMES = {7: CITYSCAPES7_CLASS_NAMES, 19: CITYSCAPES19_CLASS_NAMES}

CITYSCAPES = DATASETS.register(DatasetSpec(
    name="cityscapes",
    summary="Cityscapes official files (leftImg8bit, gtFine labelIds, disparity; resized, see --size); "
    "test split: val",
    classes=(7, 19),
    tasks=("semseg", "depth"),
    default_size=(128, 256),
    depth_unit="disparity/256",
    default_depth_scaling="none",
    factory=_build_files,
    class_name_tables=_CLASS_NAMES,
    release_sizes={"train": 2975, "val": 500},
))
"""The ``--dataset cityscapes`` spec: the official ``val`` split (500 images) is the split the
XTasC-Net paper reports on; model selection uses a held-out part of ``train`` (2975 images)."""

CITYSCAPES_MTAN = DATASETS.register(DatasetSpec(
    name="cityscapes-mtan",
    summary="Cityscapes in MTAN's preprocessed .npy layout ({train,val}/{image,label_7,label_19,depth}/i.npy, "
    "stored size); test split: val",
    classes=(7, 19),
    tasks=("semseg", "depth"),
    default_size=None,
    depth_unit="disparity/256",
    default_depth_scaling="none",
    factory=_build_mtan,
    class_name_tables=_CLASS_NAMES,
    release_sizes={"train": 2975, "val": 500},
))
"""The ``--dataset cityscapes-mtan`` spec (same splits and targets as ``cityscapes``)."""
