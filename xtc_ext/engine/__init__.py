"""The training engine: the loop, evaluation, checkpoints and RNG state, logs, reports, optimizers.

It knows no model, dataset or task by name: a method plugs in through the :class:`Recipe` protocol
(:mod:`xtc_ext.engine.protocol`), implemented by the modules of :mod:`xtc_ext.recipes`; the run is configured
by a :class:`TrainConfig` (:mod:`xtc_ext.engine.config`: data, optimisation, runtime, output), never by the
command line's namespace, so ``fit(TrainConfig(...), recipe, splits)`` trains from Python.

- :mod:`~xtc_ext.engine.loop`: :func:`fit` and :class:`Trainer` (epochs, validation and selection, the test).
- :mod:`~xtc_ext.engine.evaluation`: :func:`evaluate` (metrics and inference time over a loader).
- :mod:`~xtc_ext.engine.checkpoint`: atomic writes, checkpoint loading (:class:`CheckpointError`), RNG state.
- :mod:`~xtc_ext.engine.logs`: ``log.jsonl``, ``log.csv``, TensorBoard; :mod:`~xtc_ext.engine.report`:
  ``metrics.json`` and ``metrics.md``.
- :mod:`~xtc_ext.engine.errors`: :class:`UsageError`, a bad option (exit code 2).
- :mod:`~xtc_ext.engine.optim`: ``--optimizer`` and ``--lr-schedule``; :mod:`~xtc_ext.engine.runtime`: devices,
  seeds, loaders.
"""

from xtc_ext.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xtc_ext.engine.config import (
    NONFINITE_POLICIES,
    SELECTION_CRITERIA,
    DataConfig,
    OptimConfig,
    OutputConfig,
    RuntimeConfig,
    TrainConfig,
)
from xtc_ext.engine.errors import UsageError, exit_with_error
from xtc_ext.engine.evaluation import evaluate
from xtc_ext.engine.loop import RUN_ARGS_FILE, NonFiniteLoss, Trainer, fit
from xtc_ext.engine.optim import LR_SCHEDULES, OPTIMIZERS
from xtc_ext.engine.protocol import Recipe, StepOutput
from xtc_ext.engine.runtime import resolve_device

__all__ = [
    "CheckpointError",
    "DataConfig",
    "OptimConfig",
    "OutputConfig",
    "RuntimeConfig",
    "TrainConfig",
    "SELECTION_CRITERIA",
    "load_checkpoint",
    "save_checkpoint",
    "evaluate",
    "UsageError",
    "exit_with_error",
    "NONFINITE_POLICIES",
    "RUN_ARGS_FILE",
    "NonFiniteLoss",
    "Trainer",
    "fit",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "Recipe",
    "StepOutput",
    "resolve_device",
]
