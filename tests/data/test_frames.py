"""Tests for xtc_ext.data.frames: NYUv2Frames (PNG layout, conversions, error paths, normals from
depth) on fixtures and on the ten packaged real NYUv2 frames."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xtc_ext.data import (
    AUGMENT_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NYU_COLOR_INTRINSICS,
    AugmentParams,
    MTANNYUv2,
    NYUv2Frames,
    apply_augmentation,
    normals_from_depth,
)

from conftest import REAL_FRAMES as REAL
from fixtures import H, IDS, W, write_frames, write_mtan


@pytest.fixture
def frames_root(tmp_path):
    root = tmp_path / "frames"
    arrays = write_frames(root)
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
# NYUv2Frames: augmentation
# --------------------------------------------------------------------------- #
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


def test_nyu_datasets_mask_follows_augmented_depth(tmp_path, frames_root):
    write_mtan(tmp_path / "mtan")
    ds = NYUv2Frames(frames_root[0], size=None, augment=True, normalize=False)
    mds = MTANNYUv2(tmp_path / "mtan", augment=True, normalize=False)
    assert ds.depth_scaling == "divide" and mds.depth_scaling == "divide"
    for seed in range(8):
        torch.manual_seed(seed)
        for s in (ds[0], mds[1]):
            assert s["depth_valid"].dtype == torch.bool
            assert torch.equal(s["depth_valid"], s["depth"] > 0)


# --------------------------------------------------------------------------- #
# NYUv2Frames: normals from depth
# --------------------------------------------------------------------------- #
def test_frames_with_normals_fixture(tmp_path):
    root = tmp_path / "frames"
    write_frames(root)
    ds = NYUv2Frames(root, size=(24, 32), normalize=False, with_normals=True)
    assert "with_normals=True" in repr(ds)
    full = NYUv2Frames(root, size=None, normalize=False)
    for i in range(len(ds)):
        s = ds[i]
        assert s["normals"].shape == (3, 24, 32) and s["normals_valid"].shape == (1, 24, 32)
        # computed from the FULL-resolution depth, then resized nearest
        n_full, v_full = normals_from_depth(full[i]["depth"])
        exp = F.interpolate(n_full[None], size=(24, 32), mode="nearest-exact")[0]
        exp_v = F.interpolate(v_full[None].to(torch.uint8), size=(24, 32), mode="nearest-exact")[0].bool()
        assert torch.allclose(s["normals"], exp, atol=1e-6)
        assert torch.equal(s["normals_valid"], exp_v)
    # without the option, no normals keys
    assert "normals" not in NYUv2Frames(root, size=(24, 32))[0]


# --------------------------------------------------------------------------- #
# the ten packaged real NYUv2 frames
# --------------------------------------------------------------------------- #
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


def test_real_frames_native_and_augmented():
    ds = NYUv2Frames(REAL, size=None, augment=True, normalize=True)
    torch.manual_seed(0)
    s = ds[3]
    assert s["image"].shape == (3, 480, 640)
    assert s["seg"].shape == (480, 640) and s["depth"].shape == (1, 480, 640)
    assert s["seg"].min() >= -1 and s["seg"].max() <= 12
    assert s["depth"].max() <= 10.5


def test_real_frames_normals():
    ds = NYUv2Frames(REAL, size=None, normalize=False, with_normals=True)
    for i in range(len(ds)):
        s = ds[i]
        n, v = s["normals"], s["normals_valid"][0]
        assert torch.isfinite(n).all()
        assert v.float().mean() > 0.9  # filled depth: almost every interior pixel valid
        assert torch.allclose(n.norm(dim=0)[v], torch.ones(()), atol=1e-5)
        assert torch.equal(n[:, ~v], torch.zeros(3, int((~v).sum())))
        # oriented towards the camera (n . P <= 0), with P from the 640x480 intrinsics
        d = s["depth"][0]
        H, W = d.shape
        fx, fy, cx, cy = NYU_COLOR_INTRINSICS
        P = torch.stack([d * ((torch.arange(W) - cx * W / 640) / (fx * W / 640))[None],
                         d * ((torch.arange(H) - cy * H / 480) / (fy * H / 480))[:, None], d])
        assert ((n * P).sum(0)[v] <= 1e-5).all()
    # resized + augmented: still unit where valid, x negated on flip
    small = NYUv2Frames(REAL, size=(240, 320), normalize=False, with_normals=True)
    base = small[0]
    out = apply_augmentation(base, AugmentParams(scale=1.0, top=0, left=0, flip=True))
    assert torch.equal(out["normals"][0], -torch.flip(base["normals"][0], dims=[-1]))
    v = base["normals_valid"][0]
    assert torch.allclose(base["normals"].norm(dim=0)[v], torch.ones(()), atol=1e-5)
