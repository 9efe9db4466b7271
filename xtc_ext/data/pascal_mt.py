"""PASCAL-Context in Vandenhende et al.'s ``PASCAL_MT`` layout (``--dataset pascal``): semantic
segmentation (21 classes), human parts (PASCAL-Part, 6 parts + background) and saliency, the
PASCAL-Context data of MT-CP (MT-CP paper §4.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.io as sio
import torch
from torch.utils.data import Dataset

from .base import FolderDataset
from .io import check_same_size, open_image, read_id_file, read_label_png, read_rgb_image, rgb_tensor
from .registry import DATASETS, IGNORE_INDEX, BuildRequest, DatasetSpec, PathLike
from .transforms import Sample, check_size, resize_sample

__all__ = [
    "PASCAL_SEMSEG_CLASS_NAMES",
    "PASCAL_HUMAN_PARTS_NAMES",
    "PASCAL_PERSON_CLASS_IND",
    "PART_GROUPS",
    "read_pascal_human_parts",
    "PASCALMT",
    "PASCAL",
]

#: PASCAL VOC / PASCAL_MT semantic classes in label order 0..20.
PASCAL_SEMSEG_CLASS_NAMES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
#: Human-part classes 0..6 of the 6-part grouping (plus background).
PASCAL_HUMAN_PARTS_NAMES: Tuple[str, ...] = (
    "background", "head", "torso", "upper_arms", "lower_arms", "upper_legs", "lower_legs",
)
#: PASCAL-Part ``class_ind`` of "person" (Vandenhende's ``human_parts_category``).
PASCAL_PERSON_CLASS_IND: int = 15

#: PASCAL-Part person part name -> human-part class 1..6 (0 = background).
#: The 24 person parts of PASCAL-Part (Chen et al., CVPR 2014; listed with their
#: 1..24 ids for category "15" in Vandenhende's ``data/db_info/pascal_part.json``)
#: grouped as Vandenhende's ``PASCALContext.HUMAN_PART[6]``
#: (``data/pascal_context.py``), which overrides the json entry for persons:
#:
#: ===  ==========  =====================================================
#: 1    head        head, hair, leye, reye, lear, rear, lebrow, rebrow,
#:                  nose, mouth
#: 2    torso       torso, neck
#: 3    upper_arms  luarm, ruarm
#: 4    lower_arms  llarm, rlarm, lhand, rhand
#: 5    upper_legs  luleg, ruleg
#: 6    lower_legs  llleg, rlleg, lfoot, rfoot
#: ===  ==========  =====================================================
PART_GROUPS: Dict[str, int] = {
    "head": 1, "hair": 1, "leye": 1, "reye": 1, "lear": 1, "rear": 1,
    "lebrow": 1, "rebrow": 1, "nose": 1, "mouth": 1,
    "torso": 2, "neck": 2,
    "luarm": 3, "ruarm": 3,
    "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4,
    "luleg": 5, "ruleg": 5,
    "llleg": 6, "rlleg": 6, "lfoot": 6, "rfoot": 6,
}


# --------------------------------------------------------------------------- #
# human parts from PASCAL-Part .mat files
# --------------------------------------------------------------------------- #
def _mat_field(record, name: str, position: int, path: Path, what: str):
    """Field ``name`` of a scipy.io.loadmat struct record (np.void), else the field
    at ``position`` (the positional access of Vandenhende's reader)."""
    names = getattr(getattr(record, "dtype", None), "names", None)
    if not names:
        raise ValueError(f"{path}: {what} is not a MATLAB struct")
    if name in names:
        return record[name]
    if position < len(names):
        return record[position]
    raise ValueError(f"{path}: {what} has no field {name!r} (fields: {', '.join(names)})")


def _mat_records(value, path: Path, what: str) -> List:
    """Records of a MATLAB struct array as loaded by scipy (shape (1,n) or (n,1));
    an empty array (MATLAB ``[]``) gives []."""
    a = np.asarray(value)
    if a.size == 0:
        return []
    if a.dtype.names is None:
        raise ValueError(f"{path}: {what} is not a MATLAB struct array (dtype {a.dtype})")
    return list(a.ravel())


def _mat_scalar_int(value, path: Path, what: str) -> int:
    a = np.asarray(value)
    if a.size != 1 or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{path}: {what} must be a numeric scalar, got {a.dtype} {a.shape}")
    v = a.ravel()[0]
    if v != np.round(v):
        raise ValueError(f"{path}: {what} must be an integer, got {v!r}")
    return int(v)


def _mat_string(value, path: Path, what: str) -> str:
    a = np.asarray(value)
    if a.size != 1 or a.dtype.kind not in ("U", "S", "O"):
        raise ValueError(f"{path}: {what} must be a string, got {a.dtype} {a.shape}")
    v = a.ravel()[0]
    return v.decode() if isinstance(v, bytes) else str(v)


def read_pascal_human_parts(path: PathLike, image_size: Tuple[int, int]) -> np.ndarray:
    """Human-part label map of one PASCAL_MT ``human_parts/<id>.mat`` file.

    File structure, as ``scipy.io.loadmat`` (defaults) returns it (PASCAL-Part
    annotation, Chen et al., CVPR 2014; read positionally by Vandenhende as
    ``mat['anno'][0][0][1][0]``)::

        mat["anno"]                  (1,1) struct, fields (imname, objects)
        anno[0,0]["objects"]         (1,n) struct, fields (class, class_ind, mask, parts)
        object["class_ind"]          (1,1) int, 15 = person
        object["mask"]               (H,W) object mask
        object["parts"]              (1,k) struct, fields (part_name, mask), or an
                                     empty array when the object has no parts
        part["part_name"]            (1,) str, e.g. "luarm"
        part["mask"]                 (H,W) part mask (non-zero = part)

    Fields are looked up by name; a struct without that name falls back to the
    field position above (Vandenhende's access).

    Conversion (Vandenhende ``PASCALContext._load_human_parts`` with
    ``num_human_parts=6``): start from 0 (background); for every object with
    ``class_ind == 15`` (person) that has parts, in file order, set the pixels of
    each part mask to ``PART_GROUPS[part_name]`` (later parts overwrite earlier
    ones). Objects of other classes are ignored. If no person with parts exists, or
    no pixel got a part label, the whole map is ``IGNORE_INDEX`` (-1): Vandenhende's
    ``AddIgnoreRegions`` sets an all-zero human-parts map to 255 (it does so after
    augmentation, so there a crop that misses the person also becomes void; here the
    rule is applied to the full image only).

    Args:
        path: the ``.mat`` file.
        image_size: (H, W) of the image; every mask must have this shape, and
            images without persons get an all -1 map of this size.

    Returns:
        int64 array (H, W): -1 (no human-part annotation), 0 background, 1..6 as
        ``PASCAL_HUMAN_PARTS_NAMES``.

    Raises:
        FileNotFoundError: the file does not exist (message names it).
        ValueError: unreadable .mat, no ``anno`` variable, unexpected structure,
            a part name not in ``PART_GROUPS``, or a part mask whose shape is not
            ``image_size``; the message names the file.
        ImportError: scipy is not installed.

    Source: Vandenhende et al. (TPAMI 2021) ``data/pascal_context.py``,
    ``data/custom_transforms.py::AddIgnoreRegions`` (the MT-CP data pipeline).
    """
    path = Path(path)
    H, W = check_size(image_size)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        mat = sio.loadmat(str(path))
    except Exception as e:  # MatReadError, ValueError, OSError, ... on corrupt files
        raise ValueError(f"cannot read MATLAB file {path}: {e}") from e
    if "anno" not in mat:
        raise ValueError(f"{path} has no 'anno' variable (found: "
                         f"{', '.join(k for k in mat if not k.startswith('__')) or 'none'})")
    annos = _mat_records(mat["anno"], path, "'anno'")
    if len(annos) != 1:
        raise ValueError(f"{path}: 'anno' must be a 1x1 struct, got {len(annos)} records")
    objects = _mat_records(_mat_field(annos[0], "objects", 1, path, "'anno'"), path,
                           "'anno.objects'")
    target = np.zeros((H, W), dtype=np.int64)
    has_person_parts = False
    for k, obj in enumerate(objects):
        what = f"'anno.objects({k + 1})'"
        cls = _mat_scalar_int(_mat_field(obj, "class_ind", 1, path, what), path, f"{what}.class_ind")
        if cls != PASCAL_PERSON_CLASS_IND:
            continue
        parts = _mat_records(_mat_field(obj, "parts", 3, path, what), path, f"{what}.parts")
        if not parts:
            continue
        has_person_parts = True
        for j, part in enumerate(parts):
            pwhat = f"{what}.parts({j + 1})"
            name = _mat_string(_mat_field(part, "part_name", 0, path, pwhat), path,
                               f"{pwhat}.part_name")
            if name not in PART_GROUPS:
                raise ValueError(f"{path}: unknown person part name {name!r} in {pwhat} "
                                 f"(expected one of {sorted(PART_GROUPS)})")
            mask = np.asarray(_mat_field(part, "mask", 1, path, pwhat))
            if mask.shape != (H, W):
                raise ValueError(f"{path}: {pwhat}.mask has shape {mask.shape}, expected "
                                 f"({H}, {W}) (the image size)")
            if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == np.bool_):
                raise ValueError(f"{path}: {pwhat}.mask has non-numeric dtype {mask.dtype}")
            target[mask.astype(bool)] = PART_GROUPS[name]
    if not has_person_parts or not (target > 0).any():
        target.fill(IGNORE_INDEX)
    return target


