"""NYUv2, Cityscapes and MT-CP (NYUD_MT, PASCAL_MT) datasets, the shared MTAN-style
training augmentation, surface normals from depth, and a train/validation split that
never touches the test split.

Six on-disk layouts are supported, and all return the same sample format.

* :class:`NYUv2Frames` reads NYUv2 frames stored as PNG files: ``rgb/``, ``depth/``
  (uint16 millimetres), and ``label13/`` or ``label40/`` (uint8, 0 = unlabelled).
  This is the layout of the ten real NYUv2 test frames in
  ``shared/data/nyuv2-test10``.
* :class:`MTANNYUv2` reads MTAN's preprocessed NYUv2 ``.npy`` layout
  ``root/{split}/{image,label,depth}/{i}.npy``, the data that the XTasC-Net code
  trains on (reference-implementations §1.4 "NYUv2: MTAN preprocessed .npy",
  PART 4 item 1).
* :class:`CityscapesFiles` reads the official Cityscapes files ``leftImg8bit``,
  ``gtFine *_labelIds.png`` and ``disparity`` (uint16), as the XTasC-Net Cityscapes
  loader does (reference-implementations §1.4 "Cityscapes: raw data", PART 4 item 2).
* :class:`MTANCityscapes` reads MTAN's preprocessed Cityscapes ``.npy`` layout
  ``root/{split}/{image,label_7,label_19,depth}/{i}.npy`` (PART 4 item 2).
* :class:`NYUDMT` reads Vandenhende's ``NYUD_MT`` release (JPEG images, 40-class
  PNG labels, depth and surface normals ``.npy``), the MT-CP NYUD data
  (reference-implementations §2.9, PART 4 item 3).
* :class:`PASCALMT` reads Vandenhende's ``PASCAL_MT`` release (semantic
  segmentation, human parts from PASCAL-Part ``.mat`` files, distilled saliency),
  the MT-CP PASCAL-Context data (§2.9, PART 4 item 3).

:func:`normals_from_depth` derives approximate surface normals from metric depth
(NYUv2 colour-camera intrinsics); ``NYUv2Frames(..., with_normals=True)`` adds them
to the real frames.

Sample format, a ``dict`` returned by every ``__getitem__``:

=============  ===============  ================================================
key            tensor           content
=============  ===============  ================================================
"image"        float32 [3,H,W]  RGB; ImageNet-normalised if ``normalize=True``,
                                otherwise in [0, 1]
"seg"          int64 [H,W]      class index 0..K-1, ``IGNORE_INDEX`` (-1) = ignore
"depth"        float32 [1,H,W]  NYUv2: depth in metres. Cityscapes: disparity/256
                                (``(p-1)/256**2`` of the PNG value p, clipped at
                                ``CITYSCAPES_DEPTH_MAX``), an inverse-depth-like
                                quantity, **not** metres. 0 where invalid.
"depth_valid"  bool [1,H,W]     per-pixel depth validity mask. NYUv2: depth > 0.
                                Cityscapes: disparity PNG value p > 0 (so p == 1
                                is valid with target 0, as in the paper's mask).
"name"         str              frame identifier
=============  ===============  ================================================

Datasets with other tasks add (only where the task exists): "normals" float32
[3,H,W] unit surface normals (x, y, z; 0 where invalid) with "normals_valid" bool
[1,H,W] (NYUDMT; NYUv2Frames with ``with_normals``), "human_parts" int64 [H,W]
(-1 void, 0 background, 1..6) and "sal" float32 [1,H,W] in {0, 1} (PASCALMT;
PASCALMT has no "depth").

Training augmentation (:func:`augment_sample`) follows the XTasC-Net / MTAN loaders
(XTasC-Net paper §V-A, reference-implementations §1.4): random scale crop with the
scale s drawn from {1.0, 1.2, 1.5}, the depth target rescaled according to
``depth_scaling`` (NYUv2 metres: divided by s), then a horizontal flip with p = 0.5.
**Every** per-pixel entry, ``depth_valid`` included, is cropped, resized and flipped
with the data (the authors crop image/seg/depth but not the masks, a bug that is not
reproduced here: reference-implementations §3.1 item 1); surface normals (the keys in
``NORMALS_KEYS``) also get their x component negated by the flip. Normalisation is
applied after augmentation.

Notes: the XTasC-Net code does **not** ImageNet-normalise NYUv2 inputs
(reference-implementations §1.4); pass ``normalize=False`` to match it. Its
Cityscapes inputs are normalised (the default here). To select a checkpoint
without peeking at the test split, split the *train* split with
:func:`split_train_val` / :func:`split_indices` (reference-implementations §3.1
item 13).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IGNORE_INDEX",
    "AUGMENT_SCALES",
    "DEPTH_SCALINGS",
    "NYU13_CLASS_NAMES",
    "CITYSCAPES7_CLASS_NAMES",
    "CITYSCAPES19_CLASS_NAMES",
    "CITYSCAPES_DEPTH_MAX",
    "AugmentParams",
    "normalize_image",
    "sample_augment_params",
    "apply_augmentation",
    "augment_sample",
    "NYUv2Frames",
    "MTANNYUv2",
    "cityscapes_label_table",
    "cityscapes_labels_to_train_ids",
    "cityscapes_disparity_to_depth",
    "CityscapesFiles",
    "MTANCityscapes",
    "split_indices",
    "split_train_val",
    "NORMALS_KEYS",
    "NYU_COLOR_INTRINSICS",
    "renormalize_normals",
    "normals_from_depth",
    "NYUDMT",
    "PASCAL_SEMSEG_CLASS_NAMES",
    "PASCAL_HUMAN_PARTS_NAMES",
    "PASCAL_PERSON_CLASS_IND",
    "PART_GROUPS",
    "read_pascal_human_parts",
    "PASCALMT",
]

PathLike = Union[str, "os.PathLike[str]"]
Sample = Dict[str, object]

#: ImageNet channel means (RGB) applied to images in [0, 1].
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (RGB).
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Segmentation ignore value used in every sample.
IGNORE_INDEX: int = -1
#: Scales of the random scale crop (MTAN / XTasC-Net ``RandomScaleCrop``).
AUGMENT_SCALES: Tuple[float, float, float] = (1.0, 1.2, 1.5)
#: How the random scale crop rescales the depth target (see :class:`AugmentParams`).
DEPTH_SCALINGS: Tuple[str, str, str] = ("divide", "multiply", "none")
#: NYU-13 class names in label order 0..12 (MTAN convention, reference-implementations §1.4).
NYU13_CLASS_NAMES: Tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)
#: Cityscapes 7-category names in label order 0..6 (reference-implementations §1.4).
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
#: MTAN's preprocessed Cityscapes depth has the same range [0, 0.4922]
#: (reference-implementations §1.4, PART 4 item 2).
CITYSCAPES_DEPTH_MAX: float = 0.4922

#: Sample keys that hold surface normals ``[3,H,W]`` (x, y, z; x = image right). The
#: augmentation negates channel 0 of these maps when it flips the sample horizontally.
NORMALS_KEYS: Tuple[str, ...] = ("normals",)

_DEPTH16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Cityscapes label ids (cityscapesScripts ``labels.py``) -> class, built from the
# category lists of reference-implementations §1.4.
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
# normalisation
# --------------------------------------------------------------------------- #
def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise an image in [0, 1].

    Args:
        image: float tensor ``[3,H,W]`` or ``[N,3,H,W]``, RGB in [0, 1].

    Returns:
        A new float tensor of the same shape: ``(image - IMAGENET_MEAN) / IMAGENET_STD``
        per channel.

    Raises:
        ValueError: if the channel dimension is not 3.

    Source: ImageNet statistics as used by the XTasC-Net Cityscapes loader
    (reference-implementations §1.4, step 7).
    """
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"normalize_image expects [3,H,W] or [N,3,H,W], got {tuple(image.shape)}")
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(shape)
    return (image - mean) / std


