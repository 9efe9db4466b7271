"""Tests for xtc_ext.data.cityscapes: label tables (7 categories, 19 trainIds), the disparity target,
CityscapesFiles (official files) and MTANCityscapes (MTAN .npy)."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xtc_ext.data import (
    CITYSCAPES19_CLASS_NAMES,
    CITYSCAPES7_CLASS_NAMES,
    CITYSCAPES_DEPTH_MAX,
    CityscapesFiles,
    MTANCityscapes,
    apply_augmentation,
    cityscapes_disparity_to_depth,
    cityscapes_label_table,
    cityscapes_labels_to_train_ids,
    normalize_image,
    sample_augment_params,
)

from fixtures import CS_FRAMES, CS_H, CS_W, cityscapes_paths, write_cityscapes, write_mtan_cityscapes


# --------------------------------------------------------------------------- #
# label tables and the disparity target
# --------------------------------------------------------------------------- #
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
# official files
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
# MTAN .npy layout
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
