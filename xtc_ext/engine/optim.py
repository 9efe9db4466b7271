"""Optimizer and learning-rate schedule of a run (``--optimizer``, ``--lr-schedule``)."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from xtc_ext.registry import Registry

__all__ = ["OPTIMIZERS", "LR_SCHEDULES", "build_optimizer", "build_schedule"]

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
"""``--optimizer`` choices: name -> optimizer class, called as ``cls(params, lr=, betas=, weight_decay=)``."""
OPTIMIZERS.register(torch.optim.Adam, "adam")
OPTIMIZERS.register(torch.optim.AdamW, "adamw")

LR_SCHEDULES = ("step", "poly")
"""``--lr-schedule`` choices: ``step`` (StepLR, the XTasC-Net paper) or ``poly``
(``lr * (1 - epoch / epochs) ** 0.9`` at the start of each epoch, the MT-CP authors' schedule)."""

POLY_POWER = 0.9


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float, betas: Sequence[float],
                    weight_decay: float) -> torch.optim.Optimizer:
    """Adam or AdamW (``name``) over ``params`` with ``lr``, ``betas`` and ``weight_decay``.

    Raises:
        ValueError: unknown ``name`` (the choices listed).
    """
    return OPTIMIZERS.lookup(name)(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def build_schedule(name: str, optimizer: torch.optim.Optimizer, *, step_size: int, gamma: float,
                   epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``--lr-schedule`` of a run, stepped once after each epoch.

    Args:
        name: ``"step"``: multiply the learning rate by ``gamma`` every ``step_size`` epochs (XTasC-Net
            paper §V-C: halved every 60 epochs on NYUv2, 80 on Cityscapes); ``"poly"``: epoch ``e`` (from 0)
            uses ``lr_0 * (1 - e / epochs) ** 0.9``, the MT-CP authors' ``adjust_learning_rate`` (applied
            per epoch there, as here; docs/fidelity.md, "Protocol and model selection").
        optimizer: the run's optimizer.
        step_size, gamma: StepLR period (epochs) and factor.
        epochs: the run's number of epochs (``poly``).

    Raises:
        ValueError: unknown ``name``; ``epochs < 1``.
    """
    if epochs < 1:
        raise ValueError(f"the lr schedule needs epochs >= 1, got {epochs}")
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=POLY_POWER)
    raise ValueError(f"unknown lr schedule {name!r}; choose one of {list(LR_SCHEDULES)}")
