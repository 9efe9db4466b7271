#!/usr/bin/env bash
# CI step (called by .ci/run): build xtc_ext against the CUDA build of torch, with the machine's nvcc
# exactly as a user would (`pip install --no-build-isolation .`, the first nvcc on PATH), no GPU needed.
# Then assert: build_info says with_cuda; every op of torch.ops.xtc_ext that has a CPU kernel also has a
# CUDA kernel in the dispatcher; the built _C holds SASS for sm_80/86/89/90 and PTX (cuobjdump); and
# the op tests (tests/ops) pass against this build on the CPU. Without nvcc: one line, skipped.
#
# Environment: XTC_CUDA_VENV (default .venv-cuda, reused when its torch is already the CUDA build),
# XTC_CUDA_TORCH (default 2.13.0, the README's torch), TORCH_CUDA_ARCH_LIST (default here
# "8.0;8.6;8.9;9.0+PTX": A100, A10/RTX 30xx, L4/RTX 40xx, H100 SASS and PTX, about 5 of the 12 minutes the
# full default list takes on 2 cores; "default" builds the user's default list of docs/ops.md, "GPU
# build"; that list itself is checked by a configure in check_cuda_build.py), XTC_CUDA_BUILD_DIR
# (default build/cuda: its own CMake folder, never the CPU build's build/{wheel_tag}).
# Where the package index cannot be reached (no network) the step says so in one line and is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null 2>&1; then
  echo ".ci/cuda_torch_build.sh: skipped (no nvcc on PATH: the CUDA kernels cannot be compiled here)"
  exit 0
fi
index=https://pypi.org/simple/torch/
if ! python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=20)" "$index" >/dev/null 2>&1; then
  echo ".ci/cuda_torch_build.sh: skipped (the package index $index cannot be reached: no CUDA torch to build against)"
  exit 0
fi
if [ "${TORCH_CUDA_ARCH_LIST:-}" = "default" ]; then
  unset TORCH_CUDA_ARCH_LIST
else
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0+PTX}
fi
venv=${XTC_CUDA_VENV:-.venv-cuda}
torch_version=${XTC_CUDA_TORCH:-2.13.0}
build_dir=${XTC_CUDA_BUILD_DIR:-build/cuda}
py="$venv/bin/python"
t0=$(date +%s)

# 1. The venv with the CUDA torch. `--isolated` ignores the machine's pip configuration, whose local
# wheel folder would otherwise serve the CPU wheel of the same version; --no-cache-dir: the ~5 GB of
# wheels are not kept a second time in pip's cache. cuobjdump comes from its pip package.
if [ -x "$py" ] && "$py" -c "import sys, torch; sys.exit(not (torch.__version__.split('+')[0] == '$torch_version' and torch.version.cuda))" 2>/dev/null; then
  echo ".ci/cuda_torch_build.sh: reusing $venv ($("$py" -c 'import torch; print(torch.__version__)'))"
else
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" --isolated install -q --no-cache-dir "torch==$torch_version"
fi
"$venv/bin/pip" --isolated install -q --no-cache-dir "scikit-build-core>=0.10" cmake ninja nvidia-cuda-cuobjdump
if [ -z "$("$py" -c "import torch; print(torch.version.cuda or '')")" ]; then
  echo ".ci/cuda_torch_build.sh: $venv has a torch without CUDA ($("$py" -c 'import torch; print(torch.__version__)'))" >&2
  exit 1
fi
t1=$(date +%s)
echo ".ci/cuda_torch_build.sh: venv with torch $("$py" -c 'import torch; print(torch.__version__)') ready in $((t1 - t0)) s ($(du -sh "$venv" | cut -f1))"

# 2. The build, as a user runs it (the venv first on PATH, then the machine's nvcc), with the [test]
# extras; torch is already satisfied, so pip keeps the CUDA build.
echo ".ci/cuda_torch_build.sh: building with nvcc $(nvcc --version | grep -o 'release [0-9.]*') ($(command -v nvcc)), TORCH_CUDA_ARCH_LIST='${TORCH_CUDA_ARCH_LIST:-<unset: default list>}', build dir $build_dir"
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install -q --no-build-isolation -C "build-dir=$build_dir" ".[test]"
t2=$(date +%s)
echo ".ci/cuda_torch_build.sh: build (configure + compile + install) took $((t2 - t1)) s"

# 3. What the build holds: build_info, the dispatcher's CUDA kernels, SASS and PTX.
cuobjdump=$(find "$venv" -name cuobjdump -type f | head -n1)
XTC_CUOBJDUMP="$cuobjdump" "$py" .ci/check_cuda_build.py
t3=$(date +%s)

# 4. The op tests against this build, on the CPU.
PATH="$PWD/$venv/bin:$PATH" "$py" -m pytest -q -p no:cacheprovider tests/ops
t4=$(date +%s)
echo ".ci/cuda_torch_build.sh: timings: venv/download/install $((t1 - t0)) s, build $((t2 - t1)) s, checks $((t3 - t2)) s, tests/ops $((t4 - t3)) s, total $((t4 - t0)) s"
