"""NYUv2 datasets and the shared MTAN-style training augmentation.

Two on-disk layouts are supported, and both return the same sample format.

* :class:`NYUv2Frames` reads frames stored as PNG files: ``rgb/``, ``depth/``
  (uint16 millimetres), and ``label13/`` or ``label40/`` (uint8, 0 = unlabelled).
  This is the layout of the ten real NYUv2 test frames in
  ``shared/data/nyuv2-test10``.
* :class:`MTANNYUv2` reads MTAN's preprocessed ``.npy`` layout
  ``root/{split}/{image,label,depth}/{i}.npy``, the data that the XTasC-Net code
  trains on (reference-implementations §1.4 "NYUv2: MTAN preprocessed .npy",
  PART 4 item 1).

Sample format, a ``dict`` returned by every ``__getitem__``:

=========  ===============  ==================================================
key        tensor           content
=========  ===============  ==================================================
"image"    float32 [3,H,W]  RGB; ImageNet-normalised if ``normalize=True``,
                            otherwise in [0, 1]
"seg"      int64 [H,W]      class index 0..K-1, ``IGNORE_INDEX`` (-1) = ignore
"depth"    float32 [1,H,W]  depth in metres, 0 = invalid
"name"     str              frame identifier
=========  ===============  ==================================================

Training augmentation (:func:`augment_sample`) follows the XTasC-Net / MTAN NYUv2
loader (XTasC-Net paper §V-A, reference-implementations §1.4): random scale crop
with the scale drawn from {1.0, 1.2, 1.5}, depth divided by the scale, then a
horizontal flip with p = 0.5. Normalisation is applied after augmentation.

Note: the XTasC-Net code does **not** ImageNet-normalise NYUv2 inputs
(reference-implementations §1.4); pass ``normalize=False`` to match it.
"""

from __future__ import annotations

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
    "NYU13_CLASS_NAMES",
    "AugmentParams",
    "normalize_image",
    "sample_augment_params",
    "apply_augmentation",
    "augment_sample",
    "NYUv2Frames",
    "MTANNYUv2",
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
#: NYU-13 class names in label order 0..12 (MTAN convention, reference-implementations §1.4).
NYU13_CLASS_NAMES: Tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)

_DEPTH16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


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
@dataclass(frozen=True)
class AugmentParams:
    """Parameters of one draw of :func:`augment_sample`.

    Attributes:
        scale: crop scale s, one of ``AUGMENT_SCALES``.
        top: row of the crop's top-left corner (0 <= top <= H - int(H/s)).
        left: column of the crop's top-left corner (0 <= left <= W - int(W/s)).
        flip: whether the (cropped, resized) sample is flipped horizontally.
    """

    scale: float
    top: int
    left: int
    flip: bool


