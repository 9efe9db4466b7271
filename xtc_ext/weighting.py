"""Task weighting: how per-task losses ``L_t`` become the total training loss (XTasC-Net paper Eq. 16).

Every method is an ``nn.Module`` with one interface, so its state (learned parameters, buffers)
travels in checkpoints with the model (``state_dict()``; every buffer has a fixed shape, so
``load_state_dict`` works on a freshly built instance):

    total = weighting(losses)        # losses: float tensor [T], one entry per task group -> scalar
    weighting.weights()              # current effective weights, float32 [T] on the CPU (for logging)
    weighting.epoch_end(mean_losses) # once per epoch, the epoch means of the losses [T] (DWA uses them)

Methods (``WEIGHTINGS`` / :func:`build_weighting` names):

- ``"equal"``: :class:`EqualWeighting` (paper App. C "equal weights").
- ``"uncertainty"``: :class:`UncertaintyWeighting` (Kendall et al. 2018, LibMTL's form).
- ``"dwa"``: :class:`DWA`, Dynamic Weight Average (Liu et al., MTAN, CVPR 2019; paper Table IV).
- ``"gradnorm"``: :class:`GradNorm` (Chen et al., ICML 2018; paper App. C), as published, without
  the bugs of the XTasC-Net authors' implementation (reference-implementations.md §1.3, §3.1 item 7).

The training loop contract: call ``optimizer.zero_grad()`` *before* ``weighting(losses)`` (GradNorm
writes the task weights' gradient into ``.grad`` during the forward), then ``total.backward()``,
``optimizer.step()``; the optimizer must hold ``weighting.parameters()``. Call ``epoch_end`` once
after each training epoch with the epoch means of the same losses.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class Weighting(nn.Module):
    """Base class. ``forward(losses [T]) -> scalar total``; subclasses define the combination.

    Args:
        num_tasks: T >= 1, the length of the ``losses`` vector.

    Raises:
        ValueError: ``num_tasks < 1``; (forward) ``losses`` not of shape ``[T]``.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks

    def _check(self, losses: Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"{type(self).__name__}: losses must have shape [{self.num_tasks}], got {tuple(losses.shape)}")

    def weights(self) -> Tensor:
        """Effective per-task weights ``[T]`` (detached, float32, CPU)."""
        raise NotImplementedError

    def epoch_end(self, mean_losses: Tensor) -> None:
        """Per-epoch hook: ``mean_losses`` is float ``[T]``, the epoch means of the losses given to
        ``forward``. No-op by default; :class:`DWA` builds its weights from it."""
        return None


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


def _as_vector(values: Tensor | Sequence[float], n: int, who: str) -> Tensor:
    t = torch.as_tensor(values).detach()
    if t.shape != (n,):
        raise ValueError(f"{who}: mean_losses must have shape [{n}], got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    return t


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019, Eq. 7; LibMTL ``DWA``).

    For epoch t (counted from 0) the weights are ``w_k = T * exp(r_k / temp) / sum_j exp(r_j / temp)``
    with ``r_k = L_k(t-1) / L_k(t-2)``, where ``L_k(e)`` is the mean training loss of task k over
    epoch e, given to :meth:`epoch_end`. Epochs 0 and 1 use ``w_k = 1``. The weights are constants
    within an epoch: ``total = sum_k sg(w_k) L_k`` (no gradient to the weights; DWA has no parameters).

    Args:
        num_tasks: T.
        temperature: ``temp`` > 0 (default 2, the MTAN / LibMTL value); larger is closer to uniform.

    State (buffers, in ``state_dict``): ``loss_history`` float32 ``[2, T]`` (row 0 = ``L(t-2)``,
    row 1 = ``L(t-1)``; zeros until filled) and ``num_epochs`` int64 scalar (epochs recorded).

    Raises:
        ValueError: ``temperature <= 0``; ``epoch_end`` with a wrong shape or a non-finite or
            non-positive mean loss (the ratio would be undefined).
    """

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        if not temperature > 0:
            raise ValueError(f"DWA: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("loss_history", torch.zeros(2, num_tasks))
        self.register_buffer("num_epochs", torch.zeros((), dtype=torch.int64))

    def _weights(self) -> Tensor:
        # No host synchronisation: the "fewer than two epochs" branch is a torch.where.
        ready = self.num_epochs >= 2
        prev2 = torch.where(ready, self.loss_history[0], torch.ones_like(self.loss_history[0]))
        ratio = self.loss_history[1] / prev2
        w = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(ready, w, torch.ones_like(w))

    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        return (self._weights().to(losses.dtype) * losses).sum()

    def weights(self) -> Tensor:
        return self._weights().detach().float().cpu()

    @torch.no_grad()
    def epoch_end(self, mean_losses: Tensor | Sequence[float]) -> None:
        """Record the epoch means ``[T]`` (float, any device); they set the next epoch's weights."""
        m = _as_vector(mean_losses, self.num_tasks, "DWA.epoch_end")
        if not bool(torch.isfinite(m).all()) or not bool((m > 0).all()):
            raise ValueError(f"DWA.epoch_end: mean losses must be finite and > 0, got {m.tolist()}")
        self.loss_history[0].copy_(self.loss_history[1])
        self.loss_history[1].copy_(m.to(self.loss_history))
        self.num_epochs += 1


