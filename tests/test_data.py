"""Tests for xtc_ext.data: NYUv2 PNG frames, MTAN .npy layout, augmentation."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xtc_ext.data import (
    AUGMENT_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    MTANNYUv2,
    NYUv2Frames,
    apply_augmentation,
    augment_sample,
    normalize_image,
    sample_augment_params,
)

from conftest import REAL_FRAMES as REAL
from fixtures import H, IDS, W, write_frames, write_mtan  # noqa: E402


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
    out = apply_augmentation(s, AugmentParams(scale=1.0, top=0, left=0, flip=True))
    assert torch.allclose(out["image"], s["image"].flip(-1), atol=1e-6)
    assert torch.equal(out["seg"], s["seg"].flip(-1))
    assert torch.allclose(out["depth"], s["depth"].flip(-1))
    assert out["seg"][0, 0] == -1  # ignore preserved
    same = apply_augmentation(s, AugmentParams(scale=1.0, top=0, left=0, flip=False))
    assert torch.allclose(same["image"], s["image"], atol=1e-6)
    assert torch.equal(same["seg"], s["seg"])


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