def sample_augment_params(height: int, width: int,
                          generator: Optional[torch.Generator] = None) -> AugmentParams:
    """Draw random scale-crop and flip parameters with the torch RNG.

    Draw order: scale index (``torch.randint(0, 3)``), top (``torch.randint(0, H-h+1)``),
    left (``torch.randint(0, W-w+1)``), flip (``torch.rand(1) < 0.5``), where
    ``h = int(H/s)`` and ``w = int(W/s)``. Using the torch RNG (the global one when
    ``generator`` is None) makes DataLoader worker seeding reproducible.

    Args:
        height, width: sample size H, W in pixels (positive ints).
        generator: optional ``torch.Generator`` (CPU).

    Returns:
        :class:`AugmentParams`.

    Source: MTAN / XTasC-Net ``RandomScaleCrop`` and NYUv2 flip
    (reference-implementations §1.4).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid sample size {height}x{width}")
    k = int(torch.randint(0, len(AUGMENT_SCALES), (1,), generator=generator).item())
    s = AUGMENT_SCALES[k]
    h, w = int(height / s), int(width / s)
    top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
    flip = bool((torch.rand(1, generator=generator) < 0.5).item())
    return AugmentParams(scale=s, top=top, left=left, flip=flip)


def _check_sample_tensors(sample: Sample) -> Tuple[int, int]:
    if "image" not in sample:
        raise ValueError("sample has no 'image' entry")
    image = sample["image"]
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"sample['image'] must be a [3,H,W] tensor, got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)}")
    H, W = int(image.shape[1]), int(image.shape[2])
    if "seg" in sample:
        seg = sample["seg"]
        if not isinstance(seg, torch.Tensor) or tuple(seg.shape) != (H, W):
            raise ValueError(f"sample['seg'] must be [{H},{W}], got "
                             f"{tuple(seg.shape) if isinstance(seg, torch.Tensor) else type(seg)}")
    if "depth" in sample:
        depth = sample["depth"]
        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (1, H, W):
            raise ValueError(f"sample['depth'] must be [1,{H},{W}], got "
                             f"{tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth)}")
    return H, W


def apply_augmentation(sample: Sample, params: AugmentParams) -> Sample:
    """Apply given scale-crop / flip parameters to a sample (deterministic).

    Crops ``int(H/s) x int(W/s)`` at (top, left) and resizes back to ``H x W``:
    the image bilinearly with ``align_corners=True``, ``seg`` and ``depth`` with
    ``mode="nearest"``. Depth is divided by s (invalid 0 stays 0; a crop
    zooms in, so the scene appears s times closer). Then flips horizontally if
    ``params.flip``.

    Args:
        sample: dict with "image" float32 [3,H,W] (in [0, 1], i.e. before
            normalisation), optional "seg" int64 [H,W], optional "depth" float32
            [1,H,W] metres. Other entries are passed through.
        params: :class:`AugmentParams`.

    Returns:
        A new dict; the input is not modified. Shapes and dtypes are preserved.

    Raises:
        ValueError: on malformed sample tensors or a crop outside the sample.

    Source: MTAN / XTasC-Net NYUv2 loader (reference-implementations §1.4).
    """
    H, W = _check_sample_tensors(sample)
    s = float(params.scale)
    if s < 1.0:
        raise ValueError(f"augmentation scale must be >= 1, got {s}")
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

    if "seg" in sample:
        seg = sample["seg"]
        sg = F.interpolate(seg[None, None, i:i + h, j:j + w].to(torch.float32), size=(H, W),
                           mode="nearest")[0, 0].round().to(seg.dtype)
        if params.flip:
            sg = torch.flip(sg, dims=[-1])
        out["seg"] = sg.contiguous()

    if "depth" in sample:
        depth = sample["depth"]
        dp = F.interpolate(depth[None, :, i:i + h, j:j + w].float(), size=(H, W),
                           mode="nearest")[0] / s
        if params.flip:
            dp = torch.flip(dp, dims=[-1])
        out["depth"] = dp.to(depth.dtype).contiguous()
    return out


def augment_sample(sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
    """MTAN-style training augmentation shared by both NYUv2 datasets.

    Random scale crop, s drawn uniformly from ``AUGMENT_SCALES`` = (1.0, 1.2, 1.5):
    crop ``int(H/s) x int(W/s)`` at a uniformly random position, resize back to
    ``H x W`` (image bilinear ``align_corners=True``, seg and depth nearest),
    depth divided by s (0 = invalid stays 0); then horizontal flip with p = 0.5.
    Randomness comes from ``torch.randint`` / ``torch.rand`` with ``generator``
    (the global torch RNG when None), so DataLoader worker seeding makes it
    reproducible. See :func:`sample_augment_params` and :func:`apply_augmentation`.

    Args:
        sample: dict with "image" float32 [3,H,W] in [0, 1] (un-normalised),
            "seg" int64 [H,W] (ignore -1, preserved), "depth" float32 [1,H,W] metres.
        generator: optional ``torch.Generator``.

    Returns:
        A new sample dict with the same shapes and dtypes.

    Raises:
        ValueError: on malformed sample tensors.

    Source: XTasC-Net paper §V-A; reference-implementations §1.4 and PART 4 item 1.
    """
    H, W = _check_sample_tensors(sample)
    return apply_augmentation(sample, sample_augment_params(H, W, generator))


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
    """Resize to ``size``: image bilinear (antialias, align_corners=False),
    seg and depth nearest (pixel-centre aligned, ``nearest-exact``)."""
    if size is None:
        return sample
    image = sample["image"]
    if tuple(image.shape[1:]) == tuple(size):
        return sample
    out = dict(sample)
    out["image"] = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                 antialias=True)[0].clamp_(0.0, 1.0).contiguous()
    seg = sample["seg"]
    out["seg"] = F.interpolate(seg[None, None].to(torch.float32), size=size,
                               mode="nearest-exact")[0, 0].round().to(torch.int64).contiguous()
    out["depth"] = F.interpolate(sample["depth"][None], size=size,
                                 mode="nearest-exact")[0].contiguous()
    return out


def _finish(sample: Sample, augment: bool, normalize: bool) -> Sample:
    if augment:
        sample = augment_sample(sample)
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


# --------------------------------------------------------------------------- #
# real-frame PNG layout
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
    float32 metres (/1000), 0 stays 0 (invalid). Resize to ``size`` = (H, W): image
    bilinear (antialias, align_corners=False), labels and depth nearest
    (``nearest-exact``, pixel-centre aligned; depth values are not rescaled).
    ``size=None`` keeps the native resolution. Then, if ``augment``,
    :func:`augment_sample` (global torch RNG); then, if ``normalize``,
    ImageNet normalisation.

    Args:
        root: dataset folder.
        size: output (H, W) or None. Default (240, 320).
        classes: 13 (reads ``label13/``) or 40 (reads ``label40/``).
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        frames: optional explicit list of frame ids (``"0001"`` or ``"0001.png"``);
            default: the sorted stems of ``rgb/*.png``.

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..K-1},
    "depth" float32 [1,H,W] metres (0 invalid), "name" str (the frame id).

    Raises:
        FileNotFoundError: (at construction) missing root, sub-folder or any frame
            file, or no ``rgb/*.png``; the message names the path.
        ValueError: ``classes`` not in {13, 40}, bad ``size``; (at ``__getitem__``)
            unreadable file, image not RGB, depth not 16-bit, label not 8-bit single
            channel, sizes that differ between rgb/depth/label, or a label value > K
            (the message names the file, and the bad value for labels).

    Source: NYU Depth v2 (Silberman et al., ECCV 2012) labelled test frames; label
    and depth conventions of MTAN / XTasC-Net (XTasC-Net paper §V-A,
    reference-implementations §1.4).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: PathLike, size: Optional[Tuple[int, int]] = (240, 320),
                 classes: int = 13, augment: bool = False, normalize: bool = True,
                 frames: Optional[Sequence[str]] = None) -> None:
        if classes not in (13, 40):
            raise ValueError(f"classes must be 13 or 40, got {classes!r}")
        self.root = Path(root)
        self.size = _check_size(size)
        self.num_classes = int(classes)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
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

    def _read_rgb(self, path: Path) -> np.ndarray:
        with _open_png(path) as im:
            if im.mode != "RGB":
                raise ValueError(f"RGB image {path} has mode {im.mode!r}, expected 'RGB'")
            a = np.array(im, dtype=np.uint8)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"RGB image {path} has array shape {a.shape}, expected (H,W,3)")
        return a

    def _read_depth(self, path: Path) -> np.ndarray:
        with _open_png(path) as im:
            mode = im.mode
            if mode not in _DEPTH16_MODES and mode != "I":
                raise ValueError(f"depth image {path} has mode {mode!r}, expected 16-bit "
                                 f"single channel ({', '.join(_DEPTH16_MODES)})")
            a = np.array(im)
        if a.ndim != 2:
            raise ValueError(f"depth image {path} has array shape {a.shape}, expected (H,W)")
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"depth image {path} (mode 'I') has values outside 0..65535: "
                             f"[{a.min()}, {a.max()}], expected uint16 millimetres")
        return a.astype(np.float32) / 1000.0

    def _read_label(self, path: Path) -> np.ndarray:
        with _open_png(path) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(f"label image {path} has mode {im.mode!r}, expected 8-bit "
                                 f"single channel ('L' or 'P')")
            a = np.array(im, dtype=np.uint8)  # 'P': raw palette indices
        if a.ndim != 2:
            raise ValueError(f"label image {path} has array shape {a.shape}, expected (H,W)")
        if a.size and int(a.max()) > self.num_classes:
            bad = int(a.max())
            raise ValueError(f"label image {path} contains value {bad} > {self.num_classes} "
                             f"(expected 0 = unlabelled or 1..{self.num_classes})")
        return a

    def __getitem__(self, index: int) -> Sample:
        """Load frame ``index``; see the class docstring for the returned dict."""
        fid = self.frames[index]
        p_rgb = self.rgb_dir / f"{fid}.png"
        p_depth = self.depth_dir / f"{fid}.png"
        p_label = self.label_dir / f"{fid}.png"
        rgb = self._read_rgb(p_rgb)
        depth = self._read_depth(p_depth)
        label = self._read_label(p_label)
        hw = rgb.shape[:2]
        for p, a in ((p_depth, depth), (p_label, label)):
            if a.shape[:2] != hw:
                raise ValueError(f"{p} has size {a.shape[1]}x{a.shape[0]} (WxH), but the RGB image "
                                 f"{p_rgb} has {hw[1]}x{hw[0]}")
        sample: Sample = {
            "image": torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32).div_(255.0).contiguous(),
            "seg": torch.from_numpy(label.astype(np.int64) - 1),  # 0 -> -1, k -> k-1
            "depth": torch.from_numpy(depth)[None].contiguous(),
            "name": fid,
        }
        sample = _resize_sample(sample, self.size)
        return _finish(sample, self.augment, self.normalize)

    def __repr__(self) -> str:
        return (f"NYUv2Frames(root={str(self.root)!r}, n={len(self)}, size={self.size}, "
                f"classes={self.num_classes}, augment={self.augment}, normalize={self.normalize})")


# --------------------------------------------------------------------------- #
# MTAN preprocessed .npy layout
# --------------------------------------------------------------------------- #
class MTANNYUv2(torch.utils.data.Dataset):
    """NYUv2 in MTAN's preprocessed ``.npy`` layout (the data XTasC-Net trains on).

    Layout: ``root/{split}/{image,label,depth}/{i}.npy`` for i = 0..N-1 contiguous,
    N = number of ``image/*.npy`` files (``normal/`` is not read). Standard MTAN
    counts: 795 train, 654 val (val is the official test split).

    File contents (MTAN convention, reference-implementations §1.4):

    ==============  ==========  ==========================================
    file            shape       content
    ==============  ==========  ==========================================
    image/i.npy     (H, W, 3)   float RGB in [0, 1]
    label/i.npy     (H, W)      integer-valued (float or int), -1 void,
                                0..12 classes (NYU-13 order, see
                                ``NYU13_CLASS_NAMES``)
    depth/i.npy     (H, W, 1)   metres, 0 = invalid
    ==============  ==========  ==========================================

    Size is taken from the data (288x384 for MTAN's files). If ``augment``,
    :func:`augment_sample` is applied (global torch RNG); then, if ``normalize``,
    ImageNet normalisation. The XTasC-Net code uses no normalisation for NYUv2:
    pass ``normalize=False`` to match it.

    Args:
        root: folder containing the split folders.
        split: split folder name, e.g. "train" or "val".
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..12},
    "depth" float32 [1,H,W] metres (0 invalid), "name" str (``"{split}/{i}"``).

    Raises:
        FileNotFoundError: (at construction) missing root/split/sub-folder, no
            ``image/*.npy``, or a missing ``{image,label,depth}/{i}.npy`` for some
            i < N (a gap); the message names the path.
        ValueError: (at ``__getitem__``) file np.load cannot read, wrong shape,
            non-finite values, image outside [0, 1], label not integer-valued or
            outside {-1, 0..12}, negative depth, or sizes that differ between the
            three files; the message names the file.

    Source: MTAN (Liu et al., CVPR 2019) preprocessed NYUv2; XTasC-Net
    ``dataloader.py::NYUv2`` (XTasC-Net paper §V-A, reference-implementations §1.4,
    PART 4 item 1).
    """

    num_classes: int = 13
    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: PathLike, split: str = "train", augment: bool = False,
                 normalize: bool = True) -> None:
        self.root = Path(root)
        self.split = str(split)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.split_dir = self.root / self.split
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"split folder not found: {self.split_dir}")
        self.dirs = {k: self.split_dir / k for k in ("image", "label", "depth")}
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
        """Load sample ``index``; see the class docstring for the returned dict."""
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} samples")
        p_img = self.dirs["image"] / f"{index}.npy"
        p_lab = self.dirs["label"] / f"{index}.npy"
        p_dep = self.dirs["depth"] / f"{index}.npy"

        img = self._load(p_img)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{p_img} has shape {img.shape}, expected (H, W, 3)")
        img = img.astype(np.float32)
        if not np.isfinite(img).all():
            raise ValueError(f"{p_img} contains non-finite values")
        if img.size and (img.min() < -1e-6 or img.max() > 1.0 + 1e-6):
            raise ValueError(f"{p_img} has values in [{img.min():.4g}, {img.max():.4g}], "
                             f"expected RGB in [0, 1]")
        H, W = img.shape[:2]

        lab = self._load(p_lab)
        if lab.shape != (H, W):
            raise ValueError(f"{p_lab} has shape {lab.shape}, expected ({H}, {W}) matching {p_img}")
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
        dep = dep.astype(np.float32)
        if not np.isfinite(dep).all():
            raise ValueError(f"{p_dep} contains non-finite depth values")
        if dep.size and dep.min() < 0:
            raise ValueError(f"{p_dep} contains negative depth {dep.min():.4g} "
                             f"(expected metres >= 0, 0 = invalid)")

        sample: Sample = {
            "image": torch.from_numpy(np.clip(img, 0.0, 1.0)).permute(2, 0, 1).contiguous(),
            "seg": torch.from_numpy(lab).contiguous(),
            "depth": torch.from_numpy(dep).permute(2, 0, 1).contiguous(),
            "name": f"{self.split}/{index}",
        }
        return _finish(sample, self.augment, self.normalize)

    def __repr__(self) -> str:
        return (f"MTANNYUv2(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"augment={self.augment}, normalize={self.normalize})")
