"""What the engine needs from a method: the :class:`Recipe` protocol.

The engine (training loop, evaluation loop, checkpoints, logs) knows no model, dataset or task by name: it
calls only the members below. Each method family implements them in one module of :mod:`xtc_ext.recipes`
(which depends on the engine, never the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from xtc_ext.metrics import MultiTaskEvaluator
from xtc_ext.weighting import Weighting

__all__ = ["StepOutput", "Recipe"]


class StepOutput(NamedTuple):
    """One training step's result: ``total`` (scalar to backpropagate) and ``values`` (detached float
    ``[len(Recipe.loss_names)]``: the logged per-step values, ``values[0]`` = ``total``)."""

    total: Tensor
    values: Tensor


@runtime_checkable
class Recipe(Protocol):
    """A method family: builds the model and the task weighting, runs a training step, evaluates, scores.

    Attributes:
        name: human-readable model name for logs and reports (e.g. ``"XTasC-Net ResNet-34"``).
        tasks: canonical task names the model predicts (``semseg``, ``depth``, ``normals``, ...).
        loss_names: names of the per-step logged values (first: the weighted total).
        weighting_slice: the slice of ``loss_names`` whose epoch means feed ``Weighting.epoch_end``.
        depth_unit: unit of the depth targets and errors (``"m"``, ``"disparity/256"``) or ``None``.
    """

    name: str
    tasks: Tuple[str, ...]
    loss_names: Tuple[str, ...]
    weighting_slice: slice
    depth_unit: Optional[str]

    def build_model(self) -> nn.Module:
        """The network (on the CPU; the engine moves it)."""

    def build_weighting(self, model: nn.Module) -> Weighting:
        """The task weighting of ``model`` (GradNorm needs the model's shared layer)."""

    def build_auxiliary(self, model: nn.Module) -> nn.Module:
        """Training-only modules (e.g. a regularizer's projectors): trained and checkpointed with the run, never
        part of the evaluated or exported model. An empty module when the method has none."""

    def epoch_log(self) -> Dict[str, Any]:
        """Extra per-epoch entries for the log (e.g. counts of the regularizer's source-task draws); may be
        empty. Called once at the end of every training epoch."""

    def describe(self) -> str:
        """The run's method settings for the header log line (weighting, lambda, loss implementation ...)."""

    def training_step(self, model: nn.Module, weighting: Weighting, batch: Mapping[str, Any],
                      device: torch.device, generator: torch.Generator) -> StepOutput:
        """Forward and loss of one training batch; ``generator`` (CPU) is the loop's checkpointed
        generator for any randomness of the loss (e.g. the contrastive regularizer's draws)."""

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
