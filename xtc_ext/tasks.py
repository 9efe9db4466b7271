"""The task registry: every fact about a dense-prediction task that the rest of the project needs, in one place.

Each task (``"semseg"``, ``"depth"``, ``"normals"``, ``"sal"``, ``"human_parts"``, ``"edge"``) is one
:class:`TaskSpec`: where its target sits in a sample, how many output channels a model gives it, which
loss, meter, contrastive source kind and figure panel it uses, the names of its metrics with their
direction and its main metric, the unit of its errors, and its void value. The datasets
(:mod:`xtc_ext.data`), the evaluator and the result tables (:mod:`xtc_ext.metrics`), the MT-CP loss
(:mod:`xtc_ext.losses`), the contrastive regularizer (:mod:`xtc_ext.regularizers`), the figures
(:mod:`xtc_ext.visualize`) and the recipes look the task up (:func:`get_task`) instead of keeping a table
of their own.

The task names are the field's (MTI-Net, Vandenhende et al.'s multi-task survey code, MT-CP, LibMTL's
NYUv2): ``semseg`` is semantic segmentation everywhere (logs: ``semseg_loss``), ``sal`` saliency.
The sample dict keeps its historical keys (:attr:`TaskSpec.sample_key`: ``"seg"`` for semseg).

The behaviour a spec selects is named by *kind* strings (:data:`LOSS_KINDS`, :data:`METER_KINDS`,
:data:`FIGURE_KINDS`, :data:`CONTRASTIVE_KINDS`), each implemented once in the module that owns it
(``xtc_ext/losses/mtcp.py``, ``xtc_ext/metrics/evaluator.py``, ``xtc_ext/visualize.py``,
``xtc_ext/regularizers/sampling.py``). **To add a task** that uses existing kinds, add one
:func:`register_task` call (here for a built-in task, or in the module that introduces the task);
a task that needs a new kind of loss, meter, figure or contrastive criterion adds that kind in the
module that owns it (docs/architecture.md, "To add a task").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = [
    "IGNORE_INDEX",
    "LOSS_KINDS",
    "METER_KINDS",
    "FIGURE_KINDS",
    "CONTRASTIVE_KINDS",
    "Metric",
    "TaskSpec",
    "TASKS",
    "register_task",
    "get_task",
    "task_names",
]

#: Void label of every categorical target (semseg, human parts) in the samples: the readers map the
#: datasets' 255 (or 0 = unlabelled for NYUv2) to it.
IGNORE_INDEX: int = -1

LOSS_KINDS: Tuple[str, ...] = ("cross_entropy", "l1", "normals", "balanced_bce")
"""Default-loss kinds (``xtc_ext.losses.mtcp.task_loss``): masked cross-entropy over classes, masked L1 over
``target > 0``, the normals loss over non-zero targets, class-balanced BCE over ``target >= 0``."""

METER_KINDS: Tuple[str, ...] = ("segmentation", "depth", "normals", "saliency")
"""Meter kinds (``xtc_ext.metrics.evaluator``): the meters of :mod:`xtc_ext.metrics.meters`."""

FIGURE_KINDS: Tuple[str, ...] = ("labels", "scalar", "normals", "probability")
"""Figure-panel kinds (``xtc_ext.visualize``): a class map in the segmentation palette (void black), a scalar
map in viridis with a colour bar in the task's unit (void black), unit vectors as RGB ``(n + 1) / 2`` (void
black), a probability map in grey (logits go through a sigmoid; void red)."""

CONTRASTIVE_KINDS: Tuple[str, ...] = ("categorical", "binary", "depth", "normals", "edge")
"""Source kinds of the contrastive regularizer (``xtc_ext.regularizers.sampling.SOURCE_KINDS``)."""


@dataclass(frozen=True)
class Metric:
    """One metric of a task as the results report it.

    Attributes:
        name: key in the results (``metrics.json``), e.g. ``"mIoU"``, ``"normals_mean"``.
        higher_is_better: its direction (Δm's ``(-1)^l``, the validation score).
        fmt: ``str.format`` pattern of its row in ``metrics.md`` (e.g. ``"{:.2f} deg"``).
        in_task_unit: the value is in the task's unit (depth errors: metres or the dataset's depth
            unit); the table labels it with the unit.
    """

    name: str
    higher_is_better: bool
    fmt: str = "{:.4f}"
    in_task_unit: bool = False


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """Everything the project knows about one task (keyword arguments only).

    Attributes:
        name: the task name (keys of prediction, target and feature dicts; ``--mtcp-tasks`` values).
        title: the task in words, for figures (e.g. ``"segmentation"``).
        sample_key: key of the target in a sample dict (:mod:`xtc_ext.data`); its validity mask, when the
            readers give one, is ``f"{sample_key}_valid"`` (bool ``[1, H, W]``).
        channels: output channels of a model's prediction; None = the dataset's class count (``--classes``).
        loss: default-loss kind, one of :data:`LOSS_KINDS`.
        meter: meter kind, one of :data:`METER_KINDS`; None = the task has no evaluation here.
        metric_prefix: prefix of the meter's keys in the results (``"normals_"``: ``normals_mean``).
        reported: the meter's keys the results keep (before the prefix); None = all of them.
        metrics: the task's metrics in the results table (names with the prefix), in order.
        main_metric: the one metric of the task in MT-CP's validation score and Δ_MTL (a name of
            ``metrics``).
        unit: unit of the target and of the metrics marked ``in_task_unit`` (``"m"``; a dataset with
            another depth unit says so, :attr:`xtc_ext.data.DatasetSpec.depth_unit`); None = unitless.
        void: the target value that marks a pixel without ground truth: :data:`IGNORE_INDEX` for class maps
            and binary maps, 0 for depth and normals (no measurement, the zero vector).
        contrastive_kind: source kind of the contrastive regularizer (:data:`CONTRASTIVE_KINDS`); None =
            the task cannot be a source.
        figure: figure-panel kind, one of :data:`FIGURE_KINDS`.

    Raises:
        ValueError: (at construction) a field that breaks the rules above, naming the field.
    """

    name: str
    title: str
    sample_key: str
    channels: Optional[int]
    loss: str
    meter: Optional[str]
    metric_prefix: str = ""
    reported: Optional[Tuple[str, ...]] = None
    metrics: Tuple[Metric, ...] = ()
    main_metric: Optional[str] = None
    unit: Optional[str] = None
    void: float = IGNORE_INDEX
    contrastive_kind: Optional[str] = None
    figure: str = "scalar"

    def __post_init__(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"TaskSpec {self.name!r}: {what}")

        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"TaskSpec: name must be an identifier string, got {self.name!r}")
        if not isinstance(self.sample_key, str) or not self.sample_key:
            fail(f"sample_key must be a non-empty string, got {self.sample_key!r}")
        if self.channels is not None and (isinstance(self.channels, bool) or not isinstance(self.channels, int)
                                          or self.channels < 1):
            fail(f"channels must be None or an int >= 1, got {self.channels!r}")
        for field_name, value, kinds in (("loss", self.loss, LOSS_KINDS), ("figure", self.figure, FIGURE_KINDS)):
            if value not in kinds:
                fail(f"{field_name} must be one of {kinds}, got {value!r}")
        if self.meter is not None and self.meter not in METER_KINDS:
            fail(f"meter must be None or one of {METER_KINDS}, got {self.meter!r}")
        if self.contrastive_kind is not None and self.contrastive_kind not in CONTRASTIVE_KINDS:
            fail(f"contrastive_kind must be None or one of {CONTRASTIVE_KINDS}, got {self.contrastive_kind!r}")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.reported is not None:
            object.__setattr__(self, "reported", tuple(self.reported))
        names = [m.name for m in self.metrics]
        if (self.meter is None) != (not names):
            fail("metrics must be given exactly when the task has a meter")
        if self.meter is not None and self.main_metric not in names:
            fail(f"main_metric must be one of its metrics {names}, got {self.main_metric!r}")

    def output_channels(self, classes: int) -> int:
        """Channels of a prediction of this task on a dataset with ``classes`` classes."""
        return int(classes) if self.channels is None else self.channels

    def metric(self, name: str) -> Metric:
        """The :class:`Metric` called ``name``. Raises KeyError naming it and the task's metrics."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name!r} has no metric {name!r} (has {[m.name for m in self.metrics]})")


