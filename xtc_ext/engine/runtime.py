"""Devices, seeding, data loaders, progress bars and the precision settings of a run (``--amp``,
``--channels-last``)."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from xtc_ext.engine.errors import UsageError

__all__ = ["resolve_device", "seed_everything", "seed_worker", "make_loader", "AMP_CHOICES", "SWITCH_CHOICES",
           "native_bf16", "resolve_amp", "resolve_channels_last", "autocast", "progress_bar"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises:
        UsageError: a CUDA device is requested but CUDA is not available (the message names ``--device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r} is not a device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} requested but CUDA is not available")
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
                device: torch.device, sampler: Optional[Sampler] = None) -> DataLoader:
    """A DataLoader that owns ``generator``: iterating it never draws from the global torch RNG, so its
    order (and the workers' seeds) is part of the checkpointed state. ``sampler`` (distributed runs)
    replaces the shuffling."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, worker_init_fn=seed_worker, generator=generator,
                      pin_memory=device.type == "cuda")


AMP_CHOICES = ("auto", "none", "bf16", "fp16")
"""``--amp`` choices. ``auto``: bf16 where the device computes it natively, none otherwise (:func:`resolve_amp`)."""

SWITCH_CHOICES = ("auto", "on", "off")
"""``--channels-last`` choices. ``auto``: on wherever bf16 autocast is used or on CUDA
(:func:`resolve_channels_last`)."""


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 natively: a CUDA device with bf16 support, or a CPU with the AVX-512
    BF16 or AMX instructions (oneDNN's bf16 convolutions; without them bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def resolve_amp(choice: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` on ``device`` (``None``: full precision).

    ``auto`` is bf16 where :func:`native_bf16` holds (no gradient scaler needed, the fused ops accumulate in
    fp32; measured on the ten frames: the fp32 run's loss within 10 % and its mIoU within 0.05, and several
    times faster with channels_last, benchmarks/RESULTS.md), full precision elsewhere.

    Raises:
        UsageError: fp16 on the CPU (no fp16 autocast for CPU convolutions); an unknown choice.
    """
    if choice == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if choice == "none":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device (use --amp bf16 on the CPU)")
        return torch.float16
    raise UsageError(f"--amp must be one of {AMP_CHOICES}, got {choice!r}")


def resolve_channels_last(choice: str, device: torch.device, amp: Optional[torch.dtype] = None) -> bool:
    """Whether ``--channels-last`` puts the model and the images in ``torch.channels_last`` on ``device``:
    ``auto`` is on with CUDA (cuDNN's fast layout) and with bf16 autocast on the CPU (oneDNN's bf16
    convolutions are fast in NHWC and slow in NCHW), off for fp32 on the CPU."""
    if choice == "auto":
        return device.type == "cuda" or amp is not None
    return choice == "on"


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a null context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress_bar(iterable: Iterable, enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (``kwargs``: tqdm's) when ``enabled`` (``--progress``) and tqdm's stream,
    stderr, is a terminal. Logs written to a file or a pipe get no bar, hence no escape codes; their progress
    is the one log line per epoch (tqdm's ``disable=None``: disabled on a non-TTY)."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
