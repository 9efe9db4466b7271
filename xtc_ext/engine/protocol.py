"""What the engine needs from a method: the :class:`Recipe` protocol.

The engine (training loop, evaluation loop, checkpoints, logs) knows no model, dataset or task by name: it
calls only the members below. Each method family implements them in one module of :mod:`xtc_ext.recipes`
(which depends on the engine, never the other way round).
"""

from __future__ import annotations

from pathlib import Path
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from xtc_ext.metrics import MultiTaskEvaluator
from xtc_ext.weighting import Weighting

__all__ = ["StepOutput", "Recipe"]


@dataclasses.dataclass
class StepOutput:
    """One training step's losses by role (what :meth:`Recipe.training_step` returns).

    The engine combines them: ``total = weighting(stack(losses.values()))``, then each ``extra`` term is added
    in order; the weighting writes the gradients (:meth:`xtc_ext.weighting.Weighting.backward`), gets the
    epoch means of ``losses`` (``epoch_end``), and the log holds ``loss`` (that total) and ``logged``.

    Attributes:
        losses: task name -> scalar loss with autograd history, the task losses handed to the weighting, in
            the order of the weighting's tasks.
        extra: name -> scalar term added to the weighted total, unweighted (auxiliary losses, regularizers);
            may be empty.
        logged: name -> scalar, the per-step values logged (epoch means in ``log.jsonl``; the engine
            detaches them), after the engine's ``loss``.
    """

    losses: Dict[str, Tensor]
    logged: Dict[str, Tensor]
    extra: Dict[str, Tensor] = dataclasses.field(default_factory=dict)

    def weighted(self, weighting: Weighting) -> Tuple[Tensor, Tensor]:
        """``(total, losses)``: ``losses`` float ``[T]``, the task losses stacked in order, and the scalar
        ``total = weighting(losses)`` plus each ``extra`` term in order (call it under the step's autocast)."""
        losses = torch.stack(list(self.losses.values()))
        total = weighting(losses)
        for term in self.extra.values():
            total = total + term
        return total, losses

    def names(self) -> Tuple[str, ...]:
        """The logged names: ``loss`` (the engine's name of the weighted total), then :attr:`logged`'s.

        Raises:
            ValueError: :attr:`logged` has a value named ``loss`` (that name is the total's).
        """
        if "loss" in self.logged:
            raise ValueError("StepOutput.logged: the name 'loss' is the engine's weighted total; name the value "
                             "otherwise (e.g. 'semseg_loss')")
        return ("loss",) + tuple(self.logged)

    def values(self, total: Tensor) -> Tensor:
        """Detached float32 ``[len(names()) + T]``: ``total``, the :attr:`logged` values, then the task losses."""
        parts = [total, *self.logged.values(), *self.losses.values()]
        return torch.stack([v.detach().float().reshape(()) for v in parts])


@runtime_checkable
class Recipe(Protocol):
    """A method family: builds the model and the task weighting, runs a training step, evaluates, scores.

    Attributes:
        name: human-readable model name for logs and reports (e.g. ``"XTasC-Net ResNet-34"``).
        tasks: canonical task names the model predicts (``semseg``, ``depth``, ``normals``, ...).

    The engine knows no task, class count or unit itself: what the records say about the method and the data
    comes from :meth:`run_info` and :meth:`describe_data`, the test table from :meth:`metrics_table`.
    """

    name: str
    tasks: Tuple[str, ...]

    def run_info(self) -> Dict[str, Any]:
        """Facts about the run's method and data for ``metrics.json`` and the checkpoints (JSON-ready values,
        e.g. ``variant``, ``dataset``, ``data_root``, ``num_classes``, ``depth_unit``); may be empty."""

    def describe_data(self) -> str:
        """The run's data for the header log line (e.g. ``"dataset frames at DIR, 13 classes"``)."""

    def metrics_table(self, metrics: Mapping[str, Any], before: Optional[Mapping[str, Any]]) -> str:
        """The markdown table of test ``metrics`` (each in its task's unit), with a column of the untrained
        model's ``before`` metrics when given."""

    def build_model(self) -> nn.Module:
        """The network (on the CPU; the engine moves it)."""

    def build_weighting(self, model: nn.Module) -> Weighting:
        """The task weighting over the keys of :attr:`StepOutput.losses` (it may use the model's
        ``shared_parameters()``)."""

    def build_auxiliary(self, model: nn.Module) -> nn.Module:
        """Training-only modules (e.g. a regularizer's projectors): trained and checkpointed with the run, never
        part of the evaluated or exported model. An empty module when the method has none."""

    def epoch_log(self) -> Dict[str, Any]:
        """Extra per-epoch entries for the log (e.g. counts of the regularizer's source-task draws); may be
        empty. Called once at the end of every training epoch."""

    def describe(self) -> str:
        """The run's method settings for the header log line (weighting, lambda, loss implementation ...)."""

    def training_step(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device,
                      generator: torch.Generator) -> StepOutput:
        """Forward and losses of one training batch, by role (:class:`StepOutput`; the engine applies the
        weighting); ``generator`` (CPU) is the loop's checkpointed generator for any randomness of the loss
        (e.g. the contrastive regularizer's draws)."""

    def predict(self, model: nn.Module, image: Tensor) -> Dict[str, Tensor]:
        """Inference predictions ``task -> [N, C_t, H, W]`` (only what deployment runs)."""

    def targets(self, batch: Mapping[str, Any], device: torch.device) -> Dict[str, Tensor]:
        """The evaluation targets of a batch, on ``device``, as :meth:`evaluator` expects them."""

    def evaluator(self) -> MultiTaskEvaluator:
        """A fresh evaluator (meters and mean losses of the tasks)."""

    def score_reference(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        """What :meth:`score` compares with, taken from the run's first validation."""

    def score(self, metrics: Mapping[str, Any], reference: Mapping[str, float]) -> float:
        """Checkpoint-selection score of validation ``metrics`` (higher is better)."""

    def delta_m(self, metrics: Mapping[str, Any], baseline_files: Sequence[str]) -> Dict[str, Any]:
        """Δm of test ``metrics`` against baseline metrics files: ``{"delta_m", "delta_m_keys", "baseline",
        "baseline_files", "delta_m_formula"}``."""

    def figures(self, model: nn.Module, data: Dataset, indices: Sequence[int], out_dir: Path, title: str,
                device: torch.device) -> List[Path]:
        """PNG figures of the model's predictions on ``data[i]``; returns their paths."""

    def training_figures(self, model: nn.Module, data: Dataset, out_dir: Path, device: torch.device,
                         stage: str) -> List[Path]:
        """PNG figures of the training-only parts (e.g. the regularizer's embedding distances) at ``stage``
        ``"before"`` (the first epoch of a run) or ``"after"`` (the end); returns their paths."""
