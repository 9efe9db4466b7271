"""Tests for xtc_ext.data: NYUv2 PNG frames, MTAN .npy layouts (NYUv2, Cityscapes), Cityscapes
official files, augmentation (masks move with the data), train/val split."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torch.nn.functional as F

from xtc_ext.data import (
    AUGMENT_SCALES,
    CITYSCAPES19_CLASS_NAMES,
    CITYSCAPES7_CLASS_NAMES,
    CITYSCAPES_DEPTH_MAX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    CityscapesFiles,
    MTANCityscapes,
    MTANNYUv2,
    NYUv2Frames,
    apply_augmentation,
    augment_sample,
    cityscapes_disparity_to_depth,
    cityscapes_label_table,
    cityscapes_labels_to_train_ids,
    normalize_image,
    sample_augment_params,
    split_indices,
    split_train_val,
)

from conftest import REAL_FRAMES as REAL
from fixtures import (  # noqa: E402
    CS_FRAMES, CS_H, CS_W, H, IDS, W, cityscapes_paths, write_cityscapes, write_frames, write_mtan,
    write_mtan_cityscapes,
)


@pytest.fixture
def frames_root(tmp_path):
    root = tmp_path / "frames"
    arrays = write_frames(root)
    return root, arrays


@pytest.fixture
def mtan_root(tmp_path):
    root = tmp_path / "mtan"
    arrays = write_mtan(root)
    return root, arrays


# --------------------------------------------------------------------------- #
# NYUv2Frames: conversions
# --------------------------------------------------------------------------- #
def test_frames_label_depth_image_conversion(frames_root):
    root, arrays = frames_root
    ds = NYUv2Frames(root, size=None, normalize=False)
    assert len(ds) == 3 and ds.frames == IDS
    for i, fid in enumerate(IDS):
        s = ds[i]
        rgb, depth, lab13, _ = arrays[fid]
        assert s["name"] == fid
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, H, W)
        assert s["seg"].dtype == torch.int64 and s["seg"].shape == (H, W)
        assert s["depth"].dtype == torch.float32 and s["depth"].shape == (1, H, W)
        # label mapping 0 -> -1, k -> k-1
        expected = lab13.astype(np.int64) - 1
        assert np.array_equal(s["seg"].numpy(), expected)
        assert (s["seg"].numpy()[lab13 == 0] == -1).all()
        assert s["seg"].min() == -1 and s["seg"].max() == 12
        # depth mm -> m, 0 stays 0
        np.testing.assert_allclose(s["depth"][0].numpy(), depth / 1000.0, rtol=0, atol=1e-6)
        assert s["depth"][0, 0, 0] == 0.0
        # validity mask: depth > 0
        assert s["depth_valid"].dtype == torch.bool and s["depth_valid"].shape == (1, H, W)
        assert torch.equal(s["depth_valid"][0], torch.from_numpy(depth > 0))
        assert not s["depth_valid"][0, 0, 0]
        # image in [0,1]
        np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-6)


def test_frames_40_classes(frames_root):
    root, arrays = frames_root
    s = NYUv2Frames(root, size=None, classes=40, normalize=False)[1]
    assert np.array_equal(s["seg"].numpy(), arrays[IDS[1]][3].astype(np.int64) - 1)
    assert s["seg"].max() == 39


def test_frames_imagenet_normalisation(frames_root):
    root, arrays = frames_root
    s = NYUv2Frames(root, size=None, normalize=True)[0]
    rgb = arrays[IDS[0]][0] / 255.0
    mean = np.array(IMAGENET_MEAN)
    std = np.array(IMAGENET_STD)
    expected = (rgb - mean) / std
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # hand value for one pixel / channel
    v = float(rgb[5, 7, 2])
    assert s["image"][2, 5, 7].item() == pytest.approx((v - 0.406) / 0.225, abs=1e-5)


def test_frames_resize(frames_root):
    root, arrays = frames_root
    ds = NYUv2Frames(root, size=(24, 32), normalize=False)
    s = ds[2]
    assert s["image"].shape == (3, 24, 32)
    assert s["seg"].shape == (24, 32) and s["seg"].dtype == torch.int64
    assert s["depth"].shape == (1, 24, 32)
    _, depth, lab13, _ = arrays[IDS[2]]
    # nearest: every output value exists in the input
    assert set(np.unique(s["seg"].numpy())) <= set(np.unique(lab13.astype(np.int64) - 1))
    assert set(np.unique(s["depth"].numpy())) <= set(np.unique(depth.astype(np.float32) / 1000))
    # nearest-exact for an exact 2x downsample picks input pixel (2i+1, 2j+1)
    np.testing.assert_allclose(s["depth"][0].numpy(), depth[1::2, 1::2] / 1000.0, atol=1e-6)
    assert s["depth_valid"].shape == (1, 24, 32) and s["depth_valid"].dtype == torch.bool
    assert torch.equal(s["depth_valid"], s["depth"] > 0)
    # upsample also works
    s2 = NYUv2Frames(root, size=(96, 100), normalize=False)[0]
    assert s2["image"].shape == (3, 96, 100) and s2["seg"].shape == (96, 100)
    assert s2["image"].min() >= 0 and s2["image"].max() <= 1


def test_frames_explicit_list(frames_root):
    root, _ = frames_root
    ds = NYUv2Frames(root, size=None, frames=["0011", "0003.png"])
    assert ds.frames == ["0011", "0003"]
    assert ds[0]["name"] == "0011"


# --------------------------------------------------------------------------- #
# NYUv2Frames: error paths
# --------------------------------------------------------------------------- #
def test_frames_bad_classes(frames_root):
    with pytest.raises(ValueError, match="13 or 40"):
        NYUv2Frames(frames_root[0], classes=20)


def test_frames_missing_root_and_folder(tmp_path, frames_root):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        NYUv2Frames(missing)
    root, _ = frames_root
    for f in (root / "depth").iterdir():
        f.unlink()
    (root / "depth").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "depth"))):
        NYUv2Frames(root)


def test_frames_missing_file(frames_root):
    root, _ = frames_root
    p = root / "label13" / "0007.png"
    p.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(p))):
        NYUv2Frames(root)
    # 40-class labels are still complete
    assert len(NYUv2Frames(root, classes=40)) == 3
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "rgb" / "9999.png"))):
        NYUv2Frames(root, frames=["9999"])


def test_frames_rgb_wrong_mode(frames_root):
    root, _ = frames_root
    p = root / "rgb" / "0003.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(p)  # mode L
    with pytest.raises(ValueError, match=re.escape(str(p))):
        NYUv2Frames(root)[0]


def test_frames_depth_not_16bit(frames_root):
    root, _ = frames_root
    p = root / "depth" / "0007.png"
    Image.fromarray(np.full((H, W), 3, np.uint8)).save(p)  # 8-bit
    with pytest.raises(ValueError, match=re.escape(str(p))):
        NYUv2Frames(root)[1]


def test_frames_label_wrong_mode(frames_root):
    root, _ = frames_root
    p = root / "label13" / "0011.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(p)  # RGB label
    with pytest.raises(ValueError, match=re.escape(str(p))):
        NYUv2Frames(root)[2]
    p16 = root / "label13" / "0003.png"
    Image.fromarray(np.zeros((H, W), np.uint16)).save(p16)  # 16-bit label
    with pytest.raises(ValueError, match=re.escape(str(p16))):
        NYUv2Frames(root)[0]


def test_frames_label_out_of_range(frames_root):
    root, arrays = frames_root
    p = root / "label13" / "0007.png"
    lab = arrays["0007"][2].copy()
    lab[3, 4] = 14
    Image.fromarray(lab).save(p)
    with pytest.raises(ValueError) as ei:
        NYUv2Frames(root)[1]
    assert str(p) in str(ei.value) and "14" in str(ei.value)
    # 40-class loader is unaffected, and a 13-class value 13 is still valid
    assert NYUv2Frames(root, classes=40)[1]["seg"].max() == 39


def test_frames_size_mismatch(frames_root):
    root, _ = frames_root
    p = root / "depth" / "0003.png"
    Image.fromarray(np.full((H, W + 2), 1000, np.uint16)).save(p)
    with pytest.raises(ValueError, match=re.escape(str(p))):
        NYUv2Frames(root)[0]


def test_frames_corrupt_png(frames_root):
    root, _ = frames_root
    p = root / "rgb" / "0003.png"
    p.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=re.escape(str(p))):
        NYUv2Frames(root)[0]


# --------------------------------------------------------------------------- #
# MTAN .npy layout
# --------------------------------------------------------------------------- #
def test_mtan_reads(mtan_root):
    root, arrays = mtan_root
    ds = MTANNYUv2(root, split="train", normalize=False)
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        img, lab, dep = arrays[i]
        assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
        assert s["seg"].shape == (H, W) and s["seg"].dtype == torch.int64
        assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
        assert s["name"] == f"train/{i}"
        np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), img, atol=1e-6)
        assert np.array_equal(s["seg"].numpy(), lab.astype(np.int64))
        assert (s["seg"] == -1).any()
        np.testing.assert_array_equal(s["depth"][0].numpy(), dep[..., 0])
        assert (s["depth"][0, :2, :3] == 0).all()
        assert s["depth_valid"].dtype == torch.bool and s["depth_valid"].shape == (1, H, W)
        assert torch.equal(s["depth_valid"][0], torch.from_numpy(dep[..., 0] > 0))
    sn = MTANNYUv2(root, split="train", normalize=True)[0]
    np.testing.assert_allclose(sn["image"].numpy(),
                               normalize_image(torch.from_numpy(arrays[0][0]).float().permute(2, 0, 1)).numpy(),
                               atol=1e-5)


def test_mtan_missing_paths(tmp_path, mtan_root):
    root, _ = mtan_root
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "val"))):
        MTANNYUv2(root, split="val")
    p = root / "train" / "label" / "1.npy"
    p.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(p))):
        MTANNYUv2(root)


def test_mtan_gap_in_images(mtan_root):
    root, _ = mtan_root
    (root / "train" / "image" / "1.npy").unlink()  # now 0, 2 -> N = 2, index 1 missing
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "train" / "image" / "1.npy"))):
        MTANNYUv2(root)


@pytest.mark.parametrize("kind,array,needle", [
    ("image", np.zeros((H, W), np.float32), "shape"),
    ("image", np.full((H, W, 3), 2.0, np.float32), "[0, 1]"),
    ("label", np.zeros((H, W, 1), np.float32), "shape"),
    ("label", np.full((H, W), 13.0, np.float32), "13"),
    ("label", np.full((H, W), -2, np.int64), "-2"),
    ("label", np.full((H, W), 2.5, np.float32), "non-integer"),
    ("label", np.full((H, W), np.nan, np.float32), "non-finite"),
    ("depth", np.ones((H, W), np.float32), "shape"),
    ("depth", np.ones((H + 1, W, 1), np.float32), "shape"),
    ("depth", -np.ones((H, W, 1), np.float32), "negative"),
])
def test_mtan_bad_content(mtan_root, kind, array, needle):
    root, _ = mtan_root
    p = root / "train" / kind / "2.npy"
    np.save(p, array)
    ds = MTANNYUv2(root)
    ds[0]  # other samples are fine
    with pytest.raises(ValueError) as ei:
        ds[2]
    assert str(p) in str(ei.value)
    assert needle in str(ei.value)


def test_mtan_corrupt_npy(mtan_root):
    root, _ = mtan_root
    p = root / "train" / "depth" / "0.npy"
    p.write_bytes(b"garbage, not an npy file")
    with pytest.raises(ValueError, match=re.escape(str(p))):
        MTANNYUv2(root)[0]
    p2 = root / "train" / "label" / "1.npy"
    np.save(p2, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # pickled object array
    with pytest.raises(ValueError, match=re.escape(str(p2))):
        MTANNYUv2(root)[1]


# --------------------------------------------------------------------------- #
# augmentation
# --------------------------------------------------------------------------- #
def _const_sample(depth_value=3.0, h=H, w=W):
    seg = torch.arange(h * w, dtype=torch.int64).view(h, w) % 13
    seg[0, :] = -1
    return {
        "image": torch.rand(3, h, w),
        "seg": seg,
        "depth": torch.full((1, h, w), depth_value),
        "name": "x",
    }


def test_augment_depth_divided_by_scale():
    d = 3.0
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        params = sample_augment_params(H, W, torch.Generator().manual_seed(seed))
        out = augment_sample(_const_sample(d), generator=g)
        assert out["image"].shape == (3, H, W) and out["image"].dtype == torch.float32
        assert out["seg"].shape == (H, W) and out["seg"].dtype == torch.int64
        assert out["depth"].shape == (1, H, W) and out["depth"].dtype == torch.float32
        assert out["name"] == "x"
        vals = torch.unique(out["depth"])
        assert vals.numel() == 1
        assert params.scale in AUGMENT_SCALES
        assert vals.item() == pytest.approx(d / params.scale, rel=1e-6)
        seen.add(params.scale)
    assert seen == set(AUGMENT_SCALES)  # all three scales are drawn


def test_augment_scale_1_5_exact_value_and_crop():
    s = _const_sample(3.0)
    s["depth"][0, 10, 10] = 0.0  # an invalid pixel inside the crop
    p = AugmentParams(scale=1.5, top=5, left=7, flip=False)
    out = apply_augmentation(s, p)
    h, w = int(H / 1.5), int(W / 1.5)  # 32, 42
    assert (h, w) == (32, 42)
    dv = out["depth"]
    assert (dv == 0).any()  # invalid stays 0
    assert torch.allclose(dv[dv > 0], torch.full_like(dv[dv > 0], 2.0))
    # nearest crop of the seg map: values come from the window, corners map exactly
    seg_id = torch.arange(H * W).view(H, W)
    s2 = {"image": s["image"], "seg": seg_id, "depth": s["depth"]}
    o2 = apply_augmentation(s2, p)
    win = seg_id[5:5 + h, 7:7 + w]
    assert set(o2["seg"].unique().tolist()) <= set(win.unique().tolist())
    assert o2["seg"][0, 0] == win[0, 0] and o2["seg"][-1, -1] == win[-1, -1]
    # bilinear align_corners=True: image corners equal crop corners
    crop = s["image"][:, 5:5 + h, 7:7 + w]
    for (a, b), (c, e) in (((0, 0), (0, 0)), ((-1, -1), (-1, -1)), ((0, -1), (0, -1))):
        assert torch.allclose(o2["image"][:, a, b], crop[:, c, e], atol=1e-6)
    # input unchanged
    assert s["depth"].max() == 3.0


def test_augment_flip_only():
    s = _const_sample()
    s["depth"] = torch.rand(1, H, W) + 0.5
    s["depth_valid"] = torch.rand(1, H, W) > 0.5
    out = apply_augmentation(s, AugmentParams(scale=1.0, top=0, left=0, flip=True))
    assert torch.allclose(out["image"], s["image"].flip(-1), atol=1e-6)
    assert torch.equal(out["seg"], s["seg"].flip(-1))
    assert torch.allclose(out["depth"], s["depth"].flip(-1))
    assert torch.equal(out["depth_valid"], s["depth_valid"].flip(-1))
    assert out["seg"][0, 0] == -1  # ignore preserved
    same = apply_augmentation(s, AugmentParams(scale=1.0, top=0, left=0, flip=False))
    assert torch.allclose(same["image"], s["image"], atol=1e-6)
    assert torch.equal(same["seg"], s["seg"])
    assert torch.equal(same["depth_valid"], s["depth_valid"])


def test_augment_reproducible_and_flip_rate():
    s = _const_sample()
    a = augment_sample(s, torch.Generator().manual_seed(123))
    b = augment_sample(s, torch.Generator().manual_seed(123))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])
    torch.manual_seed(7)
    c = augment_sample(s)
    torch.manual_seed(7)
    d = augment_sample(s)
    assert torch.equal(c["depth"], d["depth"]) and torch.equal(c["seg"], d["seg"])
    g = torch.Generator().manual_seed(0)
    flips = [sample_augment_params(H, W, g).flip for _ in range(400)]
    assert 0.4 < sum(flips) / 400 < 0.6
    for _ in range(50):
        p = sample_augment_params(H, W, g)
        assert 0 <= p.top <= H - int(H / p.scale) and 0 <= p.left <= W - int(W / p.scale)


def test_augment_rejects_bad_sample():
    s = _const_sample()
    s["seg"] = s["seg"][:-1]
    with pytest.raises(ValueError, match="seg"):
        augment_sample(s)


def test_dataset_augment_then_normalise(tmp_path):
    # constant colour frames: after augmentation + normalisation every pixel
    # equals the normalised colour, and depth is constant / scale
    root = tmp_path / "c"
    for d in ("rgb", "depth", "label13"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.full((H, W, 3), (51, 102, 204), np.uint8)).save(root / "rgb" / "a.png")
    Image.fromarray(np.full((H, W), 3000, np.uint16)).save(root / "depth" / "a.png")
    Image.fromarray(np.full((H, W), 5, np.uint8)).save(root / "label13" / "a.png")
    ds = NYUv2Frames(root, size=None, augment=True, normalize=True)
    scales = set()
    for seed in range(30):
        torch.manual_seed(seed)
        s = ds[0]
        exp = (torch.tensor([0.2, 0.4, 0.8]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        assert torch.allclose(s["image"], exp.view(3, 1, 1).expand(3, H, W), atol=1e-5)
        assert (s["seg"] == 4).all()
        v = torch.unique(s["depth"])
        assert v.numel() == 1
        k = min(AUGMENT_SCALES, key=lambda sc: abs(3.0 / sc - v.item()))
        assert v.item() == pytest.approx(3.0 / k, rel=1e-6)
        assert s["depth_valid"].all() and s["depth_valid"].dtype == torch.bool
        scales.add(k)
    assert len(scales) >= 2
    mds = MTANNYUv2(write_mtan_and_root(tmp_path), augment=True, normalize=False)
    out = mds[0]
    assert out["image"].shape == (3, H, W) and 0 <= out["image"].min() and out["image"].max() <= 1


def write_mtan_and_root(tmp_path):
    root = tmp_path / "m2"
    write_mtan(root, n=1)
    return root


# --------------------------------------------------------------------------- #
# real NYUv2 frames
# --------------------------------------------------------------------------- #
@pytest.mark.skipif(not (REAL / "rgb").is_dir(), reason="real NYUv2 frames not available")
@pytest.mark.parametrize("classes", [13, 40])
def test_real_frames(classes):
    ds = NYUv2Frames(REAL, size=(240, 320), classes=classes, normalize=False)
    assert len(ds) == 10
    assert ds.frames[0] == "0001" and ds.frames[-1] == "0028"
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 240, 320) and s["image"].dtype == torch.float32
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["seg"].shape == (240, 320)
        assert s["seg"].min() >= -1 and s["seg"].max() <= classes - 1
        assert (s["seg"] >= 0).float().mean() > 0.5  # mostly labelled
        d = s["depth"]
        assert d.shape == (1, 240, 320)
        valid = d[d > 0]
        assert valid.numel() > 0.9 * d.numel()
        assert valid.min() >= 0.5 and valid.max() <= 10.5


@pytest.mark.skipif(not (REAL / "rgb").is_dir(), reason="real NYUv2 frames not available")
def test_real_frames_native_and_augmented():
    ds = NYUv2Frames(REAL, size=None, augment=True, normalize=True)
    torch.manual_seed(0)
    s = ds[3]
    assert s["image"].shape == (3, 480, 640)
    assert s["seg"].shape == (480, 640) and s["depth"].shape == (1, 480, 640)
    assert s["seg"].min() >= -1 and s["seg"].max() <= 12
    assert s["depth"].max() <= 10.5


# --------------------------------------------------------------------------- #
# depth validity mask under augmentation (fix of reference-implementations §3.1.1)
# --------------------------------------------------------------------------- #
def _marked_sample(h=H, w=W, seed=0):
    """seg = unique pixel id (tells which source pixel each output pixel came from),
    depth random with a zero block, depth_valid independent of depth."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(1, h, w, generator=g) + 0.5
    depth[0, 10:20, 20:40] = 0.0
    valid = torch.rand(1, h, w, generator=g) > 0.3
    return {
        "image": torch.rand(3, h, w, generator=g),
        "seg": torch.arange(h * w, dtype=torch.int64).view(h, w),
        "depth": depth,
        "depth_valid": valid,
        "name": "m",
    }


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scale,top,left", [(1.5, 5, 7), (1.2, 8, 0), (1.5, 0, W - int(W / 1.5))])
def test_augment_mask_moves_with_data(scale, top, left, flip):
    s = _marked_sample()
    p = AugmentParams(scale=scale, top=top, left=left, flip=flip, depth_scaling="none")
    out = apply_augmentation(s, p)
    src = out["seg"]  # source pixel id of every output pixel
    assert out["depth_valid"].dtype == torch.bool and out["depth_valid"].shape == (1, H, W)
    # mask and depth come from the same source pixel as the seg map
    assert torch.equal(out["depth_valid"][0], s["depth_valid"].flatten()[src])
    assert torch.equal(out["depth"][0], s["depth"].flatten()[src])
    # the source pixels lie in the crop window, flipped when asked
    h, w = int(H / scale), int(W / scale)
    rows, cols = src // W, src % W
    assert rows.min() == top and rows.max() == top + h - 1
    assert cols.min() == left and cols.max() == left + w - 1
    assert (cols[:, 0] == (left + w - 1 if flip else left)).all()
    # explicit expectation: nearest crop-resize of the mask, then flip
    r = (torch.arange(H) * h // H) + top
    c = (torch.arange(W) * w // W) + left
    expected = s["depth_valid"][0][r[:, None], c[None, :]]
    if flip:
        expected = expected.flip(-1)
    assert torch.equal(out["depth_valid"][0], expected)
    # the authors' bug (uncropped mask) would differ
    if scale != 1.0 or flip:
        assert not torch.equal(out["depth_valid"], s["depth_valid"])


def test_augment_moves_every_per_pixel_key():
    s = _marked_sample()
    s["seg_valid"] = s["seg"] % 3 == 0                          # [H,W] bool
    s["extra"] = torch.randn(2, H, W, dtype=torch.float64)       # [C,H,W] float64
    s["big_ids"] = s["seg"].to(torch.int64) * 1_000_003 + 2**40  # int64, exact values
    s["class_weights"] = torch.rand(13)                          # not per-pixel
    for seed in range(6):
        out = augment_sample(s, torch.Generator().manual_seed(seed))
        src = out["seg"]
        assert torch.equal(out["seg_valid"], s["seg_valid"].flatten()[src])
        assert out["extra"].dtype == torch.float64
        for ch in range(2):
            assert torch.equal(out["extra"][ch], s["extra"][ch].flatten()[src])
        assert torch.equal(out["big_ids"], s["big_ids"].flatten()[src])
        assert out["class_weights"] is s["class_weights"]
        # depth (default "divide") and mask still aligned
        sc = s["depth"].flatten()[src] / out["depth"][0]
        ok = out["depth"][0] > 0
        assert torch.equal(ok, s["depth"].flatten()[src] > 0)
        assert torch.allclose(sc[ok], sc[ok][0].expand_as(sc[ok]), rtol=1e-5)
        assert torch.equal(out["depth_valid"][0], s["depth_valid"].flatten()[src])


def test_augment_depth_scaling_modes():
    s = _const_sample(3.0)
    s["depth_valid"] = torch.ones(1, H, W, dtype=torch.bool)
    s["depth"][0, 10, 10] = 0.0
    for mode, expected in (("divide", 2.0), ("multiply", 4.5), ("none", 3.0)):
        out = apply_augmentation(s, AugmentParams(1.5, 5, 7, False, depth_scaling=mode))
        d = out["depth"]
        assert (d == 0).any()  # invalid stays 0 in every mode
        assert torch.allclose(d[d > 0], torch.full_like(d[d > 0], expected))
        assert out["depth_valid"].dtype == torch.bool and out["depth_valid"].all()
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = augment_sample(s, g1, depth_scaling=mode)
        p = sample_augment_params(H, W, g2, depth_scaling=mode)
        assert p.depth_scaling == mode
        assert torch.equal(a["depth"], apply_augmentation(s, p)["depth"])
    with pytest.raises(ValueError, match="depth_scaling"):
        AugmentParams(1.0, 0, 0, False, depth_scaling="metres")
    with pytest.raises(ValueError, match="depth_scaling"):
        augment_sample(s, depth_scaling="times")


def test_augment_rejects_bad_mask():
    s = _const_sample()
    s["depth_valid"] = torch.ones(1, H, W)  # float, not bool
    with pytest.raises(ValueError, match="depth_valid"):
        augment_sample(s)
    s["depth_valid"] = torch.ones(1, H, W - 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="depth_valid"):
        augment_sample(s)


def test_nyu_datasets_mask_follows_augmented_depth(frames_root, mtan_root):
    ds = NYUv2Frames(frames_root[0], size=None, augment=True, normalize=False)
    mds = MTANNYUv2(mtan_root[0], augment=True, normalize=False)
    assert ds.depth_scaling == "divide" and mds.depth_scaling == "divide"
    for seed in range(8):
        torch.manual_seed(seed)
        for s in (ds[0], mds[1]):
            assert s["depth_valid"].dtype == torch.bool
            assert torch.equal(s["depth_valid"], s["depth"] > 0)


# --------------------------------------------------------------------------- #
# Cityscapes: label tables and the disparity target
# --------------------------------------------------------------------------- #
# Hand tables, written out id by id.
CS7_HAND = {0: -1, 1: -1, 2: -1, 3: -1, 4: -1, 5: -1, 6: -1,
            7: 0, 8: 0, 9: 0, 10: 0,
            11: 1, 12: 1, 13: 1, 14: 1, 15: 1, 16: 1,
            17: 2, 18: 2, 19: 2, 20: 2,
            21: 3, 22: 3,
            23: 4,
            24: 5, 25: 5,
            26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 6}
CS19_HAND = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # others void


def _hand_table(classes):
    if classes == 7:
        return np.array([CS7_HAND[i] for i in range(34)], np.int64)
    return np.array([CS19_HAND.get(i, -1) for i in range(34)], np.int64)


def test_cityscapes_label_tables():
    assert cityscapes_label_table(7).tolist() == [CS7_HAND[i] for i in range(34)]
    t19 = cityscapes_label_table(19)
    assert t19.tolist() == [CS19_HAND.get(i, -1) for i in range(34)]
    assert [i for i in range(34) if t19[i] == -1] == [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    assert len(CITYSCAPES7_CLASS_NAMES) == 7 and len(CITYSCAPES19_CLASS_NAMES) == 19
    assert CITYSCAPES19_CLASS_NAMES[t19[26]] == "car" and CITYSCAPES7_CLASS_NAMES[CS7_HAND[26]] == "vehicle"
    ids = np.array([[-1, 0, 7, 26], [33, 24, 23, 9]])
    assert cityscapes_labels_to_train_ids(ids, 7).tolist() == [[-1, -1, 0, 6], [6, 5, 4, 0]]
    assert cityscapes_labels_to_train_ids(ids, 19).tolist() == [[-1, -1, 0, 13], [18, 11, 10, -1]]
    with pytest.raises(ValueError, match="34"):
        cityscapes_labels_to_train_ids(np.array([34]), 7)
    with pytest.raises(ValueError, match="-2"):
        cityscapes_labels_to_train_ids(np.array([-2]), 19)
    for bad in (5, 20, 0):
        with pytest.raises(ValueError, match="7 or 19"):
            cityscapes_label_table(bad)


def test_cityscapes_disparity_to_depth():
    p = np.array([0, 1, 2, 257, 513, 32257, 32258, 65535], np.uint16)
    t, v = cityscapes_disparity_to_depth(p)
    assert t.dtype == np.float32 and v.dtype == np.bool_
    assert v.tolist() == [False, True, True, True, True, True, True, True]
    assert t[0] == 0.0 and t[1] == 0.0  # invalid, and valid with target 0
    assert t[2] == np.float32(1 / 65536)
    assert t[3] == np.float32(1 / 256) and t[4] == np.float32(2 / 256)
    assert t[5] == np.float32(32256 / 65536)  # 0.49219... just below the clip
    assert t[6] == np.float32(CITYSCAPES_DEPTH_MAX) and t[7] == np.float32(CITYSCAPES_DEPTH_MAX)
    with pytest.raises(ValueError):
        cityscapes_disparity_to_depth(np.array([0.5]))
    with pytest.raises(ValueError):
        cityscapes_disparity_to_depth(np.array([70000]))


# --------------------------------------------------------------------------- #
# Cityscapes: official files
# --------------------------------------------------------------------------- #
@pytest.fixture
def cs_root(tmp_path):
    root = tmp_path / "cityscapes"
    arrays = write_cityscapes(root, "train")
    return root, arrays


def test_cityscapes_frames_and_conversion(cs_root):
    root, arrays = cs_root
    ds = CityscapesFiles(root, "train", classes=7, size=None, normalize=False)
    assert len(ds) == 3 and ds.frames == list(CS_FRAMES)
    for i, (city, name) in enumerate(CS_FRAMES):
        assert ds.frame_paths(i) == cityscapes_paths(root, "train", city, name)
        s = ds[i]
        _, rgb, ids, disp = arrays[name]
        assert s["name"] == name
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, CS_H, CS_W)
        np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-6)
        assert s["seg"].dtype == torch.int64 and s["seg"].shape == (CS_H, CS_W)
        assert np.array_equal(s["seg"].numpy(), _hand_table(7)[ids])
        assert set(np.unique(s["seg"].numpy())) == set(range(-1, 7))
        assert s["depth"].dtype == torch.float32 and s["depth"].shape == (1, CS_H, CS_W)
        assert s["depth_valid"].dtype == torch.bool and s["depth_valid"].shape == (1, CS_H, CS_W)
        expected = np.where(disp > 0, np.minimum((disp.astype(np.float64) - 1) / 65536, 0.4922), 0)
        np.testing.assert_allclose(s["depth"][0].numpy(), expected, rtol=0, atol=1e-7)
        assert np.array_equal(s["depth_valid"][0].numpy(), disp > 0)
        # the known values: 0 -> invalid 0, 1 -> valid 0, 257 -> 1/256, 65535 -> clip
        d, v = s["depth"][0], s["depth_valid"][0]
        assert d[0, 0] == 0 and not v[0, 0]
        assert d[0, 2] == 0 and v[0, 2]
        assert d[0, 4] == pytest.approx(1 / 256, abs=0) and v[0, 4]
        assert d[0, 6] == np.float32(CITYSCAPES_DEPTH_MAX) and v[0, 6]
        assert d.max() <= np.float32(CITYSCAPES_DEPTH_MAX)


def test_cityscapes_19_classes(cs_root):
    root, arrays = cs_root
    s = CityscapesFiles(root, classes=19, size=None)[2]
    ids = arrays[CS_FRAMES[2][1]][2]
    assert np.array_equal(s["seg"].numpy(), _hand_table(19)[ids])
    assert set(np.unique(s["seg"].numpy())) == set(range(-1, 19))
    # void ids of the 19-class protocol are kept by the 7-class one
    s7 = CityscapesFiles(root, classes=7, size=None)[2]
    assert (s7["seg"].numpy()[ids == 9] == 0).all() and (s["seg"].numpy()[ids == 9] == -1).all()


def test_cityscapes_resize_and_normalise(cs_root):
    root, arrays = cs_root
    _, rgb, ids, disp = arrays[CS_FRAMES[0][1]]
    s = CityscapesFiles(root, size=(32, 64), normalize=False)[0]
    assert s["image"].shape == (3, 32, 64) and s["seg"].shape == (32, 64)
    assert s["depth"].shape == (1, 32, 64) and s["depth_valid"].shape == (1, 32, 64)
    # nearest-exact 2x downsample picks pixel (2i+1, 2j+1) for every per-pixel map
    assert np.array_equal(s["seg"].numpy(), _hand_table(7)[ids[1::2, 1::2]])
    t, v = cityscapes_disparity_to_depth(disp)
    assert np.array_equal(s["depth"][0].numpy(), t[1::2, 1::2])
    assert np.array_equal(s["depth_valid"][0].numpy(), v[1::2, 1::2])
    # image: bilinear with antialias (not the authors' nearest)
    ref = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, size=(32, 64),
                        mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.allclose(s["image"], ref, atol=1e-6)
    # default size (128, 256) (upsampled here) and ImageNet normalisation by default
    d = CityscapesFiles(root)
    assert d.size == (128, 256) and d.normalize and d.depth_scaling == "none"
    sd = d[1]
    assert sd["image"].shape == (3, 128, 256) and sd["seg"].shape == (128, 256)
    assert sd["depth"].shape == (1, 128, 256) and sd["depth_valid"].shape == (1, 128, 256)
    raw = CityscapesFiles(root, normalize=False)[1]["image"]
    assert torch.allclose(sd["image"], normalize_image(raw), atol=1e-6)


def test_cityscapes_image_resize_is_antialiased(tmp_path):
    # a 1-pixel checkerboard: nearest would keep 0/1 values, antialiased bilinear gives grey
    root = tmp_path / "cb"
    write_cityscapes(root, frames=CS_FRAMES[:1])
    yy, xx = np.mgrid[0:CS_H, 0:CS_W]
    cb = (((xx + yy) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([cb] * 3, -1)).save(cityscapes_paths(root, "train", *CS_FRAMES[0])[0])
    img = CityscapesFiles(root, size=(16, 32), normalize=False)[0]["image"]
    assert torch.allclose(img[:, 1:-1, 1:-1], torch.full_like(img[:, 1:-1, 1:-1], 0.5), atol=0.02)


def test_cityscapes_augment_keeps_mask_with_data(cs_root):
    root, arrays = cs_root
    plain = CityscapesFiles(root, size=None, normalize=False)[0]
    triples = set(zip(plain["seg"].flatten().tolist(), plain["depth"].flatten().tolist(),
                      plain["depth_valid"].flatten().tolist()))
    ds = CityscapesFiles(root, size=None, augment=True, normalize=False)
    moved = 0
    for seed in range(12):
        torch.manual_seed(seed)
        s = ds[0]
        got = set(zip(s["seg"].flatten().tolist(), s["depth"].flatten().tolist(),
                      s["depth_valid"].flatten().tolist()))
        # every output pixel is one input pixel: (label, depth, valid) stay together
        # (depth_scaling "none": values unchanged)
        assert got <= triples
        # p == 1 pixels (valid, target 0) and p == 0 pixels (invalid) survive as such
        assert torch.equal(s["depth_valid"] | (s["depth"] == 0), torch.ones_like(s["depth_valid"]))
        moved += not torch.equal(s["depth_valid"], plain["depth_valid"])
    assert moved >= 6  # the mask does move (crop and/or flip)
    # "multiply": disparity scaled by s, mask unchanged in meaning
    torch.manual_seed(0)
    params = sample_augment_params(CS_H, CS_W, depth_scaling="multiply")
    m = CityscapesFiles(root, size=None, augment=True, normalize=False, depth_scaling="multiply")
    torch.manual_seed(0)
    sm = m[0]
    ref = apply_augmentation(plain, params)
    assert torch.allclose(sm["depth"], ref["depth"]) and torch.equal(sm["depth_valid"], ref["depth_valid"])


def test_cityscapes_missing_paths(tmp_path, cs_root):
    root, _ = cs_root
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        CityscapesFiles(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "leftImg8bit" / "val"))):
        CityscapesFiles(root, split="val")
    _, p_lab, p_disp = cityscapes_paths(root, "train", *CS_FRAMES[1])
    p_lab.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(p_lab))):
        CityscapesFiles(root)
    write_cityscapes(root)
    p_disp.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(p_disp))):
        CityscapesFiles(root)