#: name -> spec of every registered task, in registration order (the order of tables and figures).
TASKS: Dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` and return it.

    Raises:
        TypeError: ``spec`` is not a :class:`TaskSpec`.
        ValueError: a task of that name is already registered, or one of its metric names is another
            task's.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    taken = {m.name: t.name for t in TASKS.values() for m in t.metrics}
    clash = [m.name for m in spec.metrics if m.name in taken]
    if clash:
        raise ValueError(f"task {spec.name!r}: metric {clash[0]!r} is already task {taken[clash[0]]!r}'s")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The spec registered as ``name``.

    Raises:
        ValueError: no such task; the message lists the registered names.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r} (registered: {', '.join(TASKS) or 'none'})") from None


def task_names() -> Tuple[str, ...]:
    """The registered task names, in registration order."""
    return tuple(TASKS)


def _percent(name: str) -> Metric:
    return Metric(name, True, "{:.2f} %")


register_task(TaskSpec(
    name="semseg", title="segmentation", sample_key="seg", channels=None, loss="cross_entropy",
    meter="segmentation", metrics=(Metric("mIoU", True), Metric("pixel_acc", True)), main_metric="mIoU",
    contrastive_kind="categorical", figure="labels"))
register_task(TaskSpec(
    name="depth", title="depth", sample_key="depth", channels=1, loss="l1", meter="depth",
    metrics=(Metric("abs_err", False, in_task_unit=True), Metric("rel_err", False),
             Metric("rmse", False, in_task_unit=True)),
    main_metric="rmse", unit="m", void=0, contrastive_kind="depth", figure="scalar"))
register_task(TaskSpec(
    name="normals", title="surface normals", sample_key="normals", channels=3, loss="normals", meter="normals",
    metric_prefix="normals_",
    metrics=(Metric("normals_mean", False, "{:.2f} deg"), Metric("normals_median", False, "{:.2f} deg"),
             _percent("normals_11.25"), _percent("normals_22.5"), _percent("normals_30")),
    main_metric="normals_mean", unit="deg", void=0, contrastive_kind="normals", figure="normals"))
register_task(TaskSpec(
    name="sal", title="saliency", sample_key="sal", channels=1, loss="balanced_bce", meter="saliency",
    metric_prefix="sal_", reported=("maxF", "mIoU"), metrics=(Metric("sal_maxF", True), Metric("sal_mIoU", True)),
    main_metric="sal_mIoU", contrastive_kind="binary", figure="probability"))
register_task(TaskSpec(
    name="human_parts", title="human parts", sample_key="human_parts", channels=7, loss="cross_entropy",
    meter="segmentation", metric_prefix="parts_", reported=("mIoU", "pixel_acc"),
    metrics=(Metric("parts_mIoU", True),), main_metric="parts_mIoU", contrastive_kind="categorical",
    figure="labels"))
register_task(TaskSpec(
    name="edge", title="edges", sample_key="edge", channels=1, loss="balanced_bce", meter=None,
    contrastive_kind="edge", figure="probability"))
