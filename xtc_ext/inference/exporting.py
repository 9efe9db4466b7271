"""Exports of a trained model's evaluation graph (:class:`~xtc_ext.inference.loading.InferenceModel`), each checked
against eager.

* ``export``: ``torch.export`` (non-strict) in float32 on the CPU, saved with ``torch.export.save``. The fused ops
  (``torch.ops.xtc_ext.*``) are traced through their fake (Meta) kernels (``meta::`` in ``csrc/<op>.cpp``) and
  stay as calls in the graph, so loading needs ``import xtc_ext``. The batch, height and width are dynamic
  (height and width multiples of 32, as the models require); a height or width of 32 at export (one 32-pixel
  cell) may stay fixed where a layer of the model specialises that size of 1 (:func:`input_spec` says which;
  export at 64 or more; docs/inference.md).
  Results the deployed model does not use (MT-CP computes its CFM coherence losses in ``forward``) are removed
  from the graph.
* ``aoti``: that program compiled by AOTInductor (``torch._inductor.aoti_compile_and_package``) into a ``.pt2``
  package, loaded with ``torch._inductor.aoti_load_package``.
* ``onnx``: that program with the fused ops decomposed to standard operators (``sigmoid_gate(x, g)`` ->
  ``x * sigmoid(g)``; the losses are not in the pruned graph), exported by ``torch.onnx.export(..., dynamo=True)``;
  needs the ``onnx`` and ``onnxscript`` packages (refused, naming the missing ones, otherwise) and, for the
  checks, ``onnxruntime``.

:func:`check_export` compares the file's outputs with eager float32 on the ten frames shipped with the package
(:data:`xtc_ext.data.NYUV2_TEST10`, fitted to the model like ``python -m xtc_ext.predict`` does): in this process
and in a fresh one (:mod:`xtc_ext.inference.runner`), as the maximum absolute difference per task.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.export import Dim, ExportedProgram

from xtc_ext.data import NYUV2_TEST10
from xtc_ext.engine import UsageError
from xtc_ext.inference.images import prepare, read_image
from xtc_ext.inference.loading import InferenceModel, TrainedModel
from xtc_ext.inference.runner import FORMATS, load_exported

__all__ = ["FORMATS", "ONNX_EXPORT_PACKAGES", "missing_packages", "export_program", "input_spec", "decompose_fused_ops",
           "write_export", "frame_batch", "max_abs_differences", "check_export", "onnx_check_available"]

log = logging.getLogger("xtc_ext.inference")

ONNX_EXPORT_PACKAGES = ("onnx", "onnxscript")
"""What ``torch.onnx.export(..., dynamo=True)`` needs beyond torch."""

_DECOMPOSITIONS: Dict[Any, Callable[..., Tensor]] = {
    torch.ops.xtc_ext.sigmoid_gate.default: lambda x, gate_logits: x * torch.sigmoid(gate_logits),
}
"""Standard-operator forms of the fused ops that can stay in an evaluation graph (``xtc_ext.reference``)."""


def missing_packages(names: Sequence[str]) -> List[str]:
    """The names in ``names`` that are not importable here."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def export_program(trained: TrainedModel, size: Tuple[int, int], example_batch: int = 2) -> ExportedProgram:
    """``torch.export`` of the trained model's evaluation graph in float32 on the CPU (module docstring).

    Args:
        trained: the model (moved to the CPU, float32).
        size: the ``(H, W)`` of the tracing example, multiples of 32.
        example_batch: batch of the tracing example (>= 2: a batch of 1 would specialise the batch dimension).

    Returns:
        The program: input ``image [N, 3, H, W]`` float32 (N, H, W dynamic: :func:`input_spec`), outputs a tuple
        of ``[N, C_t, H, W]`` in ``trained.tasks`` order, without the nodes whose results no output uses.
    """
    trained.model.to("cpu", torch.float32, memory_format=torch.contiguous_format)
    net = InferenceModel(trained).eval()
    example = torch.rand(example_batch, 3, *size)
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    graph = program.graph_module.graph
    graph.eliminate_dead_code(is_impure_node=lambda node: node.op in ("placeholder", "output"))
    program.graph_module.recompile()
    return program


def input_spec(program: ExportedProgram) -> List[Union[str, int]]:
    """The input shape of an exported program: ``["N", 3, "H", "W"]``, a dynamic dimension by its name and a
    fixed one by its size (e.g. ``["N", 3, 32, "W"]`` for a model exported at a height of 32)."""
    name = program.graph_signature.user_inputs[0]
    shape = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"].shape
    return [label if isinstance(dim, torch.SymInt) else int(dim) for label, dim in zip(("N", "C", "H", "W"), shape)]


