"""Devices, seeding and data loaders of a run."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["resolve_device", "seed_everything", "seed_worker", "make_loader"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises:
        SystemExit: a CUDA device is requested but CUDA is not available (the message names ``--device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"error: --device {name!r} is not a device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed (which the
    loader derives from its generator), so augmentation in workers is reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int, generator: torch.Generator,
                device: torch.device) -> DataLoader:
    """A DataLoader that owns ``generator``: iterating it never draws from the global torch RNG, so its
    order (and the workers' seeds) is part of the checkpointed state."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      worker_init_fn=seed_worker, generator=generator, pin_memory=device.type == "cuda")
