#!/usr/bin/env bash
# GPU acceptance check of xtc_ext: one command, one report.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--only STEP,STEP...] OUT_DIR
#
# On a machine with one CUDA GPU and the CUDA build of torch (no network needed), from the repository root
# or anywhere, it runs these steps, each timed, each under its own timeout, its output appended to
# OUT_DIR/log.txt:
#
#   runtime         kernel, container runtime (Firecracker or gVisor), nvidia-smi, torch and CUDA versions
#   build           pip install --no-build-isolation --no-deps . with TORCH_CUDA_ARCH_LIST = the device's
#                   compute capability (wheels under $XTC_WHEELS, default .whl/, are installed first if present:
#                   e.g. import-linter for the architecture test; tests of missing extras skip)
#   cuda_vs_cpu     pytest tests/ops/test_cuda_vs_cpu.py: CUDA against CPU where they may part (NaN/inf at a
#                   valid pixel with a zero upstream scale, gate overflow, cosine eps 1e-46, non-finite cosine
#                   inputs, the vector path past the block cap, fp64/uint8, fp16, misaligned targets and masks,
#                   channels_last with copy-kernel counts, P = 1, empty shapes, > 2^31 elements, the bad-label
#                   device assert), CUDA against CPU; JUnit counts and recorded values in the report
#   sync_debug      the same file's sync_debug tests: torch.cuda.set_sync_debug_mode("error") around forward +
#                   backward of every op (fp32, bf16, channels_last, float mask)
#   launches        the same file's launches tests: kernel launches (and copies) per op, forward and backward
#                   (torch.profiler), a table in the report
#   pytest          the rest of the test suite (the CUDA tests skip on the CPU and run here)
#   memcheck        compute-sanitizer --tool memcheck over a short CUDA op-test selection (empty shapes included)
#   racecheck       compute-sanitizer --tool racecheck over the reduction kernels' tests
#   initcheck       compute-sanitizer --tool initcheck (uninitialised device memory read) over the reductions,
#                   the empty shapes and the CUDA-vs-CPU cases
#                   (all three SKIPPED with the reason where compute-sanitizer does not work: gVisor, or absent)
#   bench_ops       python benchmarks/bench_ops.py (no torch.compile column, to fit the budget)
#   bench_train     python benchmarks/bench_train.py (both models, every configuration, capped in minutes)
#   train_bf16      python -m xtc_ext.train --amp bf16 on the ten frames, then a check that the loss fell
#   train_torchrun  torchrun --standalone --nproc_per_node=1 -m xtc_ext.train (python -m torch.distributed.run)
#
# and writes OUT_DIR/report.md and OUT_DIR/report.json (after every step, so a run cut short keeps a report),
# with bench_ops.{json,md}, bench_train.{json,md} and log.txt beside them: 7 files, no folders. Scratch files
# (build logs, training runs, JUnit XML) go to a temporary folder, removed at the end (XTC_GPU_CHECK_KEEP=1
# keeps it). Budget: 8 minutes on one H100/H200; the report says when a run went over it.
#
# Exit status: 0 when every step passed or was skipped for a stated reason; 1 when any step failed or timed
# out (the report and the last line name them; the independent steps after a failure still run; the steps
# that need the extension are skipped when the build failed); 2 for a usage error.
#
# --dry-run: on the CPU, no build and no GPU: every step in its dry form (the installed extension imported
# instead of built, tiny pytest selections (cuda_vs_cpu, sync_debug and launches collect and skip their CUDA
# tests), the sanitizers skipped, the benchmarks' --dry-run, 1-step training smokes on the CPU), the same
# report files. CI runs it (tests/benchmarks/test_gpu_check.py).
# --only: run the named steps alone (the others are listed as not selected).
# Environment: PYTHON (default python3), XTC_WHEELS, XTC_GIT_COMMIT (when the copy has no .git),
# XTC_GPU_CHECK_KEEP, XTC_GPU_CHECK_FAIL=STEP (make that step fail: tests the failure path).
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--only STEP,STEP...] OUT_DIR" >&2; exit 2; }