# --------------------------------------------------------------------------- #
# augmentation
# --------------------------------------------------------------------------- #
def _check_depth_scaling(depth_scaling: str) -> str:
    if depth_scaling not in DEPTH_SCALINGS:
        raise ValueError(f"depth_scaling must be one of {DEPTH_SCALINGS}, got {depth_scaling!r}")
    return depth_scaling


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of one draw of :func:`augment_sample`.

    Attributes:
        scale: crop scale s, one of ``AUGMENT_SCALES``.
        top: row of the crop's top-left corner (0 <= top <= H - int(H/s)).
        left: column of the crop's top-left corner (0 <= left <= W - int(W/s)).
        flip: whether the (cropped, resized) sample is flipped horizontally.
        depth_scaling: how the scale crop changes the "depth" values, one of
            ``DEPTH_SCALINGS``:

            * ``"divide"`` (default): depth / s. Right for **metric depth**: zooming in
              by s makes the scene look s times closer (MTAN / XTasC-Net NYUv2 loader).
            * ``"multiply"``: depth * s. Right for **disparity / inverse depth**
              (geometrically consistent zoom; reference-implementations §3.1 item 14).
              Values may then exceed a dataset's clip (e.g. ``CITYSCAPES_DEPTH_MAX``).
            * ``"none"``: values unchanged (the XTasC-Net Cityscapes code).

            0 (invalid) stays 0 in every mode; "depth_valid" is never rescaled.

    Raises:
        ValueError: (at construction) unknown ``depth_scaling``.
    """

    scale: float
    top: int
    left: int
    flip: bool
    depth_scaling: str = "divide"

    def __post_init__(self) -> None:
        _check_depth_scaling(self.depth_scaling)


def sample_augment_params(height: int, width: int,
                          generator: Optional[torch.Generator] = None,
                          depth_scaling: str = "divide") -> AugmentParams:
    """Draw random scale-crop and flip parameters with the torch RNG.

    Draw order: scale index (``torch.randint(0, 3)``), top (``torch.randint(0, H-h+1)``),
    left (``torch.randint(0, W-w+1)``), flip (``torch.rand(1) < 0.5``), where
    ``h = int(H/s)`` and ``w = int(W/s)``. Using the torch RNG (the global one when
    ``generator`` is None) makes DataLoader worker seeding reproducible.

    Args:
        height, width: sample size H, W in pixels (positive ints).
        generator: optional ``torch.Generator`` (CPU).
        depth_scaling: copied into the result (not random); see :class:`AugmentParams`.

    Returns:
        :class:`AugmentParams`.

    Raises:
        ValueError: non-positive size or unknown ``depth_scaling``.

    Source: MTAN / XTasC-Net ``RandomScaleCrop`` and NYUv2 flip
    (reference-implementations §1.4).
    """
    _check_depth_scaling(depth_scaling)
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid sample size {height}x{width}")
    k = int(torch.randint(0, len(AUGMENT_SCALES), (1,), generator=generator).item())
    s = AUGMENT_SCALES[k]
    h, w = int(height / s), int(width / s)
    top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
    flip = bool((torch.rand(1, generator=generator) < 0.5).item())
    return AugmentParams(scale=s, top=top, left=left, flip=flip, depth_scaling=depth_scaling)


def _shape_of(x) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)


def _check_sample_tensors(sample: Sample) -> Tuple[int, int]:
    if "image" not in sample:
        raise ValueError("sample has no 'image' entry")
    image = sample["image"]
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"sample['image'] must be a [3,H,W] tensor, got {_shape_of(image)}")
    H, W = int(image.shape[1]), int(image.shape[2])
    if "seg" in sample:
        seg = sample["seg"]
        if not isinstance(seg, torch.Tensor) or tuple(seg.shape) != (H, W):
            raise ValueError(f"sample['seg'] must be [{H},{W}], got {_shape_of(seg)}")
    if "depth" in sample:
        depth = sample["depth"]
        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (1, H, W):
            raise ValueError(f"sample['depth'] must be [1,{H},{W}], got {_shape_of(depth)}")
    if "depth_valid" in sample:
        valid = sample["depth_valid"]
        if (not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (1, H, W)
                or valid.dtype != torch.bool):
            raise ValueError(f"sample['depth_valid'] must be a bool [1,{H},{W}] tensor, got "
                             f"{_shape_of(valid)}"
                             + (f" {valid.dtype}" if isinstance(valid, torch.Tensor) else ""))
    return H, W


def _pixel_map_keys(sample: Sample, H: int, W: int) -> List[str]:
    """Keys (other than "image") of the per-pixel maps: tensors [H,W] or [C,H,W]."""
    return [k for k, v in sample.items()
            if k != "image" and isinstance(v, torch.Tensor) and v.dim() in (2, 3)
            and tuple(v.shape[-2:]) == (H, W)]


def _resize_nearest(t: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """Nearest-neighbour resize of a [H,W] or [C,H,W] tensor of any dtype, values exact.

    The source pixel of every output pixel depends only on the sizes and ``mode``, so
    all maps of a sample resized with the same arguments stay aligned."""
    x = t[None, None] if t.dim() == 2 else t[None]
    dtype = t.dtype
    if dtype == torch.bool:
        y = F.interpolate(x.to(torch.uint8), size=size, mode=mode).to(torch.bool)
    elif dtype == torch.uint8 or dtype in (torch.float32, torch.float64):
        y = F.interpolate(x, size=size, mode=mode)
    elif dtype.is_floating_point:
        y = F.interpolate(x.to(torch.float32), size=size, mode=mode).to(dtype)
    else:  # other integer types: float64 is exact up to 2**53
        y = F.interpolate(x.to(torch.float64), size=size, mode=mode).round().to(dtype)
    return (y[0, 0] if t.dim() == 2 else y[0]).contiguous()


def apply_augmentation(sample: Sample, params: AugmentParams,
                       normals_keys: Optional[Sequence[str]] = None) -> Sample:
    """Apply given scale-crop / flip parameters to a sample (deterministic).

    Crops ``int(H/s) x int(W/s)`` at (top, left) and resizes back to ``H x W``: the
    image bilinearly with ``align_corners=True``; every per-pixel map — "seg",
    "depth", "depth_valid" and any other tensor entry of shape ``[H,W]`` or
    ``[C,H,W]`` — with ``mode="nearest"`` (the same source pixel for all maps, so
    masks stay aligned with their data). "depth" values are then rescaled by
    ``params.depth_scaling`` ("divide": / s, "multiply": * s, "none": unchanged;
    invalid 0 stays 0). Other per-pixel maps keep their values (they are treated as
    labels or masks). Then everything is flipped horizontally if ``params.flip``;
    the maps named in ``normals_keys`` (surface normals ``[3,H,W]``, channel 0 = x =
    image right) also get their x component negated on a flip, as Vandenhende's
    ``RandomHorizontalFlip`` does (reference-implementations §2.9). The scale crop
    does not change normals (a zoom keeps the camera-frame directions). Maps not
    listed in ``normals_keys`` are only mirrored, as before.

    Args:
        sample: dict with "image" float32 [3,H,W] (in [0, 1], i.e. before
            normalisation), optional "seg" int64 [H,W], optional "depth" float32
            [1,H,W], optional "depth_valid" bool [1,H,W], optional other per-pixel
            maps. Non-tensor entries and tensors of other shapes are passed through.
        params: :class:`AugmentParams`.
        normals_keys: keys of surface-normal maps; None = ``NORMALS_KEYS``
            (``("normals",)``). Keys absent from the sample are ignored.

    Returns:
        A new dict; the input is not modified. Shapes and dtypes are preserved.

    Raises:
        ValueError: on malformed "image"/"seg"/"depth"/"depth_valid" tensors, a
            normals entry that is not a floating ``[3,H,W]`` tensor, or a crop
            outside the sample.

    Source: MTAN / XTasC-Net loaders (reference-implementations §1.4); the masks
    are cropped with the data, unlike the authors' Cityscapes code (§3.1 item 1).
    """
    H, W = _check_sample_tensors(sample)
    nkeys = _check_normals_entries(sample, normals_keys, H, W)
    s = float(params.scale)
    if s < 1.0:
        raise ValueError(f"augmentation scale must be >= 1, got {s}")
    _check_depth_scaling(params.depth_scaling)
    h, w = int(H / s), int(W / s)
    i, j = int(params.top), int(params.left)
    if h < 1 or w < 1 or i < 0 or j < 0 or i + h > H or j + w > W:
        raise ValueError(f"crop {h}x{w} at ({i},{j}) does not fit a {H}x{W} sample")
    out = dict(sample)

    image = sample["image"]
    img = F.interpolate(image[None, :, i:i + h, j:j + w].float(), size=(H, W),
                        mode="bilinear", align_corners=True)[0].to(image.dtype)
    if params.flip:
        img = torch.flip(img, dims=[-1])
    out["image"] = img.contiguous()

    for key in _pixel_map_keys(sample, H, W):
        t = sample[key]
        m = _resize_nearest(t[..., i:i + h, j:j + w], (H, W), "nearest")
        if key == "depth":
            if params.depth_scaling == "divide":
                m = (m.float() / s).to(t.dtype)
            elif params.depth_scaling == "multiply":
                m = (m.float() * s).to(t.dtype)
        if params.flip:
            m = torch.flip(m, dims=[-1])  # a new tensor
            if key in nkeys:
                m[0] = -m[0]  # mirrored scene: the normal's x component changes sign
        out[key] = m.contiguous()
    return out


def _check_normals_entries(sample: Sample, normals_keys: Optional[Sequence[str]],
                           H: int, W: int) -> Tuple[str, ...]:
    """Validate the normals entries of a sample; return the normals keys to use."""
    if normals_keys is None:
        nkeys = NORMALS_KEYS
    elif isinstance(normals_keys, (str, bytes)):
        raise ValueError("normals_keys must be a sequence of keys, not a single string")
    else:
        nkeys = tuple(normals_keys)
    for key in nkeys:
        if key in sample:
            n = sample[key]
            if (not isinstance(n, torch.Tensor) or tuple(n.shape) != (3, H, W)
                    or not n.dtype.is_floating_point):
                raise ValueError(f"sample[{key!r}] (surface normals) must be a floating [3,{H},{W}] "
                                 f"tensor, got {_shape_of(n)}"
                                 + (f" {n.dtype}" if isinstance(n, torch.Tensor) else ""))
    return nkeys


def augment_sample(sample: Sample, generator: Optional[torch.Generator] = None,
                   depth_scaling: str = "divide",
                   normals_keys: Optional[Sequence[str]] = None) -> Sample:
    """MTAN-style training augmentation shared by all datasets.

    Random scale crop, s drawn uniformly from ``AUGMENT_SCALES`` = (1.0, 1.2, 1.5):
    crop ``int(H/s) x int(W/s)`` at a uniformly random position, resize back to
    ``H x W`` (image bilinear ``align_corners=True``; seg, depth, depth_valid and
    any other per-pixel map nearest), depth rescaled by ``depth_scaling`` (default
    "divide": metric depth / s; 0 = invalid stays 0); then horizontal flip with
    p = 0.5. Randomness comes from ``torch.randint`` / ``torch.rand`` with
    ``generator`` (the global torch RNG when None), so DataLoader worker seeding
    makes it reproducible. Surface normals (the keys in ``normals_keys``, default
    ``NORMALS_KEYS``) get their x component negated on a flip. See
    :func:`sample_augment_params` and :func:`apply_augmentation`.

    The authors apply flip before the crop for Cityscapes and after it for NYUv2;
    with a uniformly random crop position the two orders give the same
    distribution, so one order (crop, then flip) is used for both.

    Args:
        sample: dict with "image" float32 [3,H,W] in [0, 1] (un-normalised),
            "seg" int64 [H,W] (ignore -1, preserved), "depth" float32 [1,H,W],
            "depth_valid" bool [1,H,W] (all optional except "image").
        generator: optional ``torch.Generator``.
        depth_scaling: "divide" (metric depth, NYUv2), "multiply" (disparity,
            geometrically consistent) or "none" (XTasC-Net Cityscapes code); see
            :class:`AugmentParams`.
        normals_keys: keys of surface-normal maps ``[3,H,W]``; None =
            ``NORMALS_KEYS``.

    Returns:
        A new sample dict with the same shapes and dtypes.

    Raises:
        ValueError: on malformed sample tensors (normals included) or unknown
            ``depth_scaling``.

    Source: XTasC-Net paper §V-A; reference-implementations §1.4, §3.1 items 1 and
    14, PART 4 items 1-2.
    """
    H, W = _check_sample_tensors(sample)
    _check_normals_entries(sample, normals_keys, H, W)
    return apply_augmentation(sample, sample_augment_params(H, W, generator, depth_scaling),
                              normals_keys)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _check_size(size) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W) or None, got {size!r}") from None
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer))) or h <= 0 or w <= 0:
        raise ValueError(f"size must be two positive ints (H, W), got {size!r}")
    return int(h), int(w)


def _resize_sample(sample: Sample, size: Optional[Tuple[int, int]]) -> Sample:
    """Resize to ``size``: image bilinear (antialias, align_corners=False), every
    per-pixel map (seg, depth, depth_valid, ...) nearest (pixel-centre aligned,
    ``nearest-exact``; values are not rescaled)."""
    if size is None:
        return sample
    image = sample["image"]
    H, W = int(image.shape[1]), int(image.shape[2])
    if (H, W) == tuple(size):
        return sample
    out = dict(sample)
    out["image"] = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                 antialias=True)[0].clamp_(0.0, 1.0).contiguous()
    for key in _pixel_map_keys(sample, H, W):
        out[key] = _resize_nearest(sample[key], size, "nearest-exact")
    return out


def _finish(sample: Sample, augment: bool, normalize: bool, depth_scaling: str = "divide") -> Sample:
    if augment:
        sample = augment_sample(sample, depth_scaling=depth_scaling)
    if normalize:
        sample = dict(sample)
        sample["image"] = normalize_image(sample["image"]).contiguous()
    return sample


def _open_png(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    return im


def _read_rgb_png(path: Path) -> np.ndarray:
    """uint8 (H,W,3) from an RGB PNG; ValueError naming the file otherwise."""
    with _open_png(path) as im:
        if im.mode != "RGB":
            raise ValueError(f"RGB image {path} has mode {im.mode!r}, expected 'RGB'")
        a = np.array(im, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"RGB image {path} has array shape {a.shape}, expected (H,W,3)")
    return a


def _read_uint16_png(path: Path, what: str) -> np.ndarray:
    """Raw values (H,W) of a 16-bit single-channel PNG (mode "I;16*", or mode "I"
    with values in 0..65535); ValueError naming the file otherwise."""
    with _open_png(path) as im:
        mode = im.mode
        if mode not in _DEPTH16_MODES and mode != "I":
            raise ValueError(f"{what} image {path} has mode {mode!r}, expected 16-bit "
                             f"single channel ({', '.join(_DEPTH16_MODES)})")
        a = np.array(im)
    if a.ndim != 2:
        raise ValueError(f"{what} image {path} has array shape {a.shape}, expected (H,W)")
    if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(f"{what} image {path} (mode 'I') has values outside 0..65535: "
                         f"[{a.min()}, {a.max()}], expected uint16")
    return a


def _read_label_png(path: Path, max_value: int, expected: str) -> np.ndarray:
    """uint8 (H,W) from an 8-bit single-channel PNG ('L', or raw 'P' indices) whose
    values are <= max_value; ValueError naming the file (and the bad value) otherwise."""
    with _open_png(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"label image {path} has mode {im.mode!r}, expected 8-bit "
                             f"single channel ('L' or 'P')")
        a = np.array(im, dtype=np.uint8)  # 'P': raw palette indices
    if a.ndim != 2:
        raise ValueError(f"label image {path} has array shape {a.shape}, expected (H,W)")
    if a.size and int(a.max()) > max_value:
        bad = int(a.max())
        raise ValueError(f"label image {path} contains value {bad} > {max_value} "
                         f"(expected {expected})")
    return a


def _check_same_size(reference: Tuple[Path, np.ndarray], *others: Tuple[Path, np.ndarray]) -> None:
    p_ref, ref = reference
    hw = ref.shape[:2]
    for p, a in others:
        if a.shape[:2] != hw:
            raise ValueError(f"{p} has size {a.shape[1]}x{a.shape[0]} (WxH), but the RGB image "
                             f"{p_ref} has {hw[1]}x{hw[0]}")


def _rgb_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32).div_(255.0).contiguous()


# --------------------------------------------------------------------------- #
# surface normals: renormalisation and normals from depth
# --------------------------------------------------------------------------- #
#: NYU Depth v2 colour-camera intrinsics (fx, fy, cx, cy) in pixels for the 640x480
#: frames, from ``camera_params.m`` of the NYU Depth v2 toolbox (Silberman et al.,
#: ECCV 2012).
NYU_COLOR_INTRINSICS: Tuple[float, float, float, float] = (
    5.1885790117450188e+02, 5.1946961112127485e+02, 3.2558244941119034e+02, 2.5373616633400465e+02)


def renormalize_normals(normals: torch.Tensor) -> torch.Tensor:
    """Scale every normal vector to unit length; zero vectors (invalid) stay zero.

    Args:
        normals: floating tensor ``[3,H,W]`` (or ``[N,3,H,W]``): x, y, z components.

    Returns:
        A new tensor of the same shape and dtype: ``n / |n|`` where ``|n| > 0``, else 0
        (``|n|`` from the sum of squares, so float32 vectors shorter than about 1e-19
        count as zero).

    Raises:
        ValueError: not a floating tensor with 3 channels in dimension -3.

    Source: Vandenhende's ``FixedResize`` renormalises the normals after resizing
    (reference-implementations §2.9; it adds float32 eps to ``|n|`` instead of
    keeping zeros exactly).
    """
    if (not isinstance(normals, torch.Tensor) or normals.dim() not in (3, 4)
            or normals.shape[-3] != 3 or not normals.dtype.is_floating_point):
        raise ValueError(f"normals must be a floating [3,H,W] or [N,3,H,W] tensor, got "
                         f"{_shape_of(normals)}"
                         + (f" {normals.dtype}" if isinstance(normals, torch.Tensor) else ""))
    # sum of squares: much faster than linalg.vector_norm over the channel dim on CPU;
    # float32 vectors shorter than ~1e-19 underflow to 0 and count as invalid
    norm = (normals * normals).sum(dim=-3, keepdim=True).sqrt()
    inv = torch.where(norm > 0, norm.reciprocal(), torch.zeros((), dtype=norm.dtype,
                                                               device=norm.device))
    return (normals * inv).contiguous()


def normals_from_depth(depth: torch.Tensor,
                       fx: float = NYU_COLOR_INTRINSICS[0], fy: float = NYU_COLOR_INTRINSICS[1],
                       cx: float = NYU_COLOR_INTRINSICS[2], cy: float = NYU_COLOR_INTRINSICS[3],
                       image_size: Tuple[int, int] = (480, 640)
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Surface normals of a metric depth map by back-projection and central differences.

    Convention: OpenCV camera frame, **x right, y down, z forward** (the camera looks
    along +z); pixel (row v, column u) with 0-based indices. Steps (float64):

    1. Intrinsics for this map: the given ones are for a map of ``image_size`` =
       (H0, W0); a map of size (H, W) is taken to show the same field of view, so
       ``fx' = fx * W/W0``, ``cx' = cx * W/W0``, ``fy' = fy * H/H0``, ``cy' = cy * H/H0``.
    2. Back-projection ``P(v,u) = Z * ((u - cx')/fx', (v - cy')/fy', 1)``, Z = depth.
    3. Central differences ``du = P(v,u+1) - P(v,u-1)``, ``dv = P(v+1,u) - P(v-1,u)``;
       ``n = du x dv``, normalised to unit length.
    4. Orientation towards the camera: n is negated where ``n . P > 0`` (so
       ``n . P <= 0``; a fronto-parallel plane Z = const gives n = (0, 0, -1)).
    5. Invalid (n = 0, valid = False): border pixels (first/last row and column),
       pixels whose own depth or any of the four neighbours used is 0, and pixels with
       a degenerate cross product.

    This is an **approximation** of the NYUv2 normals used by Vandenhende's NYUD_MT
    (those were computed by a different, smoothed plane-fitting pipeline). It is meant
    for frames without released normals, e.g. ``shared/data/nyuv2-test10``; on depth
    edges it gives normals of the "surface" bridging foreground and background. The
    NYU toolbox uses 1-based MATLAB pixel coordinates; here u, v are 0-based (the
    usual Python convention), a one-pixel shift of the principal point that does not
    change the normals measurably.

    Args:
        depth: float tensor ``[1,H,W]``, metres, 0 = invalid (finite, >= 0).
        fx, fy: focal lengths in pixels for ``image_size`` (> 0). Default: NYUv2
            colour camera (``NYU_COLOR_INTRINSICS``).
        cx, cy: principal point in pixels for ``image_size``.
        image_size: (H0, W0) the intrinsics refer to; default (480, 640).

    Returns:
        ``(normals, valid)``: float32 ``[3,H,W]`` unit vectors (x, y, z; 0 where
        invalid) and bool ``[1,H,W]``.

    Raises:
        ValueError: ``depth`` not a floating ``[1,H,W]`` tensor, non-finite or
            negative depth, non-positive focal length or ``image_size``.

    Source: pinhole back-projection with the NYU Depth v2 toolbox intrinsics
    (``camera_params.m``); flip convention of reference-implementations §2.9.
    """
    if (not isinstance(depth, torch.Tensor) or depth.dim() != 3 or depth.shape[0] != 1
            or not depth.dtype.is_floating_point):
        raise ValueError(f"depth must be a floating [1,H,W] tensor, got {_shape_of(depth)}"
                         + (f" {depth.dtype}" if isinstance(depth, torch.Tensor) else ""))
    h0, w0 = _check_size(image_size)
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"principal point must be finite, got cx={cx}, cy={cy}")
    z = depth[0].detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(z).all():
        raise ValueError("depth contains non-finite values")
    if z.size and z.min() < 0:
        raise ValueError(f"depth contains negative values (min {z.min():.4g}); "
                         f"expected metres >= 0, 0 = invalid")
    H, W = z.shape
    sx, sy = W / w0, H / h0
    fxs, fys, cxs, cys = fx * sx, fy * sy, cx * sx, cy * sy
    # numpy: several times faster than torch for these strided element-wise ops on CPU
    normals = np.zeros((3, H, W), dtype=np.float32)
    valid = np.zeros((H, W), dtype=bool)
    if H >= 3 and W >= 3:
        X = z * ((np.arange(W, dtype=np.float64) - cxs) / fxs)[None, :]
        Y = z * ((np.arange(H, dtype=np.float64) - cys) / fys)[:, None]
        # du = P(v, u+1) - P(v, u-1), dv = P(v+1, u) - P(v-1, u) on the interior
        dux, duy, duz = (X[1:-1, 2:] - X[1:-1, :-2], Y[1:-1, 2:] - Y[1:-1, :-2],
                         z[1:-1, 2:] - z[1:-1, :-2])
        dvx, dvy, dvz = (X[2:, 1:-1] - X[:-2, 1:-1], Y[2:, 1:-1] - Y[:-2, 1:-1],
                         z[2:, 1:-1] - z[:-2, 1:-1])
        nx = duy * dvz - duz * dvy
        ny = duz * dvx - dux * dvz
        nz = dux * dvy - duy * dvx
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        ok = ((z[1:-1, 1:-1] > 0) & (z[1:-1, 2:] > 0) & (z[1:-1, :-2] > 0)
              & (z[2:, 1:-1] > 0) & (z[:-2, 1:-1] > 0) & (norm > 0))
        # 1/|n| where valid, sign chosen so that n . P <= 0 (towards the camera), 0 elsewhere
        facing = nx * X[1:-1, 1:-1] + ny * Y[1:-1, 1:-1] + nz * z[1:-1, 1:-1]
        scale = np.where(ok, np.where(facing > 0, -1.0, 1.0) / np.where(ok, norm, 1.0), 0.0)
        normals[0, 1:-1, 1:-1] = nx * scale
        normals[1, 1:-1, 1:-1] = ny * scale
        normals[2, 1:-1, 1:-1] = nz * scale
        valid[1:-1, 1:-1] = ok
    return (torch.from_numpy(normals).to(depth.device),
            torch.from_numpy(valid)[None].to(depth.device))


