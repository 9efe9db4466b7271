"""Loads the compiled extension ``xtc_ext._C`` and checks that it matches the running torch."""

from __future__ import annotations

import torch

_REBUILD = (
    "Rebuild it against the installed torch from the repository root with:\n"
    "    pip install --no-build-isolation --no-deps .\n"
    "(torch must be installed first; see README.md)."
)


def load() -> dict:
    """Import ``xtc_ext._C`` (which registers ``torch.ops.xtc_ext.*``) and return its build info.

    Raises:
        ImportError: the extension is missing (the package was not built), fails to load
            (built against another torch: undefined symbols), or was built against a torch
            version other than the running one. The message says how to rebuild.
    """
    try:
        from xtc_ext import _C
    except ImportError as exc:
        raise ImportError(
            f"xtc_ext: the compiled extension xtc_ext._C could not be loaded ({exc}). "
            f"The package was not built, or was built for another torch/Python. {_REBUILD}"
        ) from exc
    info = dict(_C.build_info())
    if info["torch_version"] != torch.__version__:
        raise ImportError(
            f"xtc_ext: the compiled extension was built against torch {info['torch_version']} "
            f"but torch {torch.__version__} is running (stale build). {_REBUILD}"
        )
    return info
