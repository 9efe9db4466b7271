"""What every recipe shares: the command-line hooks, the dataset check, figures and Δm.

A recipe is one method family (XTasC-Net and its baselines; MT-CP; ...). It implements the engine's
:class:`~xtc_ext.engine.protocol.Recipe` protocol, and, as a class, the command-line hooks that
:mod:`xtc_ext.cli` calls: :meth:`BaseRecipe.add_arguments` (its own options, in their own group) and
:meth:`BaseRecipe.finalize_args` (their checks and dataset-dependent defaults).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from xtc_ext.data import IGNORE_INDEX, DatasetSpec
from xtc_ext.engine import StepOutput
from xtc_ext.metrics import delta_m, delta_m_over, format_metrics_table, load_baselines
from xtc_ext.registry import Registry
from xtc_ext.recipes.errors import option_error
from xtc_ext.recipes.regularization import ContrastivePlugin, check_contrastive_args
from xtc_ext.visualize import save_prediction_figures
from xtc_ext.weighting import WEIGHTINGS, Weighting

__all__ = ["BaseRecipe", "RECIPES"]


class BaseRecipe:
    """Shared parts of the recipes. Subclasses set the class attributes and implement the protocol methods.

    Class attributes:
        models: the ``--model`` values this recipe serves -> their names in the papers.
        unsupported_weightings: the registered weightings (``xtc_ext.weighting.WEIGHTINGS``) it cannot train
            with -> why; every other one is supported, a newly registered weighting included.
            ``default_weighting`` when none is given.
        delta_m_formula: the name of its Δm formula in reports.

    Args:
        args: the finalised command line.
        spec: the dataset of the run.
    """

    models: ClassVar[Dict[str, str]] = {}
    unsupported_weightings: ClassVar[Dict[str, str]] = {}
    default_weighting: ClassVar[str] = "equal"
    delta_m_formula: ClassVar[str] = ""

    def __init__(self, args: argparse.Namespace, spec: DatasetSpec) -> None:
        self.args, self.spec = args, spec
        self.depth_unit: Optional[str] = spec.depth_unit
        self.ignore_index = IGNORE_INDEX
        self.tasks: Tuple[str, ...] = ()
        self.contrastive: Optional[ContrastivePlugin] = None

    # ------------------------------------------------------------------ command line
    @classmethod
    def supported_weightings(cls) -> Tuple[str, ...]:
        """The registered weightings this recipe trains with, in registration order."""
        return tuple(name for name in WEIGHTINGS if name not in cls.unsupported_weightings)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this recipe's own options (one argument group). Default: none."""

    @classmethod
    def required_tasks(cls, args: argparse.Namespace, spec: DatasetSpec) -> Tuple[str, ...]:
        """The dataset tasks a run of ``args`` trains on (checked against ``spec.tasks``)."""
        return ()

    @classmethod
    def finalize_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        """Fill this recipe's defaults in ``args`` and check its options and the dataset.

        Raises:
            SystemExit: an unsupported ``--weighting``, or a dataset without a task the run needs.
        """
        if args.weighting is None:
            args.weighting = cls.default_weighting
        if args.weighting in cls.unsupported_weightings:
            supported = ", ".join(cls.supported_weightings())
            raise option_error(f"--model {args.model} does not support --weighting {args.weighting}: "
                               f"{cls.unsupported_weightings[args.weighting]} (supported: {supported})")
        tasks = cls.required_tasks(args, spec)
        missing = [t for t in tasks if t not in spec.tasks]
        if missing:
            raise option_error(f"--dataset {spec.name} has no {missing[0]} targets, which --model {args.model} "
                               f"needs (its tasks: {', '.join(spec.tasks)})")
        check_contrastive_args(args, tasks)

    # ------------------------------------------------------------------ protocol members shared by all
    def run_info(self) -> Dict[str, Any]:
        """``variant`` (the ``--model`` value), ``num_classes`` (the segmentation label set, ``--classes``),
        ``dataset``, ``data_root`` and ``depth_unit`` (None without depth) for the records."""
        a = self.args
        return {"variant": a.model, "num_classes": int(a.classes), "dataset": a.dataset, "data_root": str(a.data_root),
                "depth_unit": self.depth_unit}

    def describe_data(self) -> str:
        """``"dataset NAME at DIR, C classes"`` for the header log line."""
        a = self.args
        return f"dataset {a.dataset} at {a.data_root}, {a.classes} classes"

    def metrics_table(self, metrics: Mapping[str, Any], before: Optional[Mapping[str, Any]]) -> str:
        """The test table (:func:`xtc_ext.metrics.format_metrics_table`, depth errors in :attr:`depth_unit`)."""
        return format_metrics_table(metrics, depth_unit=self.depth_unit, before=before)

    def build_auxiliary(self, model: nn.Module) -> nn.Module:
        """Training-only modules: the contrastive regularizer's projectors with ``--contrastive``
        (:mod:`xtc_ext.recipes.regularization`), else none (an empty ``ModuleDict``)."""
        if not getattr(self.args, "contrastive", False):
            return nn.ModuleDict()
        self.contrastive = ContrastivePlugin(self.args, self.tasks)
        return nn.ModuleDict({"contrastive": self.contrastive.build(model)})

    def regularized(self, output: Any, step: StepOutput, batch: Mapping[str, Any], device: torch.device,
                    generator: torch.Generator) -> StepOutput:
        """The host's ``step``, plus the contrastive term when it is on: an ``extra`` term added to the weighted
        total and a logged value, both named ``contrastive``."""
        if self.contrastive is not None:
            term = self.contrastive.term(output, batch, device, generator)
            step.extra["contrastive"] = term
            step.logged["contrastive"] = term
        return step

    def weighting_name(self) -> str:
        """The ``WEIGHTINGS`` name of the run's weighting (default: ``--weighting``)."""
        return self.args.weighting

    def weighted_tasks(self) -> Tuple[str, ...]:
        """The keys of :attr:`StepOutput.losses`, the losses the weighting combines (default: :attr:`tasks`)."""
        return self.tasks

    def build_weighting(self, model: nn.Module) -> Weighting:
        """The weighting :meth:`weighting_name` over :meth:`weighted_tasks`, built by its class from the run's
        options (:meth:`xtc_ext.weighting.Weighting.from_args`) with the model's ``shared_parameters()``
        (none when the model has no such hook), then attached to the model
        (:meth:`~xtc_ext.weighting.Weighting.attach`)."""
        hook = getattr(model, "shared_parameters", None)
        shared = tuple(hook()) if callable(hook) else ()
        name = self.weighting_name()
        weighting = WEIGHTINGS.lookup(name).from_args(name, self.args, len(self.weighted_tasks()), shared)
        weighting.attach(model)
        return weighting

    def epoch_log(self) -> Dict[str, Any]:
        """Extra per-epoch log entries: the regularizer's source draws, if any."""
        return self.contrastive.epoch_log() if self.contrastive is not None else {}

    def training_figures(self, model: nn.Module, data: Dataset, out_dir: Path, device: torch.device,
                         stage: str) -> List[Path]:
        """Figures of the training-only parts at ``stage`` ``"before"`` / ``"after"`` training: the contrastive
        regularizer's anchor-distance figure of the first sample (``contrastive_<stage>.png``), else none."""
        if self.contrastive is None or len(data) == 0:
            return []
        return self.contrastive.figure(model, data[0], Path(out_dir) / f"contrastive_{stage}.png", device,
                                       f"{self.name}: contrastive embedding distances, {stage} training")

    @property
    def class_names(self) -> Optional[Sequence[str]]:
        """Class names of the run's segmentation labels (figure legends), or None."""
        return self.spec.class_names(int(self.args.classes))

    def predict(self, model: nn.Module, image: Tensor) -> Dict[str, Tensor]:
        """Inference predictions by task; see :class:`~xtc_ext.engine.protocol.Recipe`."""
        raise NotImplementedError

    def delta_metrics(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """``(metric keys, the keys where lower is better)`` of this run's Δm."""
        raise NotImplementedError

    def delta_m(self, metrics: Mapping[str, Any], baseline_files: Sequence[str]) -> Dict[str, Any]:
        """Δm of ``metrics`` against the merged metrics of ``baseline_files`` over :meth:`delta_metrics`.

        Raises:
            FileNotFoundError, ValueError: a missing or unreadable baseline file, conflicting values, or a
                metric missing from the model or the baseline (named).
        """
        keys, lower = self.delta_metrics()
        baseline, files = load_baselines(baseline_files, keys)
        if self.delta_m_partial:
            value, used = delta_m_over(metrics, baseline, keys, lower)
        else:
            value, used = delta_m(metrics, baseline, lower_is_better=lower, keys=tuple(keys)), list(keys)
        return {"delta_m": value, "delta_m_keys": used, "baseline": baseline, "baseline_files": files,
                "delta_m_formula": self.delta_m_formula}

    delta_m_partial: ClassVar[bool] = False
    """True: Δm over the metrics that the model and the baseline both have (a single-task model is compared
    on its own task's metrics); False: every metric of :meth:`delta_metrics` is required."""

    @torch.no_grad()
    def figures(self, model: nn.Module, data: Dataset, indices: Sequence[int], out_dir: Path, title: str,
                device: torch.device) -> List[Path]:
        """Figures of every task the model predicts (:func:`xtc_ext.visualize.save_prediction_figures`)."""
        model.eval()
        return save_prediction_figures(
            lambda image: self.predict(model, image.to(device)), data, indices, out_dir,
            class_names=self.class_names, depth_unit=self.depth_unit, title=title,
            image_normalized=bool(self.args.normalize))


RECIPES: Registry[type] = Registry("model", expects=BaseRecipe)
"""``--model`` value -> recipe class; each recipe module registers its class under its ``models``:
``RECIPES.register(MyRecipe, *MyRecipe.models)``."""
