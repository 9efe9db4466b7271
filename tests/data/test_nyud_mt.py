"""Tests for xtc_ext.data.nyud_mt: NYUDMT (Vandenhende's NYUD_MT layout: 40-class labels, depth,
surface normals), its resizing, augmentation (normals' x negated on a flip) and error paths."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xtc_ext.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NYUDMT,
    AugmentParams,
    apply_augmentation,
    sample_augment_params,
    split_train_val,
)

from fixtures import MT_H, MT_W, NYUDMT_SPLITS, decoded_jpeg, write_nyudmt


@pytest.fixture
def nyud_root(tmp_path):
    root = tmp_path / "NYUD_MT"
    return root, write_nyudmt(root)


# --------------------------------------------------------------------------- #
# conversions
# --------------------------------------------------------------------------- #
def test_nyudmt_reads_and_converts(nyud_root):
    root, arrays = nyud_root
    ds = NYUDMT(root, "train", size=None, normalize=False)
    assert ds.frames == NYUDMT_SPLITS["train"] and len(ds) == 3  # file order, blank line skipped
    for i, fid in enumerate(ds.frames):
        rgb, seg, depth, normals = arrays[fid]
        s = ds[i]
        assert s["name"] == fid
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, MT_H, MT_W)
        assert torch.equal(s["image"], decoded_jpeg(root / "images" / f"{fid}.jpg"))
        # seg: 0 -> -1, k -> k-1 (40 classes 0..39)
        assert s["seg"].dtype == torch.int64 and s["seg"].shape == (MT_H, MT_W)
        assert torch.equal(s["seg"], torch.from_numpy(seg.astype(np.int64) - 1))
        assert s["seg"].min() == -1 and s["seg"].max() == 39
        # depth (h,w) or (h,w,1) on disk -> [1,H,W] metres
        assert s["depth"].dtype == torch.float32 and s["depth"].shape == (1, MT_H, MT_W)
        assert torch.equal(s["depth"][0], torch.from_numpy(depth))
        assert torch.equal(s["depth_valid"], s["depth"] > 0)
        assert not s["depth_valid"][0, 12, 35]
        # normals: unit where stored non-zero, zero block invalid
        n, nv = s["normals"], s["normals_valid"]
        assert n.dtype == torch.float32 and n.shape == (3, MT_H, MT_W)
        assert nv.dtype == torch.bool and nv.shape == (1, MT_H, MT_W)
        ref = torch.from_numpy(normals).permute(2, 0, 1)
        assert torch.equal(nv[0], ref.norm(dim=0) > 0)
        assert not nv[0, 45, 10] and torch.equal(n[:, 45, 10], torch.zeros(3))
        assert torch.allclose(n.norm(dim=0)[nv[0]], torch.ones(()), atol=1e-6)
        assert torch.allclose(n, ref, atol=1e-6)
    # the (h,w,1) depth file really was 3-D on disk
    assert np.load(root / "depth" / "000001.npy").shape == (MT_H, MT_W, 1)
    assert np.load(root / "depth" / "000003.npy").shape == (MT_H, MT_W)


def test_nyudmt_default_size_and_normalisation(nyud_root):
    root, _ = nyud_root
    raw = NYUDMT(root, size=None, normalize=False)[0]
    s = NYUDMT(root)[0]  # default (480, 640), normalised
    assert s["image"].shape == (3, 480, 640) and s["seg"].shape == (480, 640)
    for k in ("depth", "depth_valid", "normals_valid"):
        assert s[k].shape == (1, 480, 640)
    assert s["normals"].shape == (3, 480, 640)
    s2 = NYUDMT(root, size=None, normalize=True)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(s2["image"], (raw["image"] - mean) / std, atol=1e-6)


def test_nyudmt_splits(nyud_root):
    root, arrays = nyud_root
    val = NYUDMT(root, "val", size=None)
    assert val.frames == NYUDMT_SPLITS["val"] and len(val) == 1
    assert val[0]["name"] == "000010"
    assert "split='val'" in repr(val)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "gt_sets" / "test.txt"))):
        NYUDMT(root, "test")
    (root / "gt_sets" / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=re.escape(str(root / "gt_sets" / "empty.txt"))):
        NYUDMT(root, "empty")
    tr, va = split_train_val(NYUDMT(root, augment=True, size=None), 0.34, seed=0)
    assert sorted(tr.indices + va.indices) == [0, 1, 2]
    assert va.dataset.augment is False


def test_nyudmt_resize_nearest_and_renormalised(tmp_path):
    root = tmp_path / "n"
    arrays = write_nyudmt(root, splits={"train": ["a"]})
    # store non-unit normals (scaled by 2.5) and check they come back unit length
    _, _, _, normals = arrays["a"]
    np.save(root / "normals" / "a.npy", normals * 2.5)
    for size in ((32, 24), (100, 90)):
        s = NYUDMT(root, size=size, normalize=False)[0]
        H, W = size
        assert s["image"].shape == (3, H, W)
        ref = torch.from_numpy(normals).permute(2, 0, 1)
        exp_n = F.interpolate(ref[None], size=size, mode="nearest-exact")[0]
        valid = exp_n.norm(dim=0) > 0
        assert torch.equal(s["normals_valid"][0], valid)
        assert torch.allclose(s["normals"], exp_n / exp_n.norm(dim=0).clamp_min(1e-12), atol=1e-6)
        assert torch.equal(s["normals"][:, ~valid], torch.zeros(3, int((~valid).sum())))
        assert torch.allclose(s["normals"].norm(dim=0)[valid], torch.ones(()), atol=1e-6)
        # labels and depth nearest, values unchanged
        assert set(s["seg"].unique().tolist()) <= set(range(-1, 40))
        exp_d = F.interpolate(torch.from_numpy(arrays["a"][2])[None, None], size=size,
                              mode="nearest-exact")[0]
        assert torch.equal(s["depth"], exp_d)
        assert torch.equal(s["depth_valid"], exp_d > 0)


# --------------------------------------------------------------------------- #
# augmentation
# --------------------------------------------------------------------------- #
def test_flip_negates_normal_x(nyud_root):
    root, _ = nyud_root
    s = NYUDMT(root, size=None, normalize=False)[0]
    W = s["image"].shape[-1]
    out = apply_augmentation(s, AugmentParams(scale=1.0, top=0, left=0, flip=True))
    n, f = s["normals"], out["normals"]
    assert torch.equal(f[0], -torch.flip(n[0], dims=[-1]))
    assert torch.equal(f[1:], torch.flip(n[1:], dims=[-1]))
    assert torch.equal(out["normals_valid"], torch.flip(s["normals_valid"], dims=[-1]))
    assert torch.equal(out["depth"], torch.flip(s["depth"], dims=[-1]))
    assert torch.equal(out["seg"], torch.flip(s["seg"], dims=[-1]))
    # pixel-level: x of the mirrored pixel changes sign
    assert torch.equal(f[:, 20, W - 1 - 5], n[:, 20, 5] * torch.tensor([-1.0, 1.0, 1.0]))
    # no flip: normals unchanged by a pure crop (directions are kept), depth / s
    out2 = apply_augmentation(s, AugmentParams(scale=1.5, top=3, left=7, flip=False))
    h, w = int(64 / 1.5), int(64 / 1.5)
    exp = F.interpolate(s["normals"][None, :, 3:3 + h, 7:7 + w], size=(64, 64), mode="nearest")[0]
    assert torch.equal(out2["normals"], exp)
    exp_d = F.interpolate(s["depth"][None, :, 3:3 + h, 7:7 + w], size=(64, 64), mode="nearest")[0]
    assert torch.allclose(out2["depth"], exp_d / 1.5)
    assert torch.allclose(out2["normals"].norm(dim=0)[out2["normals_valid"][0]], torch.ones(()),
                          atol=1e-6)
    # input not modified
    assert torch.equal(s["normals"], n)


def test_nyudmt_dataset_augmentation_matches_params(nyud_root):
    root, _ = nyud_root
    base_ds = NYUDMT(root, size=None, normalize=False)
    aug_ds = NYUDMT(root, size=None, normalize=False, augment=True)
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        got = aug_ds[1]
        torch.manual_seed(seed)
        p = sample_augment_params(MT_H, MT_W)
        exp = apply_augmentation(base_ds[1], p)
        flips += p.flip
        for k in ("image", "seg", "depth", "depth_valid", "normals", "normals_valid"):
            assert torch.equal(got[k], exp[k]), (seed, k)
    assert 0 < flips < 8


# --------------------------------------------------------------------------- #
# errors name the file
# --------------------------------------------------------------------------- #
def test_nyudmt_missing_paths(tmp_path, nyud_root):
    root, _ = nyud_root
    with pytest.raises(FileNotFoundError, match="nope"):
        NYUDMT(tmp_path / "nope")
    for sub, ext in (("images", "jpg"), ("segmentation", "png"), ("depth", "npy"), ("normals", "npy")):
        p = root / sub / f"000002.{ext}"
        data = p.read_bytes()
        p.unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(str(p))):
            NYUDMT(root)
        p.write_bytes(data)
    assert len(NYUDMT(root)) == 3


def _save_and_expect(root, rel, writer, needle=None):
    p = root / rel
    writer(p)
    ds = NYUDMT(root, size=None)
    i = ds.frames.index(p.stem)
    with pytest.raises(ValueError, match=re.escape(str(p))) as ei:
        ds[i]
    if needle:
        assert needle in str(ei.value)


@pytest.mark.parametrize("rel,writer,needle", [
    ("segmentation/000001.png", lambda p: Image.fromarray(np.full((MT_H, MT_W), 41, np.uint8)).save(p),
     "41"),
    ("segmentation/000001.png", lambda p: Image.fromarray(np.zeros((MT_H, MT_W, 3), np.uint8)).save(p),
     "mode"),
    ("depth/000001.npy", lambda p: np.save(p, np.ones((MT_H, MT_W, 2), np.float32)), "shape"),
    ("depth/000001.npy", lambda p: np.save(p, -np.ones((MT_H, MT_W), np.float32)), "negative"),
    ("depth/000001.npy", lambda p: np.save(p, np.full((MT_H, MT_W), np.nan, np.float32)), "non-finite"),
    ("depth/000001.npy", lambda p: np.save(p, np.ones((MT_H, MT_W + 1), np.float32)), "size"),
    ("normals/000001.npy", lambda p: np.save(p, np.ones((MT_H, MT_W), np.float32)), "shape"),
    ("normals/000001.npy", lambda p: np.save(p, np.ones((3, MT_H, MT_W), np.float32)), "shape"),
    ("normals/000001.npy", lambda p: np.save(p, np.full((MT_H, MT_W, 3), np.inf, np.float32)),
     "non-finite"),
    ("normals/000001.npy", lambda p: np.save(p, np.ones((MT_H - 1, MT_W, 3), np.float32)), "size"),
    ("normals/000001.npy", lambda p: p.write_bytes(b"not a numpy file"), "cannot load"),
    ("images/000001.jpg", lambda p: p.write_bytes(b"garbage"), "cannot read"),
    ("images/000001.jpg", lambda p: Image.fromarray(np.zeros((MT_H, MT_W, 4), np.uint8)).save(
        p.with_suffix(".png"), format="PNG") or p.write_bytes(p.with_suffix(".png").read_bytes()),
     "mode"),
])
def test_nyudmt_bad_files_name_the_file(nyud_root, rel, writer, needle):
    root, _ = nyud_root
    _save_and_expect(root, rel, writer, needle)


def test_nyudmt_grayscale_jpeg_converted(nyud_root):
    root, _ = nyud_root
    p = root / "images" / "000002.jpg"
    Image.fromarray(np.full((MT_H, MT_W), 100, np.uint8)).save(p)
    ds = NYUDMT(root, size=None, normalize=False)
    s = ds[ds.frames.index("000002")]
    assert torch.equal(s["image"][0], s["image"][2])


def test_nyudmt_bad_arguments(nyud_root):
    root, _ = nyud_root
    with pytest.raises(ValueError):
        NYUDMT(root, size=(0, 5))
    with pytest.raises(ValueError):
        NYUDMT(root, depth_scaling="twice")
