"""The CUDA device code run on the CPU: csrc/*.cu compiled as host C++ against the launch emulator of
tests/cuda_host (g++, the CUDA toolkit's headers, no GPU), loaded with ctypes, behind functions with the
signatures and results of the internal ops (``torch.ops.xtc_ext.<name>``), so that a test calls the CPU
kernel and the device code the same way.

``HOST.<op>(...)`` mirrors what the CUDA glue (csrc/<op>.cpp, namespace gpu) does around each launcher (contiguous inputs, bool mask,
class weights in the loss dtype, workspace, upstream-gradient mode) and then runs the launcher, i.e. the
device functors, the kernel skeleton (grid-stride loops, vector paths and their fallbacks) and the
two-stage reduction in the device's order. ``launches()`` lists the (grid, block) of every launch since
``clear_launches()``. How and why: docs/ops.md, "The device code executed on the host".

The library is built once per content of its sources into build/device-host/<digest>/ (about a minute on
two cores). ``HOST`` is None with ``SKIP_REASON`` set where g++ or the CUDA headers are missing; a failed
build raises (it is a finding, never a skip).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
EMULATOR = ROOT / "tests" / "cuda_host"
DEVICE_SOURCES = sorted(p.name for p in CSRC.glob("*.cu"))  # every op's .cu and cuda_common.cu
FLAGS = ["-std=c++20", "-O2", "-fPIC", "-fno-strict-aliasing", "-U_FORTIFY_SOURCE", "-Wall",
         "-Wno-unknown-pragmas", "-include", str(EMULATOR / "emulator.h"), f"-I{CSRC}", f"-I{EMULATOR}"]

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include folder (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_fp16.h").is_file() and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return Path(c) / "include"
    return None


def _digest(include: Path) -> str:
    h = hashlib.sha256(" ".join(FLAGS).encode())
    files = sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cuh")) + [CSRC / "cuda_kernels.h"]
    for f in files + sorted(EMULATOR.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    h.update(str(include).encode())
    return h.hexdigest()[:16]


def build() -> Path:
    """Compiles (once per source digest) and returns the shared library of the device code on the host."""
    include = cuda_include_dir()
    out_dir = ROOT / "build" / "device-host" / _digest(include)
    lib = out_dir / "libxtc_device_host.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = [*FLAGS, f"-I{include}"]
    units = [(CSRC / s, ["-x", "c++"]) for s in DEVICE_SOURCES]
    units += [(EMULATOR / "emulator.cpp", []), (EMULATOR / "launchers.cpp", []), (EMULATOR / "selftest.cu", ["-x", "c++"])]

    def compile_unit(unit):
        src, lang = unit
        obj = out_dir / (src.name + ".o")
        proc = subprocess.run(["g++", *flags, *lang, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"host compile of {src.name} failed:\n{proc.stderr[-4000:]}")
        return str(obj)

    with ThreadPoolExecutor(max_workers=max(1, min(len(units), os.cpu_count() or 1))) as pool:
        objects = list(pool.map(compile_unit, units))
    tmp = lib.with_suffix(".tmp.so")
    subprocess.run(["g++", "-shared", "-o", str(tmp), *objects], check=True, capture_output=True)
    tmp.replace(lib)
    return lib


def _skip_reason() -> str | None:
    if shutil.which("g++") is None:
        return "g++ not found: the device code cannot be compiled as host code"
    if cuda_include_dir() is None:
        return "no CUDA toolkit headers (cuda_fp16.h) under $CUDA_HOME, /usr/local/cuda or nvcc's folder"
    return None


def _ptr(t: torch.Tensor | None):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _layout(x: torch.Tensor) -> tuple[int, int, int]:
    """(N, C, P) of an [N, C, *] input (the class / channel dimension 1)."""
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """kernel_mask (csrc/checks.cpp): a contiguous bool mask."""
    if mask is None:
        return None
    return (mask if mask.dtype == torch.bool else mask != 0).contiguous()


def _is_broadcast_scalar(t: torch.Tensor) -> bool:
    return t.dim() > 0 and t.numel() > 0 and all(s == 0 for s in t.stride())


def _grad_loss(grad: torch.Tensor, dtype: torch.dtype, reduction: str) -> tuple[torch.Tensor, int]:
    """prepare_grad_loss + grad_mode (csrc/common.h, cuda_glue.h): the values and how the kernel reads them."""
    acc = _acc(dtype)
    if reduction == "none" and not _is_broadcast_scalar(grad):
        return grad.to(acc).contiguous(), REDUCTION_CODE["none"]
    one = grad.as_strided((), ()) if reduction == "none" else grad
    return one.to(acc).contiguous(), REDUCTION_CODE["mean" if reduction == "mean" else "sum"]


class DeviceOnHost:
    """The internal ops of the CUDA glue (csrc/<op>.cpp), with the launchers run on the host (CPU tensors in and out)."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.xtc_emu_last_error.restype = ctypes.c_char_p
        self.lib.xtc_reduction_blocks.restype = ctypes.c_int64
        self.lib.xtc_emu_num_launches.restype = ctypes.c_int64
        self.lib.xtc_reduction_blocks.argtypes = [ctypes.c_int64]

    def _call(self, name: str, *args) -> None:
        conv = [ctypes.c_int64(a) if isinstance(a, int) and not isinstance(a, bool)
                else ctypes.c_bool(a) if isinstance(a, bool)
                else ctypes.c_double(a) if isinstance(a, float) else a for a in args]
        rc = getattr(self.lib, f"xtc_{name}")(*conv)
        if rc != 0:
            raise RuntimeError(f"{name}: launch error {rc}: {self.lib.xtc_emu_last_error().decode()}")

    def clear_launches(self) -> None:
        self.lib.xtc_emu_clear_launches()

    def launches(self) -> list[tuple[int, int]]:
        out = []
        for i in range(self.lib.xtc_emu_num_launches()):
            grid, block = ctypes.c_int64(), ctypes.c_int64()
            self.lib.xtc_emu_launch(ctypes.c_int64(i), ctypes.byref(grid), ctypes.byref(block))
            out.append((grid.value, block.value))
        return out

    def _loss_outputs(self, x, reduction, none_shape):
        acc = _acc(x.dtype)
        loss = torch.empty(none_shape if reduction == "none" else (), dtype=acc)
        n, _, p = _layout(x)
        workspace = torch.empty(2 * self.lib.xtc_reduction_blocks(n * p), dtype=acc)
        return loss, torch.empty((), dtype=acc), workspace

    # masked_cross_entropy --------------------------------------------------------------------
    def masked_cross_entropy_fwd(self, logits, target, weight, ignore_index, label_smoothing, reduction):
        logits, target = logits.contiguous(), target.contiguous()
        weight = None if weight is None else weight.to(_acc(logits.dtype)).contiguous()
        n, c, p = _layout(logits)
        pixel_shape = (n, *logits.shape[2:])
        loss, denom, workspace = self._loss_outputs(logits, reduction, pixel_shape)
        log_norm = torch.empty(pixel_shape, dtype=_acc(logits.dtype))
        flag = torch.zeros((), dtype=torch.int32)
        self._call("masked_cross_entropy_forward", DTYPE_CODE[logits.dtype], _ptr(logits), _ptr(target),
                   target.dtype == torch.uint8, _ptr(weight), n, c, p, ignore_index, float(label_smoothing),
                   REDUCTION_CODE[reduction], _ptr(loss), _ptr(log_norm), _ptr(denom), _ptr(workspace), _ptr(flag))
        if flag.item() != 0:
            raise RuntimeError("masked_cross_entropy: target contains a class index outside [0, C)")
        return loss, log_norm, denom

    def masked_cross_entropy_bwd(self, grad_loss, logits, target, weight, log_norm, denom, ignore_index,
                                 label_smoothing, reduction):
        logits, target = logits.contiguous(), target.contiguous()
        acc = _acc(logits.dtype)
        weight = None if weight is None else weight.to(acc).contiguous()
        grad, mode = _grad_loss(grad_loss, logits.dtype, reduction)
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
        n, c, p = _layout(logits)
        self._call("masked_cross_entropy_backward", DTYPE_CODE[logits.dtype], _ptr(grad), _ptr(logits), _ptr(target),
                   target.dtype == torch.uint8, _ptr(weight), n, c, p, ignore_index, float(label_smoothing), mode,
                   _ptr(log_norm.to(acc).contiguous()), _ptr(denom.to(acc).contiguous()), _ptr(out))
        return out

    # soft_cross_entropy ----------------------------------------------------------------------
    def soft_cross_entropy_fwd(self, logits, target_logits, mask, reduction):
        logits, target_logits, mask = logits.contiguous(), target_logits.contiguous(), _mask(mask)
        n, c, p = _layout(logits)
        pixel_shape = (n, *logits.shape[2:])
        loss, denom, workspace = self._loss_outputs(logits, reduction, pixel_shape)
        log_norm = torch.empty(pixel_shape, dtype=_acc(logits.dtype))
        self._call("soft_cross_entropy_forward", DTYPE_CODE[logits.dtype], _ptr(logits), _ptr(target_logits),
                   _ptr(mask), n, c, p, REDUCTION_CODE[reduction], _ptr(loss), _ptr(log_norm), _ptr(denom),
                   _ptr(workspace))
        return loss, log_norm, denom

    def soft_cross_entropy_bwd(self, grad_loss, logits, target_logits, mask, log_norm, denom, reduction):
        logits, target_logits, mask = logits.contiguous(), target_logits.contiguous(), _mask(mask)
        acc = _acc(logits.dtype)
        grad, mode = _grad_loss(grad_loss, logits.dtype, reduction)
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
        n, c, p = _layout(logits)
        self._call("soft_cross_entropy_backward", DTYPE_CODE[logits.dtype], _ptr(grad), _ptr(logits),
                   _ptr(target_logits), _ptr(mask), n, c, p, mode, _ptr(log_norm.to(acc).contiguous()),
                   _ptr(denom.to(acc).contiguous()), _ptr(out))
        return out

    # masked_l1_loss --------------------------------------------------------------------------
    def masked_l1_loss_fwd(self, pred, target, mask, invalid_value, reduction):
        pred, target, mask = pred.contiguous(), target.contiguous(), _mask(mask)
        n, c, p = _layout(pred)
        loss, denom, workspace = self._loss_outputs(pred, reduction, tuple(pred.shape))
        self._call("masked_l1_loss_forward", DTYPE_CODE[pred.dtype], _ptr(pred), _ptr(target), _ptr(mask),
                   invalid_value is not None, float(invalid_value or 0.0), n, c, p, REDUCTION_CODE[reduction],
                   _ptr(loss), _ptr(denom), _ptr(workspace))
        return loss, denom

    def masked_l1_loss_bwd(self, grad_loss, pred, target, mask, denom, invalid_value, reduction):
        pred, target, mask = pred.contiguous(), target.contiguous(), _mask(mask)
        grad, mode = _grad_loss(grad_loss, pred.dtype, reduction)
        out = torch.empty_like(pred, memory_format=torch.contiguous_format)
        n, c, p = _layout(pred)
        self._call("masked_l1_loss_backward", DTYPE_CODE[pred.dtype], _ptr(grad), _ptr(pred), _ptr(target),
                   _ptr(mask), invalid_value is not None, float(invalid_value or 0.0), n, c, p, mode,
                   _ptr(denom.to(_acc(pred.dtype)).contiguous()), _ptr(out))
        return out

    # cosine_similarity_loss (channel dimension 1) ---------------------------------------------
    def cosine_similarity_loss_fwd(self, a, b, mask, eps, reduction, dim=1):
        assert dim == 1, "the host mirror takes the channel dimension 1"
        a, b, mask = a.contiguous(), b.contiguous(), _mask(mask)
        n, c, p = _layout(a)
        loss, denom, workspace = self._loss_outputs(a, reduction, (n, *a.shape[2:]))
        self._call("cosine_similarity_loss_forward", DTYPE_CODE[a.dtype], _ptr(a), _ptr(b), _ptr(mask), float(eps),
                   n, c, p, REDUCTION_CODE[reduction], _ptr(loss), _ptr(denom), _ptr(workspace))
        return loss, denom

    def cosine_similarity_loss_bwd(self, grad_loss, a, b, mask, denom, eps, reduction, dim=1):
        assert dim == 1, "the host mirror takes the channel dimension 1"
        a, b, mask = a.contiguous(), b.contiguous(), _mask(mask)
        grad, mode = _grad_loss(grad_loss, a.dtype, reduction)
        grad_a = torch.empty_like(a, memory_format=torch.contiguous_format)
        grad_b = torch.empty_like(b, memory_format=torch.contiguous_format)
        n, c, p = _layout(a)
        self._call("cosine_similarity_loss_backward", DTYPE_CODE[a.dtype], _ptr(grad), _ptr(a), _ptr(b), _ptr(mask),
                   float(eps), n, c, p, mode, _ptr(denom.to(_acc(a.dtype)).contiguous()), _ptr(grad_a), _ptr(grad_b))
        return grad_a, grad_b

    # sigmoid_gate (contiguous operands of one shape) -------------------------------------------
    def sigmoid_gate(self, x, gate):
        x, gate = x.contiguous(), gate.contiguous()
        out = torch.empty_like(x)
        self._call("sigmoid_gate_forward", DTYPE_CODE[x.dtype], _ptr(x), _ptr(gate), x.numel(), _ptr(out))
        return out

    def sigmoid_gate_bwd(self, grad_out, x, gate):
        x, gate = x.contiguous(), gate.contiguous()
        scalar = _is_broadcast_scalar(grad_out)
        grad_out = grad_out if scalar else grad_out.contiguous()
        grad_x, grad_gate = torch.empty_like(x), torch.empty_like(x)
        self._call("sigmoid_gate_backward", DTYPE_CODE[x.dtype], _ptr(grad_out), scalar, _ptr(x), _ptr(gate),
                   x.numel(), _ptr(grad_x), _ptr(grad_gate))
        return grad_x, grad_gate


SKIP_REASON = _skip_reason()
_HOST: DeviceOnHost | None = None


def host() -> DeviceOnHost:
    """The device code on the host (built on first use)."""
    global _HOST
    if _HOST is None:
        _HOST = DeviceOnHost(build())
    return _HOST
