"""Tests for xtc_ext.data.transforms: ImageNet normalisation, the MTAN-style augmentation (scale crop
and flip; every per-pixel map, masks included, moves with the data; normals' x negated on a flip),
depth scaling modes, and the size check."""

import numpy as np
import pytest
import torch

from xtc_ext.data import (
    AUGMENT_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALS_KEYS,
    AugmentParams,
    apply_augmentation,
    augment_sample,
    normalize_image,
    sample_augment_params,
)
from xtc_ext.data.transforms import check_size, finish_sample, resize_sample

from fixtures import H, W


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


# --------------------------------------------------------------------------- #
# depth validity mask and other per-pixel maps under augmentation (masks are cropped with the data)
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


# --------------------------------------------------------------------------- #
# surface normals under the flip
# --------------------------------------------------------------------------- #
def test_flip_other_three_channel_maps_only_mirrored():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 8, 10, generator=g)
    extra = torch.randn(3, 8, 10, generator=g)
    s = {"image": img, "extra": extra, "normals": extra.clone()}
    p = AugmentParams(scale=1.0, top=0, left=0, flip=True)
    out = apply_augmentation(s, p)
    assert torch.equal(out["extra"], torch.flip(extra, dims=[-1]))  # existing behaviour
    assert torch.equal(out["normals"][0], -torch.flip(extra[0], dims=[-1]))
    # custom normals keys
    out = apply_augmentation(s, p, normals_keys=("extra",))
    assert torch.equal(out["extra"][0], -torch.flip(extra[0], dims=[-1]))
    assert torch.equal(out["normals"], torch.flip(extra, dims=[-1]))
    out = apply_augmentation(s, p, normals_keys=())
    assert torch.equal(out["normals"], torch.flip(extra, dims=[-1]))
    assert NORMALS_KEYS == ("normals",)
    # malformed normals are rejected, not silently passed through
    for bad in (torch.zeros(2, 8, 10), torch.zeros(3, 8, 9), torch.zeros(3, 8, 10, dtype=torch.int64),
                np.zeros((3, 8, 10))):
        with pytest.raises(ValueError, match="normals"):
            apply_augmentation({"image": img, "normals": bad}, p)
        with pytest.raises(ValueError, match="normals"):
            augment_sample({"image": img, "normals": bad})
    with pytest.raises(ValueError, match="single string"):
        apply_augmentation(s, p, normals_keys="normals")


# --------------------------------------------------------------------------- #
# normalisation, size check, resizing, the final steps
# --------------------------------------------------------------------------- #
def test_normalize_image_values_and_errors():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    out = normalize_image(img)
    for c in range(3):
        expected = (img[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[:, c], expected, atol=1e-12)
    assert out.dtype == torch.float64 and torch.equal(normalize_image(img[0]), out[0])
    for bad in (torch.zeros(4, 5, 7), torch.zeros(5, 7), torch.zeros(1, 1, 3, 5, 7)):
        with pytest.raises(ValueError, match="normalize_image"):
            normalize_image(bad)


def test_check_size():
    assert check_size(None) is None
    assert check_size((3, 4)) == (3, 4) and check_size([np.int64(5), 6]) == (5, 6)
    for bad in ((0, 4), (3, -1), (3.0, 4), (3,), "ab", 7, (True, 4)):
        with pytest.raises(ValueError, match="size"):
            check_size(bad)


def test_resize_sample_and_finish_sample():
    g = torch.Generator().manual_seed(1)
    s = {"image": torch.rand(3, 8, 12, generator=g), "seg": torch.arange(96).view(8, 12),
         "depth_valid": torch.rand(1, 8, 12, generator=g) > 0.5, "name": "r"}
    assert resize_sample(s, None) is s and resize_sample(s, (8, 12)) is s
    out = resize_sample(s, (4, 6))
    assert out["image"].shape == (3, 4, 6) and out["name"] == "r"
    # nearest-exact 2x downsample: source pixel (2i+1, 2j+1) for every per-pixel map
    assert torch.equal(out["seg"], s["seg"][1::2, 1::2])
    assert torch.equal(out["depth_valid"], s["depth_valid"][:, 1::2, 1::2])
    done = finish_sample(s, augment=False, normalize=True)
    assert torch.allclose(done["image"], normalize_image(s["image"])) and done["seg"] is s["seg"]
    assert finish_sample(s, augment=False, normalize=False) is s