def test_cityscapes_bad_arguments(cs_root):
    root, _ = cs_root
    for bad in (5, 13, 20):
        with pytest.raises(ValueError, match="7 or 19"):
            CityscapesFiles(root, classes=bad)
    with pytest.raises(ValueError, match="depth_scaling"):
        CityscapesFiles(root, depth_scaling="metres")
    with pytest.raises(ValueError, match="size"):
        CityscapesFiles(root, size=(0, 3))


def _cs_bad_image(p):
    Image.fromarray(np.zeros((CS_H, CS_W), np.uint8)).save(p)  # mode L, not RGB


def _cs_bad_label_mode(p):
    Image.fromarray(np.zeros((CS_H, CS_W, 3), np.uint8)).save(p)  # RGB label


def _cs_bad_label_value(p):
    a = np.full((CS_H, CS_W), 7, np.uint8)
    a[5, 6] = 34
    Image.fromarray(a).save(p)


def _cs_label_255(p):
    Image.fromarray(np.full((CS_H, CS_W), 255, np.uint8)).save(p)


def _cs_disp_8bit(p):
    Image.fromarray(np.full((CS_H, CS_W), 9, np.uint8)).save(p)


def _cs_disp_size(p):
    Image.fromarray(np.full((CS_H, CS_W + 2), 300, np.uint16)).save(p)


