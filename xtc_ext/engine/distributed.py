"""Distributed data-parallel training under ``torchrun``: process group, samplers, exact metric reduction.

``torchrun --nproc_per_node=N -m xtc_ext.train ...`` (and torchrun's multi-node rendezvous flags) starts N
processes with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`init_distributed` then joins the
process group (NCCL on CUDA, one device per local rank; gloo on CPU). Without torchrun nothing changes: one
process, no process group.

* Batch size: ``--batch-size`` is the GLOBAL batch size (the papers' batch size, whatever the number of
  processes); each rank loads ``batch_size / world_size`` samples per step (it must divide evenly).
* Training data: :class:`torch.utils.data.DistributedSampler` (seeded with ``--seed``, ``set_epoch`` every
  epoch), so the union of the ranks' batches at a step is the global batch a one-process distributed run
  with the same global batch size would load.
* Evaluation data: :class:`ShardSampler`, contiguous-free strided shards ``indices[rank::world_size]`` with no
  padding, so no sample is counted twice or dropped; the meters' sums are then all-reduced
  (:meth:`xtc_ext.metrics.MultiTaskEvaluator.all_reduce`), so an N-process evaluation equals the
  one-process one.
* Rank 0 alone writes checkpoints, logs, TensorBoard events, figures and reports (:attr:`Dist.is_main`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from xtc_ext.engine.errors import UsageError

__all__ = ["Dist", "init_distributed", "ShardSampler", "sync_gradients", "gather_objects", "run_on_main",
           "shutdown"]


@dataclasses.dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` and ``world_size`` (1 and 0 without torchrun), ``local_rank``,
    and whether a process group is active (``enabled``: launched by torchrun, even with one process)."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run's files (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op without a process group)."""
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> tuple:
    """Join the torchrun process group when launched by torchrun; returns ``(Dist, device)``.

    ``device``: the ``--device`` choice; on CUDA each rank takes ``cuda:LOCAL_RANK`` (an explicit index in
    ``--device`` is then an error, since every rank would use it).

    Raises:
        UsageError: ``--device cuda:K`` with torchrun, or more local ranks than CUDA devices.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError("under torchrun every rank uses cuda:LOCAL_RANK; pass --device cuda or auto")
        if local >= torch.cuda.device_count():
            raise UsageError(f"local rank {local} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return Dist(True, rank, world, local), device


class ShardSampler(Sampler[int]):
    """Evaluation sampler of one rank: ``range(len(dataset))[rank::world_size]``, no padding, no shuffling."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        self.indices = list(range(len(dataset)))[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def sync_gradients(modules: Sequence[torch.nn.Module]) -> None:
    """Average the gradients of ``modules``' parameters over the ranks (parameters outside the DDP model:
    task-weighting and training-only modules). A parameter without a gradient on every rank keeps none (as in
    a one-process run, the optimizer then skips it); one with a gradient on some rank gets the average, a
    missing gradient counting as zeros. No-op without a process group."""
    if not _active():
        return
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    for p, flag in zip(params, has.tolist()):
        if not flag:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not _active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_on_main(d: Dist, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only (file writes) and make every rank wait for it; an exception on rank 0 is
    raised on rank 0 and, as a RuntimeError naming it, on the other ranks (none hangs)."""
    if not d.enabled:
        fn()
        return
    error: Optional[BaseException] = None
    if d.is_main:
        try:
            fn()
        except Exception as e:  # every rank must reach the broadcast below
            error = e
    message = [f"{type(error).__name__}: {error}" if error is not None else None]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise RuntimeError(f"rank 0 failed: {message[0]}")


def shutdown(wait: bool = True) -> None:
    """Leave the process group (end of a torchrun run); no-op without one. ``wait``: first wait for every rank
    to get there (a normal end; after a failure the other ranks may never arrive, so do not wait)."""
    if _active():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
