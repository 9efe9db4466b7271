"""GPU benchmark of the ops: fused (xtc_ext.ops) vs eager (xtc_ext.reference) vs torch.compile(eager).

Run on a CUDA machine from the repository root, after building the extension there
(``pip install --no-build-isolation --no-deps .``)::

    python benchmarks/bench_ops.py [--out DIR] [--ops ...] [--sizes ...] [--dtypes fp32 bf16]
                                   [--reps N] [--no-compile] [--dry-run]

One run does, in this order:

1. Device copy bandwidth: ``dst.copy_(src)`` of a 1 GiB fp32 buffer (bytes read + bytes written =
   2 GiB per copy), timed with CUDA events one copy per event pair, median of ``--copy-reps``.
   Measured again at the end of the run; the higher of the two medians is the reference for
   "% of copy BW" (the conservative choice).
2. For every op x size x dtype: a correctness check (fused vs eager, loss and gradients, relative
   error ||fused - eager|| / ||eager||, the fused outputs allocated from memory poisoned with NaN
   so an unwritten element shows), then for each pass (``fwd`` under ``torch.no_grad``,
   ``fwd_bwd`` = forward + ``backward(upstream)`` with a random upstream gradient: a task weight
   for losses, a random tensor for ``sigmoid_gate``) and each implementation (fused, eager,
   ``torch.compile`` of the eager reference, compiled once per op/size/dtype after
   ``torch._dynamo.reset()``, ``dynamic=False``): ``--warmup`` untimed calls, then ``--reps``
   calls each between its own pair of CUDA events, rotating among >= 3 input sets (more when a
   set is small, so the sets together exceed ``--rotate-mib``, 5x the L2 of an H100/H200, and
   repeated calls cannot run from cache). Gradients are set to None outside the timed region.
   Reported: median ms (also p20/p80/min, every sample and the host time per call of the launch
   loop in the JSON: when that is close to the median, the case is launch-bound); useful GB/s = the
   op's useful bytes (``USEFUL_BYTES`` below) / median time; % of the measured copy bandwidth;
   peak memory above the inputs = ``max_memory_allocated()`` after ``reset_peak_memory_stats()``
   during one extra call, minus ``memory_allocated()`` before it (inputs, upstream gradient
   and other live tensors excluded; gradients and outputs included).
3. Writes ``bench_ops.json`` (every raw number, device, torch, CUDA, ``xtc_ext.build_info``, git
   commit) and ``bench_ops.md`` (one row per op/size/dtype/pass) to ``--out`` (default ``$OUT``
   when set, else ``bench_ops_out``), after every op/size/dtype so a run cut short keeps what it
   measured; prints the table, then PASS/MISS for the design-brief targets.

``--dry-run`` runs the same logic on the CPU with tiny shapes, 2 reps, ``time.perf_counter``
instead of CUDA events, no memory statistics, and the ``eager`` torch.compile backend (dynamo
tracing without code generation) unless ``--compile-backend`` is given: it tests the script,
its numbers mean nothing. Ops missing from ``xtc_ext.ops`` or ``xtc_ext.reference`` are skipped
with a printed note.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmark the checkout's Python sources (as tests/conftest.py does)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import xtc_ext  # noqa: E402
from xtc_ext import ops, reference  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Useful bytes: the minimum device-memory traffic of each op in the design the brief asks for
# (forward saves one fp32 per pixel where the backward needs it and the backward recomputes the
# rest; per-pixel channel vectors stay in registers, so each tensor is read or written once per
# pass that needs it). Scalars (loss, valid count) are negligible and not counted.
# Variables: P = N*H*W pixels; C = channels of the op's input tensors (classes, features;
# 1 for depth); s = bytes per element of the input dtype; l = bytes per label (8 int64, 1 uint8).
# fwd = forward only; fwd_bwd = forward, then backward of that forward.
# The strings are evaluated as written (useful_bytes()), so the comment and the number agree.
USEFUL_BYTES = {
    "masked_cross_entropy": {
        # read logits + labels, write the fp32 log-sum-exp
        "fwd": "P * (C*s + l + 4)",
        # fwd as above; bwd reads logits + labels + lse, writes dlogits:
        # logits read twice, labels twice, gradient written once, lse written and read
        "fwd_bwd": "P * (3*C*s + 2*l + 8)",
    },
    "soft_cross_entropy": {
        # read logits + target logits, write the fp32 log-sum-exp of the logits
        "fwd": "P * (2*C*s + 4)",
        # both logit tensors read twice, lse written and read, dlogits written once (target detached)
        "fwd_bwd": "P * (5*C*s + 8)",
    },
    "masked_l1_loss": {
        # read pred + target (C = 1: depth)
        "fwd": "P * 2*C*s",
        # pred + target read twice (fwd, bwd), dpred written once
        "fwd_bwd": "P * 5*C*s",
    },
    "cosine_similarity_loss": {
        # read a + b
        "fwd": "P * 2*C*s",
        # a + b read twice, da written once (b is a fixed target: no db)
        "fwd_bwd": "P * 5*C*s",
    },
    "sigmoid_gate": {
        # read x + gate_logits, write out
        "fwd": "P * 3*C*s",
        # fwd (3 passes) + bwd: read grad_out, x, gate_logits; write dx, dgate (5 passes)
        "fwd_bwd": "P * 8*C*s",
    },
}


def useful_bytes(op: str, pass_: str, P: int, C: int, s: int, l: int = 0) -> int:
    """Evaluate ``USEFUL_BYTES[op][pass_]`` for P pixels, C channels, s bytes/element, l bytes/label."""
    return int(eval(USEFUL_BYTES[op][pass_], {"__builtins__": {}}, {"P": P, "C": C, "s": s, "l": l}))


# ----------------------------------------------------------------------------------------------
# Sizes (N, C, H, W). CE-like ops and L1 take the segmentation sizes (L1 with C = 1: depth);
# cosine and gate take the MT-CP feature shapes (256 channels at H/4) and, for cosine, normals.
# nyuv2=True marks the sizes the "2x eager at NYUv2 size" target is judged at.

SIZES = {
    "nyuv2": dict(shape=(8, 13, 288, 384), nyuv2=True, what="NYUv2 (MTAN/LibMTL) batch 8, 13 classes"),
    "cityscapes_libmtl": dict(shape=(64, 7, 128, 256), what="Cityscapes LibMTL batch 64, 7 classes"),
    "cityscapes_full": dict(shape=(8, 19, 1024, 2048), what="Cityscapes full resolution batch 8, 19 classes"),
    "nyud40": dict(shape=(2, 40, 480, 640), what="NYUD-v2 40 classes (Vandenhende/MT-CP) batch 2"),
    "mtcp_nyud_feat": dict(shape=(2, 256, 120, 160), what="MT-CP features, 480x640/4, batch 2"),
    "mtcp_nyuv2_feat": dict(shape=(8, 256, 72, 96), nyuv2=True, what="MT-CP features, NYUv2 288x384/4, batch 8"),
    "nyuv2_normals": dict(shape=(8, 3, 288, 384), nyuv2=True, what="surface normals, NYUv2 batch 8"),
}
SEG_SIZES = ("nyuv2", "cityscapes_libmtl", "cityscapes_full", "nyud40")
FEAT_SIZES = ("mtcp_nyud_feat", "mtcp_nyuv2_feat")

OP_SIZES = {
    "masked_cross_entropy": SEG_SIZES,
    "soft_cross_entropy": SEG_SIZES,
    "masked_l1_loss": SEG_SIZES,
    "cosine_similarity_loss": FEAT_SIZES + ("nyuv2_normals",),
    "sigmoid_gate": FEAT_SIZES,
}
OP_NAMES = tuple(spec.name for spec in ops.OP_TABLE)  # the op table; each needs the entries above
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("fwd", "fwd_bwd")
IMPLS = ("fused", "eager", "compile")
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}  # fused vs eager, relative
MEM_SLACK = 1 << 20  # bytes allowed above the memory target for scalars and partial-sum buffers
CE_BW_TARGET = 0.80
SPEEDUP_TARGET = 2.0


def input_shape(op: str, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The op's input shape for a size: masked_l1_loss (depth) has one channel."""
    N, C, H, W = shape
    return (N, 1, H, W) if op == "masked_l1_loss" else (N, C, H, W)