def _resize_sample_with_normals(sample: Sample, size: Optional[Tuple[int, int]]) -> Sample:
    """:func:`_resize_sample` (normals nearest like every per-pixel map), then, if the
    sample was resized, the normals renormalised to unit length (zero vectors stay
    zero; a no-op up to rounding for unit input, since nearest copies vectors)."""
    out = _resize_sample(sample, size)
    if out is not sample and "normals" in out:
        out = dict(out)
        out["normals"] = renormalize_normals(out["normals"])
    return out


def _unit_normals_hw3(nrm: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(H,W,3) float normals -> (float32 (3,H,W) unit vectors with 0 where |n| == 0,
    bool (H,W) |n| > 0)."""
    n = np.ascontiguousarray(np.transpose(nrm, (2, 0, 1)), dtype=np.float64)
    norm = np.sqrt((n * n).sum(axis=0))
    valid = norm > 0
    out = (n * (np.where(valid, 1.0 / np.where(valid, norm, 1.0), 0.0))[None]).astype(np.float32)
    return out, valid


# --------------------------------------------------------------------------- #
# NYUv2: real-frame PNG layout
# --------------------------------------------------------------------------- #
class NYUv2Frames(torch.utils.data.Dataset):
    """NYUv2 frames stored as PNG files (layout of ``shared/data/nyuv2-test10``).

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
    and depth conventions of MTAN / XTasC-Net (XTasC-Net paper §V-A,
    reference-implementations §1.4).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: PathLike, size: Optional[Tuple[int, int]] = (240, 320),
                 classes: int = 13, augment: bool = False, normalize: bool = True,
                 frames: Optional[Sequence[str]] = None, depth_scaling: str = "divide",
                 with_normals: bool = False) -> None:
        if classes not in (13, 40):
            raise ValueError(f"classes must be 13 or 40, got {classes!r}")
        self.root = Path(root)
        self.size = _check_size(size)
        self.num_classes = int(classes)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.depth_scaling = _check_depth_scaling(depth_scaling)
        self.with_normals = bool(with_normals)
        self.rgb_dir = self.root / "rgb"
        self.depth_dir = self.root / "depth"
        self.label_dir = self.root / f"label{self.num_classes}"
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
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
        rgb = _read_rgb_png(p_rgb)
        depth = _read_uint16_png(p_depth, "depth").astype(np.float32) / 1000.0
        label = _read_label_png(p_label, self.num_classes,
                                f"0 = unlabelled or 1..{self.num_classes}")
        _check_same_size((p_rgb, rgb), (p_depth, depth), (p_label, label))
        depth_t = torch.from_numpy(depth)[None].contiguous()
        sample: Sample = {
            "image": _rgb_tensor(rgb),
            "seg": torch.from_numpy(label.astype(np.int64) - 1),  # 0 -> -1, k -> k-1
            "depth": depth_t,
            "depth_valid": depth_t > 0,
            "name": fid,
        }
        if self.with_normals:
            normals, normals_valid = normals_from_depth(depth_t)
            sample["normals"] = normals
            sample["normals_valid"] = normals_valid
            sample = _resize_sample_with_normals(sample, self.size)
        else:
            sample = _resize_sample(sample, self.size)
        return _finish(sample, self.augment, self.normalize, self.depth_scaling)

    def __repr__(self) -> str:
        return (f"NYUv2Frames(root={str(self.root)!r}, n={len(self)}, size={self.size}, "
                f"classes={self.num_classes}, augment={self.augment}, normalize={self.normalize}"
                + (", with_normals=True)" if self.with_normals else ")"))


