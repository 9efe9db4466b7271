"""Writers of small datasets in the exact on-disk layouts, shared by the tests."""

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 48, 64
IDS = ["0003", "0007", "0011"]


def _frame_arrays(k):
    """Known arrays for frame k: rgb uint8, depth mm uint16, label13, label40."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([(xx * 4 + k) % 256, (yy * 5 + 2 * k) % 256, np.full_like(xx, 17 * k + 3)],
                   axis=-1).astype(np.uint8)
    depth = (500 + 10 * xx + 100 * yy + 1000 * k).astype(np.uint16)  # mm
    depth[0, 0] = 0  # invalid
    lab13 = ((xx // 4 + yy // 4 + k) % 14).astype(np.uint8)  # 0..13, 0 unlabelled
    lab40 = ((xx + yy + k) % 41).astype(np.uint8)  # 0..40
    return rgb, depth, lab13, lab40


def write_frames(root: Path, ids=IDS):
    for d in ("rgb", "depth", "label13", "label40"):
        (root / d).mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, fid in enumerate(ids):
        rgb, depth, lab13, lab40 = _frame_arrays(k)
        Image.fromarray(rgb).save(root / "rgb" / f"{fid}.png")
        Image.fromarray(depth).save(root / "depth" / f"{fid}.png")
        Image.fromarray(lab13).save(root / "label13" / f"{fid}.png")
        Image.fromarray(lab40).save(root / "label40" / f"{fid}.png")
        arrays[fid] = (rgb, depth, lab13, lab40)
    return arrays


def write_mtan(root: Path, split="train", n=3, h=H, w=W):
    arrays = []
    rng = np.random.default_rng(0)
    for d in ("image", "label", "depth"):
        (root / split / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.random((h, w, 3))  # float64 in [0,1)
        lab = rng.integers(-1, 13, size=(h, w)).astype(np.float32)
        dep = rng.uniform(0.5, 10.0, size=(h, w, 1)).astype(np.float32)
        dep[:2, :3] = 0.0
        np.save(root / split / "image" / f"{i}.npy", img)
        np.save(root / split / "label" / f"{i}.npy", lab)
        np.save(root / split / "depth" / f"{i}.npy", dep)
        arrays.append((img, lab, dep))
    return arrays


# --------------------------------------------------------------------------- #
# Cityscapes, official files: leftImg8bit / gtFine labelIds / disparity
# --------------------------------------------------------------------------- #
CS_H, CS_W = 64, 128
#: (city, name) of the fixture frames, in the sorted order the reader must produce.
CS_FRAMES = (
    ("aachen", "aachen_000000_000019"),
    ("aachen", "aachen_000001_000019"),
    ("bochum", "bochum_000000_000313"),
)
#: 2x2 blocks of known disparity PNG values in row 0..1: columns 0..1 -> 0 (invalid),
#: 2..3 -> 1 (valid, target 0), 4..5 -> 257 (target 1/256), 6..7 -> 65535 (clipped).
CS_SPECIAL_DISPARITY = (0, 1, 257, 65535)


def cityscapes_arrays(k, h=CS_H, w=CS_W):
    """Known arrays of Cityscapes fixture frame k: rgb uint8 (h,w,3), label ids uint8
    (h,w) covering every id 0..33 in 4x4 blocks, disparity uint16 (h,w)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 2 + 7 * k) % 256, (yy * 4 + 3 * k) % 256, (xx + yy + 50 * k) % 256],
                   axis=-1).astype(np.uint8)
    ids = ((xx // 4 + (yy // 4) * 5 + k) % 34).astype(np.uint8)
    disp = (1000 + 97 * xx + 211 * yy + 5000 * k).astype(np.uint16)
    for c, v in enumerate(CS_SPECIAL_DISPARITY):
        disp[0:2, 2 * c:2 * c + 2] = v
    # an invalid block and a p == 1 block away from the border, so crops move them
    disp[20:30, 40:60] = 0
    disp[30:36, 40:60] = 1
    return rgb, ids, disp


def cityscapes_paths(root: Path, split, city, name):
    """(image, label, disparity) paths of one frame in the official layout."""
    root = Path(root)
    return (root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
            root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png",
            root / "disparity" / split / city / f"{name}_disparity.png")


def write_cityscapes(root: Path, split="train", frames=CS_FRAMES, h=CS_H, w=CS_W):
    """Write a tiny Cityscapes tree; returns {name: (city, rgb, ids, disparity)}."""
    out = {}
    for k, (city, name) in enumerate(frames):
        rgb, ids, disp = cityscapes_arrays(k, h, w)
        p_img, p_lab, p_disp = cityscapes_paths(root, split, city, name)
        for p in (p_img, p_lab, p_disp):
            p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(p_img)            # mode RGB
        Image.fromarray(ids).save(p_lab)            # mode L (uint8)
        Image.fromarray(disp).save(p_disp)          # 16-bit grayscale PNG
        out[name] = (city, rgb, ids, disp)
    return out


# --------------------------------------------------------------------------- #
# Cityscapes, MTAN preprocessed .npy: {image,label_7,label_19,depth}/{i}.npy
# --------------------------------------------------------------------------- #
def write_mtan_cityscapes(root: Path, split="train", n=3, h=32, w=64, chw=False):
    """Write MTAN-style Cityscapes .npy files; returns [(img, lab7, lab19, dep)].

    img float64 (h,w,3) in [0,1) ((3,h,w) if ``chw``), labels float32 with -1 void,
    depth float32 (h,w,1) in [0, 0.4922] with a block of zeros (invalid)."""
    rng = np.random.default_rng(1)
    for d in ("image", "label_7", "label_19", "depth"):
        (root / split / d).mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(n):
        img = rng.random((h, w, 3))
        lab7 = rng.integers(-1, 7, size=(h, w)).astype(np.float32)
        lab19 = rng.integers(-1, 19, size=(h, w)).astype(np.float32)
        dep = rng.uniform(0.001, 0.4922, size=(h, w, 1)).astype(np.float32)
        dep[2:6, 3:9] = 0.0
        dep[-1, -1] = 0.4922  # the clip value itself is accepted
        np.save(root / split / "image" / f"{i}.npy", np.transpose(img, (2, 0, 1)) if chw else img)
        np.save(root / split / "label_7" / f"{i}.npy", lab7)
        np.save(root / split / "label_19" / f"{i}.npy", lab19)
        np.save(root / split / "depth" / f"{i}.npy", dep)
        arrays.append((img, lab7, lab19, dep))
    return arrays