def op_shape(op: str, size: str, dry_run: bool = False) -> tuple[int, int, int, int]:
    N, C, H, W = input_shape(op, SIZES[size]["shape"])
    if dry_run:
        N, H, W = min(N, 2), 8, 12
    return N, C, H, W


# ----------------------------------------------------------------------------------------------
# Inputs: one set = the op's arguments, the leaves that receive gradients and the upstream gradient.


@dataclass
class Inputs:
    args: tuple
    kwargs: dict
    leaves: list  # tensors that require grad (their .grad is cleared between calls)
    upstream: torch.Tensor  # gradient passed to out.backward()
    tensors: list = field(default_factory=list)  # everything allocated for this set

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def clear(self) -> None:
        for t in self.leaves:
            t.grad = None


def make_inputs(op, shape, dtype, device, gen, label_dtype=torch.int64) -> Inputs:
    """Fresh random inputs for ``op`` (never zeros: real data, with the op's invalid pixels)."""
    N, C, H, W = shape

    def randn(*sh, scale=1.0):
        return (torch.randn(sh, generator=gen, device=device) * scale).to(dtype)

    task_weight = torch.rand((), generator=gen, device=device) + 0.5  # upstream grad of a loss
    if op == "masked_cross_entropy":
        ignore_index = 255 if label_dtype == torch.uint8 else -1
        logits = randn(N, C, H, W, scale=3.0).requires_grad_()
        target = torch.randint(0, C, (N, H, W), generator=gen, device=device)
        target[torch.rand((N, H, W), generator=gen, device=device) < 0.05] = ignore_index
        target = target.to(label_dtype)
        return Inputs((logits, target), {"ignore_index": ignore_index, "reduction": "mean"}, [logits],
                      task_weight, [logits, target])
    if op == "soft_cross_entropy":
        logits = randn(N, C, H, W, scale=2.0).requires_grad_()
        target_logits = randn(N, C, H, W, scale=2.0)
        return Inputs((logits, target_logits), {"reduction": "mean"}, [logits], task_weight, [logits, target_logits])
    if op == "masked_l1_loss":
        pred = randn(N, C, H, W).requires_grad_()
        target = torch.rand((N, C, H, W), generator=gen, device=device) * 10
        target[target < 1] = 0  # ~10% invalid depth (0), as in NYUv2
        target = target.to(dtype)
        return Inputs((pred, target), {"reduction": "mean"}, [pred], task_weight, [pred, target])
    if op == "cosine_similarity_loss":
        a = randn(N, C, H, W).requires_grad_()
        b = randn(N, C, H, W)
        return Inputs((a, b), {"reduction": "mean"}, [a], task_weight, [a, b])
    if op == "sigmoid_gate":
        x = randn(N, C, H, W).requires_grad_()
        gate_logits = randn(N, C, H, W, scale=2.0).requires_grad_()
        grad_out = randn(N, C, H, W)
        return Inputs((x, gate_logits), {}, [x, gate_logits], grad_out, [x, gate_logits, grad_out])
    raise ValueError(f"unknown op {op!r}")


