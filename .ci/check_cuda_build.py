"""Checks of a CUDA build of xtc_ext on a machine without a GPU (run by .ci/cuda_torch_build.sh).

1. ``xtc_ext.build_info["with_cuda"]`` is True (and the architectures and nvcc are printed).
2. Every op of the ``xtc_ext`` namespace with a CPU kernel also has a CUDA kernel in the dispatcher.
3. ``cuobjdump --list-elf --list-ptx`` (path in ``XTC_CUOBJDUMP``) on the built ``_C`` shows SASS for
   sm_80, sm_86, sm_89 and sm_90 and for every ``-real`` entry of the build's architecture list, and PTX.
4. The default architecture list (no ``TORCH_CUDA_ARCH_LIST``), from a configure only (CI compiles a shorter
   list): every architecture ``nvcc --list-gpu-code`` names from the oldest to the newest of torch's
   ``torch._C._cuda_getArchFlags()``, SASS each and PTX for the newest (docs/ops.md, "GPU build"), computed
   here independently of cmake/XtcCuda.cmake.
Exit status 1 with a line per failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import xtc_ext
from xtc_ext import _C

REQUIRED_SASS = ("sm_80", "sm_86", "sm_89", "sm_90")
ROOT = Path(__file__).resolve().parents[1]


def dispatcher_failures() -> list[str]:
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("xtc_ext::"))
    with_cpu = [n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")]
    missing = [n for n in with_cpu if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
    print(f"dispatcher: {len(names)} xtc_ext ops, {len(with_cpu)} with a CPU kernel, "
          f"{len(with_cpu) - len(missing)} of them with a CUDA kernel")
    failures = [f"no CUDA kernel for {n}" for n in missing]
    if not with_cpu:
        failures.append("no xtc_ext op has a CPU kernel (nothing registered?)")
    return failures


def cuobjdump_failures(arch_list: str) -> list[str]:
    tool = os.environ.get("XTC_CUOBJDUMP") or "cuobjdump"
    proc = subprocess.run([tool, "--list-elf", "--list-ptx", _C.__file__], capture_output=True, text=True)
    if proc.returncode != 0:
        return [f"cuobjdump failed ({proc.returncode}): {proc.stderr.strip()}"]
    sass = sorted(set(re.findall(r"ELF file\s+\d+:.*?\.(sm_\d+[af]?)\.cubin", proc.stdout)), key=_arch_key)
    ptx = sorted(set(re.findall(r"PTX file\s+\d+:.*?\.(sm_\d+[af]?)\.ptx", proc.stdout)), key=_arch_key)
    n_elf = len(re.findall(r"ELF file", proc.stdout))
    n_ptx = len(re.findall(r"PTX file", proc.stdout))
    print(f"cuobjdump: {n_elf} ELF (SASS) images for {' '.join(sass)}; {n_ptx} PTX images for {' '.join(ptx)}")
    wanted_sass = set(REQUIRED_SASS)
    wanted_ptx = set()
    for entry in filter(None, arch_list.split(",")):
        number = entry.removesuffix("-real")
        wanted_sass.add(f"sm_{number}")
        if not entry.endswith("-real"):
            wanted_ptx.add(f"sm_{number}")
    failures = [f"no SASS for {a}" for a in sorted(wanted_sass - set(sass), key=_arch_key)]
    failures += [f"no PTX for {a}" for a in sorted(wanted_ptx - set(ptx), key=_arch_key)]
    if not ptx:
        failures.append("no PTX at all (newer GPUs could not JIT-compile the kernels)")
    return failures


def expected_default_archs() -> str:
    """The default list in CUDA_ARCHITECTURES form, e.g. ``75-real;80-real;...;120``."""
    torch_sms = sorted(int(n) for n in re.findall(r"sm_(\d+)", torch._C._cuda_getArchFlags()))
    codes = subprocess.run(["nvcc", "--list-gpu-code"], capture_output=True, text=True, check=True).stdout
    keep = sorted({int(n) for n in re.findall(r"sm_(\d+)", codes) if torch_sms[0] <= int(n) <= torch_sms[-1]})
    return ";".join([f"{n}-real" for n in keep[:-1]] + [str(keep[-1])])


def default_arch_failures() -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    with tempfile.TemporaryDirectory() as build_dir:
        proc = subprocess.run([shutil.which("cmake") or "cmake", "-S", str(ROOT), "-B", build_dir,
                               f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True, env=env)
    found = re.search(r"xtc_ext: CUDA architectures (\S+) \(from", proc.stdout)
    if proc.returncode != 0 or not found:
        return [f"configure with the default architecture list failed ({proc.returncode}): {proc.stderr[-2000:]}"]
    expected = expected_default_archs()
    print(f"default architecture list (configure only): {found.group(1)}")
    failures = [] if found.group(1) == expected else [f"default architectures {found.group(1)} != {expected}"]
    missing = [sm for sm in REQUIRED_SASS if f"{sm.removeprefix('sm_')}-real" not in found.group(1).split(";")]
    return failures + [f"default architecture list lacks {sm}" for sm in missing]


def _arch_key(sm: str) -> int:
    return int(re.sub(r"\D", "", sm))


def main() -> int:
    info = xtc_ext.build_info
    print(f"build_info: torch {info['torch_version']}, with_cuda={info['with_cuda']}, "
          f"cuda_arch_list={info['cuda_arch_list']}, nvcc {info.get('nvcc_version')}, _C={_C.__file__}")
    failures = [] if info["with_cuda"] else ["build_info['with_cuda'] is False"]
    failures += dispatcher_failures()
    failures += cuobjdump_failures(info["cuda_arch_list"])
    failures += default_arch_failures()
    for line in failures:
        print(f"FAILED: {line}")
    print("CUDA build checks: " + ("FAILED" if failures else "all passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