DRY=0
ONLY=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --only) [ $# -ge 2 ] || usage; ONLY=",$2,"; shift ;;
    -h|--help) sed -n '2,49p' "$0"; exit 0 ;;
    -*) usage ;;
    *) [ -z "$OUT" ] || usage; OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || usage

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG="$OUT/log.txt"
: > "$LOG"
: > "$WORK/steps.tsv"
export XTC_GPU_CHECK=1  # tests/benchmarks/test_gpu_check.py skips itself inside this script's pytest step
export PYTHONUNBUFFERED=1
if [ -z "${XTC_GIT_COMMIT:-}" ]; then
  XTC_GIT_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  export XTC_GIT_COMMIT
fi
BUILD_OK=1
cleanup() { if [ "${XTC_GPU_CHECK_KEEP:-0}" = 1 ]; then echo "scratch folder kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

report() {
  local flag=()
  [ "$DRY" = 1 ] && flag=(--dry-run)
  "$PY" "$ROOT/benchmarks/gpu_report.py" write "$OUT" "$WORK" "${flag[@]}" >> "$LOG" 2>&1 \
    || echo "gpu_check: writing the report failed (see $LOG)" >&2
}

record() {  # name status rc seconds timeout note command
  local IFS=$'\t'
  printf '%s\n' "$*" | tr -d '\r' >> "$WORK/steps.tsv"
  printf '[gpu_check] %-15s %-8s %7s s  %s\n' "$1" "$2" "$4" "$6"
  report
}

selected() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }

# step NAME TIMEOUT_S NEEDS_BUILD NOTE -- COMMAND...: run COMMAND (unless not selected, or the build failed and
# it needs the build), append its output to the log, record PASS / FAIL / TIMEOUT with its time (exit code 77:
# SKIPPED, the step found it cannot run here).
step() {
  local name=$1 limit=$2 needs=$3 note=$4
  shift 5
  local shown
  shown=$(printf '%q ' "$@")
  if ! selected "$name"; then
    record "$name" "SKIPPED" "" "0" "$limit" "not selected (--only)" "$shown"
    return
  fi
  if [ "$needs" = 1 ] && [ "$BUILD_OK" = 0 ]; then
    record "$name" "SKIPPED" "" "0" "$limit" "needs the extension; the build failed" "$shown"
    return
  fi
  if [ "${XTC_GPU_CHECK_FAIL:-}" = "$name" ]; then
    set -- bash -c "echo 'forced failure (XTC_GPU_CHECK_FAIL=$name)'; exit 1"
  fi
  printf '\n===== %s: %s\n' "$name" "$shown" >> "$LOG"
  local start end rc status seconds
  start=$(date +%s.%N)
  timeout --kill-after=15 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  end=$(date +%s.%N)
  case $rc in
    0) status=PASS ;;
    124|137) status=TIMEOUT; note="$note; killed after ${limit} s" ;;
    77) status=SKIPPED; note="$note; the step skipped itself (reason in log.txt)" ;;
    *) status=FAIL; note="$note; exit code $rc (log.txt)" ;;
  esac
  if [ "${XTC_GPU_CHECK_FAIL:-}" = "$name" ]; then note="forced failure (XTC_GPU_CHECK_FAIL)"; fi
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
  record "$name" "$status" "$rc" "$seconds" "$limit" "$note" "$shown"
  if [ "$name" = build ] && [ "$status" != PASS ]; then BUILD_OK=0; fi
}

skip() {  # NAME REASON: a step that does not run here, with the reason
  if selected "$1"; then record "$1" "SKIPPED" "" "0" "0" "$2" ""
  else record "$1" "SKIPPED" "" "0" "0" "not selected (--only)" ""; fi
}

# ------------------------------------------------------------------------------------------------ runtime
detect_runtime() {  # Firecracker / gVisor / other, from the kernel (gVisor reports 4.4.0 and says so in dmesg)
  local kernel
  kernel=$(uname -r)
  if [ "$kernel" = 4.4.0 ] || dmesg 2>/dev/null | grep -qi gvisor; then echo gVisor
  elif [[ "$kernel" == *-fc-* ]] || [[ "$kernel" == *firecracker* ]]; then echo Firecracker
  else echo "other (kernel $kernel)"; fi
}

