"""What a run is made of before its first step: data loaders (one process or torchrun ranks) and the
training model (``--sync-bn``, ``--channels-last``, DistributedDataParallel, ``--compile``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xtc_ext.data import DataSplits
from xtc_ext.engine.config import DataConfig
from xtc_ext.engine.distributed import Dist, ShardSampler
from xtc_ext.engine.errors import UsageError
from xtc_ext.engine.runtime import make_loader

__all__ = ["Loaders", "per_rank_batch_size", "build_loaders", "training_model"]

log = logging.getLogger("xtc_ext.train")


@dataclasses.dataclass
class Loaders:
    """The run's loaders; ``train_sampler`` is the DistributedSampler of a torchrun run (``set_epoch`` each
    epoch), else None."""

    train: DataLoader
    val: Optional[DataLoader]
    test: DataLoader
    train_sampler: Optional[DistributedSampler]


def per_rank_batch_size(batch_size: int, dist: Dist) -> int:
    """``--batch-size`` (global) divided over the ranks.

    Raises:
        UsageError: the global batch size is not a multiple of the number of processes.
    """
    if batch_size % dist.world_size:
        raise UsageError(f"--batch-size {batch_size} (the global batch) is not divisible by the "
                         f"{dist.world_size} processes")
    return batch_size // dist.world_size


def build_loaders(data: DataConfig, seed: int, splits: DataSplits, dist: Dist, device: torch.device,
                  loader_generator: torch.Generator) -> Loaders:
    """Training loader (shuffled by ``loader_generator``, or by a DistributedSampler seeded with ``seed`` under
    torchrun), and the validation / test loaders (each rank reads its :class:`ShardSampler` shard under torchrun),
    with ``data.batch_size / world_size`` samples per batch and ``data.workers`` worker processes."""
    batch = per_rank_batch_size(data.batch_size, dist)

    def evaluation(dataset: Optional[Dataset]) -> Optional[DataLoader]:
        if dataset is None:
            return None
        sampler = ShardSampler(dataset, dist.rank, dist.world_size) if dist.enabled else None
        return make_loader(dataset, batch, shuffle=False, workers=data.workers, device=device, sampler=sampler,
                           generator=torch.Generator().manual_seed(seed))

    train_sampler = (DistributedSampler(splits.train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                        seed=seed) if dist.enabled else None)
    train = make_loader(splits.train, batch, shuffle=True, workers=data.workers, generator=loader_generator,
                        device=device, sampler=train_sampler)
    return Loaders(train, evaluation(splits.val), evaluation(splits.test), train_sampler)


def training_model(model: nn.Module, compile: bool, dist: Dist, device: torch.device) -> nn.Module:
    """The module the training steps call: ``model`` (already on ``device``, channels_last if asked) wrapped
    in DistributedDataParallel under torchrun, then compiled when ``compile`` (``--compile``). Its parameters are
    ``model``'s (checkpoints and evaluation use ``model`` itself)."""
    train_model: nn.Module = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)
    if compile:
        train_model = torch.compile(train_model)
    return train_model