# --------------------------------------------------------------------------- #
# Cityscapes: label maps and the disparity target
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

    Source: XTasC-Net ``dataloader.py::encode_segmt`` (reference-implementations
    §1.4), cityscapesScripts ``labels.py`` (Cordts et al., CVPR 2016). The
    authors' ignore value 250 is this project's ``IGNORE_INDEX`` (-1).
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

    Source: reference-implementations §1.4 (label maps 7/19).
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

    Source: XTasC-Net ``dataloader.py::CityscapesDataset`` (reference-implementations
    §1.4 "Depth target", PART 4 item 2).
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
# Cityscapes: official files
# --------------------------------------------------------------------------- #
class CityscapesFiles(torch.utils.data.Dataset):
    """Cityscapes read from the official files, as the XTasC-Net Cityscapes loader does.

    Layout under ``root``::

        leftImg8bit/{split}/<city>/<name>_leftImg8bit.png     RGB uint8
        gtFine/{split}/<city>/<name>_gtFine_labelIds.png      uint8 label ids 0..33
        disparity/{split}/<city>/<name>_disparity.png         uint16 disparity

    Frames are the ``<city>/<name>_leftImg8bit.png`` files under
    ``leftImg8bit/{split}``, sorted by ``<name>`` (which starts with the city).
    Standard counts: 2975 train, 500 val (the authors report on val; use
    :func:`split_train_val` on train for model selection).

    Conversion (reference-implementations §1.4):

    * labels: :func:`cityscapes_labels_to_train_ids` (7 categories or 19 trainIds),
      void -> -1 (the authors' 250).
    * depth: :func:`cityscapes_disparity_to_depth`: target ``(p-1)/256**2`` clipped
      at 0.4922 — **disparity/256 (inverse-depth-like) units, not metres** — 0 where
      p == 0; "depth_valid" = p > 0 (p == 1: valid, target 0).
    * resize to ``size``: image bilinear with antialias (the authors resize the
      RGB with nearest neighbour, a bug not reproduced: §3.1 item 4); labels, depth
      and depth_valid nearest (``nearest-exact``); disparity values are not rescaled
      with the image size (as in the authors' code).
    * if ``augment``: :func:`augment_sample` (scale crop + flip) with
      ``depth_scaling``; the mask is cropped with the data (the authors' bug §3.1
      item 1 is not reproduced).
    * if ``normalize``: ImageNet normalisation (the authors normalise Cityscapes).

    ``depth_scaling`` defaults to ``"none"``: the authors' Cityscapes code does not
    rescale the disparity target under the scale crop (§3.1 item 14), and results
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

    Source: Cordts et al., CVPR 2016 (data); XTasC-Net paper §V-A and
    ``dataloader.py::CityscapesDataset`` (reference-implementations §1.4, §3.1
    items 1, 4, 14, PART 4 item 2).
    """

    ignore_index: int = IGNORE_INDEX
    depth_max: float = CITYSCAPES_DEPTH_MAX

    _IMAGE_SUFFIX = "_leftImg8bit.png"
    _LABEL_SUFFIX = "_gtFine_labelIds.png"
    _DISPARITY_SUFFIX = "_disparity.png"

    def __init__(self, root: PathLike, split: str = "train", classes: int = 7,
                 size: Optional[Tuple[int, int]] = (128, 256), augment: bool = False,
                 normalize: bool = True, depth_scaling: str = "none") -> None:
        self._lut = cityscapes_label_table(classes)  # validates classes
        self.num_classes = int(classes)
        self.root = Path(root)
        self.split = str(split)
        self.size = _check_size(size)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.depth_scaling = _check_depth_scaling(depth_scaling)
        self.image_dir = self.root / "leftImg8bit" / self.split
        self.label_dir = self.root / "gtFine" / self.split
        self.disparity_dir = self.root / "disparity" / self.split
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
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
        rgb = _read_rgb_png(p_rgb)
        ids = _read_label_png(p_label, _CS_MAX_ID, f"Cityscapes label ids 0..{_CS_MAX_ID}")
        disp = _read_uint16_png(p_disp, "disparity")
        _check_same_size((p_rgb, rgb), (p_label, ids), (p_disp, disp))
        target, valid = cityscapes_disparity_to_depth(disp)
        sample: Sample = {
            "image": _rgb_tensor(rgb),
            "seg": torch.from_numpy(self._lut[ids]).contiguous(),
            "depth": torch.from_numpy(target)[None].contiguous(),
            "depth_valid": torch.from_numpy(valid)[None].contiguous(),
            "name": self.frames[index][1],
        }
        sample = _resize_sample(sample, self.size)
        return _finish(sample, self.augment, self.normalize, self.depth_scaling)

    def __repr__(self) -> str:
        return (f"CityscapesFiles(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, size={self.size}, augment={self.augment}, "
                f"normalize={self.normalize}, depth_scaling={self.depth_scaling!r})")


