"""Datasets of the project, one module per dataset family, and the registry that describes them.

=====================  ==============================  =========================================
``--dataset``          module / class                  layout
=====================  ==============================  =========================================
``frames``             :mod:`.frames`                  NYUv2 frames as PNG files (``rgb/``,
                       :class:`NYUv2Frames`            ``depth/`` mm, ``label13/``/``label40/``);
                                                       the ten packaged real frames by default
``nyuv2``              :mod:`.nyuv2`                   MTAN's preprocessed NYUv2 ``.npy`` files,
                       :class:`MTANNYUv2`              the data XTasC-Net trains on
``cityscapes``         :mod:`.cityscapes`              official Cityscapes files (leftImg8bit,
                       :class:`CityscapesFiles`        gtFine labelIds, disparity)
``cityscapes-mtan``    :mod:`.cityscapes`              MTAN's preprocessed Cityscapes ``.npy``
                       :class:`MTANCityscapes`
``nyudmt``             :mod:`.nyud_mt`                 Vandenhende et al.'s ``NYUD_MT`` (MT-CP)
                       :class:`NYUDMT`
``pascal``             :mod:`.pascal_mt`               Vandenhende et al.'s ``PASCAL_MT`` (MT-CP)
                       :class:`PASCALMT`
=====================  ==============================  =========================================

Shared modules: :mod:`.registry` (:class:`DatasetSpec`, :func:`get_dataset`, :data:`DATASETS`: every
fact about a dataset, used by training and evaluation), :mod:`.transforms` (normalisation,
augmentation, resizing), :mod:`.io` (file readers), :mod:`.normals` (surface normals),
:mod:`.splits` (train / validation / test), :mod:`.base` (the datasets' shared options),
:mod:`.mtan` (the shared MTAN ``.npy`` reader).
Every name of these modules that the project used from ``xtc_ext.data`` is re-exported here.

Sample format, a ``dict`` returned by every ``__getitem__``:

=============  ===============  ================================================
key            tensor           content
=============  ===============  ================================================
"image"        float32 [3,H,W]  RGB; ImageNet-normalised if ``normalize=True``,
                                otherwise in [0, 1]
"seg"          int64 [H,W]      class index 0..K-1, ``IGNORE_INDEX`` (-1) = ignore
"depth"        float32 [1,H,W]  NYUv2: depth in metres. Cityscapes: disparity/256
                                (``(p-1)/256**2`` of the PNG value p, clipped at
                                ``CITYSCAPES_DEPTH_MAX``), an inverse-depth-like
                                quantity, **not** metres. 0 where invalid.
"depth_valid"  bool [1,H,W]     per-pixel depth validity mask. NYUv2: depth > 0.
                                Cityscapes: disparity PNG value p > 0 (so p == 1
                                is valid with target 0, as in the authors' mask).
"name"         str              frame identifier
=============  ===============  ================================================

Datasets with other tasks add (only where the task exists): "normals" float32 [3,H,W] unit surface
normals (x, y, z; 0 where invalid) with "normals_valid" bool [1,H,W] (NYUDMT; NYUv2Frames with
``with_normals``), "human_parts" int64 [H,W] (-1 void, 0 background, 1..6) and "sal" float32
[1,H,W] in {0, 1} (PASCALMT; PASCALMT has no "depth"). Each task's key is its
``sample_key`` in the task registry (:mod:`xtc_ext.tasks`).

Adding a dataset: add one module to this package with the dataset class and one
``DATASETS.register(DatasetSpec(...))`` call (see :mod:`.registry`). This file imports every module of the
package, so nothing else needs to change.

Notes: the XTasC-Net authors' code does **not** ImageNet-normalise NYUv2 inputs although the paper
§V-A says it does; pass ``normalize=False`` to match their code. Their Cityscapes inputs are
normalised (the default here). To select a checkpoint without peeking at the test split, split
the *train* split with :func:`split_train_val` / :func:`split_indices`, or build a run's three
parts with :func:`build_splits` (docs/fidelity.md, "Protocol and model selection").
"""

import importlib
import pkgutil

from .registry import (
    DATASETS,
    BuildRequest,
    IGNORE_INDEX,
    DatasetSpec,
    get_dataset,
)
from .transforms import (
    AUGMENT_SCALES,
    DEPTH_SCALINGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALS_KEYS,
    AugmentParams,
    apply_augmentation,
    augment_sample,
    normalize_image,
    sample_augment_params,
)
from .normals import NYU_COLOR_INTRINSICS, normals_from_depth, renormalize_normals
from .splits import DataSplits, build_splits, split_indices, split_train_val

# The dataset families, in the order of the ``--dataset`` choices; each registers its spec(s).
from .frames import NYU13_CLASS_NAMES, NYUV2_TEST10, NYUv2Frames
from .nyuv2 import MTANNYUv2
from .cityscapes import (
    CITYSCAPES7_CLASS_NAMES,
    CITYSCAPES19_CLASS_NAMES,
    CITYSCAPES_DEPTH_MAX,
    CityscapesFiles,
    MTANCityscapes,
    cityscapes_disparity_to_depth,
    cityscapes_label_table,
    cityscapes_labels_to_train_ids,
)
from .nyud_mt import NYUDMT
from .pascal_mt import (
    PART_GROUPS,
    PASCAL_HUMAN_PARTS_NAMES,
    PASCAL_PERSON_CLASS_IND,
    PASCAL_SEMSEG_CLASS_NAMES,
    PASCALMT,
    read_pascal_human_parts,
)

# Any other module of the package (a dataset family added later) registers itself on import.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = [
    # registry
    "IGNORE_INDEX",
    "BuildRequest",
    "DatasetSpec",
    "DATASETS",
    "get_dataset",
    # splits
    "split_indices",
    "split_train_val",
    "DataSplits",
    "build_splits",
    # transforms
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AUGMENT_SCALES",
    "DEPTH_SCALINGS",
    "NORMALS_KEYS",
    "AugmentParams",
    "normalize_image",
    "sample_augment_params",
    "apply_augmentation",
    "augment_sample",
    # normals
    "NYU_COLOR_INTRINSICS",
    "renormalize_normals",
    "normals_from_depth",
    # datasets
    "NYUV2_TEST10",
    "NYUv2Frames",
    "NYU13_CLASS_NAMES",
    "MTANNYUv2",
    "CITYSCAPES7_CLASS_NAMES",
    "CITYSCAPES19_CLASS_NAMES",
    "CITYSCAPES_DEPTH_MAX",
    "cityscapes_label_table",
    "cityscapes_labels_to_train_ids",
    "cityscapes_disparity_to_depth",
    "CityscapesFiles",
    "MTANCityscapes",
    "NYUDMT",
    "PASCAL_SEMSEG_CLASS_NAMES",
    "PASCAL_HUMAN_PARTS_NAMES",
    "PASCAL_PERSON_CLASS_IND",
    "PART_GROUPS",
    "read_pascal_human_parts",
    "PASCALMT",
]