# --------------------------------------------------------------------------- #
# the dataset
# --------------------------------------------------------------------------- #
class PASCALMT(FolderDataset):
    """PASCAL-Context in Vandenhende's ``PASCAL_MT`` layout, the MT-CP PASCAL data.

    Layout under ``root``::

        ImageSets/Context/{split}.txt    ids, one per line (4998 train / 5105 val)
        JPEGImages/<id>.jpg              RGB image (grayscale JPEGs are converted)
        semseg/VOC12/<id>.png            uint8 ('P' indices or 'L'): 0..20, 255 void;
        semseg/pascal-context/<id>.png   the VOC12 file is used when both exist
                                         (Vandenhende's ``_get_semseg_fname`` order)
        human_parts/<id>.mat             PASCAL-Part annotation, see
                                         :func:`read_pascal_human_parts`
        sal_distill/<id>.png             uint8 'L' distilled saliency 0..255

    Only the files of the requested ``tasks`` must exist. (Edges, distilled normals
    and ``ImageSets/Parts`` are not used.)

    Conversion:

    * "seg": 0..20 kept (``PASCAL_SEMSEG_CLASS_NAMES``, 0 = background is a class),
      255 -> -1 (ignore); any other value is an error.
    * "human_parts": :func:`read_pascal_human_parts`: 0 background, 1..6 the 6-part
      grouping ``PART_GROUPS``; all -1 for images without annotated persons.
    * "sal": ``value/255 >= 0.5`` -> 1.0 else 0.0 (Vandenhende writes ``> 0.5``;
      no uint8 value gives exactly 0.5, so both agree; the MT-CP loss binarises with
      ``>= 0.5``). The released maps have no void pixels, so "sal" never holds -1.
    * resize to ``size`` (default 512x512, MT-CP's ``FixedResize``, aspect ratio not
      kept): image bilinear (antialias, align_corners=False; the authors use cubic),
      label maps and saliency nearest (``nearest-exact``).
    * if ``augment``: :func:`augment_sample`: random scale crop s in {1.0, 1.2, 1.5}
      and horizontal flip p = 0.5, every map moved with the image (no depth). MT-CP
      instead uses flip, rotation U(-20, 20) degrees and scale U(0.75, 1.25) with
      ``warpAffine`` and 0 (background) fill; this reader shares the project's
      scale-crop augmentation.
    * if ``normalize``: ImageNet normalisation (MT-CP normalises).

    Args:
        root: dataset folder (the ``PASCAL_MT`` release).
        split: split name; ids are read from ``ImageSets/Context/{split}.txt``.
        size: output (H, W) or None (native size, which varies per image).
        augment: apply :func:`augment_sample`.
        normalize: ImageNet-normalise the image (else it stays in [0, 1]).
        tasks: non-empty subset of ``("semseg", "human_parts", "sal")``.

    Each item: dict "image" float32 [3,H,W], "name" str (the id), and per task
    "seg" int64 [H,W] in {-1, 0..20}, "human_parts" int64 [H,W] in {-1, 0..6},
    "sal" float32 [1,H,W] in {0, 1}.

    Raises:
        FileNotFoundError: (at construction) missing root or split file, or a
            missing image / semseg (neither folder) / .mat / saliency file of a
            listed id for a requested task; the message names the path(s).
        ValueError: bad ``size`` or ``tasks``, a split file without ids (at
            construction); (at ``__getitem__``) unreadable file, label or saliency
            PNG not 8-bit single channel, a semseg value outside {0..20, 255}, a
            human-parts file error (see :func:`read_pascal_human_parts`), or sizes
            that differ from the image; the message names the file.

    Source: Vandenhende et al. (TPAMI 2021) ``data/pascal_context.py::PASCALContext``
    and ``data/custom_transforms.py``; the MT-CP authors' ``data/pascal_context2.py``
    (MT-CP paper §4.1); deviations in docs/fidelity.md, "Data and augmentation".
    """

    TASKS: Tuple[str, str, str] = ("semseg", "human_parts", "sal")
    num_classes: int = 21
    num_human_parts: int = 7

    def __init__(self, root: PathLike, split: str = "train",
                 size: Optional[Tuple[int, int]] = (512, 512), augment: bool = False,
                 normalize: bool = True, tasks: Sequence[str] = ("semseg", "human_parts", "sal")
                 ) -> None:
        if isinstance(tasks, (str, bytes)):
            raise ValueError(f"tasks must be a sequence of task names, not a single string "
                             f"({tasks!r}); e.g. ({tasks!r},)")
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError(f"tasks must name at least one of {self.TASKS}")
        for t in tasks:
            if t not in self.TASKS:
                raise ValueError(f"unknown task {t!r}; expected a subset of {self.TASKS}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks contains duplicates: {tasks}")
        self.tasks: Tuple[str, ...] = tasks
        super().__init__(root, split=split, size=size, augment=augment, normalize=normalize)
        self.split_file = self.root / "ImageSets" / "Context" / f"{self.split}.txt"
        #: ids of the split, in file order.
        self.frames: List[str] = read_id_file(self.split_file)
        self._paths: List[Dict[str, Path]] = [self._resolve(fid) for fid in self.frames]

    def _resolve(self, fid: str) -> Dict[str, Path]:
        where = f"for id {fid!r} (listed in {self.split_file})"
        paths = {"image": self.root / "JPEGImages" / f"{fid}.jpg"}
        if "semseg" in self.tasks:
            voc = self.root / "semseg" / "VOC12" / f"{fid}.png"
            ctx = self.root / "semseg" / "pascal-context" / f"{fid}.png"
            if voc.is_file():
                paths["semseg"] = voc
            elif ctx.is_file():
                paths["semseg"] = ctx
            else:
                raise FileNotFoundError(f"missing semseg file {where}: neither {voc} nor {ctx}")
        if "human_parts" in self.tasks:
            paths["human_parts"] = self.root / "human_parts" / f"{fid}.mat"
        if "sal" in self.tasks:
            paths["sal"] = self.root / "sal_distill" / f"{fid}.png"
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"missing file {where}: {p}")
        return paths

    def __len__(self) -> int:
        return len(self.frames)

    def frame_paths(self, index: int) -> Dict[str, Path]:
        """Paths of item ``index``: "image" and one per requested task."""
        return dict(self._paths[index])

    def __getitem__(self, index: int) -> Sample:
        """Load item ``index``; see the class docstring for the returned dict."""
        paths = self._paths[index]
        p_img = paths["image"]
        rgb = read_rgb_image(p_img)
        H, W = rgb.shape[:2]
        sample: Sample = {"image": rgb_tensor(rgb)}
        if "semseg" in self.tasks:
            p = paths["semseg"]
            lab = read_label_png(p, 255, "0..20 or 255 = void")
            check_same_size((p_img, rgb), (p, lab))
            bad = (lab > 20) & (lab != 255)
            if bad.any():
                raise ValueError(f"label image {p} contains value {int(lab[bad].flat[0])} "
                                 f"(expected 0..20 or 255 = void)")
            sample["seg"] = torch.from_numpy(
                np.where(lab == 255, IGNORE_INDEX, lab.astype(np.int64))).contiguous()
        if "human_parts" in self.tasks:
            parts = read_pascal_human_parts(paths["human_parts"], (H, W))
            sample["human_parts"] = torch.from_numpy(parts).contiguous()
        if "sal" in self.tasks:
            p = paths["sal"]
            with open_image(p) as im:
                if im.mode != "L":
                    raise ValueError(f"saliency image {p} has mode {im.mode!r}, expected 'L' "
                                     f"(8-bit single channel)")
                sal = np.array(im, dtype=np.uint8)
            check_same_size((p_img, rgb), (p, sal))
            sample["sal"] = torch.from_numpy(
                (sal.astype(np.float32) / 255.0 >= 0.5).astype(np.float32))[None].contiguous()
        sample["name"] = self.frames[index]
        sample = resize_sample(sample, self.size)
        return self.finish(sample)  # no depth: depth_scaling "none" is not used

    def __repr__(self) -> str:
        return (f"PASCALMT(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.size}, tasks={self.tasks}, augment={self.augment}, "
                f"normalize={self.normalize})")


def _build(root: Path, split: str, request: BuildRequest) -> Dataset:
    # no depth: ``depth_scaling`` is not used; only the files of the asked tasks are read
    return PASCALMT(root, split=split, size=request.size, augment=request.augment, normalize=request.normalize,
                    tasks=request.tasks)


PASCAL = DATASETS.register(DatasetSpec(
    name="pascal",
    summary="PASCAL-Context in Vandenhende's PASCAL_MT layout (JPEGImages, semseg, human_parts, sal_distill, "
    "ImageSets/Context; resized, see --size); test split: val",
    classes=(21,),
    tasks=("semseg", "human_parts", "sal"),
    default_size=(512, 512),
    factory=_build,
    class_name_tables={21: PASCAL_SEMSEG_CLASS_NAMES},
    release_sizes={"train": 4998, "val": 5105},
))
"""The ``--dataset pascal`` spec: ``val`` (5105 images) is the split MT-CP reports on; model
selection uses a held-out part of ``train`` (4998 images)."""