# --------------------------------------------------------------------------- #
# MTAN preprocessed .npy layouts (NYUv2 and Cityscapes share one reader)
# --------------------------------------------------------------------------- #
def _check_depth_array(dep: np.ndarray, path: Path, unit: str, depth_max: Optional[float] = None) -> np.ndarray:
    """``dep`` as float32 after checking it is finite, >= 0 and (if given) <= depth_max.

    Raises:
        ValueError: naming ``path`` and the offending value.
    """
    dep = dep.astype(np.float32)
    if not np.isfinite(dep).all():
        raise ValueError(f"{path} contains non-finite depth values")
    if dep.size and dep.min() < 0:
        raise ValueError(f"{path} contains negative depth {dep.min():.4g} (expected {unit} >= 0, 0 = invalid)")
    if depth_max is not None and dep.size and dep.max() > depth_max + 1e-4:
        raise ValueError(f"{path} contains depth {dep.max():.4g} > {depth_max} (expected {unit} in [0, {depth_max}])")
    return dep


class _MTANNpyDataset(torch.utils.data.Dataset):
    """Reader of MTAN's preprocessed layout ``root/{split}/{image,<label>,depth}/{i}.npy``.

    Subclasses fix the label folder, the number of classes, the depth units
    (``_depth_unit``), an optional upper bound of the depth values
    (``depth_max``) and the default ``depth_scaling``. See :class:`MTANNYUv2` and
    :class:`MTANCityscapes` for the file contents and the returned samples.
    """

    ignore_index: int = IGNORE_INDEX
    #: Largest accepted depth value (None: unbounded); checked with a 1e-4 tolerance.
    depth_max: Optional[float] = None
    _depth_unit: str = "metres"

    def __init__(self, root: PathLike, split: str, label_folder: str, num_classes: int,
                 augment: bool, normalize: bool, depth_scaling: str) -> None:
        self.root = Path(root)
        self.split = str(split)
        self.num_classes = int(num_classes)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.depth_scaling = _check_depth_scaling(depth_scaling)
        self.split_dir = self.root / self.split
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
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

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"missing file: {path}")
        try:
            a = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as e:  # corrupt header, pickled object, truncated data, ...
            raise ValueError(f"cannot load {path}: {e}") from e
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{path} does not contain a single array (got {type(a).__name__})")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
                or a.dtype == np.bool_):
            raise ValueError(f"{path} has non-numeric dtype {a.dtype}")
        return a

    def __getitem__(self, index: int) -> Sample:
        """Load sample ``index``; see the subclass docstring for the returned dict."""
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} samples")
        p_img = self.dirs["image"] / f"{index}.npy"
        p_lab = self.dirs["label"] / f"{index}.npy"
        p_dep = self.dirs["depth"] / f"{index}.npy"

        img = self._load(p_img)
        if img.ndim != 3 or (img.shape[2] != 3 and img.shape[0] != 3):
            raise ValueError(f"{p_img} has shape {img.shape}, expected (H, W, 3) or (3, H, W)")
        img = img.astype(np.float32)
        if not np.isfinite(img).all():
            raise ValueError(f"{p_img} contains non-finite values")
        if img.size and (img.min() < -1e-6 or img.max() > 1.0 + 1e-6):
            raise ValueError(f"{p_img} has values in [{img.min():.4g}, {img.max():.4g}], "
                             f"expected RGB in [0, 1]")

        lab = self._load(p_lab)
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

        dep = self._load(p_dep)
        if dep.shape != (H, W, 1):
            raise ValueError(f"{p_dep} has shape {dep.shape}, expected ({H}, {W}, 1) matching {p_img}")
        dep = _check_depth_array(dep, p_dep, self._depth_unit, self.depth_max)

        depth_t = torch.from_numpy(dep).permute(2, 0, 1).contiguous()
        sample: Sample = {
            "image": torch.from_numpy(np.clip(img_chw, 0.0, 1.0)).contiguous(),
            "seg": torch.from_numpy(lab).contiguous(),
            "depth": depth_t,
            "depth_valid": depth_t > 0,
            "name": f"{self.split}/{index}",
        }
        return _finish(sample, self.augment, self.normalize, self.depth_scaling)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, augment={self.augment}, normalize={self.normalize}, "
                f"depth_scaling={self.depth_scaling!r})")


