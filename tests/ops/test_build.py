"""CMake refuses a CUDA toolkit whose major version differs from torch's CUDA, and XTC_WITH_CUDA=ON with a
torch without CUDA, each with a message saying what to install (a mismatched toolkit would link a CUDA
runtime, libcudart.so.<major>, that torch does not ship). Needs nvcc and cmake; configure only, no build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
CMAKE = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
pytestmark = pytest.mark.skipif(NVCC is None or CMAKE is None, reason="needs nvcc and cmake")


def _configure(tmp_path, *options):
    cmd = [CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython_EXECUTABLE={sys.executable}",
           "-DXTC_WITH_CUDA=ON", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, re.sub(r"\s+", " ", proc.stdout + proc.stderr)


def _nvcc_major():
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    return int(re.search(r"release (\d+)\.", out).group(1))


def test_cmake_refuses_mismatched_cuda_major(tmp_path):
    other = _nvcc_major() - 1
    rc, out = _configure(tmp_path, f"-DXTC_TORCH_CUDA_VERSION={other}.8")
    assert rc != 0
    assert "CUDA toolkit major version mismatch" in out
    assert f"built with CUDA {other}.8" in out and f"Install a CUDA {other}.x toolkit" in out


def test_cmake_refuses_cuda_build_without_cuda_torch(tmp_path):
    import torch

    if torch.version.cuda:
        pytest.skip("the installed torch has CUDA")
    rc, out = _configure(tmp_path)
    assert rc != 0 and "has no CUDA" in out