def run_pass(fn, inp: Inputs, pass_: str):
    """One call: forward under no_grad, forward + backward(upstream), or (``fwd_sum_bwd``) forward +
    ``out.sum().backward()``, whose upstream gradient reaches the op expanded (stride 0)."""
    if pass_ == "fwd":
        with torch.no_grad():
            return fn(*inp.args, **inp.kwargs)
    out = fn(*inp.args, **inp.kwargs)
    if pass_ == "fwd_sum_bwd":
        out.sum().backward()
    else:
        out.backward(inp.upstream)
    return out


def necessary_bytes(op: str, inp: Inputs) -> int:
    """Bytes a fwd_bwd call must leave allocated: the gradients, plus the output of a non-loss op."""
    grads = sum(t.numel() * t.element_size() for t in inp.leaves)
    out = inp.upstream.numel() * inp.upstream.element_size() if op == "sigmoid_gate" else 0
    return grads + out


# ----------------------------------------------------------------------------------------------
# Timing


class Timer:
    """Times ``call(i)`` for i in range(n): CUDA events around each call, or perf_counter on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.host_ms = None  # last times_ms(): host wall time per call of the launch loop


    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def times_ms(self, call, n: int, before=None) -> list[float]:
        self.sync()
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            t0 = time.perf_counter()
            for i in range(n):
                if before is not None:
                    before(i)
                starts[i].record()
                call(i)
                ends[i].record()
            self.host_ms = (time.perf_counter() - t0) * 1e3 / n  # ~ median_ms when launch-bound
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in zip(starts, ends)]
        out = []
        for i in range(n):
            if before is not None:
                before(i)
            t0 = time.perf_counter()
            call(i)
            out.append((time.perf_counter() - t0) * 1e3)
        self.host_ms = sum(out) / n
        return out


def summarize(times: list[float]) -> dict:
    s = sorted(times)

    def q(p):
        return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

    return {"median_ms": statistics.median(s), "p20_ms": q(0.2), "p80_ms": q(0.8), "min_ms": s[0], "times_ms": times}


def copy_bandwidth(device, nbytes: int, reps: int, warmup: int, timer: Timer) -> dict:
    """Device-to-device copy of ``nbytes``: bytes read + written per copy over the median time."""
    src = torch.rand(nbytes // 4, device=device)  # random data, never zeros
    dst = torch.empty_like(src)
    for _ in range(warmup):
        dst.copy_(src)
    times = timer.times_ms(lambda i: dst.copy_(src), reps)
    moved = 2 * src.numel() * src.element_size()
    stats = summarize(times)
    del src, dst
    return {"bytes_per_copy": moved, **stats, "gbps": moved / stats["median_ms"] / 1e6}


def peak_extra_bytes(fn, inp: Inputs, pass_: str, cuda: bool):
    """Peak memory allocated during one call above what was allocated before it (CUDA only)."""
    if not cuda:
        return None
    inp.clear()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run_pass(fn, inp, pass_)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    inp.clear()
    return peak


def time_impl(fn, sets: list[Inputs], pass_: str, reps: int, warmup: int, timer: Timer, cuda: bool) -> dict:
    k = len(sets)

    def before(i):
        sets[i % k].clear()  # host-side only: frees the previous gradient of this set

    def call(i):
        run_pass(fn, sets[i % k], pass_)

    for i in range(warmup):
        before(i)
        call(i)
    times = timer.times_ms(call, reps, before)
    for s in sets:
        s.clear()
    res = summarize(times)
    res["host_ms_per_call"] = timer.host_ms
    res["peak_extra_bytes"] = peak_extra_bytes(fn, sets[0], pass_, cuda)
    res["status"] = "ok"
    return res


# ----------------------------------------------------------------------------------------------
# Correctness check (fused vs eager) with poisoned allocations


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    den = ref.norm().item()
    num = (got - ref).norm().item()
    return num / den if den > 0 else num


def check_fused(op, fused, eager, inp: Inputs, dtype, cuda: bool) -> dict:
    """Run eager then fused fwd+bwd on one input set; compare output and every gradient."""
    try:
        inp.clear()
        ref_out = run_pass(eager, inp, "fwd_bwd").detach().clone()
        ref_grads = [t.grad.clone() for t in inp.leaves]
        inp.clear()
        if cuda:  # fused outputs are carved from a freed block full of NaN (0xFF bytes)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            poison_bytes = 2 * sum(t.numel() * 4 for t in inp.tensors) + (1 << 20)  # > outputs + scratch
            poison = torch.empty(poison_bytes, dtype=torch.uint8, device="cuda").fill_(255)
            del poison
        out = run_pass(fused, inp, "fwd_bwd").detach()
        grads = [t.grad for t in inp.leaves]
        finite = bool(torch.isfinite(out).all()) and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        errs = [_rel_err(out, ref_out)] + [_rel_err(g, r) for g, r in zip(grads, ref_grads)]
        inp.clear()
        ok = finite and max(errs) <= TOL[dtype]
        return {"ok": ok, "finite": finite, "rel_err_out": errs[0], "rel_err_grads": errs[1:], "tol": TOL[dtype]}
    except Exception as exc:  # report, keep benchmarking the rest
        inp.clear()
        return {"ok": False, "error": _err(exc)}


# ----------------------------------------------------------------------------------------------
# Run metadata


def git_commit() -> str | None:
    if os.environ.get("XTC_GIT_COMMIT"):
        return os.environ["XTC_GIT_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(cuda: bool) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "threads": torch.get_num_threads()}
    if cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    total_memory_bytes=p.total_memory, sm_count=p.multi_processor_count,
                    l2_cache_bytes=getattr(p, "L2_cache_size", None),
                    cudnn=torch.backends.cudnn.version())
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}), --dry-run")
    return info


# ----------------------------------------------------------------------------------------------
# Tables and targets


def _ms(x):
    return "n/a" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.2f}")


def _x(x):
    return "n/a" if x is None else f"{x:.2f}x"


def _num(x, pct=False):
    if x is None:
        return "n/a"
    return (f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}") + ("%" if pct else "")


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def _median(row, impl):
    r = row["impls"].get(impl, {})
    return r.get("median_ms") if r.get("status") == "ok" else None


def _check_str(chk: dict) -> str:
    if chk.get("ok"):
        return "ok"
    return "FAIL " + (chk.get("error") or f"rel {max([chk['rel_err_out']] + chk['rel_err_grads']):.1e}")


def markdown(result: dict) -> str:
    m, bw = result["meta"], result["copy_bw_gbps"]
    lines = [
        "# bench_ops: fused vs eager vs torch.compile",
        "",
        f"- device: {m['device']}; torch {m['torch']}; CUDA {m['cuda']}; commit {m['git_commit']}",
        f"- xtc_ext build: {json.dumps(m['build_info'])}",
        f"- measured copy bandwidth (read + write): {bw:.1f} GB/s; reps {m['args']['reps']}, "
        f"warm-up {m['args']['warmup']}, median ms; fwd under no_grad, fwd_bwd = forward + backward; "
        f"CE labels {m['args']['labels']}",
        "- GB/s = useful bytes (USEFUL_BYTES in benchmarks/bench_ops.py) / fused median time; "
        "peak MiB = allocated above the inputs during one call (gradients and outputs included)",
        "",
        "| op | size | shape | dtype | pass | fused ms | eager ms | compile ms | vs eager | vs compile "
        "| GB/s | % copy BW | fused peak MiB | eager peak MiB | check |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        cells = [
            r["op"], r["size"], "x".join(map(str, r["shape"])), r["dtype"], r["pass"],
            _ms(_median(r, "fused")), _ms(_median(r, "eager")), _ms(_median(r, "compile")),
            _x(r["speedup_vs_eager"]), _x(r["speedup_vs_compile"]), _num(r["gbps"]), _num(r["pct_copy_bw"], True),
            _mib(r["impls"]["fused"].get("peak_extra_bytes")), _mib(r["impls"]["eager"].get("peak_extra_bytes")),
            _check_str(r["check"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rows = result["rows"]
    breaks = sorted({f"{r['op']} ({r['impls']['compile']['graph_breaks']})" for r in rows
                     if r["impls"]["compile"].get("graph_breaks")})
    notes = [f"torch.compile graph breaks in the eager reference (per compile): {', '.join(breaks)}"] if breaks else []
    notes += sorted({f"compile n/a for {r['op']}/{r['size']}/{r['dtype']}/{r['pass']}: "
                     f"{r['impls']['compile']['reason']}" for r in rows if r["impls"]["compile"].get("status") != "ok"})
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes[:20]]
        lines += [f"- ... {len(notes) - 20} more"] if len(notes) > 20 else []
    if result.get("stopped_early"):
        lines += ["", f"Stopped early: {result['stopped_early']}"]
    if result.get("errors"):
        errors = [f"{e['op']}/{e['size']}/{e['dtype']}: {e['error']}" for e in result["errors"]]
        lines += ["", "Errors: " + "; ".join(errors)]
    if result["skipped_ops"]:
        lines += ["", "Skipped ops: " + "; ".join(f"{k} ({v})" for k, v in result["skipped_ops"].items())]
    return "\n".join(lines) + "\n"


def target_checks(result: dict) -> list[str]:
    """PASS/MISS lines for the design-brief performance bar."""
    rows, out = result["rows"], []
    # 1. every op fwd+bwd >= 2x eager at NYUv2 size
    for op in result["ops"]:
        cand = [r for r in rows if r["op"] == op and r["pass"] == "fwd_bwd" and SIZES[r["size"]].get("nyuv2")]
        if not cand:
            out.append(f"SKIP  {op}: fwd_bwd >= {SPEEDUP_TARGET:g}x eager at NYUv2 size (not measured)")
        for r in cand:
            s = r["speedup_vs_eager"]
            status = "PASS" if s is not None and s >= SPEEDUP_TARGET else "MISS"
            out.append(f"{status}  {op} {r['size']} {r['dtype']}: fwd_bwd {_x(s)} eager "
                       f"(target >= {SPEEDUP_TARGET:g}x)")
    # 2. CE fwd+bwd at Cityscapes full: >= 80% of copy BW and faster than torch.compile
    ce = "masked_cross_entropy cityscapes_full"
    cand = [r for r in rows if f"{r['op']} {r['size']}" == ce and r["pass"] == "fwd_bwd"]
    if not cand:
        out.append(f"SKIP  {ce} fwd_bwd: not measured")
    for r in cand:
        pct = r["pct_copy_bw"]
        status = "PASS" if pct is not None and pct >= 100 * CE_BW_TARGET else "MISS"
        out.append(f"{status}  {ce} {r['dtype']} fwd_bwd: {_num(pct, True)} of copy BW "
                   f"(target >= {100 * CE_BW_TARGET:.0f}%)")
        s = r["speedup_vs_compile"]
        status = "PASS" if s is not None and s > 1.0 else ("MISS" if s is not None else "N/A ")
        out.append(f"{status}  {ce} {r['dtype']} fwd_bwd: {_x(s)} torch.compile (target > 1x)")
    # 3. peak extra memory of fused fwd+bwd <= gradients (+ output) + one fp32 per pixel
    mem = [r for r in rows if r["pass"] == "fwd_bwd" and r["impls"]["fused"].get("peak_extra_bytes") is not None]
    if not mem:
        out.append("SKIP  fused fwd_bwd peak memory <= gradient + 1 fp32/pixel (no CUDA memory statistics)")
    else:
        misses = [r for r in mem if r["impls"]["fused"]["peak_extra_bytes"] > r["memory_target_bytes"]]
        for r in misses:
            extra = (r["impls"]["fused"]["peak_extra_bytes"] - r["necessary_bytes"]) / r["pixels"]
            out.append(f"MISS  {r['op']} {r['size']} {r['dtype']} fwd_bwd peak memory: {extra:.1f} B/pixel "
                       f"beyond the gradient (target <= 4)")
        if not misses:
            out.append(f"PASS  fused fwd_bwd peak memory <= gradient + 1 fp32/pixel in all {len(mem)} rows")
    n_ok = sum(1 for r in rows if r["check"].get("ok"))
    status = "PASS" if n_ok == len(rows) else "FAIL"
    out.append(f"{status}  fused vs eager correctness check: {n_ok}/{len(rows)} rows ok")
    return out


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "bench_ops_out",
                   help="output directory (default $OUT, else ./bench_ops_out)")
    p.add_argument("--ops", nargs="+", choices=OP_NAMES, default=list(OP_NAMES), metavar="OP",
                   help=f"ops to run (default all: {' '.join(OP_NAMES)})")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), metavar="SIZE",
                   help=f"size names; each op runs those of its own sizes listed (default all: {' '.join(SIZES)})")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    p.add_argument("--labels", choices=["int64", "uint8"], default="int64", help="label dtype of masked_cross_entropy")
    p.add_argument("--reps", type=int, default=None, help="timed calls per case (default 100; 2 with --dry-run)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 10; 1 with --dry-run)")
    p.add_argument("--sets", type=int, default=3, help="minimum number of input sets rotated among (>= 3)")
    p.add_argument("--rotate-mib", type=float, default=256.0, help="input sets together at least this large (MiB)")
    p.add_argument("--copy-gib", type=float, default=1.0, help="size of the copy-bandwidth buffer (GiB, >= 1)")
    p.add_argument("--copy-reps", type=int, default=None, help="timed copies (default 50; 2 with --dry-run)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (recorded as n/a)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; eager with --dry-run)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new op/size/dtype after this many minutes (what was measured is still written)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 2 reps: tests the script, not the ops")
    a = p.parse_args(argv)
    if a.sets < 3:
        p.error("--sets must be >= 3")
    a.reps = a.reps or (2 if a.dry_run else 100)
    a.copy_reps = a.copy_reps or (2 if a.dry_run else 50)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.dry_run else 10)
    a.compile_backend = a.compile_backend or ("eager" if a.dry_run else "inductor")
    return a


def make_compiled(fn, backend):
    """torch.compile of the eager reference for one shape/dtype (fresh dynamo state, static shapes)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    mode = {"mode": "default"} if backend == "inductor" else {}
    return torch.compile(fn, backend=backend, dynamic=False, **mode)