class MTANNYUv2(_MTANNpyDataset):
    """NYUv2 in MTAN's preprocessed ``.npy`` layout (the data XTasC-Net trains on).

    Layout: ``root/{split}/{image,label,depth}/{i}.npy`` for i = 0..N-1 contiguous,
    N = number of ``image/*.npy`` files (``normal/`` is not read). Standard MTAN
    counts: 795 train, 654 val (val is the official test split; select models on
    a :func:`split_train_val` part of train).

    File contents (MTAN convention, reference-implementations §1.4):

    ==============  ==========  ==========================================
    file            shape       content
    ==============  ==========  ==========================================
    image/i.npy     (H, W, 3)   float RGB in [0, 1] ((3, H, W) is accepted)
    label/i.npy     (H, W)      integer-valued (float or int), -1 void,
                                0..12 classes (NYU-13 order, see
                                ``NYU13_CLASS_NAMES``)
    depth/i.npy     (H, W, 1)   metres, 0 = invalid
    ==============  ==========  ==========================================

    Size is taken from the data (288x384 for MTAN's files). If ``augment``,
    :func:`augment_sample` is applied (global torch RNG, ``depth_scaling``, default
    "divide" as in MTAN / XTasC-Net); then, if ``normalize``, ImageNet
    normalisation. The XTasC-Net code uses no normalisation for NYUv2: pass
    ``normalize=False`` to match it.

    Args:
        root: folder containing the split folders.
        split: split folder name, e.g. "train" or "val".
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        depth_scaling: see :class:`AugmentParams`; default "divide" (metric depth).

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..12},
    "depth" float32 [1,H,W] metres (0 invalid), "depth_valid" bool [1,H,W]
    (depth > 0), "name" str (``"{split}/{i}"``).

    Raises:
        FileNotFoundError: (at construction) missing root/split/sub-folder, no
            ``image/*.npy``, or a missing ``{image,label,depth}/{i}.npy`` for some
            i < N (a gap); the message names the path.
        ValueError: bad ``depth_scaling``; (at ``__getitem__``) file np.load cannot
            read, wrong shape, non-finite values, image outside [0, 1], label not
            integer-valued or outside {-1, 0..12}, negative depth, or sizes that
            differ between the three files; the message names the file.

    Source: MTAN (Liu et al., CVPR 2019) preprocessed NYUv2; XTasC-Net
    ``dataloader.py::NYUv2`` (XTasC-Net paper §V-A, reference-implementations §1.4,
    PART 4 item 1).
    """

    num_classes: int = 13

    def __init__(self, root: PathLike, split: str = "train", augment: bool = False,
                 normalize: bool = True, depth_scaling: str = "divide") -> None:
        super().__init__(root, split, "label", 13, augment, normalize, depth_scaling)


class MTANCityscapes(_MTANNpyDataset):
    """Cityscapes in MTAN's preprocessed ``.npy`` layout.

    Layout: ``root/{split}/{image,label_7,label_19,depth}/{i}.npy`` for i = 0..N-1
    contiguous, N = number of ``image/*.npy`` files; only the label folder of the
    chosen ``classes`` is read.

    File contents (MTAN convention, reference-implementations PART 4 item 2):

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

    Source: MTAN (Liu et al., CVPR 2019) ``create_dataset.py::CityScapes``;
    reference-implementations §1.4 and PART 4 item 2.
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
# MT-CP: Vandenhende's NYUD_MT and PASCAL_MT releases
# --------------------------------------------------------------------------- #
_CONVERTIBLE_RGB_MODES = ("RGB", "L", "CMYK", "YCbCr")


def _read_id_file(path: Path) -> List[str]:
    """Ids of a split file, one per line (surrounding whitespace stripped, blank lines
    skipped). FileNotFoundError / ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read split file {path}: {e}") from e
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {path} lists no ids")
    return ids


def _read_rgb_image(path: Path) -> np.ndarray:
    """uint8 (H,W,3) from an RGB image file (JPEG or PNG). Grayscale, CMYK and YCbCr
    files are converted to RGB (Vandenhende's loaders call ``.convert('RGB')``); other
    modes raise ValueError naming the file."""
    with _open_png(path) as im:
        if im.mode not in _CONVERTIBLE_RGB_MODES:
            raise ValueError(f"RGB image {path} has mode {im.mode!r}, expected one of "
                             f"{_CONVERTIBLE_RGB_MODES}")
        a = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"RGB image {path} has array shape {a.shape}, expected (H,W,3)")
    return a


class NYUDMT(torch.utils.data.Dataset):
    """NYUD-v2 in Vandenhende's ``NYUD_MT`` layout, the MT-CP NYUD data.

    Layout under ``root`` (reference-implementations §2.9, PART 4 item 3)::

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

    Not applied here (they belong to the loss / evaluation): MT-CP's depth cap of
    6.5535 m (reference-implementations §2.6, §3.2 item 9).

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
    MT-CP ``data/nyud2.py`` (reference-implementations §2.9, PART 4 item 3).
    """

    num_classes: int = 40
    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: PathLike, split: str = "train",
                 size: Optional[Tuple[int, int]] = (480, 640), augment: bool = False,
                 normalize: bool = True, depth_scaling: str = "divide") -> None:
        self.root = Path(root)
        self.split = str(split)
        self.size = _check_size(size)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.depth_scaling = _check_depth_scaling(depth_scaling)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.split_file = self.root / "gt_sets" / f"{self.split}.txt"
        ids = _read_id_file(self.split_file)
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
        rgb = _read_rgb_image(p_img)
        label = _read_label_png(p_seg, 40, "0 = unlabelled or 1..40")

        dep = _MTANNpyDataset._load(p_dep)
        if dep.ndim == 3 and dep.shape[2] == 1:
            dep = dep[:, :, 0]
        if dep.ndim != 2:
            raise ValueError(f"{p_dep} has shape {dep.shape}, expected (H, W) or (H, W, 1)")
        dep = _check_depth_array(dep, p_dep, "metres")

        nrm = _MTANNpyDataset._load(p_nrm)
        if nrm.ndim != 3 or nrm.shape[2] != 3:
            raise ValueError(f"{p_nrm} has shape {nrm.shape}, expected (H, W, 3)")
        nrm = nrm.astype(np.float32)
        if not np.isfinite(nrm).all():
            raise ValueError(f"{p_nrm} contains non-finite normal values")
        _check_same_size((p_img, rgb), (p_seg, label), (p_dep, dep), (p_nrm, nrm))

        depth_t = torch.from_numpy(dep)[None].contiguous()
        normals, normals_valid = _unit_normals_hw3(nrm)
        sample: Sample = {
            "image": _rgb_tensor(rgb),
            "seg": torch.from_numpy(label.astype(np.int64) - 1),  # 0 -> -1, k -> k-1
            "depth": depth_t,
            "depth_valid": depth_t > 0,
            "normals": torch.from_numpy(normals),
            "normals_valid": torch.from_numpy(normals_valid)[None],
            "name": self.frames[index],
        }
        sample = _resize_sample_with_normals(sample, self.size)
        return _finish(sample, self.augment, self.normalize, self.depth_scaling)

    def __repr__(self) -> str:
        return (f"NYUDMT(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.size}, augment={self.augment}, normalize={self.normalize})")


#: PASCAL VOC / PASCAL_MT semantic classes in label order 0..20.
PASCAL_SEMSEG_CLASS_NAMES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
#: Human-part classes 0..6 of the 6-part grouping (plus background).
PASCAL_HUMAN_PARTS_NAMES: Tuple[str, ...] = (
    "background", "head", "torso", "upper_arms", "lower_arms", "upper_legs", "lower_legs",
)
#: PASCAL-Part ``class_ind`` of "person" (Vandenhende's ``human_parts_category``).
PASCAL_PERSON_CLASS_IND: int = 15

#: PASCAL-Part person part name -> human-part class 1..6 (0 = background).
#: The 24 person parts of PASCAL-Part (Chen et al., CVPR 2014; listed with their
#: 1..24 ids for category "15" in Vandenhende's ``data/db_info/pascal_part.json``)
#: grouped as Vandenhende's ``PASCALContext.HUMAN_PART[6]``
#: (``data/pascal_context.py``), which overrides the json entry for persons:
#:
#: ===  ==========  =====================================================
#: 1    head        head, hair, leye, reye, lear, rear, lebrow, rebrow,
#:                  nose, mouth
#: 2    torso       torso, neck
#: 3    upper_arms  luarm, ruarm
#: 4    lower_arms  llarm, rlarm, lhand, rhand
#: 5    upper_legs  luleg, ruleg
#: 6    lower_legs  llleg, rlleg, lfoot, rfoot
#: ===  ==========  =====================================================
PART_GROUPS: Dict[str, int] = {
    "head": 1, "hair": 1, "leye": 1, "reye": 1, "lear": 1, "rear": 1,
    "lebrow": 1, "rebrow": 1, "nose": 1, "mouth": 1,
    "torso": 2, "neck": 2,
    "luarm": 3, "ruarm": 3,
    "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4,
    "luleg": 5, "ruleg": 5,
    "llleg": 6, "rlleg": 6, "lfoot": 6, "rfoot": 6,
}


def _mat_field(record, name: str, position: int, path: Path, what: str):
    """Field ``name`` of a scipy.io.loadmat struct record (np.void), else the field
    at ``position`` (the positional access of Vandenhende's reader)."""
    names = getattr(getattr(record, "dtype", None), "names", None)
    if not names:
        raise ValueError(f"{path}: {what} is not a MATLAB struct")
    if name in names:
        return record[name]
    if position < len(names):
        return record[position]
    raise ValueError(f"{path}: {what} has no field {name!r} (fields: {', '.join(names)})")


