"""Task weighting: how per-task losses ``L_t`` become the total training loss (XTasC-Net paper Eq. 16).

Every method is an ``nn.Module`` with one interface, so its state (learned parameters, buffers)
travels in checkpoints with the model:

    total = weighting(losses)    # losses: float tensor [T], one entry per task group
    weighting.weights()          # current effective weights, float tensor [T] (for logging)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Weighting(nn.Module):
    """Base class. ``forward(losses [T]) -> scalar total``; subclasses define the combination."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks

    def _check(self, losses: Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"{type(self).__name__}: losses must have shape [{self.num_tasks}], got {tuple(losses.shape)}")

    def weights(self) -> Tensor:
        """Effective per-task weights ``[T]`` (detached, float32)."""
        raise NotImplementedError


class EqualWeighting(Weighting):
    """``total = sum_t L_t`` (XTasC-Net paper Eq. 16 with omega_t = 1; Appendix C "equal weights")."""

    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        return losses.sum()

    def weights(self) -> Tensor:
        return torch.ones(self.num_tasks)


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall et al., CVPR 2018), in LibMTL's form.

    ``total = sum_t L_t / (2 exp(s_t)) + s_t / 2`` with learned log-variances ``s_t`` (parameter
    ``log_vars``, float32 ``[T]``, initialised to 0), optimised with the network. The effective
    weight of task t is ``1 / (2 exp(s_t))``. The XTasC-Net authors' code uses ``+ s_t`` instead of
    ``+ s_t / 2`` (reference-implementations.md §1.3); the design brief fixes Kendall's form.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        s = self.log_vars.to(losses.dtype)
        return (losses / (2 * torch.exp(s)) + s / 2).sum()

    def weights(self) -> Tensor:
        return (0.5 * torch.exp(-self.log_vars)).detach().float().cpu()


WEIGHTINGS = {"equal": EqualWeighting, "uncertainty": UncertaintyWeighting}


def build_weighting(name: str, num_tasks: int) -> Weighting:
    """Weighting by name: one of ``WEIGHTINGS`` ("equal", "uncertainty").

    Raises:
        ValueError: unknown name.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](num_tasks)
