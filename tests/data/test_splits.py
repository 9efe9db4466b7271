"""Tests for xtc_ext.data.splits: split_indices, split_train_val (the validation part never augments)
and build_splits (the protocol of a run: validation held out of the TRAIN split, the test split)."""

import numpy as np
import pytest
import torch

from xtc_ext.data import CityscapesFiles, build_splits, get_dataset, split_indices, split_train_val

from fixtures import DATASET_WRITERS, write_cityscapes, write_frames


@pytest.fixture
def cs_root(tmp_path):
    root = tmp_path / "cityscapes"
    arrays = write_cityscapes(root, "train")
    return root, arrays


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


# --------------------------------------------------------------------------- #
# build_splits: the three parts of a run
# --------------------------------------------------------------------------- #
def _splits(name, root, **overrides):
    spec = get_dataset(name)
    kw = dict(classes=spec.classes[0], size=None if spec.default_size is None else (32, 48), augment=False,
              normalize=False, depth_scaling="auto", tasks=("semseg", "depth"), val_fraction=0.0, split_seed=0)
    kw.update(overrides)
    return build_splits(spec, root, **kw)


def test_build_splits_single_split_layout_tests_on_the_training_frames(tmp_path):
    root = tmp_path / "frames"
    DATASET_WRITERS["frames"](root)
    sp = _splits("frames", root, augment=True)
    assert sp.val is None and sp.train.augment and not sp.test.augment
    assert sp.test.frames == sp.train.frames and len(sp.test) == 3
    assert sp.describe == {
        "train": "3 samples of the frames (augmented)",
        "val": "none (--val-fraction 0: no validation, no selection)",
        "test": "3 samples: the training frames",
    }
    sp = _splits("frames", root, val_fraction=0.34, split_seed=5)
    t_idx, v_idx = split_indices(3, 0.34, 5)
    assert sp.train.indices == t_idx and sp.val.indices == v_idx
    assert sp.val.dataset is sp.test  # the non-augmenting twin over the same frames
    assert sp.describe["train"] == "2 samples of the frames"
    assert sp.describe["val"] == "1 held-out samples of the frames (fraction 0.34, split seed 5)"


def test_build_splits_validation_comes_from_train_and_test_from_val(tmp_path):
    root = tmp_path / "nyuv2"
    DATASET_WRITERS["nyuv2"](root)  # train: 4 items, val: 2 items
    sp = _splits("nyuv2", root, augment=True, val_fraction=0.25, split_seed=1)
    t_idx, v_idx = split_indices(4, 0.25, 1)
    assert sp.train.indices == t_idx and sp.val.indices == v_idx and not set(t_idx) & set(v_idx)
    assert sp.train.dataset.augment and not sp.val.dataset.augment and not sp.test.augment
    assert sp.train.dataset.split == sp.val.dataset.split == "train" and sp.test.split == "val"
    assert [sp.test[i]["name"] for i in range(len(sp.test))] == ["val/0", "val/1"]
    assert sp.val[0]["name"] == f"train/{v_idx[0]}"
    plain = sp.val.dataset[v_idx[0]]
    for seed in range(3):  # the validation part is never augmented
        torch.manual_seed(seed)
        assert torch.equal(sp.val[0]["image"], plain["image"])
    assert sp.describe == {
        "train": "3 samples of the train split (augmented)",
        "val": "1 held-out samples of the train split (fraction 0.25, split seed 1)",
        "test": "2 samples: val",
    }
    other = _splits("nyuv2", root, val_fraction=0.25, split_seed=2)
    assert other.val.indices == split_indices(4, 0.25, 2)[1]


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "x", None])
def test_build_splits_bad_val_fraction_names_the_option(tmp_path, bad):
    root = tmp_path / "frames"
    write_frames(root)
    with pytest.raises(ValueError, match="--val-fraction"):
        _splits("frames", root, val_fraction=bad)


def test_build_splits_too_few_items_names_the_option_and_bad_arguments_propagate(tmp_path):
    root = tmp_path / "one"
    write_frames(root, ids=["0001"])
    with pytest.raises(ValueError, match="--val-fraction 0.5: cannot split"):
        _splits("frames", root, val_fraction=0.5)
    with pytest.raises(ValueError, match="classes"):
        _splits("frames", root, classes=7)
    with pytest.raises(ValueError, match="tasks"):
        _splits("frames", root, tasks=("sal",))