def _mat_records(value, path: Path, what: str) -> List:
    """Records of a MATLAB struct array as loaded by scipy (shape (1,n) or (n,1));
    an empty array (MATLAB ``[]``) gives []."""
    a = np.asarray(value)
    if a.size == 0:
        return []
    if a.dtype.names is None:
        raise ValueError(f"{path}: {what} is not a MATLAB struct array (dtype {a.dtype})")
    return list(a.ravel())


def _mat_scalar_int(value, path: Path, what: str) -> int:
    a = np.asarray(value)
    if a.size != 1 or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{path}: {what} must be a numeric scalar, got {a.dtype} {a.shape}")
    v = a.ravel()[0]
    if v != np.round(v):
        raise ValueError(f"{path}: {what} must be an integer, got {v!r}")
    return int(v)


def _mat_string(value, path: Path, what: str) -> str:
    a = np.asarray(value)
    if a.size != 1 or a.dtype.kind not in ("U", "S", "O"):
        raise ValueError(f"{path}: {what} must be a string, got {a.dtype} {a.shape}")
    v = a.ravel()[0]
    return v.decode() if isinstance(v, bytes) else str(v)


def read_pascal_human_parts(path: PathLike, image_size: Tuple[int, int]) -> np.ndarray:
    """Human-part label map of one PASCAL_MT ``human_parts/<id>.mat`` file.

    File structure, as ``scipy.io.loadmat`` (defaults) returns it (PASCAL-Part
    annotation, Chen et al., CVPR 2014; read positionally by Vandenhende as
    ``mat['anno'][0][0][1][0]``)::

        mat["anno"]                  (1,1) struct, fields (imname, objects)
        anno[0,0]["objects"]         (1,n) struct, fields (class, class_ind, mask, parts)
        object["class_ind"]          (1,1) int, 15 = person
        object["mask"]               (H,W) object mask
        object["parts"]              (1,k) struct, fields (part_name, mask), or an
                                     empty array when the object has no parts
        part["part_name"]            (1,) str, e.g. "luarm"
        part["mask"]                 (H,W) part mask (non-zero = part)

    Fields are looked up by name; a struct without that name falls back to the
    field position above (Vandenhende's access).

    Conversion (Vandenhende ``PASCALContext._load_human_parts`` with
    ``num_human_parts=6``): start from 0 (background); for every object with
    ``class_ind == 15`` (person) that has parts, in file order, set the pixels of
    each part mask to ``PART_GROUPS[part_name]`` (later parts overwrite earlier
    ones). Objects of other classes are ignored. If no person with parts exists, or
    no pixel got a part label, the whole map is ``IGNORE_INDEX`` (-1): Vandenhende's
    ``AddIgnoreRegions`` sets an all-zero human-parts map to 255 (it does so after
    augmentation, so there a crop that misses the person also becomes void; here the
    rule is applied to the full image only).

    Args:
        path: the ``.mat`` file.
        image_size: (H, W) of the image; every mask must have this shape, and
            images without persons get an all -1 map of this size.

    Returns:
        int64 array (H, W): -1 (no human-part annotation), 0 background, 1..6 as
        ``PASCAL_HUMAN_PARTS_NAMES``.

    Raises:
        FileNotFoundError: the file does not exist (message names it).
        ValueError: unreadable .mat, no ``anno`` variable, unexpected structure,
            a part name not in ``PART_GROUPS``, or a part mask whose shape is not
            ``image_size``; the message names the file.
        ImportError: scipy is not installed.

    Source: Vandenhende et al. (TPAMI 2021) ``data/pascal_context.py``,
    ``data/custom_transforms.py::AddIgnoreRegions``; reference-implementations §2.9.
    """
    path = Path(path)
    H, W = _check_size(image_size)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        import scipy.io as sio
    except ImportError as e:  # pragma: no cover - scipy is a dependency
        raise ImportError("reading PASCAL_MT human parts (.mat) needs scipy: pip install scipy") from e
    try:
        mat = sio.loadmat(str(path))
    except Exception as e:  # MatReadError, ValueError, OSError, ... on corrupt files
        raise ValueError(f"cannot read MATLAB file {path}: {e}") from e
    if "anno" not in mat:
        raise ValueError(f"{path} has no 'anno' variable (found: "
                         f"{', '.join(k for k in mat if not k.startswith('__')) or 'none'})")
    annos = _mat_records(mat["anno"], path, "'anno'")
    if len(annos) != 1:
        raise ValueError(f"{path}: 'anno' must be a 1x1 struct, got {len(annos)} records")
    objects = _mat_records(_mat_field(annos[0], "objects", 1, path, "'anno'"), path,
                           "'anno.objects'")
    target = np.zeros((H, W), dtype=np.int64)
    has_person_parts = False
    for k, obj in enumerate(objects):
        what = f"'anno.objects({k + 1})'"
        cls = _mat_scalar_int(_mat_field(obj, "class_ind", 1, path, what), path, f"{what}.class_ind")
        if cls != PASCAL_PERSON_CLASS_IND:
            continue
        parts = _mat_records(_mat_field(obj, "parts", 3, path, what), path, f"{what}.parts")
        if not parts:
            continue
        has_person_parts = True
        for j, part in enumerate(parts):
            pwhat = f"{what}.parts({j + 1})"
            name = _mat_string(_mat_field(part, "part_name", 0, path, pwhat), path,
                               f"{pwhat}.part_name")
            if name not in PART_GROUPS:
                raise ValueError(f"{path}: unknown person part name {name!r} in {pwhat} "
                                 f"(expected one of {sorted(PART_GROUPS)})")
            mask = np.asarray(_mat_field(part, "mask", 1, path, pwhat))
            if mask.shape != (H, W):
                raise ValueError(f"{path}: {pwhat}.mask has shape {mask.shape}, expected "
                                 f"({H}, {W}) (the image size)")
            if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == np.bool_):
                raise ValueError(f"{path}: {pwhat}.mask has non-numeric dtype {mask.dtype}")
            target[mask.astype(bool)] = PART_GROUPS[name]
    if not has_person_parts or not (target > 0).any():
        target.fill(IGNORE_INDEX)
    return target


