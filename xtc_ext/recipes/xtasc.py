"""The XTasC-Net family (XTasC-Net paper §IV-V): XTasC-Net, Base MT-Net, Align-Net and Base ST-Net.

``--model`` (paper names, §V-D):

* ``xtasc``: XTasC-Net, encoder + two U-Net decoders + two task-transfer networks, the cross-task
  consistency loss (Eq. 11-15, :class:`~xtc_ext.losses.XTasCLoss`);
* ``mtnet``: Base MT-Net, no transfer networks, lambda = 0;
* ``align``: Align-Net, the transfer outputs against the ground truth (Eq. 8);
* ``stnet``: Base ST-Net, one task (``--task semseg|depth``), encoder + one decoder.

The two task-group losses are combined by ``--weighting`` (equal, uncertainty, DWA, GradNorm; Eq. 16).
Evaluation: mIoU, pixel accuracy, depth abs/rel error and RMSE of the direct predictions (the transfer
networks are not run at inference). Checkpoint selection: :func:`validation_score`. Δm: Eq. 17 over mIoU,
pixel accuracy, abs and rel error against Base ST-Net.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import Tensor, nn

from python_models import BaseSTNet, XTasCNet
from xtc_ext.data import DatasetSpec
from xtc_ext.engine import StepOutput
from xtc_ext.losses import DEPTH_LOSSES, SEG_CONSISTENCY, XTasCLoss, single_task_loss
from xtc_ext.metrics import MultiTaskEvaluator
from xtc_ext.recipes.base import RECIPES, BaseRecipe
from xtc_ext.recipes.errors import option_error

__all__ = ["XTasCRecipe", "validation_score"]

log = logging.getLogger("xtc_ext.train")

_TASKS = ("semseg", "depth")
"""``--task`` values: the registered task names (:mod:`xtc_ext.tasks`) of ``BaseSTNet.task``."""

_OLD_TASK_NAMES = {"segmentation": "semseg"}
"""``--task`` values stored by checkpoints written before the task registry (read by ``--resume`` and
``python -m xtc_ext.evaluate``) -> today's names."""


def _stnet_task(args: argparse.Namespace) -> str:
    """``args.task``, a stored old name (:data:`_OLD_TASK_NAMES`) renamed in ``args``."""
    args.task = _OLD_TASK_NAMES.get(args.task, args.task)
    return args.task


