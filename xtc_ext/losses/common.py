"""Helpers shared by the loss modules of :mod:`xtc_ext.losses` (XTasC-Net and MT-CP).

- :data:`LOSS_IMPLS`: the ``--loss-impl`` choices, modules with the same op functions and signatures
  (:mod:`xtc_ext.ops`, the fused kernels, and :mod:`xtc_ext.reference`, their eager PyTorch references).
- :func:`to_accumulation`: a tensor in its accumulation dtype, float32 (float64 for float64 input),
  the convention of every op of the library (docs/ops.md).
- :func:`check_choice`, :func:`check_nchw`: argument checks whose errors name the argument.
"""

from __future__ import annotations

from typing import Collection, Optional

import torch
from torch import Tensor

from xtc_ext import ops, reference

LOSS_IMPLS = {"fused": ops, "eager": reference}
"""``--loss-impl`` choices: modules with the same op functions and signatures."""


def to_accumulation(t: Tensor) -> Tensor:
    """``t`` in its accumulation dtype: float64 stays float64, every other dtype becomes float32."""
    return t if t.dtype == torch.float64 else t.float()


def check_choice(name: str, value: str, choices: Collection[str]) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


def check_nchw(name: str, t: Tensor, channels: Optional[int] = None) -> None:
    """Check that ``t`` is a 4-D ``[N, C, H, W]`` tensor (with ``C == channels`` when given).

    Raises:
        TypeError: ``t`` is not a tensor. ValueError: wrong rank or channel count (names ``name``).
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 4 or (channels is not None and t.shape[1] != channels):
        want = f"[N,{channels},H,W]" if channels is not None else "[N,C,H,W]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