runtime_step() {  # RUNTIME TSV: the facts of the machine, as "key<TAB>value" lines in TSV and in the log
  {
    printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'commit\t%s\n' "$XTC_GIT_COMMIT"
    printf 'runtime\t%s\n' "$1"
    printf 'kernel\t%s\n' "$(uname -srm)"
    printf 'cpus\t%s\n' "$(getconf _NPROCESSORS_ONLN)"
    "$PY" benchmarks/gpu_report.py probe runtime
    printf 'gpu\t%s\n' "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu \
      --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: not available')"
    printf 'nvcc\t%s\n' "$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
    printf 'compute-sanitizer\t%s\n' "$(command -v compute-sanitizer || echo 'not found')"
  } > "$2"
  cat "$2"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
}

RUNTIME=$(detect_runtime)
export -f runtime_step
export PY
step runtime 60 0 "runtime: $RUNTIME" -- bash -c 'runtime_step "$@"' _ "$RUNTIME" "$WORK/runtime.tsv"
[ -f "$WORK/runtime.tsv" ] && tr '\t' ' ' < "$WORK/runtime.tsv" | sed 's/^/  /'

# ------------------------------------------------------------------------------------------------ build
if [ "$DRY" = 1 ]; then
  step build 120 0 "dry run: imports the installed extension instead of building it" -- \
    "$PY" benchmarks/gpu_report.py probe extension
