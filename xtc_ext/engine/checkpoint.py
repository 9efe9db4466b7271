"""Checkpoints and run files: atomic writes, checkpoint loading with clear errors, and every RNG state.

- :func:`atomic_write`: the one way this package writes a file: into a temporary file in the same folder,
  flushed and fsync'ed, then renamed over the target. A crash, ``kill -9`` or full disk at any moment leaves
  either the old file or the new one, never a truncated one.
- :func:`save_checkpoint` / :func:`load_checkpoint`: ``torch.save`` through :func:`atomic_write`;
  loading with ``weights_only=True`` (no code is unpickled) and one :class:`CheckpointError` naming the file
  and what is wrong with it.
- :func:`capture_rng_state` / :func:`restore_rng_state`: Python, NumPy, torch CPU and CUDA, and the training
  loop's own generators (data order, regularizer draws), as plain tensors and values.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "atomic_write",
    "write_text",
    "copy_file",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, truncated or not one of ``python -m xtc_ext.train``.

    The message names the file and what is wrong with it (one line), e.g.
    ``cannot read checkpoint runs/x/last.pt: file is truncated or corrupt (PytorchStreamReader failed ...)``.
    """


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file next to it, which is fsync'ed and
    renamed over ``path``.

    Returns:
        ``Path(path)``.

    Raises:
        OSError: the write, fsync or rename failed (disk full, permission, ...); the temporary file is
            removed and any previous ``path`` is left untouched and loadable. The message says so.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e}{kept}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_file(src: PathLike, dst: PathLike) -> Path:
    """:func:`atomic_write` of a copy of ``src`` (e.g. ``last.pt`` -> ``best.pt``)."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` through :func:`atomic_write` (see its errors)."""
    return atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by ``python -m xtc_ext.train`` (``weights_only=True``).

    Raises:
        CheckpointError: ``path`` is missing, a folder, unreadable (permission), truncated or corrupt, not
            a torch file, or not a checkpoint of this program (no ``model`` / ``args`` entries). The
            one-line message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied") from e
    except Exception as e:  # truncated zip, pickle errors, unsafe globals: all "not a usable checkpoint"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: file is truncated, corrupt or not a torch "
                              f"checkpoint ({reason[:200]})") from e
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of python -m xtc_ext.train (no 'model'/'args' entries)")
    return state


def capture_rng_state(generators: Optional[Mapping[str, torch.Generator]] = None) -> Dict[str, Any]:
    """Every RNG state a training epoch draws from: Python ``random``, NumPy, torch CPU (dataset
    augmentation with ``--workers 0``), CUDA (all devices), and the loop's named ``generators`` (the
    DataLoader's shuffle generator ``"loader"``, the regularizer's ``"regularizer"``, ...). Stored as
    tensors and plain values so that the checkpoint loads with ``weights_only=True``."""
    py = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    for name, generator in (generators or {}).items():
        state[name] = generator.get_state()
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Optional[Mapping[str, torch.Generator]] = None) -> None:
    """Inverse of :func:`capture_rng_state`. A generator absent from ``state`` (a checkpoint of an older
    version) keeps its seeded state."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        if name in state:
            generator.set_state(state[name])