def decompose_fused_ops(program: ExportedProgram) -> ExportedProgram:
    """``program`` with every ``torch.ops.xtc_ext`` op replaced by standard operators.

    Raises:
        UsageError: a fused op without a standard form is still in the graph (named).
    """
    left = {str(n.target) for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("xtc_ext.") and n.target not in _DECOMPOSITIONS}
    if left:
        raise UsageError(f"--format onnx: the graph uses fused ops without a standard ONNX form: {', '.join(sorted(left))}")
    return program.run_decompositions(dict(_DECOMPOSITIONS))


def _atomic_file(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        target = Path(tmp) / path.name
        write(target)
        os.replace(target, path)
    return path


def write_export(fmt: str, program: ExportedProgram, path: Path, task_names: Sequence[str]) -> Path:
    """Write ``program`` in format ``fmt`` to ``path`` (atomically: the file is complete or absent).

    Raises:
        UsageError: ``fmt`` unknown, or ``onnx`` without its packages (the missing ones named).
    """
    if fmt == "export":
        return _atomic_file(path, lambda tmp: torch.export.save(program, str(tmp)))
    if fmt == "aoti":
        if path.suffix != ".pt2":
            raise UsageError(f"--format aoti writes a .pt2 package; --output must end with .pt2, got {path}")
        return _atomic_file(path, lambda tmp: torch._inductor.aoti_compile_and_package(program, package_path=str(tmp)))
    if fmt == "onnx":
        missing = missing_packages(ONNX_EXPORT_PACKAGES)
        if missing:
            raise UsageError(f"--format onnx needs the Python packages {', '.join(ONNX_EXPORT_PACKAGES)}; missing here: "
                             f"{', '.join(missing)} (pip install {' '.join(missing)}; onnxruntime to check the file)")
        standard = decompose_fused_ops(program)
        shape = next(n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder"
                     and n.name in program.graph_signature.user_inputs)
        example = torch.rand(2, *(int(s) for s in shape[1:]))

        def write(tmp: Path) -> None:
            torch.onnx.export(standard, (example,), input_names=["image"], output_names=list(task_names),
                              dynamo=True).save(str(tmp))

        return _atomic_file(path, write)
    raise UsageError(f"--format must be one of {FORMATS}, got {fmt!r}")


def frame_batch(size: Tuple[int, int], normalize: bool, root: Path = NYUV2_TEST10) -> Tensor:
    """The shipped frames (``root/rgb/*.png``) fitted to the model: float32 ``[10, 3, H, W]``."""
    files = sorted((Path(root) / "rgb").glob("*.png"))
    return torch.stack([prepare(read_image(f), size, normalize)[0] for f in files])


def max_abs_differences(tasks: Sequence[str], reference: Sequence[Tensor], other: Sequence[Tensor]) -> Dict[str, float]:
    """Per task, ``max |reference - other|`` (float64; NaN anywhere gives NaN)."""
    return {t: float((a.double() - b.double()).abs().max()) for t, a, b in zip(tasks, reference, other)}


def _fresh_process(fmt: str, path: Path, images: Tensor) -> Tuple[Tensor, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save(images, inputs)
        cmd = [sys.executable, "-m", "xtc_ext.inference.runner", fmt, str(path), str(inputs), str(outputs)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
        if done.returncode != 0:
            raise RuntimeError(f"{path} did not load in a fresh process: {done.stderr.strip()[-2000:]}")
        return tuple(torch.load(outputs, weights_only=True))


def check_export(fmt: str, path: Path, trained: TrainedModel, size: Tuple[int, int],
                 fresh_process: bool = True) -> Dict[str, Any]:
    """Outputs of the file ``path`` against eager float32 on the shipped frames (module docstring).

    Returns:
        ``{"frames": 10, "max_abs_diff": {task: float}, "fresh_process_max_abs_diff": {task: float} or None}``
        (``None`` when ``fresh_process`` is False).

    Raises:
        RuntimeError: the file does not load or run in the fresh process (its error).
    """
    images = frame_batch(size, trained.normalize)
    trained.model.to("cpu", torch.float32, memory_format=torch.contiguous_format)
    with torch.no_grad():
        eager = InferenceModel(trained).eval()(images)
        exported = load_exported(fmt, path)(images)
    result: Dict[str, Any] = {"frames": int(images.shape[0]),
                              "max_abs_diff": max_abs_differences(trained.tasks, eager, exported),
                              "fresh_process_max_abs_diff": None}
    if fresh_process:
        result["fresh_process_max_abs_diff"] = max_abs_differences(trained.tasks, eager,
                                                                   _fresh_process(fmt, path, images))
    return result


def onnx_check_available() -> Optional[str]:
    """None when onnxruntime is importable, else why an ONNX file cannot be checked here."""
    return None if not missing_packages(("onnxruntime",)) else "onnxruntime is not installed"