else
  ARCH=$("$PY" benchmarks/gpu_report.py probe capability 2>/dev/null || echo "")
  WHEELS=${XTC_WHEELS:-$ROOT/.whl}
  build_cmd() {  # WHEELS: install the wheels there (if any), build for $TORCH_CUDA_ARCH_LIST, check the result
    set -e
    if compgen -G "$1/*.whl" > /dev/null; then
      echo "installing the wheels of $1 (no index): $(cd "$1" && ls ./*.whl | tr '\n' ' ')"
      "$PY" -m pip install -q --no-index --no-deps "$1"/*.whl
    fi
    [ -n "$TORCH_CUDA_ARCH_LIST" ] || { echo "no CUDA device: cannot read its compute capability"; exit 1; }
    echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    CMAKE_BUILD_PARALLEL_LEVEL=$(getconf _NPROCESSORS_ONLN) \
      "$PY" -m pip install -v --no-index --no-build-isolation --no-deps .
    (cd /tmp && "$PY" "$ROOT/benchmarks/gpu_report.py" probe extension)  # the installed copy, built with CUDA
  }
  export -f build_cmd
  step build 900 0 "TORCH_CUDA_ARCH_LIST=${ARCH:-?}" -- \
    env TORCH_CUDA_ARCH_LIST="$ARCH" ROOT="$ROOT" bash -c 'build_cmd "$@"' _ "$WHEELS"
fi

# ------------------------------------------------------------------------------------------------ tests
# The CUDA-vs-CPU cases first (the most wanted results when the run is cut short), in three steps of one file.
CUDA_VS_CPU=tests/ops/test_cuda_vs_cpu.py
cuda_vs_cpu_pytest() {  # NAME -k-EXPRESSION: one selection of $CUDA_VS_CPU, JUnit XML with the recorded values
  "$PY" -m pytest -q -p no:cacheprovider -ra -o junit_family=xunit1 --junitxml="$WORK/pytest_$1.xml" \
    "$CUDA_VS_CPU" -k "$2"
}
export -f cuda_vs_cpu_pytest
export WORK CUDA_VS_CPU
DRY_NOTE=""
[ "$DRY" = 1 ] && DRY_NOTE="dry run: collected, the CUDA tests skip on the CPU; "
step cuda_vs_cpu 240 1 "${DRY_NOTE}CUDA vs CPU: non-finite at valid pixels, gate overflow, eps 1e-46, block cap, dtypes, misaligned, layouts, 2^31, bad label" \
  -- bash -c 'cuda_vs_cpu_pytest "$@"' _ cuda_vs_cpu "not sync_debug and not launches"
step sync_debug 120 1 "${DRY_NOTE}set_sync_debug_mode(\"error\") around forward + backward of every op" \
  -- bash -c 'cuda_vs_cpu_pytest "$@"' _ sync_debug "sync_debug"
step launches 120 1 "${DRY_NOTE}kernel launches per op, forward and backward (torch.profiler)" \
  -- bash -c 'cuda_vs_cpu_pytest "$@"' _ launches "launches"

if [ "$DRY" = 1 ]; then
  step pytest 300 1 "dry run: a tiny selection (the CUDA tests skip on the CPU)" -- \
    "$PY" -m pytest -q -p no:cacheprovider -ra --junitxml="$WORK/pytest.xml" \
    tests/ops/test_extension.py tests/ops/test_ops_autograd.py::test_cuda_matches_cpu
else
  step pytest 600 1 "the suite without $CUDA_VS_CPU (its own steps above)" -- \
    "$PY" -m pytest -q -p no:cacheprovider -ra --durations=15 --junitxml="$WORK/pytest.xml" tests \
    --ignore="$CUDA_VS_CPU"
fi

# compute-sanitizer: on the CUDA tests of the ops; no caching allocator, so each tensor is its own allocation
# and an out-of-bounds access cannot land in a neighbour's memory unseen.
# The selections include the empty shapes and the CUDA-vs-CPU cases (test names of $CUDA_VS_CPU), not its
# > 2^31-element, subprocess, sync_debug or launches tests.
MEMCHECK_K="test_cuda_matches_cpu and fp32 or test_cuda_many_pixels_odd_count and N1 or test_cuda_misaligned \
or test_cuda_bf16_vector or test_empty_shapes or test_nonfinite_at_valid_pixel_zero_times_loss and mean \
or test_nonfinite_at_valid_pixel_zero_pixel or test_nonfinite_at_valid_pixel_zero_weights \
or test_gate_huge_grad_out or test_cosine_eps_1e_46 or test_cosine_nonfinite_a_at or test_misaligned_operand or test_p1_inputs and 1037 \
or test_fp64_uint8 or test_dtype_paths or test_channels_last_losses or test_vector_path_past_block_cap and mean"
RACECHECK_K="test_cuda_many_pixels_odd_count and N1 and (mean or sum) or test_empty_shapes and mean \
or test_nonfinite_at_valid_pixel_zero_weights and fp32-vec or test_p1_inputs and 4096 and mean"
INITCHECK_K="test_cuda_many_pixels_odd_count and N1 and (mean or none) or test_empty_shapes \
or test_nonfinite_at_valid_pixel_zero_weights and fp32-vec or test_misaligned_operand and fp32 or test_p1_inputs and 1037 and mean \
or test_fp64_uint8 and even and mean or test_vector_path_past_block_cap and mean"
sanitize() {  # TOOL -k-EXPRESSION
  local tool=$1 expr=$2 log
  log=$(mktemp)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 50 \
    "$PY" -m pytest -q -p no:cacheprovider -x tests/ops/test_ops_autograd.py tests/ops/test_cuda.py "$CUDA_VS_CPU" \
    -k "$expr" > "$log" 2>&1
  local rc=$?
  cat "$log"
  if grep -q "Device not supported" "$log"; then
    echo "SKIPPED: compute-sanitizer: Device not supported on this runtime"
    rc=77
  fi
  rm -f "$log"
  return $rc
}
export -f sanitize
for tool in memcheck racecheck initcheck; do
  case $tool in
    memcheck) expr=$MEMCHECK_K ;;
    racecheck) expr=$RACECHECK_K ;;
    initcheck) expr=$INITCHECK_K ;;
  esac
  if [ "$DRY" = 1 ]; then
    skip "$tool" "dry run (no GPU)"
  elif [ "$RUNTIME" = gVisor ]; then
    skip "$tool" "compute-sanitizer does not work on gVisor (runtime: $RUNTIME); it needs Firecracker or bare metal"
  elif ! command -v compute-sanitizer > /dev/null; then
    skip "$tool" "compute-sanitizer not found on PATH"
  else
    step "$tool" 300 1 "compute-sanitizer --tool $tool, -k '$expr'" -- bash -c 'sanitize "$@"' _ "$tool" "$expr"
  fi
done

# ------------------------------------------------------------------------------------------------ benchmarks
if [ "$DRY" = 1 ]; then
  step bench_ops 300 1 "dry run" -- "$PY" benchmarks/bench_ops.py --dry-run --out "$OUT" \
    --ops masked_cross_entropy --sizes nyuv2 --dtypes fp32 --no-compile
  step bench_train 300 1 "dry run: MT-CP, authors and fused" -- "$PY" benchmarks/bench_train.py --dry-run \
    --warmup 0 --model mtcp --configs authors fused --json "$OUT/bench_train.json" --markdown "$OUT/bench_train.md"
else
  step bench_ops 300 1 "30 reps, no torch.compile column" -- "$PY" benchmarks/bench_ops.py --out "$OUT" \
    --reps 30 --warmup 5 --copy-reps 20 --no-compile --max-minutes 1.5
  step bench_train 400 1 "10 steps after 3, paper sizes, at most 3 min of configurations" -- \
    "$PY" benchmarks/bench_train.py --device cuda --steps 10 --warmup 3 --max-minutes 3 \
    --configs default authors fused bf16 channels_last all compile \
    --json "$OUT/bench_train.json" --markdown "$OUT/bench_train.md"
fi

# ------------------------------------------------------------------------------------------------ training smokes
if [ "$DRY" = 1 ]; then
  SMOKE=(--device cpu --size 64 64 --encoder-depth 18 --batch-size 2 --epochs 1 --max-steps 1 --num-figures 0)
  SMOKE_LONG=("${SMOKE[@]}")
  LEARN=()
else
  SMOKE=(--device cuda --size 288 384 --batch-size 6 --epochs 20 --num-figures 1)
  SMOKE_LONG=(--device cuda --size 288 384 --batch-size 6 --epochs 40 --num-figures 1)
  LEARN=(--expect-learning)
fi
COMMON=(--dataset frames --amp bf16 --no-progress --no-tensorboard --workers 0)
train_smoke() {  # RUN_DIR CHECK_FLAGS... -- TRAIN COMMAND...
  local dir=$1; shift
  local flags=()
  while [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  "$@" && "$PY" benchmarks/gpu_report.py check-train "$dir" "${flags[@]}"
}
export -f train_smoke
step train_bf16 300 1 "python -m xtc_ext.train --amp bf16, ten frames" -- \
  bash -c 'train_smoke "$@"' _ "$WORK/train_bf16" "${LEARN[@]}" -- \
  "$PY" -m xtc_ext.train "${COMMON[@]}" "${SMOKE_LONG[@]}" --output-dir "$WORK/train_bf16"
step train_torchrun 300 1 "torchrun --standalone --nproc_per_node=1, ten frames" -- \
  bash -c 'train_smoke "$@"' _ "$WORK/train_torchrun" "${LEARN[@]}" -- \
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m xtc_ext.train "${COMMON[@]}" "${SMOKE[@]}" \
  --output-dir "$WORK/train_torchrun"

# ------------------------------------------------------------------------------------------------ verdict
report
FAILED=$(awk -F'\t' '$2 == "FAIL" || $2 == "TIMEOUT" {printf "%s%s", sep, $1; sep=", "}' "$WORK/steps.tsv")
TOTAL=$(awk -F'\t' '{s += $4} END {printf "%.0f", s}' "$WORK/steps.tsv")
echo "report: $OUT/report.md ($TOTAL s)"
if [ -n "$FAILED" ]; then
  echo "gpu_check: FAILED steps: $FAILED" >&2
  exit 1
fi
echo "gpu_check: PASS"
