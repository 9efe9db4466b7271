"""Tests for xtc_ext.data.pascal_mt: PASCALMT (Vandenhende's PASCAL_MT layout: semantic segmentation,
human parts from PASCAL-Part .mat files, distilled saliency), task subsets, resizing, augmentation
and error paths."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xtc_ext.data import (
    PART_GROUPS,
    PASCAL_HUMAN_PARTS_NAMES,
    PASCAL_PERSON_CLASS_IND,
    PASCAL_SEMSEG_CLASS_NAMES,
    PASCALMT,
    apply_augmentation,
    read_pascal_human_parts,
    sample_augment_params,
)

from fixtures import (
    PASCALMT_SPLITS, PERSON_PART_NAMES, PM_H, PM_W, decoded_jpeg, write_pascal_mat, write_pascalmt,
)


@pytest.fixture
def pascal_root(tmp_path):
    root = tmp_path / "PASCAL_MT"
    return root, write_pascalmt(root)


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
        assert torch.equal(s["image"], decoded_jpeg(root / "JPEGImages" / f"{fid}.jpg"))
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
