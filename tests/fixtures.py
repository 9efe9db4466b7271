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