class GradNorm(Weighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018), as published.

    Learnable task weights ``w`` (parameter ``task_weights``, float32 ``[T]``, initialised to 1),
    stepped by the shared optimizer (put ``weighting.parameters()`` in it). Each training
    ``forward(losses)``:

    1. renormalises ``w`` in place (no grad) to ``sum_k w_k = T`` (the previous step's update is
       normalised before use, as in the paper's Algorithm 1);
    2. on the first call records ``L(0) = sg(losses)`` (unweighted), kept fixed afterwards;
    3. ``G_k = || d(w_k L_k) / dW ||_2`` for the shared parameter ``W`` (``torch.autograd.grad``
       with ``create_graph=True``), ``G_bar = mean_k G_k``;
    4. ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))``, ``target_k = sg(G_bar * r_k^alpha)``;
    5. ``L_grad = sum_k |G_k - target_k|``; ``dL_grad/dw`` (only w.r.t. ``w``) is **accumulated
       into** ``task_weights.grad``. The network parameters receive no GradNorm (second-order) term;
    6. returns ``total = sum_k sg(w_k) L_k``: the network gradient uses the current weights as
       constants.

    Call ``optimizer.zero_grad()`` before ``forward`` (not between ``forward`` and
    ``total.backward()``), or the GradNorm gradient of ``w`` is discarded. Gradient scaling
    (``torch.amp.GradScaler``) is not applied to that gradient.

    Differences from the XTasC-Net authors' code (reference-implementations.md §1.3 / §3.1 item 7),
    all deliberate: ``alpha`` is a parameter (their 0.16 is hard-coded), no ½ factors, ``L(0)`` is
    the unweighted loss of the first step (theirs: the weighted loss of the last epoch-1 batch),
    ``L_grad`` does not reach the network parameters (theirs adds second-order terms), and ``w``
    itself is renormalised (theirs reparametrises and never renormalises the leaves).

    Requirements: every op between the losses and ``W`` must be twice differentiable, in particular
    its backward must be differentiable with respect to the upstream gradient (the double-backward
    path ``w_k -> grad of L_k -> grad of W``). The fused ``xtc_ext.ops`` losses are (see
    :mod:`xtc_ext.ops`), as are standard PyTorch layers. Each forward costs T extra partial backward
    passes from the losses to ``W`` with graph creation, plus one through that graph to ``w``; no
    host synchronisation. Losses must be positive (``L(0) = 0`` makes ``r`` undefined) and
    ``sum_k w_k`` must stay positive (not checked: that would need a host sync).

    Outside training (``module.eval()``) or with gradients disabled, ``forward`` returns
    ``sum_k sg(T w_k / sum_j w_j) L_k`` and changes no state (``w`` is not renormalised in place,
    ``L(0)`` and the step count are untouched, no gradient is written).

    Args:
        num_tasks: T.
        shared_parameter: ``W``, a tensor requiring grad that every loss depends on (paper: the last
            shared layer; the XTasC-Net authors used ``encoder.layer4[-1].conv2.weight``). It is held
            by reference, not registered (it is not in ``parameters()`` or ``state_dict()``; move the
            model to its device before building the weighting).
        alpha: asymmetry ``alpha >= 0`` (default 1.5, Chen et al.'s NYUv2 value; LibMTL's default).

    State: ``task_weights`` (parameter ``[T]``), buffers ``initial_losses`` float32 ``[T]`` (``L(0)``)
    and ``num_steps`` int64 scalar (training forwards so far).

    Raises:
        TypeError: ``shared_parameter`` not a tensor.
        ValueError: ``shared_parameter`` does not require grad; ``alpha < 0``; (forward) wrong shape of
            ``losses``, or ``losses`` not connected to ``shared_parameter`` at all. (A single task
            loss that does not depend on ``W`` inside a stacked ``losses`` is not detectable without a
            host sync: it gets ``G_k = 0`` and its weight no GradNorm gradient.)
    """

    def __init__(self, num_tasks: int, shared_parameter: Tensor, alpha: float = 1.5) -> None:
        super().__init__(num_tasks)
        if not isinstance(shared_parameter, Tensor):
            raise TypeError(f"GradNorm: shared_parameter must be a tensor, got {type(shared_parameter).__name__}")
        if not shared_parameter.requires_grad:
            raise ValueError("GradNorm: shared_parameter must require grad")
        if not alpha >= 0:
            raise ValueError(f"GradNorm: alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self._shared = (shared_parameter,)  # a tuple: not registered as this module's parameter
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))

    @property
    def shared_parameter(self) -> Tensor:
        """The shared parameter ``W`` whose gradient norms are balanced."""
        return self._shared[0]

    def _normalized(self) -> Tensor:
        w = self.task_weights
        return w * (self.num_tasks / w.sum())

    def weights(self) -> Tensor:
        """The weights the next ``forward`` uses: ``T * w / sum(w)`` (float32, CPU)."""
        return self._normalized().detach().float().cpu()

    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        if not (self.training and torch.is_grad_enabled()):
            return (self._normalized().detach().to(losses.dtype) * losses).sum()
        w = self.task_weights
        with torch.no_grad():
            w.copy_(self._normalized())
            first = self.num_steps == 0
            self.initial_losses.copy_(torch.where(first, losses.detach().to(self.initial_losses), self.initial_losses))
            self.num_steps += 1

        W = self.shared_parameter
        norms = []
        for k in range(self.num_tasks):
            (g,) = torch.autograd.grad(
                w[k] * losses[k], W, retain_graph=True, create_graph=True, allow_unused=True
            )
            if g is None:
                raise ValueError(f"GradNorm: the losses do not depend on shared_parameter (task {k})")
            norms.append(torch.linalg.vector_norm(g.float() if g.dtype != torch.float64 else g))
        G = torch.stack(norms)
        with torch.no_grad():
            ratio = losses.detach().to(G.dtype) / self.initial_losses.to(G.dtype)
            r = ratio / ratio.mean()
            target = G.mean() * r.pow(self.alpha)
        grad_loss = (G - target).abs().sum()
        (gw,) = torch.autograd.grad(grad_loss, w, retain_graph=True)
        if w.grad is None:
            w.grad = gw.detach().to(w.dtype).clone()
        else:
            w.grad.add_(gw.to(w.grad.dtype))
        # A copy, so the next step's in-place renormalisation cannot invalidate this graph.
        return (w.detach().clone().to(losses.dtype) * losses).sum()


WEIGHTINGS = {"equal": EqualWeighting, "uncertainty": UncertaintyWeighting, "dwa": DWA, "gradnorm": GradNorm}
"""Weighting classes by ``--weighting`` name."""


def build_weighting(name: str, num_tasks: int, shared_parameter: Tensor | None = None, **kwargs) -> Weighting:
    """Weighting by name: one of ``WEIGHTINGS`` ("equal", "uncertainty", "dwa", "gradnorm").

    Args:
        name: method name.
        num_tasks: T.
        shared_parameter: ``W`` for GradNorm (required there); ignored by the other methods, so a
            caller may always pass it.
        **kwargs: constructor options of the method (``temperature`` for DWA, ``alpha`` for GradNorm).

    Raises:
        ValueError: unknown name; ``"gradnorm"`` without ``shared_parameter``; invalid option values.
        TypeError: an option the method does not take.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of {sorted(WEIGHTINGS)}")
    if name == "gradnorm":
        if shared_parameter is None:
            raise ValueError("weighting 'gradnorm' requires shared_parameter (the last shared layer's weight)")
        return GradNorm(num_tasks, shared_parameter, **kwargs)
    return WEIGHTINGS[name](num_tasks, **kwargs)
