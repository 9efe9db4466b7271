"""Tests for xtc_ext.data.splits: split_indices, split_train_val (the validation part never augments)
and build_splits (the protocol of a run: validation held out of the TRAIN split, the test split)."""

import numpy as np
import pytest
import torch

from xtc_ext.data import CityscapesFiles, split_indices, split_train_val

from fixtures import write_cityscapes


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