def _cs_corrupt(p):
    p.write_bytes(b"not a png")


@pytest.mark.parametrize("which,writer,needle", [
    (0, _cs_bad_image, "mode"),
    (0, _cs_corrupt, "cannot read"),
    (1, _cs_bad_label_mode, "mode"),
    (1, _cs_bad_label_value, "34"),
    (1, _cs_label_255, "255"),
    (2, _cs_disp_8bit, "16-bit"),
    (2, _cs_disp_size, "size"),
])
def test_cityscapes_bad_files(cs_root, which, writer, needle):
    root, _ = cs_root
    p = cityscapes_paths(root, "train", *CS_FRAMES[2])[which]
    writer(p)
    ds = CityscapesFiles(root)
    ds[0]  # other frames are fine
    with pytest.raises(ValueError) as ei:
        ds[2]
    assert str(p) in str(ei.value) and needle in str(ei.value)


# --------------------------------------------------------------------------- #
# Cityscapes: MTAN .npy layout
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("chw", [False, True])
def test_mtan_cityscapes_reads(tmp_path, chw):
    root = tmp_path / "mcs"
    arrays = write_mtan_cityscapes(root, "train", chw=chw)
    for classes, li in ((7, 1), (19, 2)):
        ds = MTANCityscapes(root, "train", classes=classes, normalize=False)
        assert len(ds) == 3 and ds.num_classes == classes and ds.depth_scaling == "none"
        for i in range(3):
            s = ds[i]
            img, dep = arrays[i][0], arrays[i][3]
            assert s["name"] == f"train/{i}"
            assert s["image"].shape == (3, 32, 64) and s["image"].dtype == torch.float32
            np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), img, atol=1e-6)
            assert s["seg"].dtype == torch.int64
            assert np.array_equal(s["seg"].numpy(), arrays[i][li].astype(np.int64))
            assert s["seg"].min() == -1 and s["seg"].max() == classes - 1
            np.testing.assert_array_equal(s["depth"][0].numpy(), dep[..., 0])
            assert s["depth_valid"].dtype == torch.bool
            assert torch.equal(s["depth_valid"][0], torch.from_numpy(dep[..., 0] > 0))
            assert not s["depth_valid"][0, 2:6, 3:9].any()
    sn = MTANCityscapes(root)[0]
    expected = normalize_image(torch.from_numpy(arrays[0][0]).float().permute(2, 0, 1))
    assert torch.allclose(sn["image"], expected, atol=1e-5)
    torch.manual_seed(0)
    sa = MTANCityscapes(root, augment=True, normalize=False)[0]
    assert torch.equal(sa["depth_valid"], sa["depth"] > 0)
    assert sa["depth"].max() <= np.float32(CITYSCAPES_DEPTH_MAX)  # "none": no rescaling