def _err(exc: BaseException) -> str:
    """Exception type and the first two non-empty lines of its message (dynamo puts the cause second)."""
    msg = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
    return f"{type(exc).__name__}: {' / '.join(msg)[:300]}"


def bench_case(op, size, dtype_name, args, device, timer, cuda, copy_gbps_ref) -> list[dict]:
    dtype = DTYPES[dtype_name]
    shape = op_shape(op, size, args.dry_run)
    N, C, H, W = shape
    label_dtype = torch.uint8 if args.labels == "uint8" else torch.int64
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(f"{op}/{size}/{dtype_name}".encode()))
    first = make_inputs(op, shape, dtype, device, gen, label_dtype)
    min_bytes = 0 if args.dry_run else args.rotate_mib * 2**20
    n_sets = min(16, max(args.sets, math.ceil(min_bytes / max(1, first.nbytes))))
    sets = [first] + [make_inputs(op, shape, dtype, device, gen, label_dtype) for _ in range(n_sets - 1)]
    fused, eager = getattr(ops, op), getattr(reference, op)

    check = check_fused(op, fused, eager, sets[0], dtype, cuda)
    compiled, compile_err = None, None
    if args.no_compile:
        compile_err = "skipped (--no-compile)"
    else:
        try:
            compiled = make_compiled(eager, args.compile_backend)
        except Exception as exc:
            compile_err = _err(exc)

    P = N * H * W
    s = torch.empty((), dtype=dtype).element_size()
    l = torch.empty((), dtype=label_dtype).element_size() if op == "masked_cross_entropy" else 0
    rows = []
    for pass_ in args.passes:
        impls = {}
        for impl in IMPLS:
            if impl == "compile":
                if compiled is None:
                    impls[impl] = {"status": "n/a", "reason": compile_err}
                    continue
                fn = compiled
                torch._dynamo.utils.counters.clear()
                t0 = time.perf_counter()
                try:  # first call compiles this pass's graph(s); failures are recorded, not raised
                    run_pass(fn, sets[0], pass_)
                    timer.sync()
                except Exception as exc:
                    sets[0].clear()
                    impls[impl] = {"status": "n/a", "reason": _err(exc)}
                    continue
                compile_s = time.perf_counter() - t0
                sets[0].clear()
            else:
                fn = fused if impl == "fused" else eager
            try:
                res = time_impl(fn, sets, pass_, args.reps, args.warmup, timer, cuda)
            except Exception as exc:
                for st in sets:
                    st.clear()
                impls[impl] = {"status": "n/a" if impl == "compile" else "error", "reason": _err(exc)}
                if impl != "compile":
                    traceback.print_exc()
                continue
            if impl == "compile":
                res["compile_s"] = compile_s
                res["graph_breaks"] = sum(torch._dynamo.utils.counters["graph_break"].values())
            impls[impl] = res
        ub = useful_bytes(op, pass_, P, C, s, l)
        fm, em, cm = (impls[i].get("median_ms") if impls[i].get("status") == "ok" else None for i in IMPLS)
        for i in IMPLS:
            if impls[i].get("status") == "ok":
                impls[i]["gbps"] = ub / impls[i]["median_ms"] / 1e6
        gbps = ub / fm / 1e6 if fm else None
        nec = necessary_bytes(op, sets[0]) if pass_ == "fwd_bwd" else 0
        rows.append({
            "op": op, "size": size, "shape": list(shape), "dtype": dtype_name, "pass": pass_,
            "label_dtype": args.labels if op == "masked_cross_entropy" else None,
            "pixels": P, "channels": C, "bytes_per_element": s, "bytes_per_label": l,
            "useful_bytes_formula": USEFUL_BYTES[op][pass_], "useful_bytes": ub,
            "n_sets": n_sets, "set_bytes": first.nbytes, "reps": args.reps, "warmup": args.warmup,
            "impls": impls,
            "speedup_vs_eager": em / fm if fm and em else None,
            "speedup_vs_compile": cm / fm if fm and cm else None,
            "gbps": gbps,
            "pct_copy_bw": 100 * gbps / copy_gbps_ref if gbps and copy_gbps_ref else None,
            "necessary_bytes": nec,
            "memory_target_bytes": nec + 4 * P + MEM_SLACK if pass_ == "fwd_bwd" else None,
            "check": check,
        })
        print(f"  {op:24s} {size:18s} {dtype_name:4s} {pass_:7s} fused {_ms(fm):>8s}  eager {_ms(em):>8s}  "
              f"compile {_ms(cm):>8s} ms  {_x(rows[-1]['speedup_vs_eager'])} eager  "
              f"check {'ok' if check.get('ok') else 'FAIL'}", flush=True)
    del sets, first, compiled
    if cuda:
        torch.cuda.empty_cache()
    return rows


