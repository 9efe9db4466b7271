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
from xtc_ext.metrics import delta_m, load_baselines
from xtc_ext.visualize import save_prediction_figures

__all__ = ["BaseRecipe", "option_error"]


def option_error(message: str) -> SystemExit:
    """The exception a recipe raises for a bad option value or combination (``message`` names the option)."""
    return SystemExit(f"error: {message}")


class BaseRecipe:
    """Shared parts of the recipes. Subclasses set the class attributes and implement the protocol methods.

    Class attributes:
        models: the ``--model`` values this recipe serves -> their names in the papers.
        weightings: the ``--weighting`` choices it supports; ``default_weighting`` when none is given.
        delta_m_formula: the name of its Δm formula in reports.

    Args:
        args: the finalised command line.
        spec: the dataset of the run.
    """

    models: ClassVar[Dict[str, str]] = {}
    weightings: ClassVar[Tuple[str, ...]] = ()
    default_weighting: ClassVar[str] = "equal"
    delta_m_formula: ClassVar[str] = ""

    def __init__(self, args: argparse.Namespace, spec: DatasetSpec) -> None:
        self.args, self.spec = args, spec
        self.depth_unit: Optional[str] = spec.depth_unit
        self.ignore_index = IGNORE_INDEX
        self.tasks: Tuple[str, ...] = ()

    # ------------------------------------------------------------------ command line
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
        if args.weighting not in cls.weightings:
            raise option_error(f"--model {args.model} supports --weighting {', '.join(cls.weightings)} "
                               f"(got {args.weighting})")
        missing = [t for t in cls.required_tasks(args, spec) if t not in spec.tasks]
        if missing:
            raise option_error(f"--dataset {spec.name} has no {missing[0]} targets, which --model {args.model} "
                               f"needs (its tasks: {', '.join(spec.tasks)})")

    # ------------------------------------------------------------------ protocol members shared by all
    def build_auxiliary(self, model: nn.Module) -> nn.Module:
        """Training-only modules; none by default (an empty ``ModuleDict``)."""
        return nn.ModuleDict()

    def epoch_log(self) -> Dict[str, Any]:
        """Extra per-epoch log entries; none by default."""
        return {}

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
        used = [k for k in keys if k in metrics and k in baseline] if self.delta_m_partial else list(keys)
        if not used:
            raise ValueError(f"no metric of {list(keys)} in common between the model ({sorted(metrics)}) and the "
                             f"baseline ({sorted(baseline)})")
        value = delta_m(metrics, baseline, lower_is_better=lower, keys=tuple(used))
        return {"delta_m": value, "delta_m_keys": used, "baseline": baseline, "baseline_files": files,
                "delta_m_formula": self.delta_m_formula}

    delta_m_partial: ClassVar[bool] = False
    """True: Δm over the metrics that the model and the baseline both have (a single-task model is compared
    on its own task's metrics); False: every metric of :meth:`delta_metrics` is required."""

    @torch.no_grad()
    def figures(self, model: nn.Module, data: Dataset, indices: Sequence[int], out_dir: Path, title: str,
                device: torch.device) -> List[Path]:
        """Figures of the semseg / depth predictions (:func:`xtc_ext.visualize.save_prediction_figures`)."""
        model.eval()
        channels = dict(getattr(model, "task_channels", {}))
        num_classes = int(channels.get("semseg", self.args.classes))
        return save_prediction_figures(
            lambda image: self.predict(model, image.to(device)), data, indices, out_dir, num_classes=num_classes,
            class_names=self.class_names, depth_unit=self.depth_unit or "", title=title,
            image_normalized=bool(self.args.normalize), ignore_index=self.ignore_index)
