"""Train / validation / test splits of a run: a validation set held out of the TRAIN split, never
the test split (docs/fidelity.md, "Protocol and model selection").

:func:`split_indices` and :func:`split_train_val` split one dataset; :func:`build_splits` builds
the three parts of a run from a :class:`~xtc_ext.data.registry.DatasetSpec`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .registry import DatasetSpec, PathLike

__all__ = ["split_indices", "split_train_val", "DataSplits", "build_splits"]


def _check_fraction(value, name: str) -> float:
    """``value`` as a float in [0, 1); ValueError naming ``name`` otherwise (NaN included)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= f < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return f


def split_indices(n: int, val_fraction: float = 0.1, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Deterministic random split of ``range(n)`` into train and validation indices.

    ``n_val = round_half_up(n * val_fraction)``, at least 1 when val_fraction > 0 and
    at most n - 1 (train is never empty); the val indices are the first n_val
    entries of ``torch.randperm(n)`` drawn from ``torch.Generator().manual_seed(seed)``
    (independent of the global RNG), the rest are train. Both lists are sorted.

    Use the same ``(n, val_fraction, seed)`` for two dataset instances over the same
    files (one with ``augment=True`` for training, one with ``augment=False`` for
    validation) to get a validation set that is evaluated without augmentation;
    :func:`split_train_val` does this for you.

    Args:
        n: number of items (int >= 0), e.g. ``len(train_split_dataset)``.
        val_fraction: fraction in [0, 1) held out for validation.
        seed: seed of the permutation.

    Returns:
        ``(train_idx, val_idx)``: disjoint sorted lists of ints whose union is
        ``range(n)``.

    Raises:
        ValueError: ``n`` not a non-negative int, ``val_fraction`` outside [0, 1)
            (or NaN), or val_fraction > 0 with n < 2 (no non-empty split exists).

    Source: this project's protocol; the XTasC-Net authors select the checkpoint on
    the split they report on (docs/fidelity.md, "Protocol and model selection").
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    n = int(n)
    f = _check_fraction(val_fraction, "val_fraction")
    if f == 0.0:
        return list(range(n)), []
    if n < 2:
        raise ValueError(f"cannot split {n} item(s) into non-empty train and validation parts")
    n_val = min(max(1, int(math.floor(n * f + 0.5))), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _without_augmentation(dataset):
    """``dataset`` itself when it does not augment, else a shallow copy with ``augment = False``."""
    if getattr(dataset, "augment", False):
        view = copy.copy(dataset)  # shallow: shares file lists, reads the same files
        view.augment = False
        return view
    return dataset


def split_train_val(dataset, val_fraction: float = 0.1, seed: int = 0, val_dataset=None
                    ) -> Tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """Split a training set into train and validation subsets (the test split is untouched).

    The indices come from :func:`split_indices` ``(len(dataset), val_fraction, seed)``.
    The validation subset never augments: it is taken from ``val_dataset`` if given
    (it must have the same length, the same ``frames`` if both have them, and
    ``augment`` false), else from ``dataset`` itself when that does not augment,
    else from a shallow copy of ``dataset`` with ``augment = False`` (works for every
    dataset of this module; ``dataset`` itself is not modified).

    Args:
        dataset: the training split (e.g. ``MTANNYUv2(root, "train", augment=True)``),
            any map-style dataset with ``__len__``.
        val_fraction: fraction in [0, 1) for validation.
        seed: permutation seed.
        val_dataset: optional non-augmenting dataset over the same items.

    Returns:
        ``(train_subset, val_subset)``: ``torch.utils.data.Subset`` objects with
        disjoint ``indices`` covering ``range(len(dataset))``.

    Raises:
        ValueError: as :func:`split_indices`; ``val_dataset`` of another length,
            with other ``frames``, or augmenting.

    Source: docs/fidelity.md, "Protocol and model selection" (the XTasC-Net authors
    select the checkpoint on the test split).
    """
    n = len(dataset)
    if val_dataset is None:
        val_dataset = _without_augmentation(dataset)
    else:
        if len(val_dataset) != n:
            raise ValueError(f"val_dataset has {len(val_dataset)} items, dataset has {n}")
        if hasattr(dataset, "frames") and hasattr(val_dataset, "frames") and \
                list(dataset.frames) != list(val_dataset.frames):
            raise ValueError("val_dataset lists other frames than dataset")
        if getattr(val_dataset, "augment", False):
            raise ValueError("val_dataset augments; the validation subset must not be augmented")
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    return torch.utils.data.Subset(dataset, train_idx), torch.utils.data.Subset(val_dataset, val_idx)


# --------------------------------------------------------------------------- #
# the three parts of a run
# --------------------------------------------------------------------------- #
@dataclass
class DataSplits:
    """The three parts of a run and a description of each.

    Attributes:
        train: the training set (augmented when asked): the TRAIN split minus the validation part.
        val: the held-out validation part of the TRAIN split, never augmented; None when the
            validation fraction is 0 (no validation, no checkpoint selection).
        test: the split the final test reads (:attr:`DatasetSpec.test_split`), never augmented.
        describe: ``{"train", "val", "test"}`` -> one line each for logs and reports.
    """

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    describe: Dict[str, str]


def build_splits(spec: DatasetSpec, root: Optional[PathLike], *, classes: int,
                 size: Optional[Sequence[int]], augment: bool, normalize: bool, depth_scaling: str,
                 tasks: Sequence[str], val_fraction: float, split_seed: int) -> DataSplits:
    """Train / validation / test sets of a run.

    The validation set is ``val_fraction`` of the TRAIN split (:func:`split_train_val`,
    :func:`split_indices` with ``split_seed``), read by a second, non-augmenting instance over
    the same files; the training set is the rest, augmented when ``augment``. The test set is
    ``spec.test_split`` read without augmentation; a single-split layout (``test_split`` None,
    the frames) tests on its (non-augmented) training frames again.

    Args:
        spec: the dataset (:func:`xtc_ext.data.registry.get_dataset`).
        root, classes, size, normalize, depth_scaling, tasks: as :meth:`DatasetSpec.build`.
        augment: augment the training set.
        val_fraction: fraction in [0, 1) of the TRAIN split held out for validation (0: none).
        split_seed: seed of the train / validation permutation.

    Returns:
        :class:`DataSplits`; ``describe`` gives the sizes, the validation fraction and seed, and
        what the test reads (``spec.test_description``).

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), or a split that leaves train or validation
            empty (the message names ``--val-fraction``); as :meth:`DatasetSpec.build` for the
            other arguments.
        FileNotFoundError: as :meth:`DatasetSpec.build`.
    """
    fraction = _check_fraction(val_fraction, "--val-fraction")
    kwargs = dict(classes=classes, size=size, normalize=normalize, depth_scaling=depth_scaling, tasks=tasks)
    train_full = spec.build(root, "train", augment=bool(augment), **kwargs)
    train_plain = _without_augmentation(train_full)  # the same files, not listed a second time
    if spec.test_split is None:
        test = train_plain
    else:
        test = spec.build(root, spec.test_split, augment=False, **kwargs)
    if fraction > 0:
        try:
            train, val = split_train_val(train_full, fraction, split_seed, val_dataset=train_plain)
        except ValueError as e:
            raise ValueError(f"--val-fraction {val_fraction}: {e}") from e
    else:
        train, val = train_full, None
    where = "frames" if spec.test_split is None else "train split"
    describe = {
        "train": f"{len(train)} samples of the {where}" + (" (augmented)" if augment else ""),
        "val": (f"{len(val)} held-out samples of the {where} (fraction {val_fraction}, split seed {split_seed})"
                if val is not None else "none (--val-fraction 0: no validation, no selection)"),
        "test": f"{len(test)} samples: {spec.test_description}",
    }
    return DataSplits(train, val, test, describe)