def write_outputs(result: dict, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_ops.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    (out_dir / "bench_ops.md").write_text(md)
    return md


def main(argv=None) -> dict:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if not args.no_compile:  # one compiled graph per op/size/dtype/pass: allow more recompiles
            import torch._dynamo

            name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
            stack.enter_context(torch._dynamo.config.patch(**{name: 64}))
        return _run(args, argv)


def _run(args: argparse.Namespace, argv) -> dict:
    cuda = not args.dry_run
    if cuda and not torch.cuda.is_available():
        sys.exit("bench_ops: no CUDA device (torch.cuda.is_available() is False); use --dry-run to test the script")
    device = torch.device("cuda" if cuda else "cpu")
    timer = Timer(cuda)
    out_dir = Path(args.out)
    torch.manual_seed(0)

    present, skipped = [], {}
    for op in args.ops:
        missing = [m.__name__ for m in (ops, reference) if not hasattr(m, op)]
        if missing:
            skipped[op] = f"not in {', '.join(missing)}"
            print(f"note: skipping {op}: not in {', '.join(missing)}", flush=True)
        else:
            present.append(op)

    copy_bytes = (8 << 20) if args.dry_run else int(max(1.0, args.copy_gib) * 2**30)
    copy_reps = args.copy_reps
    bw_start = copy_bandwidth(device, copy_bytes, copy_reps, 1 if args.dry_run else 5, timer)
    print(f"copy bandwidth: {bw_start['gbps']:.1f} GB/s ({copy_bytes / 2**30:.3g} GiB buffer, read + write, "
          f"median of {copy_reps})", flush=True)

    result = {
        "meta": {**device_info(cuda), "build_info": dict(xtc_ext.build_info), "git_commit": git_commit(),
                 "xtc_ext_version": getattr(xtc_ext, "__version__", None), "dry_run": args.dry_run,
                 "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "argv": sys.argv if argv is None else ["bench_ops.py", *argv], "args": vars(args),
                 "timing": "CUDA events per call, median" if cuda else "time.perf_counter per call, median"},
        "useful_bytes_formulas": USEFUL_BYTES,
        "sizes": {k: {**v, "shape": list(v["shape"])} for k, v in SIZES.items()},
        "copy_bw": {"start": bw_start}, "copy_bw_gbps": bw_start["gbps"],
        "ops": present, "skipped_ops": skipped, "rows": [],
    }
    t_start = time.perf_counter()
    cases = [(op, size, dt) for op in present for size in OP_SIZES[op] if size in args.sizes for dt in args.dtypes]
    for n, (op, size, dt) in enumerate(cases):
        if args.max_minutes is not None and time.perf_counter() - t_start > 60 * args.max_minutes:
            result["stopped_early"] = f"--max-minutes {args.max_minutes:g} reached; {len(cases) - n} cases not run"
            print(result["stopped_early"], flush=True)
            break
        try:
            result["rows"] += bench_case(op, size, dt, args, device, timer, cuda, result["copy_bw_gbps"])
        except Exception as exc:  # e.g. out of memory building the inputs: record, go on
            traceback.print_exc()
            result.setdefault("errors", []).append({"op": op, "size": size, "dtype": dt, "error": _err(exc)})
            if cuda:
                torch.cuda.empty_cache()
        write_outputs(result, out_dir)

    bw_end = copy_bandwidth(device, copy_bytes, copy_reps, 1 if args.dry_run else 5, timer)
    result["copy_bw"]["end"] = bw_end
    ref = max(bw_start["gbps"], bw_end["gbps"])  # conservative: the higher measured bandwidth
    if ref != result["copy_bw_gbps"]:
        result["copy_bw_gbps"] = ref
        for r in result["rows"]:
            if r["gbps"]:
                r["pct_copy_bw"] = 100 * r["gbps"] / ref
    print(f"copy bandwidth at the end: {bw_end['gbps']:.1f} GB/s; reference {ref:.1f} GB/s", flush=True)
    result["targets"] = target_checks(result)
    md = write_outputs(result, out_dir)
    print()
    print(md)
    dry = " (--dry-run: CPU, tiny shapes; the verdicts mean nothing)" if args.dry_run else ""
    print(f"Design-brief targets{dry}:")
    for line in result["targets"]:
        print("  " + line)
    print(f"\nwrote {out_dir / 'bench_ops.json'} and {out_dir / 'bench_ops.md'}")
    return result


if __name__ == "__main__":
    main()
