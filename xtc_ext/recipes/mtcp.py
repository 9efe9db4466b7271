"""MT-CP (``--model mtcp``): multi-task coherence and prioritization (MT-CP paper §3-4).

Tasks: those of the dataset (NYUD-v2 ``--dataset nyudmt`` or the ten frames: semseg, depth, normals;
PASCAL-Context ``--dataset pascal``: semseg, human_parts, sal), or a subset (``--mtcp-tasks``; one task is the
single-task baseline: no CFM, no coherence loss, equal weighting).

Loss: the parts of :class:`~xtc_ext.losses.MTCPLoss` (Eq. 7, reconstructed): the final per-task losses go to
the run's weighting (the Loss Prioritization Scheme by default), applied by the engine; the intermediate and
coherence losses are added unweighted.

Metrics (:class:`~xtc_ext.metrics.MultiTaskEvaluator`): semseg ``mIoU``/``pixel_acc``; depth ``abs_err``/
``rel_err``/``rmse`` (Vandenhende's RMSE convention: predictions <= 0 count as 1e-9; no depth cap); normals
``normals_mean``/``normals_median`` (degrees) and ``normals_11.25``/``normals_22.5``/``normals_30`` (percent);
saliency ``sal_maxF`` and ``sal_mIoU`` (max-mIoU); human parts ``parts_mIoU``; the raw final-prediction loss of
every task (``<task>_loss``) and their sum ``loss``.

One metric per task (its :attr:`~xtc_ext.tasks.TaskSpec.main_metric`) drives both the validation score (:func:`mtcp_validation_score`)
and the multi-task performance Delta_MTL (MT-CP §4 after Vandenhende et al.):
``Delta_MTL = (100 / T) sum_t (-1)^{l_t} (M_t - M_t^STL) / M_t^STL`` with ``l_t = 1`` for depth RMSE and
normals mean angle, against the merged test metrics of single-task runs.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_models import MTCP
from xtc_ext.data import DatasetSpec
from xtc_ext.losses import NORMALS_KINDS, MTCPLoss, task_loss
from xtc_ext.engine import StepOutput
from xtc_ext.metrics import MultiTaskEvaluator
from xtc_ext.recipes.base import RECIPES, BaseRecipe
from xtc_ext.recipes.errors import option_error
from xtc_ext.tasks import TASKS, Metric, get_task

__all__ = ["MTCPRecipe", "main_metric", "mtcp_validation_score", "select_tasks"]

log = logging.getLogger("xtc_ext.train")


def main_metric(task: str) -> Metric:
    """The metric of ``task`` in the validation score and Delta_MTL: its registered
    :attr:`~xtc_ext.tasks.TaskSpec.main_metric` (saliency: max-mIoU, as Vandenhende's
    ``calculate_multi_task_performance``; maxF is reported too)."""
    spec = get_task(task)
    return spec.metric(spec.main_metric)

BACKBONES = ("resnet50_fpn", "resnet34_fpn", "resnet18_fpn", "mask2former")

DEPTH_MIN_PREDICTION = 1e-9
"""Vandenhende's depth evaluation sets predictions <= 0 to this value before the RMSE (MT-CP reports it)."""


def select_tasks(tasks: Mapping[str, int], chosen: Optional[Sequence[str]]) -> Dict[str, int]:
    """The sub-mapping of ``tasks`` (task -> channels) named in ``chosen``, in the dataset's order
    (``None``: all).

    Raises:
        SystemExit: a name that is not a task of the dataset (named, with the valid ones).
    """
    if not chosen:
        return dict(tasks)
    bad = [t for t in chosen if t not in tasks]
    if bad:
        raise option_error(f"--mtcp-tasks: unknown task {bad[0]!r} for this dataset (choose from {', '.join(tasks)})")
    return {t: c for t, c in tasks.items() if t in set(chosen)}


