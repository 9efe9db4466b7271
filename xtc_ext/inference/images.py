"""The user's images: finding them (files, folders, globs), reading them, and fitting them to the model.

A model takes ``[N, 3, H, W]`` float images with H and W multiples of 32 (:data:`SIZE_MULTIPLE`), ImageNet-
normalised when its run was (``--normalize``). :func:`prepare` fits any image to that:

* a run trained at a fixed size (``--size``, or the dataset's default, e.g. 96x128 for the ten frames) sees
  every image resized to that size (bilinear, antialiased): the objects have the scale the model learnt;
* a run on a dataset kept at its stored size sees the image at its own size, padded at the bottom and right
  (edge pixels repeated) to the next multiples of 32.

:func:`restore` maps a prediction back to the input's size (the inverse: crop the padding, or resize bilinear,
``align_corners=False``); the categorical argmax and the sigmoid are taken after it, so labels keep sharp edges.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from xtc_ext.data import normalize_image
from xtc_ext.data.io import read_rgb_image
from xtc_ext.engine import UsageError
from xtc_ext.inference.loading import SIZE_MULTIPLE

__all__ = ["IMAGE_SUFFIXES", "Geometry", "find_images", "check_images", "read_image", "prepare", "restore"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Files a folder contributes (case-insensitive); a file named explicitly may be any format Pillow reads."""


@dataclass(frozen=True)
class Geometry:
    """How one image was fitted to the model: its ``original`` ``(H, W)``, the model's ``network`` ``(H, W)``,
    and whether it was ``resized`` (else padded at the bottom/right)."""

    original: Tuple[int, int]
    network: Tuple[int, int]
    resized: bool


def find_images(inputs: Sequence[str]) -> List[Path]:
    """The image files named by ``inputs``: files, folders (their PNG/JPEG files, sorted, not recursive) and
    glob patterns (``*``, ``?``, ``[``; ``**`` recursive), in the order given, duplicates dropped.

    Raises:
        UsageError: an input that names nothing (missing file, empty folder, glob without match), naming it.
    """
    found: List[Path] = []
    for item in inputs:
        if any(c in item for c in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not matches:
                raise UsageError(f"INPUT {item!r}: no file matches this pattern")
        elif Path(item).is_dir():
            matches = sorted(p for p in Path(item).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise UsageError(f"INPUT {item!r}: folder without PNG or JPEG files")
        elif Path(item).is_file():
            matches = [Path(item)]
        else:
            raise UsageError(f"INPUT {item!r}: no such file or folder")
        found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [Path(p) for p in unique]


def check_images(paths: Sequence[Path]) -> None:
    """Check that every file is an image Pillow can decode, before anything is predicted or written.

    Raises:
        UsageError: the first unreadable file (named, with Pillow's reason).
    """
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"INPUT {path}: not a readable image ({e})") from None


def read_image(path: Path) -> Tensor:
    """The image at ``path`` as float32 ``[3, H, W]`` RGB in [0, 1] (grayscale, CMYK and YCbCr converted).

    Raises:
        UsageError: the file cannot be decoded or has another mode (e.g. 16-bit), naming it.
    """
    try:
        array = read_rgb_image(path)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"INPUT {path}: {e}") from None
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _network_size(original: Tuple[int, int], size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if size is not None:
        return size
    return tuple(-(-s // SIZE_MULTIPLE) * SIZE_MULTIPLE for s in original)  # type: ignore[return-value]


def prepare(image: Tensor, size: Optional[Tuple[int, int]], normalize: bool) -> Tuple[Tensor, Geometry]:
    """Fit one image to the model (module docstring).

    Args:
        image: float ``[3, H, W]`` in [0, 1].
        size: the model's ``(H, W)`` (multiples of 32), or None to pad the image to multiples of 32.
        normalize: ImageNet-normalise (the run's ``--normalize``).

    Returns:
        ``(network input [3, H', W'] float32, Geometry)``.

    Raises:
        ValueError: ``size`` not two positive multiples of 32 (named).
    """
    if size is not None and (len(size) != 2 or any(s <= 0 or s % SIZE_MULTIPLE for s in size)):
        raise ValueError(f"size must be two positive multiples of {SIZE_MULTIPLE}, got {tuple(size)}")
    original = (int(image.shape[-2]), int(image.shape[-1]))
    network = _network_size(original, size)
    resized = size is not None
    if resized and network != original:
        image = F.interpolate(image[None], size=network, mode="bilinear", align_corners=False, antialias=True)[0]
        image = image.clamp_(0.0, 1.0)
    elif not resized and network != original:
        pad = (0, network[1] - original[1], 0, network[0] - original[0])
        image = F.pad(image[None], pad, mode="replicate")[0]
    if normalize:
        image = normalize_image(image)
    return image.contiguous(), Geometry(original, network, resized)


def restore(prediction: Tensor, geometry: Geometry) -> Tensor:
    """A prediction ``[C, H', W']`` at the network size back at the input's ``[C, H, W]`` (float32): the padding
    cropped, or resized bilinear (``align_corners=False``)."""
    prediction = prediction.float()
    h, w = geometry.original
    if not geometry.resized:
        return prediction[:, :h, :w]
    if tuple(prediction.shape[-2:]) == (h, w):
        return prediction
    return F.interpolate(prediction[None], size=(h, w), mode="bilinear", align_corners=False)[0]