def validation_score(metrics: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Checkpoint-selection score of validation ``metrics`` (higher is better).

    ``score = mean(mIoU, pixel_acc) - mean(abs_err / abs_err_ref, rel_err / rel_err_ref)`` over the
    metrics the model has (one task only for Base ST-Net), where ``*_ref`` are the errors of the
    first validation of the run (``reference``; a zero or non-finite reference counts as 1). The
    segmentation part moves by 0.01 per point of mIoU / accuracy, the depth part by 0.01 per percent
    of error change, so neither task's units dominate (Cityscapes depth errors are ~0.01, NYUv2 ~0.6).
    A non-finite score is ``-inf`` (never selected).
    """
    parts = []
    seg = [metrics[k] for k in ("mIoU", "pixel_acc") if k in metrics]
    if seg:
        parts.append(sum(seg) / len(seg))
    depth = []
    for k in ("abs_err", "rel_err"):
        if k in metrics:
            ref = reference.get(k, float("nan"))
            ref = ref if math.isfinite(ref) and ref > 0 else 1.0
            depth.append(metrics[k] / ref)
    if depth:
        parts.append(-sum(depth) / len(depth))
    score = sum(parts)
    return score if math.isfinite(score) else float("-inf")


class XTasCRecipe(BaseRecipe):
    """XTasC-Net, Base MT-Net, Align-Net and Base ST-Net (see the module docstring)."""

    models = {"xtasc": "XTasC-Net", "mtnet": "Base MT-Net", "align": "Align-Net", "stnet": "Base ST-Net"}
    unsupported_weightings = dict.fromkeys(
        ("lps", "lps-log", "lps-prio"), "MT-CP's loss schemes (MT-CP Table 4) are not part of XTasC-Net's protocol")
    default_weighting = "uncertainty"
    delta_m_formula = "paper Eq. 17"
    delta_m_partial = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--task``, ``--encoder-depth``, ``--lam``, ``--seg-consistency``, ``--lp``."""
        g = parser.add_argument_group("XTasC-Net family (--model xtasc, mtnet, align, stnet)")
        g.add_argument("--task", choices=_TASKS, default=None, help="the task of --model stnet (required there)")
        g.add_argument("--encoder-depth", type=int, choices=(18, 34, 50, 101, 152), default=34,
                       help="ResNet depth of the encoder")
        g.add_argument("--lam", type=float, default=1e-4,
                       help="lambda of both tasks (paper: 1e-4 NYUv2, 0.01 Cityscapes); forced to 0 for mtnet and stnet")
        g.add_argument("--seg-consistency", choices=SEG_CONSISTENCY, default="soft",
                       help="XTasC-Net segmentation consistency target: 'soft' (paper Eq. 13) or 'hard' argmax labels "
                       "(authors' code)")
        g.add_argument("--lp", choices=DEPTH_LOSSES, default="l1",
                       help="direct depth loss (authors' --lp): l1 (paper Eq. 14), mse, logl1, smoothl1")

    @classmethod
    def required_tasks(cls, args: argparse.Namespace, spec: DatasetSpec) -> Tuple[str, ...]:
        return (_stnet_task(args),) if args.model == "stnet" and args.task else _TASKS

    @classmethod
    def finalize_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        """``--task`` only (and always) with stnet; lambda 0 for mtnet and stnet; the value checks."""
        if args.model == "stnet":
            if args.task is None:
                raise option_error("--model stnet needs --task semseg or --task depth")
        elif args.task is not None:
            raise option_error(f"--task applies to --model stnet only (got --model {args.model})")
        if args.model in ("mtnet", "stnet") and args.lam != 0:
            log.info("--model %s trains without transfer networks: lambda %g -> 0", args.model, args.lam)
            args.lam = 0.0
        super().finalize_args(args, spec)
        if not 0.0 <= args.lam <= 1.0:
            raise option_error(f"--lam must be in [0, 1], got {args.lam}")

    def __init__(self, args: argparse.Namespace, spec: DatasetSpec) -> None:
        super().__init__(args, spec)
        self.single_task = args.model == "stnet"
        self.tasks = self.required_tasks(args, spec)
        self.num_classes = int(args.classes)
        base = self.models[args.model] + (f" ({args.task})" if self.single_task else "")
        self.name = f"{base} ResNet-{args.encoder_depth}"
        self.criterion = None if self.single_task else XTasCLoss(
            args.lam, args.lam, ignore_index=self.ignore_index, impl=args.loss_impl,
            variant="align" if args.model == "align" else "xtasc", seg_consistency=args.seg_consistency,
            depth_loss=args.lp)

    def describe(self) -> str:
        a = self.args
        weighting = "n/a (single task)" if self.single_task else a.weighting
        return f"weighting {weighting} | lambda {a.lam:g} | loss impl {a.loss_impl}"

    def build_model(self) -> nn.Module:
        """XTasCNet (with the transfer networks for xtasc/align when lambda > 0) or BaseSTNet."""
        a = self.args
        if self.single_task:
            return BaseSTNet(a.task, self.num_classes if a.task == "semseg" else None,
                             encoder_depth=a.encoder_depth)
        with_transfer = a.model in ("xtasc", "align") and a.lam > 0
        return XTasCNet(self.num_classes, encoder_depth=a.encoder_depth, with_transfer=with_transfer)

    def weighting_name(self) -> str:
        """``equal`` (one task) for stnet, else ``--weighting`` over the two task groups."""
        return "equal" if self.single_task else self.args.weighting

    def _batch(self, batch: Mapping[str, Any], device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
        seg = batch["seg"].to(device, non_blocking=True)
        depth = batch["depth"].to(device, non_blocking=True)
        valid = batch.get("depth_valid")
        valid = (depth > 0) if valid is None else valid.to(device, non_blocking=True)
        return seg, depth, valid

    def training_step(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device,
                      generator: torch.Generator) -> StepOutput:
        """Forward and losses of one batch: the weighting gets the two task-group losses (Eq. 11, grouped as
        in the authors' code; stnet: its one task loss); ``generator``: the contrastive regularizer's draws."""
        image = batch["image"].to(device, non_blocking=True)
        seg, depth, valid = self._batch(batch, device)
        if self.criterion is None:
            task = self.tasks[0]
            task_loss = single_task_loss(task, model(image), seg, depth, valid, self.ignore_index,
                                         depth_loss=self.args.lp, impl=self.args.loss_impl)
            return StepOutput(losses={task: task_loss}, logged={f"{task}_loss": task_loss})
        output = model(image)
        terms = self.criterion(output, seg, depth, valid)
        seg_group, depth_group = terms.groups[0], terms.groups[1]
        logged = {"semseg_loss": terms.seg, "depth_loss": terms.depth, "semseg_consistency": terms.seg_consistency,
                  "depth_consistency": terms.depth_consistency, "semseg_group": seg_group, "depth_group": depth_group}
        step = StepOutput(losses={"semseg": seg_group, "depth": depth_group}, logged=logged)
        return self.regularized(output, step, batch, device, generator)

    def predict(self, model: nn.Module, image: Tensor) -> Dict[str, Tensor]:
        """The direct predictions (XTasCNet with ``direct_only=True``: the transfer networks are not run)."""
        if self.single_task:
            return {self.tasks[0]: model(image)}
        out = model(image, direct_only=True)
        return {"semseg": out.seg_logits, "depth": out.depth}

    def targets(self, batch: Mapping[str, Any], device: torch.device) -> Dict[str, Tensor]:
        seg, depth, valid = self._batch(batch, device)
        return {"semseg": seg, "depth": depth.float(), "depth_valid": valid}

    def _eval_loss(self, task: str, pred: Tensor, targets: Mapping[str, Tensor]) -> Tensor:
        if task == "semseg":
            return single_task_loss("semseg", pred, targets["semseg"], None, ignore_index=self.ignore_index,
                                    impl=self.args.loss_impl)
        return single_task_loss("depth", pred, None, targets["depth"], targets["depth_valid"],
                                depth_loss=self.args.lp, impl=self.args.loss_impl)

    def evaluator(self) -> MultiTaskEvaluator:
        channels = {t: (self.num_classes if t == "semseg" else 1) for t in self.tasks}
        return MultiTaskEvaluator(channels, self._eval_loss)

    def score_reference(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        return {k: metrics[k] for k in ("abs_err", "rel_err") if k in metrics}

    def score(self, metrics: Mapping[str, Any], reference: Mapping[str, float]) -> float:
        return validation_score(metrics, reference)

    def delta_metrics(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        return ("mIoU", "pixel_acc", "abs_err", "rel_err"), ("abs_err", "rel_err")


RECIPES.register(XTasCRecipe, *XTasCRecipe.models)
