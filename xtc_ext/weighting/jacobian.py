"""Gradient-balancing and Jacobian-descent weightings: TorchJD's aggregators as ``--weighting NAME``.

The aggregators are TorchJD's (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
arXiv:2406.16232; the optional dependency ``torchjd``, ``pip install "xtc_ext[jd]"``); this module computes the
Jacobian, makes it that of the global batch under ``torchrun``, handles the fp16 gradient scale and writes the
gradients. docs/weighting.md lists the aggregators, their options and papers, and what is refused and why.

**The step** (:meth:`JacobianWeighting.scaled_backward`, called by the training loop instead of
``total.backward()``). The model names the module whose output is the shared representation ``z`` (its
``shared_module()`` hook: XTasC-Net's encoder, MT-CP's backbone). A forward hook hands the rest of the network a
detached copy ``z'`` of ``z`` (a leaf), so the task losses reach the shared parameters only through ``z'``:

1. ``J``: float32 ``[T, n]``, row t the gradient of task loss ``L_t`` with respect to ``z'`` (``n`` = the
   elements of ``z``, flattened), one reverse pass through the task-specific part per task (TorchJD's
   ``mtl_backward`` does the same with ``torch.vmap``; the fused ``xtc_ext.ops`` losses are custom autograd
   functions, so a plain loop is used);
2. one backward of the whole total (task losses + the recipe's unweighted ``extra`` terms, e.g. the
   contrastive regularizer): the task-specific parameters get the sum of their task losses' gradients
   (the heads get their own gradients) and ``z'`` collects ``sum_t J_t + e`` (``e``: the extra terms' part);
3. ``--jacobian representation`` (default; TorchJD's ``mtl_backward`` semantics): ``a = A(J)`` (the
   aggregator ``A``), and ``z`` is back-propagated with ``a + e`` into the shared module.
   ``--jacobian shared-parameters``: ``J_P`` ``[T, P]``, the task gradients of the shared module's parameters
   (one reverse pass through it per task), ``a = A(J_P)`` is the shared parameters' gradient, plus ``e``
   back-propagated (TorchJD's ``backward`` over the shared parameters; LibMTL's ``rep_grad=False``).

So the extra terms are not aggregated: they are added to the aggregated update (as they are added to the
weighted total by the loss weightings), which keeps the regularizer out of the conflict resolution between the
tasks. ``weights()`` logs the aggregator's weights of the rows of ``J`` (NaN for GradDrop and ConFIG, which do
not combine the rows linearly).

**DDP** (``torchrun``): every backward runs through the DDP model exactly as one ``loss.backward()`` would:
step 2 reaches each task-specific parameter once and step 3 each shared parameter once, so DDP's reducer
averages every gradient once and no reverse pass writes a parameter gradient twice (the LibMTL #16
desynchronisation cannot occur); steps 1 and 3's per-task passes write no parameter gradient. The global
batch's Jacobian ``J_g = [J_0, ..., J_{W-1}] / W`` (the ranks' column blocks, each scaled by ``1/W``):

- Gramian-based aggregators (UPGrad, MGDA, PCGrad, CAGrad, IMTL-G, Aligned-MTL, DualProj, GradVac,
  FairGrad, PCD): ``J_g J_g^T = sum_r J_r J_r^T / W^2``, one all-reduce of a ``[T, T]`` matrix; every rank
  gets the same weights ``w`` and back-propagates ``w^T J_r``; DDP's average is then the global update;
- GradDrop acts on each column of ``J`` alone: each rank applies it to its own block (its random masks are
  drawn per rank, so the run equals a one-process run in distribution, not draw for draw);
- the others (Nash-MTL, ConFIG, ExcessMTL): ``J_g`` is all-gathered, every rank aggregates it
  (the same input, so the same state) and back-propagates ``W`` times its block;
- ``--jacobian shared-parameters``: ``J_P`` is all-reduced (averaged) before aggregating.

**AMP.** bf16: no scaler; ``J`` is cast to float32. fp16: the per-task gradients are taken of the scaled
losses and divided by the scale before aggregating; a non-finite ``J`` (the same verdict on every rank)
skips the aggregation and back-propagates the scaled total as is, so the gradient scaler sees the non-finite
gradients and skips the step. ``--compile`` is refused (the forward hook and the per-task reverse passes of
a compiled model are not supported; docs/weighting.md).

**State.** The aggregator's state (Nash-MTL's previous weights and step, GradVac's and PCD's running targets,
ExcessMTL's estimates) is the module's extra state in ``state_dict``, so ``--resume``
continues bitwise (GradDrop's masks come from the global torch generator, which checkpoints restore).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from importlib.util import find_spec
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from xtc_ext.weighting.classic import WEIGHTINGS, Weighting

__all__ = ["AGGREGATORS", "JACOBIAN_MODES", "NOT_OFFERED", "JacobianWeighting", "Aggregator", "missing_requirements"]

JACOBIAN_MODES = ("representation", "shared-parameters")
"""``--jacobian`` choices: the Jacobian of the task losses with respect to the shared representation (the
shared module's output; cheaper) or to the shared module's parameters."""

TORCHJD_HINT = 'pip install "xtc_ext[jd]" (or: pip install torchjd)'


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """One ``--weighting`` name of the family.

    Attributes:
        torchjd_class: the class in ``torchjd.aggregation``.
        paper: the method's source, for docs and ``--help``.
        ddp: how it is made exact under DDP: ``"gramian"`` (all-reduced Gramian), ``"columns"`` (per column:
            each rank's block), ``"gather"`` (all-gathered Jacobian).
        requires: the modules it needs beyond ``torchjd`` (a solver) and the TorchJD extra providing them.
        options: ``args`` attribute -> constructor keyword of its own command-line options.
    """

    torchjd_class: str
    paper: str
    ddp: str = "gramian"
    requires: Tuple[Tuple[str, ...], str] = ((), "")
    options: Tuple[Tuple[str, str], ...] = ()


_QUADPROG = (("numpy", "qpsolvers", "quadprog"), "quadprog-projector")

AGGREGATORS: Dict[str, Aggregator] = {
    "upgrad": Aggregator("UPGrad", "Quinton & Rey 2024, arXiv:2406.16232", requires=_QUADPROG),
    "mgda": Aggregator("MGDA", "Desideri 2012; Sener & Koltun, NeurIPS 2018"),
    "pcgrad": Aggregator("PCGrad", "Yu et al., NeurIPS 2020"),
    "cagrad": Aggregator("CAGrad", "Liu et al., NeurIPS 2021", requires=(("numpy", "cvxpy", "clarabel"), "cagrad"),
                         options=(("cagrad_c", "c"),)),
    "nash-mtl": Aggregator("NashMTL", "Navon et al., ICML 2022", ddp="gather",
                           requires=(("numpy", "cvxpy", "ecos"), "nash-mtl"),
                           options=(("nash_mtl_max_norm", "max_norm"),
                                    ("nash_mtl_update_every", "update_weights_every"))),
    "imtl-g": Aggregator("IMTLG", "Liu et al., ICLR 2021"),
    "aligned-mtl": Aggregator("AlignedMTL", "Senushkin et al., CVPR 2023",
                              options=(("aligned_mtl_scale_mode", "scale_mode"),)),
    "dualproj": Aggregator("DualProj", "Quinton & Rey 2024 (after GEM, Lopez-Paz & Ranzato 2017)",
                           requires=_QUADPROG),
    "graddrop": Aggregator("GradDrop", "Chen et al., NeurIPS 2020", ddp="columns"),
    "gradvac": Aggregator("GradVac", "Wang et al., ICLR 2021", options=(("gradvac_beta", "beta"),)),
    "fairgrad": Aggregator("FairGrad", "Ban & Ji, ICML 2024", requires=(("numpy", "scipy"), "fairgrad"),
                           options=(("fairgrad_alpha", "alpha"),)),
    "pcd": Aggregator("PCD", "TorchJD 0.18 (PCD)"),
    "config": Aggregator("ConFIG", "Liu et al., ICLR 2025", ddp="gather"),
    "excess-mtl": Aggregator("ExcessMTL", "He et al., ICML 2024", ddp="gather"),
}
"""``--weighting`` name -> :class:`Aggregator`, every TorchJD 0.18 aggregator meant for multi-task learning that
works on one mini-batch's Jacobian (:data:`NOT_OFFERED` lists the others and why)."""

NOT_OFFERED = {
    "MoDoWeighting, SDMGradWeighting": "their input is J_1 J_2^T of two independent mini-batches per step, which "
                                       "this training step (one batch) does not provide",
    "CRMOGMWeighting": "a wrapper that smooths another weighting's output; not a method of its own",
    "Krum, TrimmedMean": "robust averaging against corrupted rows (federated learning), not task balancing",
    "Mean, Sum, Constant, Random": "baselines equal to --weighting equal (up to a factor) or random weights",
}
"""TorchJD 0.18 aggregators without a ``--weighting`` name -> why (docs/weighting.md)."""

_OPTION_HELP = {
    "cagrad_c": (float, 0.5, "CAGrad radius c >= 0 (paper: 0.4 NYUv2)"),
    "nash_mtl_max_norm": (float, 1.0, "Nash-MTL: the update's norm is clipped to this (0: no clipping)"),
    "nash_mtl_update_every": (int, 1, "Nash-MTL: solve for new weights every K steps"),
    "aligned_mtl_scale_mode": (str, "min", "Aligned-MTL scale: min, median or rmse"),
    "gradvac_beta": (float, 0.5, "GradVac EMA factor beta in [0, 1]"),
    "fairgrad_alpha": (float, 1.0, "FairGrad alpha > 0 (1: proportional fairness)"),
}


def _torchjd_available() -> bool:
    return find_spec("torchjd") is not None


def missing_requirements(name: str) -> Optional[str]:
    """Why aggregator ``name`` cannot run here (a message with the install hint), or None when it can."""
    if not _torchjd_available():
        return f"--weighting {name} needs TorchJD, which is not installed: {TORCHJD_HINT}"
    modules, extra = AGGREGATORS[name].requires
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        return (f"--weighting {name} needs the solver package(s) {', '.join(missing)}, not installed: "
                f'pip install "torchjd[{extra}]" (or everything: pip install "xtc_ext[jd-full]")')
    return None


def _build_aggregator(name: str, options: Dict[str, Any], num_tasks: int) -> nn.Module:
    reason = missing_requirements(name)
    if reason is not None:
        raise ValueError(reason)
    import torchjd.aggregation as agg  # optional dependency, imported only when used

    spec = AGGREGATORS[name]
    cls = getattr(agg, spec.torchjd_class)
    if name == "nash-mtl":
        options = {"n_tasks": num_tasks, **options}
    return cls(**options)


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flatten(tensors: Sequence[Optional[Tensor]], like: Sequence[Tensor]) -> Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(r)).reshape(-1).float() for t, r in zip(tensors, like)])


