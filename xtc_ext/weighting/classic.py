"""Loss weightings: how per-task losses ``L_t`` become the total training loss (XTasC-Net paper Eq. 16), the
:class:`Weighting` base class of every weighting and the ``WEIGHTINGS`` registry (the TorchJD aggregators are in
:mod:`xtc_ext.weighting.jacobian`).

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
  the bugs of the XTasC-Net authors' implementation (docs/fidelity.md, "Task weighting").
- ``"lps"``, ``"lps-log"``, ``"lps-prio"``: :class:`LPS`, the Loss Prioritization Scheme of MT-CP
  (paper §3.5, Eqs. 3-6, reconstructed: docs/fidelity.md, "MT-CP losses and LPS"), in full, log projection
  only, and prioritization only (the ablations of MT-CP Table 4; see ``LPS_ABLATIONS``).

The contract with the training loop (:mod:`xtc_ext.engine.loop` keeps it), per step: ``optimizer.zero_grad()``;
the task losses; ``total = weighting(losses)`` (plus the method's unweighted terms); then
``weighting.scaled_backward(total, losses, shared_parameters, scaler)`` instead of ``total.backward()`` (by
default the :meth:`Weighting.backward` of the scaled total); ``optimizer.step()``
over :meth:`Weighting.optimizer_parameters` with the model's. A training ``forward`` may write gradients of the
weighting's own parameters (:class:`GradNorm` does: its gradient-norm loss), which is why the gradients are
zeroed before it; :meth:`Weighting.backward` is where a gradient-manipulation method (PCGrad, CAGrad, MGDA, a
TorchJD aggregator) writes the network's gradients from the task losses and the model's
``shared_parameters()``. ``epoch_end`` is called once after each training epoch with the epoch means of the
same losses.

Options: each weighting class declares its own command-line options (:meth:`Weighting.add_arguments`, one
argument group), checks them (:meth:`Weighting.check_args`) and builds itself from the run's configuration
(:meth:`Weighting.from_args`), so adding a weighting is one class plus one ``WEIGHTINGS`` entry.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Iterator, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import Tensor, nn

from xtc_ext.registry import Registry


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

    def optimizer_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the run's shared optimizer must step (default: all of them; a method that steps
        its own, such as ``GradNorm(optimizer="separate")``, returns none)."""
        return self.parameters()

    def backward(self, total: Tensor, losses: Tensor, shared_parameters: Sequence[Tensor]) -> None:
        """Write this step's gradients (the training loop calls it instead of ``total.backward()``).

        Args:
            total: the scalar ``forward(losses)`` plus the method's unweighted terms, already multiplied by the
                gradient scaler's scale under fp16 autocast.
            losses: float ``[T]``, the task losses given to ``forward`` (with their autograd graph).
            shared_parameters: the model's ``shared_parameters()`` (empty when the model has no such hook).

        Default: ``total.backward()``. A gradient-manipulation method overrides it to combine the per-task
        gradients of ``shared_parameters`` itself.
        """
        total.backward()

    def scaled_backward(self, total: Tensor, losses: Tensor, shared_parameters: Sequence[Tensor],
                        scaler: torch.amp.GradScaler) -> None:
        """The training loop's entry point: :meth:`backward` of ``scaler.scale(total)``.

        Args:
            total: the scalar ``forward(losses)`` plus the method's unweighted terms, not yet scaled.
            losses, shared_parameters: as :meth:`backward`.
            scaler: the run's gradient scaler (disabled, i.e. scale 1, outside fp16 autocast).

        A method that needs the scale itself (a Jacobian aggregator unscales the per-task gradients before
        aggregating them: :mod:`xtc_ext.weighting.jacobian`) overrides this instead of :meth:`backward`.
        """
        self.backward(scaler.scale(total), losses, shared_parameters)

    def attach(self, model: nn.Module) -> None:
        """Called once by the recipe with the freshly built model (before it is moved or wrapped), for a method
        that hooks the model's forward (the Jacobian aggregators capture the shared representation,
        :mod:`xtc_ext.weighting.jacobian`). Default: nothing."""

    # ------------------------------------------------------------------ options and construction
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this weighting's command-line options (one argument group of its own). Default: none."""

    @classmethod
    def check_args(cls, args: Any) -> None:
        """Check this weighting's options in the run's configuration ``args`` (attributes named as the
        options' dests). Default: nothing to check.

        Raises:
            ValueError: a bad value (the message names the option).
        """

    @classmethod
    def from_args(cls, name: str, args: Any, num_tasks: int, shared_parameters: Sequence[Tensor] = ()) -> "Weighting":
        """The weighting ``name`` (a ``WEIGHTINGS`` name of this class) over ``num_tasks`` task losses, with the
        options in ``args`` and the model's ``shared_parameters()``. Default: ``cls(num_tasks)``."""
        return cls(num_tasks)


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
    ``+ s_t / 2``; Kendall's form is kept here (docs/fidelity.md, "Task weighting").
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

    The XTasC-Net authors' copy of MTAN's DWA keeps MTAN's factor 3 (MTAN has three tasks) with two task
    groups, so their weights sum to 3, 1.5x the weights here, which sum to T as in MTAN's formula
    (docs/fidelity.md, "Task weighting").

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

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--dwa-temperature``."""
        g = parser.add_argument_group("DWA weighting (--weighting dwa)")
        g.add_argument("--dwa-temperature", type=float, default=2.0, help="DWA temperature (MTAN: 2)")

    @classmethod
    def check_args(cls, args: Any) -> None:
        if not args.dwa_temperature > 0:
            raise ValueError(f"--dwa-temperature must be > 0, got {args.dwa_temperature}")

    @classmethod
    def from_args(cls, name: str, args: Any, num_tasks: int, shared_parameters: Sequence[Tensor] = ()) -> "DWA":
        return cls(num_tasks, temperature=args.dwa_temperature)

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


def _rank_mean(t: Tensor, differentiable: bool = False) -> Tensor:
    """Mean of ``t`` over the ranks of the default process group (``t`` itself without one); with
    ``differentiable``, through ``torch.distributed.nn`` so that gradients flow back to every rank's ``t``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    if differentiable:
        return dist_nn.all_reduce(t) / dist.get_world_size()
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


