"""NYUv2 in MTAN's preprocessed ``.npy`` layout (``--dataset nyuv2``), the data XTasC-Net trains on.

Its labels are the NYU-13 classes of the packaged frames
(:data:`xtc_ext.data.frames.NYU13_CLASS_NAMES`).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .frames import NYU13_CLASS_NAMES
from .mtan import MTANNpyDataset
from .registry import DATASETS, BuildRequest, DatasetSpec, PathLike

__all__ = ["MTANNYUv2", "NYUV2"]


class MTANNYUv2(MTANNpyDataset):
    """NYUv2 in MTAN's preprocessed ``.npy`` layout (the data XTasC-Net trains on).

    Layout: ``root/{split}/{image,label,depth}/{i}.npy`` for i = 0..N-1 contiguous,
    N = number of ``image/*.npy`` files (``normal/`` is not read). Standard MTAN
    counts: 795 train, 654 val (val is the official test split; select models on
    a :func:`split_train_val` part of train).

    File contents (MTAN convention):

    ==============  ==========  ==========================================
    file            shape       content
    ==============  ==========  ==========================================
    image/i.npy     (H, W, 3)   float RGB in [0, 1] ((3, H, W) is accepted)
    label/i.npy     (H, W)      integer-valued (float or int), -1 void,
                                0..12 classes (NYU-13 order, see
                                ``NYU13_CLASS_NAMES``)
    depth/i.npy     (H, W, 1)   metres, 0 = invalid
    ==============  ==========  ==========================================

    Size is taken from the data (288x384 for MTAN's files). If ``augment``,
    :func:`augment_sample` is applied (global torch RNG, ``depth_scaling``, default
    "divide" as in MTAN / XTasC-Net); then, if ``normalize``, ImageNet
    normalisation. The XTasC-Net authors' NYUv2 loader does not normalise (although
    the paper §V-A says it does): pass ``normalize=False`` to match their code
    (docs/fidelity.md, "Data and augmentation").

    Args:
        root: folder containing the split folders.
        split: split folder name, e.g. "train" or "val".
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        depth_scaling: see :class:`AugmentParams`; default "divide" (metric depth).

    Each item: dict "image" float32 [3,H,W], "seg" int64 [H,W] in {-1, 0..12},
    "depth" float32 [1,H,W] metres (0 invalid), "depth_valid" bool [1,H,W]
    (depth > 0), "name" str (``"{split}/{i}"``).

    Raises:
        FileNotFoundError: (at construction) missing root/split/sub-folder, no
            ``image/*.npy``, or a missing ``{image,label,depth}/{i}.npy`` for some
            i < N (a gap); the message names the path.
        ValueError: bad ``depth_scaling``; (at ``__getitem__``) file np.load cannot
            read, wrong shape, non-finite values, image outside [0, 1], label not
            integer-valued or outside {-1, 0..12}, negative depth, or sizes that
            differ between the three files; the message names the file.

    Source: MTAN (Liu et al., CVPR 2019) preprocessed NYUv2; the XTasC-Net authors'
    ``dataloader.py::NYUv2`` (XTasC-Net paper §V-A).
    """

    num_classes: int = 13

    def __init__(self, root: PathLike, split: str = "train", augment: bool = False,
                 normalize: bool = True, depth_scaling: str = "divide") -> None:
        super().__init__(root, split, "label", 13, augment, normalize, depth_scaling)


def _build(root: Path, split: str, request: BuildRequest) -> Dataset:
    return MTANNYUv2(root, split=split, augment=request.augment, normalize=request.normalize,
                     depth_scaling=request.depth_scaling)


NYUV2 = DATASETS.register(DatasetSpec(
    name="nyuv2",
    summary="NYUv2 in MTAN's preprocessed .npy layout ({train,val}/{image,label,depth}/i.npy, stored size); "
    "test split: val (the official NYUv2 test split)",
    classes=(13,),
    tasks=("semseg", "depth"),
    default_size=None,
    depth_unit="m",
    default_depth_scaling="divide",
    factory=_build,
    class_name_tables={13: NYU13_CLASS_NAMES},
    release_sizes={"train": 795, "val": 654},
))
"""The ``--dataset nyuv2`` spec: MTAN's ``val`` split (654 images) is the official NYUv2 test
split; model selection uses a held-out part of ``train`` (795 images)."""