def test_mtan_cityscapes_shares_the_nyu_reader():
    from xtc_ext import data
    assert MTANCityscapes.__getitem__ is MTANNYUv2.__getitem__ is data._MTANNpyDataset.__getitem__


def test_mtan_cityscapes_missing_and_arguments(tmp_path):
    root = tmp_path / "mcs"
    write_mtan_cityscapes(root, "train")
    with pytest.raises(ValueError, match="7 or 19"):
        MTANCityscapes(root, classes=13)
    for f in (root / "train" / "label_19").iterdir():
        f.unlink()
    (root / "train" / "label_19").rmdir()
    assert len(MTANCityscapes(root, classes=7)) == 3  # label_19 not needed for 7 classes
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "train" / "label_19"))):
        MTANCityscapes(root, classes=19)
    p = root / "train" / "depth" / "1.npy"
    p.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(p))):
        MTANCityscapes(root)


@pytest.mark.parametrize("kind,array,needle", [
    ("image", np.zeros((32, 64), np.float32), "shape"),
    ("image", np.zeros((4, 32, 64), np.float32), "shape"),
    ("image", np.zeros((64, 32, 3), np.float32), "does not match"),
    ("image", np.full((32, 64, 3), 1.5, np.float32), "[0, 1]"),
    ("label_7", np.full((32, 64), 7.0, np.float32), "7"),
    ("label_7", np.full((32, 64), 0.5, np.float32), "non-integer"),
    ("label_7", np.zeros((32, 64, 1), np.float32), "shape"),
    ("depth", np.full((32, 64, 1), 3.0, np.float32), "0.4922"),
    ("depth", -np.ones((32, 64, 1), np.float32), "negative"),
    ("depth", np.zeros((32, 64), np.float32), "shape"),
])
def test_mtan_cityscapes_bad_content(tmp_path, kind, array, needle):
    root = tmp_path / "mcs"
    write_mtan_cityscapes(root, "train")
    p = root / "train" / kind / "2.npy"
    np.save(p, array)
    ds = MTANCityscapes(root)
    ds[0]
    with pytest.raises(ValueError) as ei:
        ds[2]
    assert str(p) in str(ei.value) and needle in str(ei.value)