def _unflatten(vector: Tensor, like: Sequence[Tensor]) -> List[Tensor]:
    out, start = [], 0
    for r in like:
        out.append(vector[start:start + r.numel()].view_as(r).to(r.dtype))
        start += r.numel()
    return out


_MODULE_INTERNALS = frozenset(vars(nn.Module()).keys())


def _capture(module: nn.Module) -> List[Dict[str, Any]]:
    """The plain state of every submodule of a TorchJD aggregator: buffers, tensors, numbers, numpy arrays
    (as tensors, marked) and tuples of them; solver objects (cvxpy problems) are rebuilt, not saved."""
    states = []
    for m in module.modules():
        state: Dict[str, Any] = {f"buffer:{k}": v for k, v in m._buffers.items()}
        for k, v in vars(m).items():
            if k in _MODULE_INTERNALS:
                continue
            if isinstance(v, np.ndarray):
                state[f"ndarray:{k}"] = torch.from_numpy(v.copy())
            elif isinstance(v, (Tensor, bool, int, float, str, type(None), torch.dtype, torch.device, tuple)):
                state[k] = v
        states.append(state)
    return states


def _restore(module: nn.Module, states: List[Dict[str, Any]]) -> None:
    for m, state in zip(module.modules(), states):
        for k, v in state.items():
            kind, _, name = k.rpartition(":")
            if kind == "buffer":
                m._buffers[name] = v
            elif kind == "ndarray":
                setattr(m, name, v.numpy())
            else:
                m.__dict__[name] = v
        if hasattr(m, "_init_optim_problem") and getattr(m, "step", 0) > 0:  # Nash-MTL's cvxpy problem
            m._init_optim_problem()


