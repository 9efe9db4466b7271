"""Tests for xtc_ext.data.mtan (the shared reader of MTAN's preprocessed .npy layouts) through
MTANNYUv2 (xtc_ext.data.nyuv2) and MTANCityscapes."""

import re

import numpy as np
import pytest
import torch

from xtc_ext.data import MTANCityscapes, MTANNYUv2, normalize_image
from xtc_ext.data.mtan import MTANNpyDataset

from fixtures import H, W, write_mtan, write_mtan_cityscapes


@pytest.fixture
def mtan_root(tmp_path):
    root = tmp_path / "mtan"
    arrays = write_mtan(root)
    return root, arrays


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


def test_mtan_cityscapes_shares_the_nyu_reader():
    assert MTANCityscapes.__getitem__ is MTANNYUv2.__getitem__ is MTANNpyDataset.__getitem__


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