class GradNorm(Weighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018), as published.

    Learnable task weights ``w`` (parameter ``task_weights``, float32 ``[T]``, initialised to 1),
    stepped by the run's shared optimizer and learning-rate schedule (put :meth:`optimizer_parameters` in
    it; :class:`SeparateGradNorm` steps them with an Adam of their own instead, as the XTasC-Net authors'
    code). Each training ``forward(losses)``:

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

    Differences from the XTasC-Net authors' code (docs/fidelity.md, "Task weighting"),
    all deliberate: ``alpha`` is a parameter (their 0.16 is hard-coded), no ½ factors, ``L(0)`` is
    the unweighted loss of the first step (theirs: the weighted loss of the last epoch-1 batch),
    ``L_grad`` does not reach the network parameters (theirs adds second-order terms), and ``w``
    itself is renormalised (theirs reparametrises and never renormalises the leaves).

    Under ``torch.distributed`` (DDP), ``G_k`` is the norm of the gradient averaged over the ranks (the
    synchronised gradient, through a differentiable all-reduce) and ``L(0)`` and ``r`` use the losses averaged
    over the ranks; the task weights' gradient is averaged over the ranks by the training loop. A run on N
    processes then follows the one-process run of the same global batch.

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

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--gradnorm-alpha``, ``--gradnorm-optimizer``."""
        g = parser.add_argument_group("GradNorm weighting (--weighting gradnorm)")
        g.add_argument("--gradnorm-alpha", type=float, default=1.5,
                       help="GradNorm asymmetry alpha (Chen et al. NYUv2: 1.5; the XTasC-Net authors hard-code 0.16)")
        g.add_argument("--gradnorm-optimizer", choices=GRADNORM_OPTIMIZERS, default="shared",
                       help="what steps the GradNorm task weights: 'shared' = the run's optimizer and lr schedule; "
                       "'separate' = an Adam of their own (betas 0.9 0.999, --lr, no schedule), as the authors' code")

    @classmethod
    def check_args(cls, args: Any) -> None:
        """``--gradnorm-alpha >= 0``; fp16 (gradient scaler) only with ``--gradnorm-optimizer separate``."""
        if not args.gradnorm_alpha >= 0:
            raise ValueError(f"--gradnorm-alpha must be >= 0, got {args.gradnorm_alpha}")
        if args.weighting == "gradnorm" and args.gradnorm_optimizer == "shared" and args.amp == "fp16":
            # GradNorm writes its (unscaled) gradient during the forward; the fp16 gradient scaler would unscale it
            raise ValueError("--amp fp16 with --weighting gradnorm needs --gradnorm-optimizer separate (or use "
                             "--amp bf16, which needs no gradient scaler)")

    @classmethod
    def from_args(cls, name: str, args: Any, num_tasks: int, shared_parameters: Sequence[Tensor] = ()) -> "GradNorm":
        """:class:`GradNorm` or :class:`SeparateGradNorm` (``--gradnorm-optimizer``; the latter with ``--lr``)
        balancing the gradient norms at the last of ``shared_parameters`` (the model's last shared layer).

        Raises:
            ValueError: the model has no ``shared_parameters()``.
        """
        if not shared_parameters:
            raise ValueError("--weighting gradnorm needs a model with a shared_parameters() hook (its last shared "
                             "layer's weight)")
        if args.gradnorm_optimizer == "separate":
            return SeparateGradNorm(num_tasks, shared_parameters[-1], args.gradnorm_alpha, lr=args.lr)
        return GradNorm(num_tasks, shared_parameters[-1], args.gradnorm_alpha)

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
        global_losses = _rank_mean(losses.detach())  # under torch.distributed: the losses of the global batch
        with torch.no_grad():
            w.copy_(self._normalized())
            first = self.num_steps == 0
            self.initial_losses.copy_(torch.where(first, global_losses.to(self.initial_losses), self.initial_losses))
            self.num_steps += 1

        W = self.shared_parameter
        norms = []
        for k in range(self.num_tasks):
            (g,) = torch.autograd.grad(
                w[k] * losses[k], W, retain_graph=True, create_graph=True, allow_unused=True
            )
            if g is None:
                raise ValueError(f"GradNorm: the losses do not depend on shared_parameter (task {k})")
            g = _rank_mean(g, differentiable=True)  # the synchronised gradient, as DDP's
            norms.append(torch.linalg.vector_norm(g.float() if g.dtype != torch.float64 else g))
        G = torch.stack(norms)
        with torch.no_grad():
            ratio = global_losses.to(G.dtype) / self.initial_losses.to(G.dtype)
            r = ratio / ratio.mean()
            target = G.mean() * r.pow(self.alpha)
        grad_loss = (G - target).abs().sum()
        (gw,) = torch.autograd.grad(grad_loss, w, retain_graph=True)
        # A copy, so the next step's in-place update and renormalisation cannot invalidate this graph.
        total = (w.detach().clone().to(losses.dtype) * losses).sum()
        self._apply_weight_gradient(gw.detach().to(w.dtype))
        return total

    def _apply_weight_gradient(self, grad: Tensor) -> None:
        """Accumulate GradNorm's gradient into ``task_weights.grad`` for the shared optimizer."""
        w = self.task_weights
        if w.grad is None:
            w.grad = grad.clone()
        else:
            w.grad.add_(grad)


class SeparateGradNorm(GradNorm):
    """:class:`GradNorm` whose task weights are stepped by an Adam of their own (PyTorch's default betas,
    learning rate ``lr``, no schedule, no weight decay), right after GradNorm's gradient is computed in
    ``forward``, as in the XTasC-Net authors' code (``--gradnorm-optimizer separate``; docs/fidelity.md,
    "Task weighting"). The run's optimizer must not hold the weights (:meth:`optimizer_parameters` is empty).
    The Adam state is part of ``state_dict`` (the module's extra state), so a resume continues exactly.

    Args:
        num_tasks, shared_parameter, alpha: as :class:`GradNorm`.
        lr: learning rate of the task weights' Adam (the authors: the run's learning rate, 1e-4).

    Raises:
        ValueError: ``lr <= 0``; the errors of :class:`GradNorm`.
    """

    def __init__(self, num_tasks: int, shared_parameter: Tensor, alpha: float = 1.5, lr: float = 1e-4) -> None:
        super().__init__(num_tasks, shared_parameter, alpha)
        if not lr > 0:
            raise ValueError(f"SeparateGradNorm: lr must be > 0, got {lr}")
        self._adam = torch.optim.Adam([self.task_weights], lr=lr)

    def optimizer_parameters(self) -> Iterator[nn.Parameter]:
        """None: the task weights have their own Adam."""
        return iter(())

    def _apply_weight_gradient(self, grad: Tensor) -> None:
        self.task_weights.grad = _rank_mean(grad).clone()  # every rank takes the same step
        self._adam.step()
        self.task_weights.grad = None

    def get_extra_state(self) -> Dict[str, Any]:
        """The Adam state of the task weights (saved by ``state_dict``)."""
        return {"adam": self._adam.state_dict()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`."""
        self._adam.load_state_dict(state["adam"])


class LPS(Weighting):
    """Loss Prioritization Scheme of MT-CP (paper §3.5, Eqs. 3-6), reconstructed and actually applied.

    This follows the reconstruction of Eqs. 3-6 in docs/fidelity.md, "MT-CP losses and LPS": the paper's
    method, not the authors' code, which computes the weights and then discards them.

    **Loss (Eq. 3 with the weights of Eqs. 4-6).** ``total = sum_t sg(w_t) * Lhat_t`` with the scale
    projection ``Lhat_t = log(1 + L_t + eps)`` (``log_transform=True``; the ``+1`` keeps ``Lhat_t >= 0``
    for ``L_t < 1``, the paper's remark on negative values; ``eps`` = the code's ``eta = 1e-6``), or
    ``Lhat_t = L_t`` (``log_transform=False``). The weights ``w_t`` are constants within an epoch (no
    gradient reaches them; LPS has no parameters). In gradient terms the raw loss of task t is weighted
    by ``w_t / (1 + L_t + eps)`` under the log projection.

    **Weight update**, once per epoch in :meth:`epoch_end` from the epoch means ``m_t(e)`` of the *raw*
    losses (the values given to ``forward``, averaged over the epoch's steps, as the authors' code
    records them); the weights apply to the next epoch:

    1. projection of the epoch means: ``Lhat_t(e) = log(1 + m_t(e) + eps)`` (or ``m_t(e)``). This is the
       log of the epoch mean, not the mean of the per-step logs;
    2. contribution ratio (share of the total): ``pi_t(e) = Lhat_t(e) / sum_s Lhat_s(e)``;
    3. Eq. 4 with history length ``K`` (``history``): ``w_t = pi_t(e) / mean_{k=1..K} pi_t(e - k)``.
       ``w_t > 1``: the task's share grew, i.e. its loss decreased more slowly than the others', so it
       is treated as harder and prioritised. ``K = 1`` is the authors' code (``w_t = pi_t(e) /
       pi_t(e-1)``, there on raw losses); for ``K > 1`` the paper's exact form is unknown and the mean of
       the last K shares is an assumption (docs/fidelity.md, "MT-CP losses and LPS");
    4. spread (Eqs. 5-6): ``wbar = mean_t w_t``, ``w_t <- wbar + beta * (w_t - wbar)`` (``beta = 2.5``,
       the paper's value; the authors' NYUD driver uses 7.5). This keeps the mean and amplifies the
       deviations;
    5. positivity floor (not in the paper or the code, whose weights can become negative when
       ``w_t - wbar < -wbar / beta``, turning a task's loss into a reward): ``w_t <- max(w_t,
       floor * wbar)`` with ``floor = 1e-3`` by default;
    6. renormalisation to mean 1 (``sum_t w_t = T``; not in the paper or the code, whose weights have a
       mean close to but not exactly 1): ``w_t <- w_t / mean_s w_s``, so the scale of the total (and the
       effective learning rate) stays that of equal weights on the projected losses.

    Until ``K`` epochs have been recorded before the current one (epochs ``0 .. K``), the weights are 1
    (equal weights). The authors' code instead uses inverse-share weights ``sum_s m_s / m_t`` (mean about
    T or more) for epoch 1; with step 6 those would differ from 1 by design, so the brief's "equal
    weights until there is history" is used.

    **Ablations** (MT-CP Table 4): ``prioritize=False`` is "log smoothing" (weights stay 1, log
    projection on; ``epoch_end`` still records the shares); ``log_transform=False`` with
    ``prioritize=True`` is "loss prioritization" without the log; both off equals
    :class:`EqualWeighting`. ``LPS_ABLATIONS`` maps the Table 4 names to ``WEIGHTINGS`` names.

    **Distributed training.** If ``torch.distributed`` is initialised, :meth:`epoch_end` first
    all-reduces (sums, then divides by the world size) the epoch means across ranks, so every rank
    computes identical weights from the global means (the authors' code computes them per rank without
    synchronisation). Every rank must call ``epoch_end``
    (a collective); the reduction runs on the device of this module's buffers (move the weighting to
    the training device, e.g. CUDA for NCCL). Validation happens after the reduction, so a bad value on
    one rank makes every rank raise.

    Args:
        num_tasks: T.
        beta: spread factor ``beta >= 0`` (default 2.5, MT-CP §4.2). 1 = no spread; 0 = equal weights.
        history: K >= 1 epochs of shares in the denominator of Eq. 4 (default 1, the paper's §4.2 value
            and the code's behaviour).
        log_transform: apply the projection ``log(1 + L + eps)`` (Eq. 3) in ``forward`` and to the epoch
            means.
        prioritize: update the weights at ``epoch_end`` (Eqs. 4-6); False keeps them at 1.
        eps: ``eps >= 0`` inside the log (default 1e-6, the code's ``eta``).
        floor: positivity floor as a fraction of the mean weight, ``0 < floor < 1`` (default 1e-3).

    State (buffers, in ``state_dict``, fixed shapes): ``share_history`` float64 ``[K, T]`` (the shares
    ``pi`` of the last K recorded epochs, oldest first; zeros until filled), ``lps_weights`` float64
    ``[T]`` (the weights in use, ones initially) and ``num_epochs`` int64 scalar (epochs recorded). A
    fresh instance built with the same ``num_tasks`` and ``history`` loads them.

    Raises:
        ValueError: ``beta < 0``, ``history < 1``, ``eps < 0``, ``floor`` outside ``(0, 1)``; (forward)
            ``losses`` not of shape ``[T]``; (epoch_end) wrong shape, or a projected mean that is not
            finite and > 0 (e.g. a raw mean of 0 without the log, which would make the shares' ratio
            undefined, or a NaN).
    """

    def __init__(
        self,
        num_tasks: int,
        beta: float = 2.5,
        history: int = 1,
        log_transform: bool = True,
        prioritize: bool = True,
        eps: float = 1e-6,
        floor: float = 1e-3,
    ) -> None:
        super().__init__(num_tasks)
        if not beta >= 0 or beta == float("inf"):
            raise ValueError(f"LPS: beta must be finite and >= 0, got {beta}")
        if isinstance(history, bool) or int(history) != history or history < 1:
            raise ValueError(f"LPS: history must be an integer >= 1, got {history}")
        if not eps >= 0:
            raise ValueError(f"LPS: eps must be >= 0, got {eps}")
        if not 0 < floor < 1:
            raise ValueError(f"LPS: floor must be in (0, 1), got {floor}")
        self.beta = float(beta)
        self.history = int(history)
        self.log_transform = bool(log_transform)
        self.prioritize = bool(prioritize)
        self.eps = float(eps)
        self.floor = float(floor)
        self.register_buffer("share_history", torch.zeros(self.history, num_tasks, dtype=torch.float64))
        self.register_buffer("lps_weights", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("num_epochs", torch.zeros((), dtype=torch.int64))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--lps-beta``."""
        g = parser.add_argument_group("LPS weighting (--weighting lps, lps-log, lps-prio; MT-CP)")
        g.add_argument("--lps-beta", type=float, default=2.5, help="LPS spread factor beta (paper: 2.5; authors' NYUD "
                       "driver 7.5)")

    @classmethod
    def check_args(cls, args: Any) -> None:
        if not args.lps_beta >= 0:
            raise ValueError(f"--lps-beta must be >= 0, got {args.lps_beta}")

    @classmethod
    def from_args(cls, name: str, args: Any, num_tasks: int, shared_parameters: Sequence[Tensor] = ()) -> "LPS":
        """``name`` ``"lps"``, ``"lps-log"`` or ``"lps-prio"`` (the Table 4 presets) with ``--lps-beta``."""
        return cls(num_tasks, beta=args.lps_beta, **_LPS_PRESETS[name])

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, beta={self.beta}, history={self.history}, "
            f"log_transform={self.log_transform}, prioritize={self.prioritize}, eps={self.eps}, floor={self.floor}"
        )

    def project(self, losses: Tensor) -> Tensor:
        """``log(1 + losses + eps)`` with ``log_transform``, else ``losses`` unchanged (any shape)."""
        return torch.log1p(losses + self.eps) if self.log_transform else losses

    def forward(self, losses: Tensor) -> Tensor:
        """``sum_t sg(w_t) * project(L_t)`` for raw losses ``[T]`` (float); returns a scalar of their dtype."""
        self._check(losses)
        return (self.lps_weights.detach().to(losses.dtype) * self.project(losses)).sum()

    def weights(self) -> Tensor:
        """The weights ``w_t`` on the projected losses ``[T]`` (float32, CPU; ones before any update)."""
        return self.lps_weights.detach().float().cpu()

    @torch.no_grad()
    def epoch_end(self, mean_losses: Tensor | Sequence[float]) -> None:
        """Record the epoch means of the raw losses ``[T]`` (float, any device) and set the weights of
        the next epoch (see the class docstring for the update and the distributed all-reduce)."""
        m = _as_vector(mean_losses, self.num_tasks, "LPS.epoch_end")
        m = _rank_mean(m.to(self.share_history))
        projected = self.project(m)
        if not bool(torch.isfinite(projected).all()) or not bool((projected > 0).all()):
            what = "log(1 + mean + eps)" if self.log_transform else "mean losses"
            raise ValueError(
                f"LPS.epoch_end: {what} must be finite and > 0, got means {m.tolist()}"
                + ("" if self.log_transform else " (without the log transform a raw mean of 0 is not allowed)")
            )
        share = projected / projected.sum()
        if self.prioritize and int(self.num_epochs) >= self.history:
            w = share / self.share_history.mean(dim=0)
            mean = w.mean()
            w = mean + self.beta * (w - mean)
            w = torch.maximum(w, self.floor * mean)
            self.lps_weights.copy_(w / w.mean())
        if self.history > 1:
            self.share_history[:-1].copy_(self.share_history[1:].clone())
        self.share_history[-1].copy_(share)
        self.num_epochs += 1


LPS_ABLATIONS = {"ew": "equal", "log": "lps-log", "prio": "lps-prio", "lps": "lps"}
"""MT-CP Table 4 loss schemes -> ``WEIGHTINGS`` names: equal weights on the raw losses ("ew"), log
projection only ("log", Table 4 "Log Smoothing"), prioritization on the raw losses only ("prio"), and
the full LPS ("lps")."""

_LPS_PRESETS = {
    "lps": {},
    "lps-log": {"prioritize": False},
    "lps-prio": {"log_transform": False},
}


GRADNORM_OPTIMIZERS = ("shared", "separate")
"""``--gradnorm-optimizer`` choices: the run's optimizer and schedule, or an Adam of the weights' own."""

WEIGHTINGS: Registry[type] = Registry("weighting", expects=Weighting)
"""Weighting classes by ``--weighting`` name (:class:`xtc_ext.registry.Registry`)."""
WEIGHTINGS.register(EqualWeighting, "equal")
WEIGHTINGS.register(UncertaintyWeighting, "uncertainty")
WEIGHTINGS.register(DWA, "dwa")
WEIGHTINGS.register(GradNorm, "gradnorm")
WEIGHTINGS.register(LPS, "lps", "lps-log", "lps-prio")


def weighting_classes() -> Tuple[type, ...]:
    """Every registered weighting class once, in registration order (their option groups in ``--help``)."""
    return tuple(dict.fromkeys(WEIGHTINGS.values()))


def build_weighting(name: str, num_tasks: int, shared_parameter: Tensor | None = None, **kwargs) -> Weighting:
    """Weighting by name: one of ``WEIGHTINGS`` ("equal", "uncertainty", "dwa", "gradnorm", "lps",
    "lps-log", "lps-prio").

    ``"lps-log"`` is ``LPS(prioritize=False)`` and ``"lps-prio"`` is ``LPS(log_transform=False)``
    (MT-CP Table 4 ablations); the preset option may not be overridden in ``kwargs``.

    Args:
        name: method name.
        num_tasks: T.
        shared_parameter: ``W`` for GradNorm (required there); ignored by the other methods, so a
            caller may always pass it.
        **kwargs: constructor options of the method (``temperature`` for DWA; ``alpha``, ``optimizer``
            (``GRADNORM_OPTIMIZERS``: ``"shared"`` -> :class:`GradNorm`, ``"separate"`` ->
            :class:`SeparateGradNorm`) and ``lr`` (separate only) for GradNorm; ``beta``, ``history``,
            ``eps``, ``floor`` ... for LPS).

    Raises:
        ValueError: unknown name; ``"gradnorm"`` without ``shared_parameter``; invalid option values;
            an LPS preset option given a conflicting value in ``kwargs``.
        TypeError: an option the method does not take.
    """
    cls = WEIGHTINGS.lookup(name)
    if name == "gradnorm":
        if shared_parameter is None:
            raise ValueError("weighting 'gradnorm' requires shared_parameter (the last shared layer's weight)")
        optimizer = kwargs.pop("optimizer", "shared")
        if optimizer not in GRADNORM_OPTIMIZERS:
            raise ValueError(f"GradNorm optimizer must be one of {list(GRADNORM_OPTIMIZERS)}, got {optimizer!r}")
        if optimizer == "separate":
            return SeparateGradNorm(num_tasks, shared_parameter, **kwargs)
        kwargs.pop("lr", None)
        return GradNorm(num_tasks, shared_parameter, **kwargs)
    if name in _LPS_PRESETS:
        preset = _LPS_PRESETS[name]
        for key, value in preset.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f"weighting {name!r} fixes {key}={value}; got {key}={kwargs[key]!r}")
        return LPS(num_tasks, **{**kwargs, **preset})
    return cls(num_tasks, **kwargs)