class JacobianWeighting(Weighting):
    """A TorchJD aggregator over the task losses' Jacobian (see the module docstring for the step, DDP, AMP and
    state).

    Args:
        num_tasks: T >= 2.
        aggregator: an :data:`AGGREGATORS` name.
        jacobian: a :data:`JACOBIAN_MODES` value.
        **options: the aggregator's constructor options (TorchJD's names, e.g. ``c`` for CAGrad).

    ``forward(losses [T]) -> losses.sum()``: the logged total, and what the task-specific parameters get the
    gradient of. :meth:`attach` must be called with the model (the recipes do it).

    Raises:
        ValueError: ``num_tasks < 2``; an unknown aggregator or mode; TorchJD or the aggregator's solver not
            installed (the message gives the ``pip install`` line); (attach) a model without a
            ``shared_module()`` hook.
        RuntimeError: (backward) no training forward went through the shared module since the last backward.
    """

    def __init__(self, num_tasks: int, aggregator: str, jacobian: str = "representation", **options: Any) -> None:
        super().__init__(num_tasks)
        if num_tasks < 2:
            raise ValueError(f"--weighting {aggregator} needs two or more task losses, got {num_tasks}")
        if aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {aggregator!r}; choose from {', '.join(AGGREGATORS)}")
        if jacobian not in JACOBIAN_MODES:
            raise ValueError(f"--jacobian must be one of {', '.join(JACOBIAN_MODES)}, got {jacobian!r}")
        self.aggregator_name, self.jacobian = aggregator, jacobian
        self.__dict__["aggregator"] = _build_aggregator(aggregator, options, num_tasks)  # not a submodule
        self._weights = torch.full((num_tasks,), math.nan)
        self._shared: Tuple[nn.Module, ...] = ()  # a tuple: the model's module is not registered here
        self._seam: Optional[Tuple[List[Tensor], List[Tensor]]] = None

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, aggregator={self.aggregator!r}, jacobian={self.jacobian}"

    # ------------------------------------------------------------------ options and construction
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--jacobian`` and the aggregators' own options (``--cagrad-c``, ``--nash-mtl-*`` ...)."""
        g = parser.add_argument_group(f"Jacobian-descent weightings (TorchJD; --weighting {', '.join(AGGREGATORS)})")
        g.add_argument("--jacobian", choices=JACOBIAN_MODES, default="representation",
                       help="the Jacobian the aggregator sees: of the task losses w.r.t. the shared representation "
                       "(the encoder/backbone output; cheaper) or w.r.t. the shared module's parameters")
        for dest, (kind, default, text) in _OPTION_HELP.items():
            g.add_argument("--" + dest.replace("_", "-"), type=kind, default=default, help=text)

    @classmethod
    def check_args(cls, args: Any) -> None:
        """When ``--weighting`` is one of this family: TorchJD and the aggregator's solver installed, no
        ``--compile``, the aggregator's option values; options of another aggregator are refused.

        Raises:
            ValueError: naming the option (or ``--weighting`` with the install hint, or ``--compile``).
        """
        name = getattr(args, "weighting", None)
        if name not in AGGREGATORS:
            return
        reason = missing_requirements(name)
        if reason is not None:
            raise ValueError(reason)
        if getattr(args, "compile", False):
            raise ValueError(f"--compile with --weighting {name} is not supported: the Jacobian step replaces the "
                             "shared representation through a forward hook and runs one reverse pass per task, which "
                             "the compiled model does not (train without --compile)")
        own = {dest for dest, _ in AGGREGATORS[name].options}
        for dest, (_, default, _) in _OPTION_HELP.items():
            if dest not in own and getattr(args, dest) != default:
                owners = [n for n, a in AGGREGATORS.items() if dest in dict(a.options)]
                raise ValueError(f"--{dest.replace('_', '-')} applies to --weighting {', '.join(owners)} only "
                                 f"(got --weighting {name})")
        checks = {"cagrad_c": args.cagrad_c >= 0, "nash_mtl_max_norm": args.nash_mtl_max_norm >= 0,
                  "nash_mtl_update_every": args.nash_mtl_update_every >= 1,
                  "aligned_mtl_scale_mode": args.aligned_mtl_scale_mode in ("min", "median", "rmse"),
                  "gradvac_beta": 0 <= args.gradvac_beta <= 1, "fairgrad_alpha": args.fairgrad_alpha > 0}
        for dest, ok in checks.items():
            if not ok:
                raise ValueError(f"--{dest.replace('_', '-')}: invalid value {getattr(args, dest)!r} "
                                 f"({_OPTION_HELP[dest][2]})")

    @classmethod
    def from_args(cls, name: str, args: Any, num_tasks: int,
                  shared_parameters: Sequence[Tensor] = ()) -> "JacobianWeighting":
        """The aggregator ``name`` with its options and ``--jacobian``."""
        options = {kw: getattr(args, dest) for dest, kw in AGGREGATORS[name].options}
        return cls(num_tasks, name, jacobian=args.jacobian, **options)

    # ------------------------------------------------------------------ the model's shared representation
    def attach(self, model: nn.Module) -> None:
        """Hook the output of ``model.shared_module()`` (a tensor or a list/tuple of tensors): in a training
        forward with gradients enabled, the rest of the model gets detached leaf copies of it.

        Raises:
            ValueError: the model has no ``shared_module()`` hook.
        """
        hook = getattr(model, "shared_module", None)
        if not callable(hook):
            raise ValueError(f"--weighting {self.aggregator_name} needs a model with a shared_module() hook (the "
                             f"module whose output the task heads share); {type(model).__name__} has none")
        self._shared = (hook(),)
        self._shared[0].register_forward_hook(self._capture_representation)

    def _capture_representation(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled()):
            return None
        single = isinstance(output, Tensor)
        originals = [output] if single else list(output)
        leaves = [z.detach().requires_grad_() for z in originals]
        self._seam = (originals, leaves)
        return leaves[0] if single else type(output)(leaves)

    # ------------------------------------------------------------------ the step
    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        return losses.sum()

    def weights(self) -> Tensor:
        """The aggregator's weights of the Jacobian's rows at the last step (float32 ``[T]``, CPU; NaN before
        the first step and for aggregators that are not a weighted sum of the rows)."""
        return self._weights.clone()

    def scaled_backward(self, total: Tensor, losses: Tensor, shared_parameters: Sequence[Tensor],
                        scaler: torch.amp.GradScaler) -> None:
        """Write the step's gradients (see the module docstring); ``shared_parameters`` is not used (the
        shared module's parameters are)."""
        if self._seam is None:
            raise RuntimeError(f"--weighting {self.aggregator_name}: no training forward through the model's "
                               "shared_module() since the last backward")
        originals, leaves = self._seam
        self._seam = None
        scale = scaler.scale(torch.ones((), device=losses.device))
        scaled = [torch.autograd.grad(losses[t] * scale, leaves, retain_graph=True, allow_unused=True)
                  for t in range(self.num_tasks)]
        scaler.scale(total).backward()
        collected = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        rows = torch.stack([_flatten(g, leaves) for g in scaled])
        extra = _flatten(collected, leaves) - rows.sum(dim=0)  # the unweighted terms' part, scaled
        jacobian = rows / scale.float()
        if self.jacobian == "representation":
            update = self._aggregate_representation(jacobian)
            if update is None:  # non-finite: let the scaler see it and skip the step
                torch.autograd.backward(originals, collected)
                return
            torch.autograd.backward(originals, _unflatten(update * scale.float() + extra, leaves))
        else:
            self._backward_parameters(originals, leaves, scaled, extra, scale)

    def _aggregate_representation(self, jacobian: Tensor) -> Optional[Tensor]:
        """This rank's block of the global batch's aggregated gradient w.r.t. the representation ``[n]``, scaled
        for DDP's average (None when the global Jacobian is not finite)."""
        spec, agg = AGGREGATORS[self.aggregator_name], self.aggregator
        rank, world = _world()
        if spec.ddp == "gramian":
            gramian = jacobian @ jacobian.T
            if world > 1:
                dist.all_reduce(gramian)
                gramian = gramian / world ** 2
            if not bool(torch.isfinite(gramian).all()):
                return None
            weights = agg.gramian_weighting(gramian)
            self._weights = weights.detach().float().cpu()
            return weights.to(jacobian.dtype) @ jacobian
        if spec.ddp == "columns" or world == 1:
            if not bool(torch.isfinite(jacobian).all()):
                return None
            return self._aggregate(jacobian)
        blocks = [torch.empty_like(jacobian) for _ in range(world)]
        dist.all_gather(blocks, jacobian.contiguous())
        full = torch.cat(blocks, dim=1) / world
        if not bool(torch.isfinite(full).all()):
            return None
        n = jacobian.shape[1]
        return world * self._aggregate(full)[rank * n:(rank + 1) * n]

    def _aggregate(self, matrix: Tensor) -> Tensor:
        """``A(matrix)``, recording the row weights of a weighted aggregator."""
        from torchjd.aggregation import WeightedAggregator

        if not isinstance(self.aggregator, WeightedAggregator):
            return self.aggregator(matrix)
        weights = self.aggregator.weighting(matrix)
        self._weights = weights.detach().float().cpu()
        return weights.to(matrix.dtype) @ matrix

    def _backward_parameters(self, originals: List[Tensor], leaves: List[Tensor], scaled: List[Tuple],
                             extra: Tensor, scale: Tensor) -> None:
        """``--jacobian shared-parameters``: aggregate the shared module's per-task parameter gradients
        (averaged over the ranks), add them in the one backward of the representation (hooks on the
        parameters, so that DDP's reducer sees the final gradient)."""
        params = [p for p in self._shared[0].parameters() if p.requires_grad]
        rows = []
        for grads in scaled:
            g = torch.autograd.grad(originals, params, grad_outputs=[
                x if x is not None else torch.zeros_like(r) for x, r in zip(grads, leaves)],
                retain_graph=True, allow_unused=True)
            rows.append(_flatten(g, params))
        jacobian = torch.stack(rows) / scale.float()
        rank, world = _world()
        if world > 1:
            dist.all_reduce(jacobian)
            jacobian = jacobian / world
        extra_grads = _unflatten(extra, leaves)
        if not bool(torch.isfinite(jacobian).all()):
            torch.autograd.backward(originals, extra_grads)  # non-finite: the scaler skips the step
            for p in params:
                p.grad = torch.full_like(p, math.inf) if p.grad is None else p.grad.fill_(math.inf)
            return
        update = self._aggregate(jacobian) * scale.float()
        handles = [p.register_hook(lambda g, u=u: g + u) for p, u in zip(params, _unflatten(update, params))]
        try:
            torch.autograd.backward(originals, extra_grads)
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> Dict[str, Any]:
        """The aggregator's state (saved by ``state_dict``) and the logged weights."""
        return {"aggregator": _capture(self.aggregator), "weights": self._weights}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`."""
        _restore(self.aggregator, state["aggregator"])
        self._weights = state["weights"]


for _name in AGGREGATORS:
    WEIGHTINGS.register(JacobianWeighting, _name)