def test_mtan_chw_disambiguated_by_label(tmp_path):
    # H == 3: an (H, W, 3) = (3, 5, 3) image must not be read as (3, H, W)
    root = tmp_path / "tiny"
    arrays = write_mtan_cityscapes(root, "train", n=1, h=3, w=5)
    s = MTANCityscapes(root, normalize=False)[0]
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), arrays[0][0], atol=1e-6)
    root2 = tmp_path / "tiny_chw"
    arrays2 = write_mtan_cityscapes(root2, "train", n=1, h=3, w=5, chw=True)
    s2 = MTANCityscapes(root2, normalize=False)[0]
    np.testing.assert_allclose(s2["image"].permute(1, 2, 0).numpy(), arrays2[0][0], atol=1e-6)


# --------------------------------------------------------------------------- #
# train / validation split
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n,f", [(795, 0.1), (2975, 0.1), (10, 0.15), (2, 0.01), (2, 0.9), (7, 0.5),
                                 (100, 0.0)])
def test_split_indices_properties(n, f):
    tr, va = split_indices(n, f, seed=0)
    assert sorted(tr + va) == list(range(n))           # covering
    assert not set(tr) & set(va)                       # disjoint
    assert tr == sorted(tr) and va == sorted(va)
    if f > 0:
        assert 1 <= len(va) <= n - 1
        assert len(va) == min(max(1, int(np.floor(n * f + 0.5))), n - 1)
    else:
        assert va == [] and tr == list(range(n))
    assert split_indices(n, f, seed=0) == (tr, va)     # deterministic
    torch.manual_seed(123)                             # global RNG is irrelevant
    assert split_indices(n, f, seed=0) == (tr, va)