def mtcp_validation_score(metrics: Mapping[str, Any], reference: Mapping[str, float]) -> float:
    """Checkpoint-selection score (higher is better): the mean over the run's tasks of the improvement of the
    task's :func:`main_metric` against the first validation (``reference``): mIoU / max-mIoU as differences
    (fractions), depth RMSE and normals mean angle as relative reductions ``(ref - m) / ref``. So +0.01 is one
    point of mIoU or a 1 % error reduction, for every task alike. Non-finite: ``-inf``."""
    parts = []
    for key, higher in ((m.name, m.higher_is_better) for m in map(main_metric, _evaluated_tasks())):
        if key not in metrics:
            continue
        m, ref = float(metrics[key]), float(reference.get(key, float("nan")))
        if higher:
            parts.append(m - (ref if math.isfinite(ref) else 0.0))
        else:
            ref = ref if math.isfinite(ref) and ref > 0 else 1.0
            parts.append((ref - m) / ref)
    score = sum(parts) / len(parts) if parts else float("nan")
    return score if math.isfinite(score) else float("-inf")


def _evaluated_tasks() -> Tuple[str, ...]:
    return tuple(t for t, spec in TASKS.items() if spec.meter is not None)


class MTCPRecipe(BaseRecipe):
    """MT-CP (see the module docstring)."""

    models = {"mtcp": "MT-CP"}
    unsupported_weightings = {"gradnorm": "GradNorm needs the model's shared_parameters() hook, which MT-CP has not"}
    default_weighting = "lps"
    delta_m_formula = "MT-CP §4 / Vandenhende Delta_MTL"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The MT-CP options: backbone, task subset, ablations (Table 3), loss factors (``--lps-beta`` is the LPS
        weighting's option: :class:`xtc_ext.weighting.LPS`)."""
        g = parser.add_argument_group("MT-CP (--model mtcp)")
        g.add_argument("--backbone", choices=BACKBONES, default="resnet50_fpn",
                       help="MT-CP backbone ('mask2former' = the paper's, needs --mask2former-path)")
        g.add_argument("--mask2former-path", default=None,
                       help="local Mask2Former directory (save_pretrained) for --backbone mask2former; nothing is downloaded")
        g.add_argument("--mtcp-tasks", nargs="+", default=None, metavar="TASK",
                       help="train MT-CP on these tasks only (default: all of the dataset's; NYUD: semseg depth normals, "
                       "PASCAL: semseg human_parts sal); one task = the single-task baseline (no CFM, no coherence loss)")
        g.add_argument("--cfm", action=argparse.BooleanOptionalAction, default=True,
                       help="Coherence Fusion Modules (--no-cfm: the 'w/o CFM' ablation of MT-CP Table 3, coherence loss 0)")
        g.add_argument("--srm", action=argparse.BooleanOptionalAction, default=True,
                       help="Spatial Refinement Modules (--no-srm: the 'w/o SRM' ablation of Table 3, no intermediate "
                       "predictions)")
        g.add_argument("--coherence-weight", type=float, default=0.01, help="factor of the CFM coherence loss")
        g.add_argument("--intermediate-weight", type=float, default=0.5,
                       help="factor of the intermediate (SRM) prediction losses (authors' code: 0.5)")
        g.add_argument("--normals-loss", choices=NORMALS_KINDS, default="cosine", help="surface-normals loss")

    @classmethod
    def required_tasks(cls, args: argparse.Namespace, spec: DatasetSpec) -> Tuple[str, ...]:
        return tuple(args.mtcp_tasks) if args.mtcp_tasks else tuple(spec.tasks)

    @classmethod
    def finalize_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        """Backbone path, task subset (one task: no CFM, equal weighting), value checks."""
        if args.backbone == "mask2former" and not args.mask2former_path:
            raise option_error("--backbone mask2former needs --mask2former-path")
        if args.mtcp_tasks:
            names = select_tasks(spec.task_channels(int(args.classes)), args.mtcp_tasks)
            args.mtcp_tasks = list(names)
            if len(names) == 1:
                if args.cfm:
                    log.info("--mtcp-tasks %s: single task, no auxiliary tasks -> --no-cfm", args.mtcp_tasks[0])
                args.cfm, args.weighting = False, "equal"
        super().finalize_args(args, spec)
        if not (args.coherence_weight >= 0 and args.intermediate_weight >= 0):
            raise option_error("--coherence-weight and --intermediate-weight must be >= 0")

    def __init__(self, args: argparse.Namespace, spec: DatasetSpec) -> None:
        super().__init__(args, spec)
        self.task_channels = select_tasks(spec.task_channels(int(args.classes)), args.mtcp_tasks)
        self.tasks = tuple(self.task_channels)
        ablation = "".join(f" w/o {m}" for m, on in (("CFM", args.cfm), ("SRM", args.srm)) if not on)
        subset = f" ({', '.join(args.mtcp_tasks)})" if args.mtcp_tasks else ""
        self.name = f"MT-CP {args.backbone}{subset}{ablation}"
        self.criterion = MTCPLoss(self.tasks, None, coherence_weight=args.coherence_weight,
                                  intermediate_weight=args.intermediate_weight, normals_kind=args.normals_loss,
                                  impl=args.loss_impl, ignore_index=self.ignore_index)

    def describe(self) -> str:
        a = self.args
        return (f"tasks {', '.join(self.tasks)} | weighting {a.weighting} | coherence weight {a.coherence_weight:g} | "
                f"loss impl {a.loss_impl}")

    def build_model(self) -> nn.Module:
        a = self.args
        return MTCP(self.task_channels, backbone=a.backbone, use_cfm=bool(a.cfm) and len(self.tasks) > 1,
                    use_srm=bool(a.srm), mask2former_path=a.mask2former_path)

    def targets(self, batch: Mapping[str, Any], device: torch.device) -> Dict[str, Tensor]:
        """The :class:`~xtc_ext.losses.MTCPLoss` targets of a batch: invalid depth / normals pixels are zeroed
        (the losses' invalid marker); segmentation and human parts keep -1 as ignored."""
        out: Dict[str, Tensor] = {}
        for t in self.tasks:
            key = get_task(t).sample_key
            target = batch[key].to(device, non_blocking=True)
            valid = batch.get(f"{key}_valid")
            out[t] = target if valid is None else target * valid.to(device, non_blocking=True).to(target.dtype)
        return out

    def training_step(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device,
                      generator: torch.Generator) -> StepOutput:
        """Forward and losses of one batch (Eq. 7, reconstructed): the weighting gets the final-prediction loss
        of every task, the intermediate and coherence losses are added unweighted (:meth:`MTCPLoss.added_terms`);
        ``generator``: the contrastive regularizer's draws, if on."""
        image = batch["image"].to(device, non_blocking=True)
        output = model(image)
        final, intermediate, coherence = self.criterion.parts(output, self.targets(batch, device))
        logged = {f"{t}_loss": final[i] for i, t in enumerate(self.tasks)}
        logged.update({f"{t}_intermediate": intermediate[i] for i, t in enumerate(self.tasks)})
        logged["coherence"] = coherence
        step = StepOutput(losses={t: final[i] for i, t in enumerate(self.tasks)}, logged=logged,
                          extra=self.criterion.added_terms(intermediate, coherence))
        return self.regularized(output, step, batch, device, generator)

    def predict(self, model: nn.Module, image: Tensor) -> Dict[str, Tensor]:
        return dict(model(image).predictions)

    def _eval_loss(self, task: str, pred: Tensor, targets: Mapping[str, Tensor]) -> Tensor:
        a = self.args
        return task_loss(task, pred, targets[task], a.loss_impl, a.normals_loss, ignore_index=self.ignore_index)

    def evaluator(self) -> MultiTaskEvaluator:
        return MultiTaskEvaluator(self.task_channels, self._eval_loss, depth_min_prediction=DEPTH_MIN_PREDICTION)

    def score_reference(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        keys = (main_metric(t).name for t in _evaluated_tasks())
        return {key: float(metrics[key]) for key in keys if key in metrics}

    def score(self, metrics: Mapping[str, Any], reference: Mapping[str, float]) -> float:
        return mtcp_validation_score(metrics, reference)

    def delta_metrics(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        keys = tuple(main_metric(t).name for t in self.tasks)
        lower = tuple(main_metric(t).name for t in self.tasks if not main_metric(t).higher_is_better)
        return keys, lower


RECIPES.register(MTCPRecipe, *MTCPRecipe.models)
