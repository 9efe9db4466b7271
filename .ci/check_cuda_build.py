"""Checks of a CUDA build of xtc_ext on a machine without a GPU (run by .ci/cuda_torch_build.sh).

1. ``xtc_ext.build_info["with_cuda"]`` is True (and the architectures and nvcc are printed).
2. Every op of the ``xtc_ext`` namespace with a CPU kernel also has a CUDA kernel in the dispatcher.
3. ``cuobjdump --list-elf --list-ptx`` (path in ``XTC_CUOBJDUMP``) on the built ``_C`` shows SASS for
   sm_80, sm_86, sm_89 and sm_90 and for every ``-real`` entry of the build's architecture list, and PTX.
Exit status 1 with a line per failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

import xtc_ext
from xtc_ext import _C

REQUIRED_SASS = ("sm_80", "sm_86", "sm_89", "sm_90")


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


def _arch_key(sm: str) -> int:
    return int(re.sub(r"\D", "", sm))


def main() -> int:
    info = xtc_ext.build_info
    print(f"build_info: torch {info['torch_version']}, with_cuda={info['with_cuda']}, "
          f"cuda_arch_list={info['cuda_arch_list']}, nvcc {info.get('nvcc_version')}, _C={_C.__file__}")
    failures = [] if info["with_cuda"] else ["build_info['with_cuda'] is False"]
    failures += dispatcher_failures()
    failures += cuobjdump_failures(info["cuda_arch_list"])
    for line in failures:
        print(f"FAILED: {line}")
    print("CUDA build checks: " + ("FAILED" if failures else "all passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
