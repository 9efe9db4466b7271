"""The engine's typed configuration: what :func:`xtc_ext.engine.fit` needs besides the method and the data.

Four groups, each a dataclass with the defaults of ``python -m xtc_ext.train`` (the field names are the
command-line options without the dashes: ``lr`` is ``--lr``, ``output_dir`` is ``--output-dir``):

* :class:`DataConfig`: the loaders (global batch size, worker processes);
* :class:`OptimConfig`: optimizer, learning-rate schedule, epochs, step limit;
* :class:`RuntimeConfig`: device, autocast, memory format, ``torch.compile``, SyncBatchNorm, seed, what a
  non-finite loss does (the processes of a torchrun run come from its environment, not from here);
* :class:`OutputConfig`: output folder, resume, validation and checkpoint cadence, selection, figures, logs.

:class:`TrainConfig` holds the four, plus ``arguments``: the run's arguments as the records keep them
(``args.json``, the checkpoints' ``args``, ``metrics.json``), which ``--resume``, ``python -m xtc_ext.evaluate``
and ``python -m xtc_ext.predict`` read back. The command line builds it with :func:`xtc_ext.cli.engine_config`;
from Python, build the dataclasses directly (README.md, "From Python") or with :func:`xtc_ext.train.prepare`.

Every value is checked when its dataclass is built: a bad one raises :class:`~xtc_ext.engine.errors.UsageError`
naming the option (``--epochs must be >= 1, got 0``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Optional, Tuple

from xtc_ext.engine.errors import UsageError
from xtc_ext.engine.optim import LR_SCHEDULES, OPTIMIZERS
from xtc_ext.engine.runtime import AMP_CHOICES, SWITCH_CHOICES

__all__ = ["NONFINITE_POLICIES", "SELECTION_CRITERIA", "DataConfig", "OptimConfig", "RuntimeConfig", "OutputConfig",
           "TrainConfig"]

NONFINITE_POLICIES = ("stop", "skip")
"""``--nonfinite`` choices: stop the run at a non-finite loss, or skip that step's update."""

SELECTION_CRITERIA = ("score", "loss")
"""``--select-by`` choices: the method's validation score (higher is better) or the validation loss."""