def test_split_indices_seed_and_errors():
    assert split_indices(795, 0.1, 0)[1] != split_indices(795, 0.1, 1)[1]
    assert len(split_indices(795, 0.1)[1]) == 80
    assert split_indices(0, 0.0) == ([], [])
    for bad in (-0.1, 1.0, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="val_fraction"):
            split_indices(10, bad)
    for bad_n in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            split_indices(bad_n, 0.1)
    for small in (0, 1):
        with pytest.raises(ValueError, match="cannot split"):
            split_indices(small, 0.1)


def test_split_train_val_never_augments_val(cs_root):
    root, _ = cs_root
    ds = CityscapesFiles(root, size=(32, 64), augment=True, normalize=False)
    tr, va = split_train_val(ds, 0.34, seed=0)
    t_idx, v_idx = split_indices(3, 0.34, 0)
    assert tr.indices == t_idx and va.indices == v_idx and len(va) == 1
    assert tr.dataset is ds and ds.augment  # the training set still augments
    assert va.dataset is not ds and va.dataset.augment is False
    plain = CityscapesFiles(root, size=(32, 64), augment=False, normalize=False)[v_idx[0]]
    for seed in range(4):
        torch.manual_seed(seed)
        v = va[0]
        assert v["name"] == plain["name"]
        assert torch.equal(v["image"], plain["image"]) and torch.equal(v["depth_valid"], plain["depth_valid"])
    # the two-instance recipe: same split on an explicit non-augmenting twin
    twin = CityscapesFiles(root, size=(32, 64), augment=False, normalize=False)
    tr2, va2 = split_train_val(ds, 0.34, seed=0, val_dataset=twin)
    assert va2.dataset is twin and va2.indices == v_idx and tr2.indices == t_idx
    with pytest.raises(ValueError, match="augment"):
        split_train_val(ds, 0.34, val_dataset=ds)
    with pytest.raises(ValueError, match="items"):
        split_train_val(ds, 0.34, val_dataset=torch.utils.data.Subset(twin, [0]))
    # a non-augmenting dataset is used as is
    tr3, va3 = split_train_val(twin, 0.34)
    assert va3.dataset is twin and tr3.dataset is twin
