"""Loads the compiled extension ``xtc_ext._C`` and checks that it matches the running torch and sources."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

_REBUILD = (
    "Rebuild it against the installed torch from the repository root with:\n"
    "    pip install --no-build-isolation --no-deps .\n"
    "(torch must be installed first; see README.md)."
)
_SOURCE_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


def source_hash(csrc: Path) -> str:
    """SHA-256 over the C++/CUDA sources in ``csrc`` (the same digest CMakeLists.txt embeds in ``_C``)."""
    lines = "".join(
        f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted(csrc.iterdir())
        if p.suffix in _SOURCE_SUFFIXES
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def _installed_package_dirs(package_dir: Path):
    """Other ``xtc_ext`` directories on ``sys.path`` holding a compiled ``_C`` (e.g. site-packages
    when Python runs from the repository root, where the source tree shadows the install)."""
    for entry in sys.path:
        candidate = Path(entry or ".").resolve() / "xtc_ext"
        if candidate != package_dir and any(candidate.glob("_C.*")):
            yield candidate


def _build_config(directory: Path) -> dict:
    """What CMake recorded next to ``_C`` beyond ``_C.build_info()``: ``nvcc_version`` ("" without CUDA)."""
    try:
        config = json.loads((directory / "_build_config.json").read_text())
    except (OSError, ValueError):
        return {"nvcc_version": ""}
    return {"nvcc_version": str(config.get("nvcc_version", ""))}


def load(package_path: list[str]) -> dict:
    """Import ``xtc_ext._C`` (which registers ``torch.ops.xtc_ext.*``) and return its build info.

    ``package_path`` is the package's ``__path__``; when the package is imported from the source
    tree, which holds no compiled module, the installed copy's directory is appended to it.

    Raises:
        ImportError: the extension is missing (the package was not built), fails to load
            (built against another torch: undefined symbols), was built against a torch version
            other than the running one, or was built from C++/CUDA sources that have changed since
            (checked when running from a source checkout; ``XTC_ALLOW_STALE_BUILD=1`` turns this one
            into a warning, for Python-only work while C++ sources are being edited). The message
            says how to rebuild.
    """
    package_dir = Path(package_path[0]).resolve()
    if not any(package_dir.glob("_C.*")):
        package_path.extend(str(d) for d in _installed_package_dirs(package_dir))
    try:
        _C = importlib.import_module("xtc_ext._C")
    except ImportError as exc:
        raise ImportError(
            f"xtc_ext: the compiled extension xtc_ext._C could not be loaded ({exc}). "
            f"The package was not built, or was built for another torch/Python. {_REBUILD}"
        ) from exc
    info = dict(_C.build_info())
    info.update(_build_config(Path(_C.__file__).parent))
    if info["torch_version"] != torch.__version__:
        raise ImportError(
            f"xtc_ext: the compiled extension was built against torch {info['torch_version']} "
            f"but torch {torch.__version__} is running (stale build). {_REBUILD}"
        )
    csrc = package_dir.parent / "csrc"
    if csrc.is_dir() and source_hash(csrc) != info["source_hash"]:
        message = (
            f"xtc_ext: the compiled extension ({_C.__file__}) was built from other C++/CUDA sources than "
            f"those in {csrc} (stale build). {_REBUILD}"
        )
        if os.environ.get("XTC_ALLOW_STALE_BUILD") != "1":
            raise ImportError(message)
        warnings.warn(message, stacklevel=2)
    return info