def _check(checks: Iterable[Tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _choice(option: str, value: Any, choices: Iterable[Any]) -> Tuple[bool, str]:
    choices = tuple(choices)
    return value in choices, f"{option} must be one of {', '.join(map(str, choices))}, got {value!r}"


@dataclasses.dataclass
class DataConfig:
    """The loaders.

    Attributes:
        batch_size: training batch size, global under torchrun (each of N processes loads ``batch_size / N``);
            the validation and test loaders use the per-process size too.
        workers: DataLoader worker processes (0: load in the training process).

    Raises:
        UsageError: ``batch_size < 1`` or ``workers < 0``.
    """

    batch_size: int = 6
    workers: int = 0

    def __post_init__(self) -> None:
        _check([(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
                (self.workers >= 0, f"--workers must be >= 0, got {self.workers}")])


@dataclasses.dataclass
class OptimConfig:
    """Optimizer and schedule (defaults: the XTasC-Net paper's NYUv2 setting, §V-C).

    Attributes:
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (:data:`xtc_ext.engine.OPTIMIZERS`).
        lr: learning rate (> 0).
        betas: Adam betas, each in [0, 1).
        weight_decay: weight decay (>= 0).
        lr_schedule: ``"step"`` (``lr * lr_gamma`` every ``lr_step`` epochs) or ``"poly"``
            (``lr * (1 - epoch / epochs) ** 0.9``).
        lr_step: epochs between two steps of the step schedule (>= 1).
        lr_gamma: factor of the step schedule, in (0, 1].
        epochs: training epochs (>= 1).
        max_steps: stop after this many optimizer steps in all (0: no limit).

    Raises:
        UsageError: a value outside the ranges above (the message names the option).
    """

    optimizer: str = "adam"
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    lr_schedule: str = "step"
    lr_step: int = 60
    lr_gamma: float = 0.5
    epochs: int = 100
    max_steps: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        _check([
            _choice("--optimizer", self.optimizer, OPTIMIZERS),
            _choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.lr_step >= 1, f"--lr-step must be >= 1, got {self.lr_step}"),
            (0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {self.lr_gamma}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"--betas must be two values in [0, 1), got {list(self.betas)}"),
            (self.max_steps >= 0, f"--max-steps must be >= 0, got {self.max_steps}"),
        ])


@dataclasses.dataclass
class RuntimeConfig:
    """Where and how the steps run.

    Attributes:
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        amp: autocast of the forward passes: ``"auto"``, ``"bf16"``, ``"fp16"`` (CUDA, with a gradient scaler)
            or ``"none"`` (:func:`xtc_ext.engine.runtime.resolve_amp`).
        channels_last: ``"auto"``, ``"on"`` or ``"off"`` (:func:`xtc_ext.engine.runtime.resolve_channels_last`).
        compile: ``torch.compile`` the training model.
        sync_bn: SyncBatchNorm under torchrun (CUDA only; the command line refuses it elsewhere).
        seed: seed of Python, NumPy, torch, the model initialisation, the data order and the augmentation.
        nonfinite: a non-finite training loss ``"stop"``\\ s the run or its update is ``"skip"``\\ ped.

    Raises:
        UsageError: ``amp``, ``channels_last`` or ``nonfinite`` outside their choices.
    """

    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    nonfinite: str = "stop"

    def __post_init__(self) -> None:
        _check([_choice("--amp", self.amp, AMP_CHOICES), _choice("--channels-last", self.channels_last, SWITCH_CHOICES),
                _choice("--nonfinite", self.nonfinite, NONFINITE_POLICIES)])


@dataclasses.dataclass
class OutputConfig:
    """What the run writes and when (docs/training.md, "Outputs").

    Attributes:
        output_dir: folder of the checkpoints, logs, metrics and figures.
        resume: checkpoint to continue from (``last.pt`` / ``best.pt`` of a run), or None.
        eval_every: validate every this many epochs and after the last (>= 1).
        select_by: ``best.pt`` criterion, ``"score"`` or ``"loss"`` (:data:`SELECTION_CRITERIA`).
        checkpoint_every: write ``last.pt`` every this many epochs and after the last (>= 1).
        num_figures: PNG figures of this many test samples (>= 0).
        tensorboard: write TensorBoard scalars to ``output_dir/tb``.
        progress: tqdm progress bars (when stderr is a terminal).
        baseline: ``metrics.json`` files of baseline runs: the test metrics then include Δm against them.

    Raises:
        UsageError: a value outside the ranges above.
    """

    output_dir: str = "runs/run"
    resume: Optional[str] = None
    eval_every: int = 1
    select_by: str = "score"
    checkpoint_every: int = 1
    num_figures: int = 3
    tensorboard: bool = True
    progress: bool = True
    baseline: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        self.output_dir = str(self.output_dir)
        self.baseline = None if not self.baseline else tuple(str(b) for b in self.baseline)
        _check([
            _choice("--select-by", self.select_by, SELECTION_CRITERIA),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}"),
            (self.num_figures >= 0, f"--num-figures must be >= 0, got {self.num_figures}"),
        ])


_GROUPS = {"data": DataConfig, "optim": OptimConfig, "runtime": RuntimeConfig, "output": OutputConfig}


@dataclasses.dataclass
class TrainConfig:
    """The engine's whole configuration (see the module docstring).

    Attributes:
        data, optim, runtime, output: the four groups.
        arguments: the run's other arguments (e.g. the command line's model, dataset and method options) as
            ``args.json``, the checkpoints (``args``) and ``metrics.json`` (``args``) record them, together with
            the four groups' fields (:meth:`recorded_arguments`); may be empty.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    arguments: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def flat(self) -> Dict[str, Any]:
        """Every field of the four groups by its name (``{"batch_size": 6, "lr": 1e-4, ...}``), JSON-ready."""
        out: Dict[str, Any] = {}
        for name in _GROUPS:
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def recorded_arguments(self) -> Dict[str, Any]:
        """What the records store as the run's arguments: :attr:`arguments` updated with :meth:`flat` (a field
        changed after the config was built is recorded with its new value, and ``--resume`` reads it back)."""
        return {**self.arguments, **self.flat()}

    @classmethod
    def from_options(cls, options: Dict[str, Any], arguments: Optional[Dict[str, Any]] = None) -> "TrainConfig":
        """The config whose fields take their values from ``options`` (field name -> value; names that are no
        field of any group, e.g. a recipe's options, are ignored; missing ones keep their defaults).

        Raises:
            UsageError: a value outside its range or choices (named).
        """
        groups = {}
        for name, group in _GROUPS.items():
            fields = {f.name for f in dataclasses.fields(group)}
            groups[name] = group(**{k: v for k, v in options.items() if k in fields})
        return cls(**groups, arguments=dict(arguments or {}))
