"""Tests for the MT-CP datasets of xtc_ext.data: NYUDMT (Vandenhende NYUD_MT), PASCALMT
(Vandenhende PASCAL_MT, human parts from PASCAL-Part .mat files), surface normals from depth,
NYUv2Frames(with_normals=True), and the normals-aware flip of the shared augmentation."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xtc_ext.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALS_KEYS,
    NYU_COLOR_INTRINSICS,
    NYUDMT,
    NYUv2Frames,
    PART_GROUPS,
    PASCAL_HUMAN_PARTS_NAMES,
    PASCAL_PERSON_CLASS_IND,
    PASCAL_SEMSEG_CLASS_NAMES,
    PASCALMT,
    AugmentParams,
    apply_augmentation,
    augment_sample,
    normals_from_depth,
    read_pascal_human_parts,
    renormalize_normals,
    sample_augment_params,
    split_train_val,
)

from conftest import REAL_FRAMES as REAL
from fixtures import (  # noqa: E402
    MT_H, MT_W, NYUDMT_SPLITS, PASCALMT_SPLITS, PERSON_PART_NAMES, PM_H, PM_W, write_frames,
    write_nyudmt, write_pascal_mat, write_pascalmt,
)


def _decoded_jpeg(path):
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255.0


@pytest.fixture
def nyud_root(tmp_path):
    root = tmp_path / "NYUD_MT"
    return root, write_nyudmt(root)


@pytest.fixture
def pascal_root(tmp_path):
    root = tmp_path / "PASCAL_MT"
    return root, write_pascalmt(root)


# --------------------------------------------------------------------------- #
# NYUDMT: conversions
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
        assert torch.equal(s["image"], _decoded_jpeg(root / "images" / f"{fid}.jpg"))
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


def test_renormalize_normals():
    n = torch.stack([torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])])
    out = renormalize_normals(n)
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.6, 0.8, 0.0]))
    assert torch.equal(out[:, 0, 1], torch.zeros(3))
    assert renormalize_normals(n[None]).shape == (1, 3, 1, 2)
    with pytest.raises(ValueError):
        renormalize_normals(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError):
        renormalize_normals(torch.zeros(3, 4, 4, dtype=torch.int64))


# --------------------------------------------------------------------------- #
# normals-aware augmentation
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
# NYUDMT: errors name the file
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


# --------------------------------------------------------------------------- #
# PASCALMT
# --------------------------------------------------------------------------- #
def test_part_groups_table():
    assert set(PART_GROUPS) == set(PERSON_PART_NAMES) and len(PART_GROUPS) == 24
    assert PASCAL_HUMAN_PARTS_NAMES == ("background", "head", "torso", "upper_arms", "lower_arms",
                                        "upper_legs", "lower_legs")
    groups = {}
    for name, c in PART_GROUPS.items():
        groups.setdefault(c, set()).add(name)
    assert groups == {
        1: {"head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth"},
        2: {"torso", "neck"},
        3: {"luarm", "ruarm"},
        4: {"llarm", "rlarm", "lhand", "rhand"},
        5: {"luleg", "ruleg"},
        6: {"llleg", "rlleg", "lfoot", "rfoot"},
    }
    assert PASCAL_PERSON_CLASS_IND == 15 and PASCAL_SEMSEG_CLASS_NAMES[15] == "person"
    assert len(PASCAL_SEMSEG_CLASS_NAMES) == 21


def test_pascalmt_reads_and_converts(pascal_root):
    root, arrays = pascal_root
    ds = PASCALMT(root, "train", size=None, normalize=False)
    assert ds.frames == PASCALMT_SPLITS["train"] and len(ds) == 3
    assert ds.frame_paths(1)["semseg"] == root / "semseg" / "pascal-context" / "2008_000003.png"
    assert ds.frame_paths(0)["semseg"] == root / "semseg" / "VOC12" / "2008_000002.png"
    for i, fid in enumerate(ds.frames):
        rgb, sem, sal, parts = arrays[fid]
        s = ds[i]
        assert set(s) == {"image", "seg", "human_parts", "sal", "name"}
        assert s["name"] == fid
        assert s["image"].shape == (3, PM_H, PM_W)
        assert torch.equal(s["image"], _decoded_jpeg(root / "JPEGImages" / f"{fid}.jpg"))
        assert s["seg"].dtype == torch.int64 and s["seg"].shape == (PM_H, PM_W)
        exp_seg = np.where(sem == 255, -1, sem.astype(np.int64))
        assert torch.equal(s["seg"], torch.from_numpy(exp_seg))
        assert s["seg"][0].eq(-1).all() and s["seg"].max() == 20
        assert s["human_parts"].dtype == torch.int64 and s["human_parts"].shape == (PM_H, PM_W)
        assert torch.equal(s["human_parts"], torch.from_numpy(parts))
        assert s["sal"].dtype == torch.float32 and s["sal"].shape == (1, PM_H, PM_W)
        assert torch.equal(s["sal"][0], torch.from_numpy((sal >= 128).astype(np.float32)))
        assert s["sal"][0, 0, :4].tolist() == [0.0, 1.0, 0.0, 1.0]  # 127 -> 0, 128 -> 1


def test_pascalmt_human_parts_grouping(pascal_root):
    root, _ = pascal_root
    ds = PASCALMT(root, size=None, tasks=("human_parts",))
    hp0, hp1, hp2 = (ds[i]["human_parts"] for i in range(3))
    # item 0: one 2-px band per part name, in PERSON_PART_NAMES order, rows 5..34
    for j, name in enumerate(PERSON_PART_NAMES):
        col = 2 * j
        if col >= 10:  # outside the overwriting rfoot block
            assert hp0[20, col].item() == PART_GROUPS[name], name
    assert hp0[32, 0].item() == 6  # overlap block: the later rfoot part wins
    assert hp0[0, 52].item() == 0  # the dog's "head" part is ignored (not a person)
    assert hp0[39, 55].item() == 0  # person pixel without a part = background
    assert set(hp0.unique().tolist()) == set(range(7))
    # item 1: no persons -> all void
    assert hp1.eq(-1).all()
    # item 2: a person without parts is skipped, the other person's parts are read
    assert hp2[5, 5].item() == 3 and hp2[25, 35].item() == 6 and hp2[15, 15].item() == 0


def test_read_pascal_human_parts_edge_cases(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 1:3] = 1
    p = tmp_path / "a.mat"
    # person whose parts are all empty masks -> all void (AddIgnoreRegions rule)
    write_pascal_mat(p, [("person", 15, np.ones((6, 8)), [("head", np.zeros((6, 8)))])])
    assert (read_pascal_human_parts(p, (6, 8)) == -1).all()
    # persons without parts only -> all void
    write_pascal_mat(p, [("person", 15, np.ones((6, 8)), [])])
    assert (read_pascal_human_parts(p, (6, 8)) == -1).all()
    # no objects at all
    import scipy.io as sio
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = "x"
    anno[0, 0]["objects"] = np.zeros((0, 0))
    sio.savemat(str(p), {"anno": anno})
    out = read_pascal_human_parts(p, (6, 8))
    assert out.shape == (6, 8) and out.dtype == np.int64 and (out == -1).all()
    # boolean / double masks are accepted
    write_pascal_mat(p, [("person", 15, np.ones((6, 8)), [("neck", m)])])
    out = read_pascal_human_parts(p, (6, 8))
    assert (out[1:3, 1:3] == 2).all() and (out[m == 0] == 0).all()


@pytest.mark.parametrize("kind", ["unknown_part", "mask_shape", "no_anno", "corrupt", "not_struct"])
def test_read_pascal_human_parts_errors_name_the_file(tmp_path, kind):
    import scipy.io as sio
    p = tmp_path / f"{kind}.mat"
    m = np.ones((6, 8), np.uint8)
    if kind == "unknown_part":
        write_pascal_mat(p, [("person", 15, m, [("tentacle", m)])])
        needle = "tentacle"
    elif kind == "mask_shape":
        write_pascal_mat(p, [("person", 15, m, [("head", np.ones((5, 8)))])])
        needle = "shape"
    elif kind == "no_anno":
        sio.savemat(str(p), {"other": np.zeros(3)})
        needle = "anno"
    elif kind == "corrupt":
        p.write_bytes(b"MATLAB garbage" * 10)
        needle = "cannot read"
    else:
        sio.savemat(str(p), {"anno": np.zeros((1, 1))})
        needle = "struct"
    with pytest.raises(ValueError, match=re.escape(str(p))) as ei:
        read_pascal_human_parts(p, (6, 8))
    assert needle in str(ei.value)
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        read_pascal_human_parts(tmp_path / "missing.mat", (6, 8))


def test_pascalmt_tasks_subset_and_missing_unrequested_files(pascal_root):
    root, _ = pascal_root
    for d in ("human_parts", "sal_distill"):
        for f in (root / d).iterdir():
            f.unlink()
    ds = PASCALMT(root, size=None, tasks=("semseg",))
    assert set(ds[0]) == {"image", "seg", "name"}
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "human_parts"))):
        PASCALMT(root, tasks=("semseg", "human_parts"))
    with pytest.raises(FileNotFoundError, match="sal_distill"):
        PASCALMT(root, tasks=("sal",))
    for bad in ((), ("depth",), "semseg", ("sal", "sal")):
        with pytest.raises(ValueError):
            PASCALMT(root, tasks=bad)


def test_pascalmt_splits_and_missing_paths(tmp_path, pascal_root):
    root, _ = pascal_root
    val = PASCALMT(root, "val", size=None)
    assert val.frames == PASCALMT_SPLITS["val"] and val[0]["name"] == "2008_000009"
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "ImageSets" / "Context" / "x.txt"))):
        PASCALMT(root, "x")
    with pytest.raises(FileNotFoundError, match="nope"):
        PASCALMT(tmp_path / "nope")
    # semseg in neither folder: both candidates named
    p = root / "semseg" / "VOC12" / "2008_000007.png"
    p.unlink()
    with pytest.raises(FileNotFoundError) as ei:
        PASCALMT(root)
    assert str(p) in str(ei.value) and "pascal-context" in str(ei.value)
    # VOC12 wins when both exist (Vandenhende's lookup order)
    root2 = tmp_path / "p2"
    write_pascalmt(root2)
    q = root2 / "semseg" / "pascal-context" / "2008_000002.png"
    Image.fromarray(np.zeros((PM_H, PM_W), np.uint8)).save(q)
    assert PASCALMT(root2).frame_paths(0)["semseg"] == root2 / "semseg" / "VOC12" / "2008_000002.png"
    p_img = root2 / "JPEGImages" / "2008_000003.jpg"
    p_img.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(p_img))):
        PASCALMT(root2)


@pytest.mark.parametrize("rel,writer,needle", [
    ("semseg/VOC12/2008_000002.png",
     lambda p: Image.fromarray(np.full((PM_H, PM_W), 30, np.uint8)).save(p), "30"),
    ("semseg/VOC12/2008_000002.png",
     lambda p: Image.fromarray(np.zeros((PM_H, PM_W + 2), np.uint8)).save(p), "size"),
    ("sal_distill/2008_000002.png",
     lambda p: Image.fromarray(np.zeros((PM_H, PM_W, 3), np.uint8)).save(p), "mode"),
    ("sal_distill/2008_000002.png",
     lambda p: Image.fromarray(np.zeros((PM_H + 1, PM_W), np.uint8)).save(p), "size"),
    ("human_parts/2008_000002.mat",
     lambda p: write_pascal_mat(p, [("person", 15, np.ones((PM_H, PM_W)),
                                     [("head", np.ones((PM_H, PM_W + 1)))])]), "shape"),
    ("human_parts/2008_000002.mat", lambda p: p.write_bytes(b"junk"), "cannot read"),
])
def test_pascalmt_bad_files_name_the_file(pascal_root, rel, writer, needle):
    root, _ = pascal_root
    p = root / rel
    writer(p)
    ds = PASCALMT(root, size=None)
    with pytest.raises(ValueError, match=re.escape(str(p))) as ei:
        ds[0]
    assert needle in str(ei.value)


def test_pascalmt_resize_and_augment(pascal_root):
    root, arrays = pascal_root
    s = PASCALMT(root)[0]  # default 512x512
    assert s["image"].shape == (3, 512, 512) and s["seg"].shape == (512, 512)
    assert s["human_parts"].shape == (512, 512) and s["sal"].shape == (1, 512, 512)
    assert set(s["sal"].unique().tolist()) <= {0.0, 1.0}
    assert set(s["human_parts"].unique().tolist()) <= set(range(-1, 7))
    small = PASCALMT(root, size=(20, 28), normalize=False)[0]
    _, sem, _, parts = arrays["2008_000002"]
    exp = F.interpolate(torch.from_numpy(parts).double()[None, None], size=(20, 28),
                        mode="nearest-exact")[0, 0].long()
    assert torch.equal(small["human_parts"], exp)
    # augmentation: reproducible from the torch RNG, all maps moved together, no depth
    base = PASCALMT(root, size=None, normalize=False)
    aug = PASCALMT(root, size=None, normalize=False, augment=True)
    for seed in range(5):
        torch.manual_seed(seed)
        got = aug[0]
        torch.manual_seed(seed)
        exp = apply_augmentation(base[0], sample_augment_params(PM_H, PM_W))
        assert "depth" not in got
        for k in ("image", "seg", "human_parts", "sal"):
            assert torch.equal(got[k], exp[k]), (seed, k)
    # void human-parts image stays all void under augmentation
    torch.manual_seed(3)
    assert aug[1]["human_parts"].eq(-1).all()


# --------------------------------------------------------------------------- #
# normals from depth
# --------------------------------------------------------------------------- #
def _plane_depth(n0, d, H, W, fx, fy, cx, cy):
    """Depth of the plane n0 . P = d (camera frame) seen by a pinhole camera."""
    u = torch.arange(W, dtype=torch.float64)
    v = torch.arange(H, dtype=torch.float64)
    rx = ((u - cx) / fx)[None, :].expand(H, W)
    ry = ((v - cy) / fy)[:, None].expand(H, W)
    denom = n0[0] * rx + n0[1] * ry + n0[2]
    return (d / denom)[None].float()


def test_normals_fronto_parallel_plane():
    depth = torch.full((1, 48, 64), 2.0)
    n, valid = normals_from_depth(depth)
    assert n.dtype == torch.float32 and n.shape == (3, 48, 64)
    assert valid.dtype == torch.bool and valid.shape == (1, 48, 64)
    inner = valid[0, 1:-1, 1:-1]
    assert inner.all()
    assert not valid[0, 0].any() and not valid[0, -1].any()
    assert not valid[0, :, 0].any() and not valid[0, :, -1].any()
    assert torch.allclose(n[:, 1:-1, 1:-1], torch.tensor([0.0, 0.0, -1.0]).view(3, 1, 1), atol=1e-6)
    assert torch.equal(n[:, ~valid[0]], torch.zeros(3, int((~valid).sum())))


@pytest.mark.parametrize("normal", [(0.3, -0.2, -1.0), (-0.6, 0.1, -0.8), (0.0, -0.9, -0.45)])
def test_normals_tilted_plane_analytic(normal):
    n0 = torch.tensor(normal, dtype=torch.float64)
    n0 = n0 / n0.norm()
    fx, fy, cx, cy = NYU_COLOR_INTRINSICS
    H, W = 480, 640
    depth = _plane_depth(n0, -2.5, H, W, fx, fy, cx, cy)  # n0 . P = -2.5 < 0: n0 faces the camera
    assert (depth > 0).all()
    n, valid = normals_from_depth(depth)
    assert valid[0, 1:-1, 1:-1].all()
    err = (n[:, valid[0]] - n0.float()[:, None]).abs().max()
    assert err < 2e-4, err
    # a map at half resolution with the scaled intrinsics gives the same normal
    h, w = 240, 320
    depth2 = _plane_depth(n0, -2.5, h, w, fx * w / 640, fy * h / 480, cx * w / 640, cy * h / 480)
    n2, valid2 = normals_from_depth(depth2)
    assert valid2[0, 1:-1, 1:-1].all()
    assert (n2[:, valid2[0]] - n0.float()[:, None]).abs().max() < 2e-4
    # wrong intrinsics (unscaled) would give a different normal for a tilted plane
    n3, _ = normals_from_depth(depth2, image_size=(240, 320))
    assert (n3[:, valid2[0]] - n0.float()[:, None]).abs().max() > 1e-3


def test_normals_invalid_neighbours_and_orientation():
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + torch.rand(1, 20, 30, generator=g)
    depth[0, 10, 12] = 0.0
    n, valid = normals_from_depth(depth)
    for v, u in ((10, 12), (9, 12), (11, 12), (10, 11), (10, 13)):
        assert not valid[0, v, u]
    assert valid[0, 9, 11] and valid[0, 5, 5]  # diagonal neighbours are not used
    # oriented towards the camera: n . P <= 0 everywhere valid
    fx, fy, cx, cy = NYU_COLOR_INTRINSICS
    sx, sy = 30 / 640, 20 / 480
    u = torch.arange(30.0)
    v = torch.arange(20.0)
    P = torch.stack([depth[0] * ((u - cx * sx) / (fx * sx))[None], depth[0] * ((v - cy * sy) / (fy * sy))[:, None],
                     depth[0]])
    assert ((n * P).sum(0)[valid[0]] <= 1e-6).all()
    assert torch.allclose(n.norm(dim=0)[valid[0]], torch.ones(()), atol=1e-5)
    # tiny maps: everything is border
    n, valid = normals_from_depth(torch.ones(1, 2, 5))
    assert not valid.any() and n.abs().sum() == 0


def test_normals_from_depth_errors():
    for bad in (torch.ones(2, 4, 4), torch.ones(4, 4), torch.ones(1, 4, 4, dtype=torch.int64),
                np.ones((1, 4, 4))):
        with pytest.raises(ValueError, match="depth"):
            normals_from_depth(bad)
    with pytest.raises(ValueError, match="negative"):
        normals_from_depth(-torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        normals_from_depth(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="focal"):
        normals_from_depth(torch.ones(1, 4, 4), fx=0.0)
    with pytest.raises(ValueError):
        normals_from_depth(torch.ones(1, 4, 4), image_size=(0, 640))


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


@pytest.mark.skipif(not (REAL / "rgb").is_dir(), reason="real NYUv2 frames not available")
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
