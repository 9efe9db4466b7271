"""Load an exported model and run it: :func:`load_exported`, and ``python -m xtc_ext.inference.runner`` (the fresh
process in which :mod:`xtc_ext.inference.exporting` checks that a file loads on its own).

Usage::

    python -m xtc_ext.inference.runner {export,aoti,onnx} MODEL_FILE INPUT.pt OUTPUT.pt

reads a float32 ``[N, 3, H, W]`` tensor saved with ``torch.save`` and saves the model's outputs (a tuple of
float32 ``[N, C_t, H, W]``, task order of the export) with ``torch.save``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Tuple, Union

import torch
from torch import Tensor

import xtc_ext  # noqa: F401  (registers torch.ops.xtc_ext.*, which the export and AOTInductor files call)

__all__ = ["FORMATS", "load_exported"]

FORMATS = ("export", "aoti", "onnx")
"""``export``: ``torch.export.save`` of the ExportedProgram; ``aoti``: an AOTInductor package; ``onnx``: ONNX."""


def load_exported(fmt: str, path: Union[str, Path]) -> Callable[[Tensor], Tuple[Tensor, ...]]:
    """A callable ``image [N, 3, H, W] float32 (CPU) -> tuple of [N, C_t, H, W]`` of an exported file.

    ``export``: ``torch.export.load(path).module()``; ``aoti``: ``torch._inductor.aoti_load_package``; ``onnx``:
    an ``onnxruntime.InferenceSession`` on the CPU.

    Raises:
        ValueError: an unknown ``fmt`` (named). ImportError: ``onnx`` without onnxruntime installed.
    """
    path = str(path)
    if fmt == "export":
        module = torch.export.load(path).module()
        return lambda image: tuple(module(image))
    if fmt == "aoti":
        runner = torch._inductor.aoti_load_package(path)
        return lambda image: tuple(runner(image))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda image: tuple(torch.from_numpy(o) for o in session.run(None, {name: image.numpy()}))
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def main(argv=None) -> None:
    """``python -m xtc_ext.inference.runner FORMAT MODEL_FILE INPUT.pt OUTPUT.pt`` (module docstring)."""
    fmt, model_file, inputs, outputs = argv if argv is not None else sys.argv[1:]
    run = load_exported(fmt, model_file)
    with torch.no_grad():
        torch.save(run(torch.load(inputs, weights_only=True)), outputs)


if __name__ == "__main__":
    main()
