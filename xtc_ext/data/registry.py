"""The dataset registry: every fact about a dataset that the rest of the project needs, in one place.

Each ``--dataset`` value names a :class:`DatasetSpec`: the classes it offers, the tasks its samples
carry, its default image size and validation fraction, which split the final test reads, the unit of
its depth target, its class names, and how to build it. Training, evaluation and the recipes ask the
registry (:func:`get_dataset`, :data:`DATASETS`) and never test a dataset's name.

**To add a dataset, add one module to this package** (``xtc_ext/data/<family>.py``) holding its
``torch.utils.data.Dataset`` class (usually a :class:`xtc_ext.data.base.FolderDataset`), a factory
``factory(root, split, request: BuildRequest) -> Dataset`` and one ``DATASETS.register(DatasetSpec(...))`` call
with its :class:`DatasetSpec`, nothing else: ``xtc_ext/data/__init__.py`` imports every module of
the package, so the spec is registered on ``import xtc_ext.data``. The dataset's ``__getitem__`` must return the common sample dict (see
:mod:`xtc_ext.data`): ``"image"`` float32 [3,H,W], ``"name"`` str, and the target of each task under
its task's ``sample_key`` (:class:`xtc_ext.tasks.TaskSpec`), with :data:`IGNORE_INDEX` for void label pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset

from xtc_ext.registry import Registry
from xtc_ext.tasks import IGNORE_INDEX, get_task, task_names

from .transforms import DEPTH_SCALINGS, check_size

__all__ = [
    "IGNORE_INDEX",
    "PathLike",
    "BuildRequest",
    "DatasetSpec",
    "DATASETS",
    "get_dataset",
]

_DEPTH_SCALING_CHOICES: Tuple[str, ...] = ("auto",) + tuple(DEPTH_SCALINGS)

#: A dataset folder: a string or a path-like object.
PathLike = Union[str, "os.PathLike[str]"]


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class BuildRequest:
    """The checked arguments of :meth:`DatasetSpec.build`, handed to the spec's ``factory``.

    Attributes:
        classes: one of the spec's ``classes``.
        size: output (H, W), or None for the stored (native) size.
        augment: apply the training augmentation.
        normalize: ImageNet-normalise the image.
        depth_scaling: one of ``DEPTH_SCALINGS`` (``"auto"`` already resolved).
        tasks: the asked tasks, a non-empty subset of the spec's ``tasks``.
    """

    classes: int
    size: Optional[Tuple[int, int]]
    augment: bool
    normalize: bool
    depth_scaling: str
    tasks: Tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Everything the project knows about one ``--dataset`` value (keyword arguments only).

    Attributes:
        name: the ``--dataset`` value (e.g. ``"frames"``, ``"nyuv2"``, ``"cityscapes"``).
        summary: one line for ``--help``: the on-disk layout and the test split.
        classes: the ``--classes`` values offered; ``classes[0]`` is the default.
        tasks: registered task names (:mod:`xtc_ext.tasks`) whose targets the samples can carry.
        default_size: (H, W) default of ``--size``; None = the stored size (``--size`` refused).
        factory: ``factory(root: Path, split: str, request: BuildRequest) -> Dataset``; called by
            :meth:`build` with checked arguments.
        val_fraction: default ``--val-fraction`` (default 0.1): the part of the TRAIN split held
            out for validation (docs/fidelity.md, "Protocol and model selection").
        test_split: the split the final test reads (default ``"val"``); None = the layout has a
            single split, whose frames the test reads again (``build`` then ignores ``split``).
        test_description: what the test reads, in words (shown in the run's description);
            default: ``test_split``; required when ``test_split`` is None.
        depth_unit: unit of the depth target and errors (``"m"``, ``"disparity/256"``); None
            (default) when the dataset has no depth.
        default_depth_scaling: what ``--depth-scaling auto`` means (``"divide"`` for metric depth,
            ``"none"`` for the Cityscapes disparity target, see
            :class:`xtc_ext.data.transforms.AugmentParams`); None (default) when the dataset has
            no depth.
        default_root: folder of data shipped inside the package (the ten NYUv2 frames); None
            (default): the caller must give the dataset's folder (``--data-root``).
        class_name_tables: ``{classes: names}`` legends for figures; a class count without an
            entry has no names (:meth:`class_names` returns None).
        release_sizes: ``{split: samples}`` of the public release the layout reads (e.g. ``{"train":
            795, "val": 654}``), which ``python -m xtc_ext.data.prepare`` checks a download against
            (docs/data.md); empty (default) for data without one public release.

    Raises:
        ValueError: (at construction) a field that breaks the rules above, naming the field.
    """

    name: str
    summary: str
    classes: Tuple[int, ...]
    tasks: Tuple[str, ...]
    default_size: Optional[Tuple[int, int]]
    factory: Callable[[Path, str, BuildRequest], Dataset] = field(repr=False, compare=False)
    val_fraction: float = 0.1
    test_split: Optional[str] = "val"
    test_description: Optional[str] = None
    depth_unit: Optional[str] = None
    default_depth_scaling: Optional[str] = None
    default_root: Optional[Path] = None
    class_name_tables: Mapping[int, Tuple[str, ...]] = field(default_factory=dict, repr=False,
                                                             compare=False)
    release_sizes: Mapping[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"DatasetSpec {self.name!r}: {what}")

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DatasetSpec: name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.summary, str) or not self.summary:
            fail("summary must be a non-empty string")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.classes or not all(_positive_int(c) for c in self.classes):
            fail(f"classes must be a non-empty tuple of positive ints, got {self.classes!r}")
        unknown = [t for t in self.tasks if t not in task_names()]
        if not self.tasks or unknown or len(set(self.tasks)) != len(self.tasks):
            fail(f"tasks must be distinct names from {task_names()}, got {self.tasks!r}")
        if self.default_size is not None:
            object.__setattr__(self, "default_size", check_size(self.default_size))
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0.0 <= self.val_fraction < 1.0:  # also rejects NaN
            fail(f"val_fraction must be a number in [0, 1), got {self.val_fraction!r}")
        if self.test_split is not None and (not isinstance(self.test_split, str) or not self.test_split):
            fail(f"test_split must be None or a split name, got {self.test_split!r}")
        if self.test_description is None:
            if self.test_split is None:
                fail("test_description is required when test_split is None")
            object.__setattr__(self, "test_description", self.test_split)
        has_depth = "depth" in self.tasks
        if has_depth != (self.depth_unit is not None):
            fail("depth_unit must be given exactly when 'depth' is one of the tasks")
        if has_depth != (self.default_depth_scaling is not None):
            fail("default_depth_scaling must be given exactly when 'depth' is one of the tasks")
        if has_depth and self.default_depth_scaling not in DEPTH_SCALINGS:
            fail(f"default_depth_scaling must be one of {DEPTH_SCALINGS}, got {self.default_depth_scaling!r}")
        if self.default_root is not None:
            object.__setattr__(self, "default_root", Path(self.default_root))
        if not callable(self.factory):
            fail("factory must be callable")
        tables = {int(c): tuple(names) for c, names in dict(self.class_name_tables).items()}
        for c, names in tables.items():
            if c not in self.classes or len(names) != c:
                fail(f"class_name_tables[{c}] must name {c} classes of an offered class count "
                     f"{self.classes}, got {len(names)} names")
        object.__setattr__(self, "class_name_tables", tables)
        sizes = dict(self.release_sizes)
        if not all(isinstance(k, str) and k and _positive_int(v) for k, v in sizes.items()):
            fail(f"release_sizes must map split names to positive ints, got {sizes!r}")
        object.__setattr__(self, "release_sizes", sizes)

    # ------------------------------------------------------------------ checks
    def check_classes(self, classes: int) -> int:
        """``classes`` if this dataset offers it. Raises ValueError naming ``classes`` otherwise."""
        if isinstance(classes, bool) or classes not in self.classes:
            raise ValueError(f"classes: {classes!r} is not offered by dataset {self.name!r} "
                             f"(choose {' or '.join(map(str, self.classes))})")
        return int(classes)

    def check_size(self, size: Optional[Sequence[int]]) -> Optional[Tuple[int, int]]:
        """``size`` as (H, W) or None. Raises ValueError naming ``size`` when the dataset keeps
        its stored size (``default_size`` None) but a size is given, or when it is not two positive ints."""
        if size is None:
            return None
        if self.default_size is None:
            raise ValueError(f"size: dataset {self.name!r} keeps the stored size of its files; "
                             f"size must be None, got {tuple(size)!r}")
        try:
            return check_size(tuple(size))
        except (TypeError, ValueError):
            raise ValueError(f"size: must be two positive ints (H, W), got {size!r}") from None

    def check_tasks(self, tasks: Sequence[str]) -> Tuple[str, ...]:
        """``tasks`` as a tuple if each is a task of this dataset (non-empty, no duplicates).

        Raises:
            ValueError: naming ``tasks``: a single string, an empty sequence, a duplicate, an
                unknown task name or a task this dataset does not offer.
        """
        if isinstance(tasks, (str, bytes)):
            raise ValueError(f"tasks: a sequence of task names is expected, not the string {tasks!r}")
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError(f"tasks: name at least one of {self.tasks} (dataset {self.name!r})")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks: duplicates in {tasks}")
        for t in tasks:
            if t not in task_names():
                raise ValueError(f"tasks: unknown task {t!r} (task names: {', '.join(task_names())})")
            if t not in self.tasks:
                raise ValueError(f"tasks: dataset {self.name!r} has no {t!r} targets "
                                 f"(it offers {', '.join(self.tasks)})")
        return tasks

    def resolve_depth_scaling(self, depth_scaling: str) -> str:
        """The depth rescaling of the scale crop: ``"auto"`` -> :attr:`default_depth_scaling`
        (``"none"`` for a dataset without depth, where the value is not used).

        Raises:
            ValueError: naming ``depth_scaling`` when it is not ``"auto"`` or one of
                :data:`xtc_ext.data.transforms.DEPTH_SCALINGS`.
        """
        if depth_scaling not in _DEPTH_SCALING_CHOICES:
            raise ValueError(f"depth_scaling: must be one of {_DEPTH_SCALING_CHOICES}, got {depth_scaling!r}")
        if depth_scaling == "auto":
            return self.default_depth_scaling or "none"
        return depth_scaling

    # ------------------------------------------------------------------ facts
    def task_channels(self, classes: int) -> Dict[str, int]:
        """Output channels of every task of the dataset, in :attr:`tasks` order
        (:meth:`xtc_ext.tasks.TaskSpec.output_channels`: ``classes`` for "semseg"). E.g. frames, 13 ->
        ``{"semseg": 13, "depth": 1, "normals": 3}``; pascal, 21 ->
        ``{"semseg": 21, "human_parts": 7, "sal": 1}``.

        Raises:
            ValueError: ``classes`` not offered (named).
        """
        classes = self.check_classes(classes)
        return {t: get_task(t).output_channels(classes) for t in self.tasks}

    def class_names(self, classes: int) -> Optional[Tuple[str, ...]]:
        """Names of the ``classes`` semantic classes in label order (figure legends), or None
        when the dataset has no names for that class count (e.g. NYU-40).

        Raises:
            ValueError: ``classes`` not offered (named).
        """
        return self.class_name_tables.get(self.check_classes(classes))

    # ------------------------------------------------------------------ build
    def build(self, root: Optional[PathLike], split: str, *, classes: int,
              size: Optional[Sequence[int]], augment: bool, normalize: bool, depth_scaling: str,
              tasks: Sequence[str]) -> Dataset:
        """One split of the dataset.

        Args:
            root: the dataset's folder; None = :attr:`default_root` (the packaged frames).
            split: ``"train"`` or ``"val"`` (any split folder / split file the layout has);
                ignored by a single-split layout (:attr:`test_split` None).
            classes: one of :attr:`classes`.
            size: output (H, W), or None for the stored (native) size; must be None when
                :attr:`default_size` is None. (Callers pass :attr:`default_size` for the default.)
            augment: apply the training augmentation
                (:func:`xtc_ext.data.transforms.augment_sample`).
            normalize: ImageNet-normalise the image (else it stays in [0, 1]).
            depth_scaling: ``"auto"`` (:attr:`default_depth_scaling`) or one of
                ``DEPTH_SCALINGS``; not used by a dataset without depth.
            tasks: the tasks whose targets the caller needs, a subset of :attr:`tasks`. Targets
                that are expensive to read or derive are read only when asked (frames: normals;
                pascal: each task); the others may come along.

        Returns:
            A map-style ``torch.utils.data.Dataset`` of sample dicts (see :mod:`xtc_ext.data`).

        Raises:
            ValueError: naming the argument: ``classes``, ``size``, ``tasks`` or
                ``depth_scaling`` the dataset does not offer or accept, a bad ``split``, or no
                ``root`` for a dataset without packaged data.
            FileNotFoundError: (from the dataset) missing folders or files, named.
        """
        classes = self.check_classes(classes)
        size = self.check_size(size)
        tasks = self.check_tasks(tasks)
        scaling = self.resolve_depth_scaling(depth_scaling)
        if not isinstance(split, str) or not split:
            raise ValueError(f"split: must be a split name such as 'train' or 'val', got {split!r}")
        if root is None:
            if self.default_root is None:
                raise ValueError(f"root: dataset {self.name!r} ships no data; give its folder (--data-root)")
            root = self.default_root
        request = BuildRequest(classes=classes, size=size, augment=bool(augment), normalize=bool(normalize),
                               depth_scaling=scaling, tasks=tasks)
        return self.factory(Path(root), split, request)


DATASETS: Registry[DatasetSpec] = Registry("dataset", expects=DatasetSpec)
"""name -> spec of every registered dataset, in registration order: each family module adds its spec with
``DATASETS.register(DatasetSpec(...))`` (:class:`xtc_ext.registry.Registry`; a duplicate name raises
``ValueError``, an object that is not a :class:`DatasetSpec` ``TypeError``)."""


def get_dataset(name: str) -> DatasetSpec:
    """The spec registered as ``name``.

    Raises:
        ValueError: no such dataset; the message lists the registered names.
    """
    return DATASETS.lookup(name)