class PASCALMT(torch.utils.data.Dataset):
    """PASCAL-Context in Vandenhende's ``PASCAL_MT`` layout, the MT-CP PASCAL data.

    Layout under ``root`` (reference-implementations §2.9, PART 4 item 3)::

        ImageSets/Context/{split}.txt    ids, one per line (4998 train / 5105 val)
        JPEGImages/<id>.jpg              RGB image (grayscale JPEGs are converted)
        semseg/VOC12/<id>.png            uint8 ('P' indices or 'L'): 0..20, 255 void;
        semseg/pascal-context/<id>.png   the VOC12 file is used when both exist
                                         (Vandenhende's ``_get_semseg_fname`` order)
        human_parts/<id>.mat             PASCAL-Part annotation, see
                                         :func:`read_pascal_human_parts`
        sal_distill/<id>.png             uint8 'L' distilled saliency 0..255

    Only the files of the requested ``tasks`` must exist. (Edges, distilled normals
    and ``ImageSets/Parts`` are not used.)

    Conversion:

    * "seg": 0..20 kept (``PASCAL_SEMSEG_CLASS_NAMES``, 0 = background is a class),
      255 -> -1 (ignore); any other value is an error.
    * "human_parts": :func:`read_pascal_human_parts`: 0 background, 1..6 the 6-part
      grouping ``PART_GROUPS``; all -1 for images without annotated persons.
    * "sal": ``value/255 >= 0.5`` -> 1.0 else 0.0 (Vandenhende writes ``> 0.5``;
      no uint8 value gives exactly 0.5, so both agree; the MT-CP loss binarises with
      ``>= 0.5``). The released maps have no void pixels, so "sal" never holds -1.
    * resize to ``size`` (default 512x512, MT-CP's ``FixedResize``, aspect ratio not
      kept): image bilinear (antialias, align_corners=False; the authors use cubic),
      label maps and saliency nearest (``nearest-exact``).
    * if ``augment``: :func:`augment_sample`: random scale crop s in {1.0, 1.2, 1.5}
      and horizontal flip p = 0.5, every map moved with the image (no depth). MT-CP
      instead uses flip, rotation U(-20, 20) degrees and scale U(0.75, 1.25) with
      ``warpAffine`` and 0 (background) fill; this reader shares the project's
      scale-crop augmentation.
    * if ``normalize``: ImageNet normalisation (MT-CP normalises).

    Args:
        root: dataset folder (the ``PASCAL_MT`` release).
        split: split name; ids are read from ``ImageSets/Context/{split}.txt``.
        size: output (H, W) or None (native size, which varies per image).
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        tasks: non-empty subset of ``("semseg", "human_parts", "sal")``.

    Each item: dict "image" float32 [3,H,W], "name" str (the id), and per task
    "seg" int64 [H,W] in {-1, 0..20}, "human_parts" int64 [H,W] in {-1, 0..6},
    "sal" float32 [1,H,W] in {0, 1}.

    Raises:
        FileNotFoundError: (at construction) missing root or split file, or a
            missing image / semseg (neither folder) / .mat / saliency file of a
            listed id for a requested task; the message names the path(s).
        ValueError: bad ``size`` or ``tasks``, a split file without ids (at
            construction); (at ``__getitem__``) unreadable file, label or saliency
            PNG not 8-bit single channel, a semseg value outside {0..20, 255}, a
            human-parts file error (see :func:`read_pascal_human_parts`), or sizes
            that differ from the image; the message names the file.

    Source: Vandenhende et al. (TPAMI 2021) ``data/pascal_context.py::PASCALContext``
    and ``data/custom_transforms.py``; MT-CP ``data/pascal_context2.py``
    (reference-implementations §2.9, PART 4 item 3).
    """

    TASKS: Tuple[str, str, str] = ("semseg", "human_parts", "sal")
    num_classes: int = 21
    num_human_parts: int = 7
    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: PathLike, split: str = "train",
                 size: Optional[Tuple[int, int]] = (512, 512), augment: bool = False,
                 normalize: bool = True, tasks: Sequence[str] = ("semseg", "human_parts", "sal")
                 ) -> None:
        if isinstance(tasks, (str, bytes)):
            raise ValueError(f"tasks must be a sequence of task names, not a single string "
                             f"({tasks!r}); e.g. ({tasks!r},)")
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError(f"tasks must name at least one of {self.TASKS}")
        for t in tasks:
            if t not in self.TASKS:
                raise ValueError(f"unknown task {t!r}; expected a subset of {self.TASKS}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks contains duplicates: {tasks}")
        self.tasks: Tuple[str, ...] = tasks
        self.root = Path(root)
        self.split = str(split)
        self.size = _check_size(size)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.split_file = self.root / "ImageSets" / "Context" / f"{self.split}.txt"
        #: ids of the split, in file order.
        self.frames: List[str] = _read_id_file(self.split_file)
        self._paths: List[Dict[str, Path]] = [self._resolve(fid) for fid in self.frames]

    def _resolve(self, fid: str) -> Dict[str, Path]:
        where = f"for id {fid!r} (listed in {self.split_file})"
        paths = {"image": self.root / "JPEGImages" / f"{fid}.jpg"}
        if "semseg" in self.tasks:
            voc = self.root / "semseg" / "VOC12" / f"{fid}.png"
            ctx = self.root / "semseg" / "pascal-context" / f"{fid}.png"
            if voc.is_file():
                paths["semseg"] = voc
            elif ctx.is_file():
                paths["semseg"] = ctx
            else:
                raise FileNotFoundError(f"missing semseg file {where}: neither {voc} nor {ctx}")
        if "human_parts" in self.tasks:
            paths["human_parts"] = self.root / "human_parts" / f"{fid}.mat"
        if "sal" in self.tasks:
            paths["sal"] = self.root / "sal_distill" / f"{fid}.png"
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"missing file {where}: {p}")
        return paths

    def __len__(self) -> int:
        return len(self.frames)

    def frame_paths(self, index: int) -> Dict[str, Path]:
        """Paths of item ``index``: "image" and one per requested task."""
        return dict(self._paths[index])

    def __getitem__(self, index: int) -> Sample:
        """Load item ``index``; see the class docstring for the returned dict."""
        paths = self._paths[index]
        p_img = paths["image"]
        rgb = _read_rgb_image(p_img)
        H, W = rgb.shape[:2]
        sample: Sample = {"image": _rgb_tensor(rgb)}
        if "semseg" in self.tasks:
            p = paths["semseg"]
            lab = _read_label_png(p, 255, "0..20 or 255 = void")
            _check_same_size((p_img, rgb), (p, lab))
            bad = (lab > 20) & (lab != 255)
            if bad.any():
                raise ValueError(f"label image {p} contains value {int(lab[bad].flat[0])} "
                                 f"(expected 0..20 or 255 = void)")
            sample["seg"] = torch.from_numpy(
                np.where(lab == 255, IGNORE_INDEX, lab.astype(np.int64))).contiguous()
        if "human_parts" in self.tasks:
            parts = read_pascal_human_parts(paths["human_parts"], (H, W))
            sample["human_parts"] = torch.from_numpy(parts).contiguous()
        if "sal" in self.tasks:
            p = paths["sal"]
            with _open_png(p) as im:
                if im.mode != "L":
                    raise ValueError(f"saliency image {p} has mode {im.mode!r}, expected 'L' "
                                     f"(8-bit single channel)")
                sal = np.array(im, dtype=np.uint8)
            _check_same_size((p_img, rgb), (p, sal))
            sample["sal"] = torch.from_numpy(
                (sal.astype(np.float32) / 255.0 >= 0.5).astype(np.float32))[None].contiguous()
        sample["name"] = self.frames[index]
        sample = _resize_sample(sample, self.size)
        return _finish(sample, self.augment, self.normalize, "none")

    def __repr__(self) -> str:
        return (f"PASCALMT(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.size}, tasks={self.tasks}, augment={self.augment}, "
                f"normalize={self.normalize})")


# --------------------------------------------------------------------------- #
# train / validation split (never the test split)
# --------------------------------------------------------------------------- #
def split_indices(n: int, val_fraction: float = 0.1, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Deterministic random split of ``range(n)`` into train and validation indices.

    ``n_val = round_half_up(n * val_fraction)``, at least 1 when val_fraction > 0 and
    at most n - 1 (train is never empty); the val indices are the first n_val
    entries of ``torch.randperm(n)`` drawn from ``torch.Generator().manual_seed(seed)``
    (independent of the global RNG), the rest are train. Both lists are sorted.

    Use the same ``(n, val_fraction, seed)`` for two dataset instances over the same
    files (one with ``augment=True`` for training, one with ``augment=False`` for
    validation) to get a validation set that is evaluated without augmentation;
    :func:`split_train_val` does this for you.

    Args:
        n: number of items (int >= 0), e.g. ``len(train_split_dataset)``.
        val_fraction: fraction in [0, 1) held out for validation.
        seed: seed of the permutation.

    Returns:
        ``(train_idx, val_idx)``: disjoint sorted lists of ints whose union is
        ``range(n)``.

    Raises:
        ValueError: ``n`` not a non-negative int, ``val_fraction`` outside [0, 1)
            (or NaN), or val_fraction > 0 with n < 2 (no non-empty split exists).

    Source: this project's fix of the model selection on the test split
    (reference-implementations §1.5, §3.1 item 13).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    n = int(n)
    try:
        f = float(val_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if not 0.0 <= f < 1.0:  # also rejects NaN
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if f == 0.0:
        return list(range(n)), []
    if n < 2:
        raise ValueError(f"cannot split {n} item(s) into non-empty train and validation parts")
    n_val = min(max(1, int(math.floor(n * f + 0.5))), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _without_augmentation(dataset):
    if getattr(dataset, "augment", False):
        view = copy.copy(dataset)  # shallow: shares file lists, reads the same files
        view.augment = False
        return view
    return dataset


def split_train_val(dataset, val_fraction: float = 0.1, seed: int = 0, val_dataset=None
                    ) -> Tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """Split a training set into train and validation subsets (the test split is untouched).

    The indices come from :func:`split_indices` ``(len(dataset), val_fraction, seed)``.
    The validation subset never augments: it is taken from ``val_dataset`` if given
    (it must have the same length, the same ``frames`` if both have them, and
    ``augment`` false), else from ``dataset`` itself when that does not augment,
    else from a shallow copy of ``dataset`` with ``augment = False`` (works for every
    dataset of this module; ``dataset`` itself is not modified).

    Args:
        dataset: the training split (e.g. ``MTANNYUv2(root, "train", augment=True)``),
            any map-style dataset with ``__len__``.
        val_fraction: fraction in [0, 1) for validation.
        seed: permutation seed.
        val_dataset: optional non-augmenting dataset over the same items.

    Returns:
        ``(train_subset, val_subset)``: ``torch.utils.data.Subset`` objects with
        disjoint ``indices`` covering ``range(len(dataset))``.

    Raises:
        ValueError: as :func:`split_indices`; ``val_dataset`` of another length,
            with other ``frames``, or augmenting.

    Source: reference-implementations §1.5 and §3.1 item 13 (the authors select the
    checkpoint on the test split).
    """
    n = len(dataset)
    if val_dataset is None:
        val_dataset = _without_augmentation(dataset)
    else:
        if len(val_dataset) != n:
            raise ValueError(f"val_dataset has {len(val_dataset)} items, dataset has {n}")
        if hasattr(dataset, "frames") and hasattr(val_dataset, "frames") and \
                list(dataset.frames) != list(val_dataset.frames):
            raise ValueError("val_dataset lists other frames than dataset")
        if getattr(val_dataset, "augment", False):
            raise ValueError("val_dataset augments; the validation subset must not be augmented")
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    return torch.utils.data.Subset(dataset, train_idx), torch.utils.data.Subset(val_dataset, val_idx)
