"""Readers of the files the datasets are made of: PNG/JPEG images, ``.npy`` arrays and split files.

Every reader checks what it reads and raises an error naming the file (and the offending value)
instead of returning a wrong array: FileNotFoundError for a missing file, ValueError for an
unreadable file, a wrong image mode, shape, dtype or value range.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "open_image",
    "read_rgb_png",
    "read_rgb_image",
    "read_uint16_png",
    "read_label_png",
    "read_id_file",
    "load_npy",
    "check_depth_array",
    "check_same_size",
    "rgb_tensor",
]

_DEPTH16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_CONVERTIBLE_RGB_MODES = ("RGB", "L", "CMYK", "YCbCr")


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #
def open_image(path: Path) -> Image.Image:
    """The loaded Pillow image of ``path`` (any format Pillow reads).

    Raises:
        FileNotFoundError: the file does not exist (named).
        ValueError: Pillow cannot read it; the message names the file.
    """
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


def read_rgb_png(path: Path) -> np.ndarray:
    """uint8 (H,W,3) from an RGB PNG; ValueError naming the file otherwise."""
    with open_image(path) as im:
        if im.mode != "RGB":
            raise ValueError(f"RGB image {path} has mode {im.mode!r}, expected 'RGB'")
        a = np.array(im, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"RGB image {path} has array shape {a.shape}, expected (H,W,3)")
    return a


def read_rgb_image(path: Path) -> np.ndarray:
    """uint8 (H,W,3) from an RGB image file (JPEG or PNG). Grayscale, CMYK and YCbCr
    files are converted to RGB (Vandenhende's loaders call ``.convert('RGB')``); other
    modes raise ValueError naming the file."""
    with open_image(path) as im:
        if im.mode not in _CONVERTIBLE_RGB_MODES:
            raise ValueError(f"RGB image {path} has mode {im.mode!r}, expected one of "
                             f"{_CONVERTIBLE_RGB_MODES}")
        a = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"RGB image {path} has array shape {a.shape}, expected (H,W,3)")
    return a


def read_uint16_png(path: Path, what: str) -> np.ndarray:
    """Raw values (H,W) of a 16-bit single-channel PNG (mode "I;16*", or mode "I"
    with values in 0..65535); ValueError naming the file otherwise."""
    with open_image(path) as im:
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


def read_label_png(path: Path, max_value: int, expected: str) -> np.ndarray:
    """uint8 (H,W) from an 8-bit single-channel PNG ('L', or raw 'P' indices) whose
    values are <= max_value; ValueError naming the file (and the bad value) otherwise."""
    with open_image(path) as im:
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


def check_same_size(reference: Tuple[Path, np.ndarray], *others: Tuple[Path, np.ndarray]) -> None:
    """Check that every ``(path, array)`` of ``others`` has the (H, W) of the RGB image
    ``reference``; ValueError naming both files otherwise."""
    p_ref, ref = reference
    hw = ref.shape[:2]
    for p, a in others:
        if a.shape[:2] != hw:
            raise ValueError(f"{p} has size {a.shape[1]}x{a.shape[0]} (WxH), but the RGB image "
                             f"{p_ref} has {hw[1]}x{hw[0]}")


def rgb_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H,W,3) RGB -> float32 [3,H,W] in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32).div_(255.0).contiguous()


# --------------------------------------------------------------------------- #
# split files and .npy arrays
# --------------------------------------------------------------------------- #
def read_id_file(path: Path) -> List[str]:
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


def load_npy(path: Path) -> np.ndarray:
    """The numeric array of a ``.npy`` file (``allow_pickle=False``).

    Raises:
        FileNotFoundError: the file does not exist (named).
        ValueError: np.load cannot read it (corrupt header, pickled object, truncated data) or
            its dtype is not numeric / bool; the message names the file.
    """
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


def check_depth_array(dep: np.ndarray, path: Path, unit: str, depth_max: Optional[float] = None) -> np.ndarray:
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
