"""Image normalisation, the shared MTAN-style training augmentation, and resizing of samples.

A *sample* is the dict every dataset of :mod:`xtc_ext.data` returns: "image" float32 [3,H,W] in
[0, 1] before normalisation, "name" str, and per-pixel targets (tensors [H,W] or [C,H,W]).

Training augmentation (:func:`augment_sample`) follows the XTasC-Net paper §V-A ("random horizontal
flip with probability 0.5, random scaled cropping with scales [1.0, 1.2, 1.5]") and the MTAN /
XTasC-Net loaders: a random scale crop with s from :data:`AUGMENT_SCALES`, the depth target rescaled
according to ``depth_scaling`` (metric depth: divided by s), then a horizontal flip with p = 0.5.
**Every** per-pixel entry, validity masks included, is cropped, resized and flipped with the data:
the XTasC-Net authors crop image, seg and depth but not the masks, so in their Cityscapes runs the
masks refer to the uncropped frame; that is not reproduced here (docs/fidelity.md, "Data and
augmentation"). Surface normals (the keys in :data:`NORMALS_KEYS`) also get their x component
negated by the flip, as in Vandenhende et al.'s ``RandomHorizontalFlip`` (the MT-CP data pipeline).
Normalisation (:func:`normalize_image`) is applied after augmentation (:func:`finish_sample`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AUGMENT_SCALES",
    "DEPTH_SCALINGS",
    "NORMALS_KEYS",
    "Sample",
    "AugmentParams",
    "normalize_image",
    "check_depth_scaling",
    "check_size",
    "sample_augment_params",
    "apply_augmentation",
    "augment_sample",
    "resize_sample",
    "finish_sample",
]

#: A sample dict: "image", "name" and the per-pixel targets (see :mod:`xtc_ext.data`).
Sample = Dict[str, object]

#: ImageNet channel means (RGB) applied to images in [0, 1].
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (RGB).
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Scales of the random scale crop (XTasC-Net paper §V-A; MTAN's ``RandomScaleCrop``).
AUGMENT_SCALES: Tuple[float, float, float] = (1.0, 1.2, 1.5)
#: How the random scale crop rescales the depth target (see :class:`AugmentParams`).
DEPTH_SCALINGS: Tuple[str, str, str] = ("divide", "multiply", "none")
#: Sample keys that hold surface normals ``[3,H,W]`` (x, y, z; x = image right). The
#: augmentation negates channel 0 of these maps when it flips the sample horizontally.
NORMALS_KEYS: Tuple[str, ...] = ("normals",)

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

    Source: ImageNet statistics, as the XTasC-Net paper §V-A ("we apply normalization") and
    the authors' Cityscapes loader use them (their NYUv2 loader does not normalise:
    docs/fidelity.md, "Data and augmentation").
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
def check_depth_scaling(depth_scaling: str) -> str:
    """``depth_scaling`` if it is one of :data:`DEPTH_SCALINGS`; ValueError naming it otherwise."""
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
              (geometrically consistent zoom; docs/fidelity.md, "Data and augmentation").
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
        check_depth_scaling(self.depth_scaling)


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

    Source: XTasC-Net paper §V-A (scale crop with s in {1.0, 1.2, 1.5}, flip p = 0.5);
    MTAN / XTasC-Net ``RandomScaleCrop``.
    """
    check_depth_scaling(depth_scaling)
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid sample size {height}x{width}")
    k = int(torch.randint(0, len(AUGMENT_SCALES), (1,), generator=generator).item())
    s = AUGMENT_SCALES[k]
    h, w = int(height / s), int(width / s)
    top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
    flip = bool((torch.rand(1, generator=generator) < 0.5).item())
    return AugmentParams(scale=s, top=top, left=left, flip=flip, depth_scaling=depth_scaling)


def shape_of(x) -> object:
    """Shape of a tensor (for error messages), or the type of anything else."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)


def _check_sample_tensors(sample: Sample) -> Tuple[int, int]:
    if "image" not in sample:
        raise ValueError("sample has no 'image' entry")
    image = sample["image"]
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"sample['image'] must be a [3,H,W] tensor, got {shape_of(image)}")
    H, W = int(image.shape[1]), int(image.shape[2])
    if "seg" in sample:
        seg = sample["seg"]
        if not isinstance(seg, torch.Tensor) or tuple(seg.shape) != (H, W):
            raise ValueError(f"sample['seg'] must be [{H},{W}], got {shape_of(seg)}")
    if "depth" in sample:
        depth = sample["depth"]
        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (1, H, W):
            raise ValueError(f"sample['depth'] must be [1,{H},{W}], got {shape_of(depth)}")
    if "depth_valid" in sample:
        valid = sample["depth_valid"]
        if (not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (1, H, W)
                or valid.dtype != torch.bool):
            raise ValueError(f"sample['depth_valid'] must be a bool [1,{H},{W}] tensor, got "
                             f"{shape_of(valid)}"
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
    ``RandomHorizontalFlip`` does (the MT-CP data pipeline). The scale crop
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

    Source: XTasC-Net paper §V-A and the MTAN / XTasC-Net loaders; the masks are
    cropped with the data, unlike the authors' Cityscapes code (docs/fidelity.md,
    "Data and augmentation").
    """
    H, W = _check_sample_tensors(sample)
    nkeys = _check_normals_entries(sample, normals_keys, H, W)
    s = float(params.scale)
    if s < 1.0:
        raise ValueError(f"augmentation scale must be >= 1, got {s}")
    check_depth_scaling(params.depth_scaling)
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
                                 f"tensor, got {shape_of(n)}"
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

    Source: XTasC-Net paper §V-A; deviations from the authors' loaders (masks
    cropped with the data, one crop-then-flip order, ``depth_scaling``) in
    docs/fidelity.md, "Data and augmentation".
    """
    H, W = _check_sample_tensors(sample)
    _check_normals_entries(sample, normals_keys, H, W)
    return apply_augmentation(sample, sample_augment_params(H, W, generator, depth_scaling),
                              normals_keys)


# --------------------------------------------------------------------------- #
# resizing and the final steps of every dataset
# --------------------------------------------------------------------------- #
def check_size(size) -> Optional[Tuple[int, int]]:
    """``size`` as a tuple ``(H, W)`` of two positive ints, or None.

    Raises:
        ValueError: not None and not two positive ints (the message names ``size``).
    """
    if size is None:
        return None
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W) or None, got {size!r}") from None
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w))
    if not ints or h <= 0 or w <= 0:
        raise ValueError(f"size must be two positive ints (H, W), got {size!r}")
    return int(h), int(w)


def resize_sample(sample: Sample, size: Optional[Tuple[int, int]]) -> Sample:
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


def finish_sample(sample: Sample, augment: bool, normalize: bool, depth_scaling: str = "divide") -> Sample:
    """The last steps of every dataset's ``__getitem__``: :func:`augment_sample` (global torch
    RNG, ``depth_scaling``) if ``augment``, then :func:`normalize_image` of "image" if
    ``normalize``. Returns a new dict when anything is applied."""
    if augment:
        sample = augment_sample(sample, depth_scaling=depth_scaling)
    if normalize:
        sample = dict(sample)
        sample["image"] = normalize_image(sample["image"]).contiguous()
    return sample
