#!/usr/bin/env bash
# Build xtc_ext against another torch release in a venv of its own and run the whole test suite
# (`pytest -q`) on the CPU. Default: torch 2.11.0, the oldest release supported (pyproject.toml's
# torch>=) and the one of the GPU machines. Standalone (not part of .ci/run: see docs/ops.md, "GPU build").
#
#   .ci/torch_version_suite.sh [TORCH_VERSION]     e.g. .ci/torch_version_suite.sh 2.11.0
#
# The torch comes from the package index with `pip --isolated` (the machine's local wheel folder holds only
# the README's CPU torch): on Linux that is the CUDA 13 build, which imports and runs on a CPU machine.
# Where nvcc exists the CUDA kernels are compiled too, for TORCH_CUDA_ARCH_LIST (default here "9.0+PTX",
# the GPU machines' Hopper, to keep the run short); without nvcc, CPU-only (-DXTC_WITH_CUDA=OFF).
# Extra pytest arguments: XTC_PYTEST_ARGS (e.g. "-x tests/ops").
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-2.11.0}
tag=${version//./}
venv=${XTC_VERSION_VENV:-.venv-torch$tag}
build_dir=build/torch$tag
py="$venv/bin/python"
t0=$(date +%s)

if [ -x "$py" ] && "$py" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
  echo "torch_version_suite: reusing $venv"
else
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" --isolated install -q --no-cache-dir "torch==$version"
fi
"$venv/bin/pip" --isolated install -q --no-cache-dir "scikit-build-core>=0.10" cmake ninja
t1=$(date +%s)
echo "torch_version_suite: torch $("$py" -c 'import torch; print(torch.__version__)') in $venv, ready in $((t1 - t0)) s"

defines=()
if command -v nvcc >/dev/null 2>&1; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
  echo "torch_version_suite: building with nvcc, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
else
  defines=(-C cmake.define.XTC_WITH_CUDA=OFF)
  echo "torch_version_suite: no nvcc: CPU-only build"
fi
# The [test] extras and the runtime dependencies come through the machine's normal pip configuration;
# the installed torch satisfies torch>= and stays.
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install -q --no-build-isolation -C "build-dir=$build_dir" "${defines[@]}" ".[test]"
t2=$(date +%s)
echo "torch_version_suite: build took $((t2 - t1)) s"
"$py" -c "import xtc_ext; print('build_info:', xtc_ext.build_info)"

rc=0
# shellcheck disable=SC2086
PATH="$PWD/$venv/bin:$PATH" "$py" -m pytest -q -p no:cacheprovider ${XTC_PYTEST_ARGS:-} || rc=$?
t3=$(date +%s)
echo "torch_version_suite: torch $version: pytest exit $rc; venv $((t1 - t0)) s, build $((t2 - t1)) s, tests $((t3 - t2)) s"
exit $rc
