"""Training-step benchmark: XTasC-Net and MT-CP, the authors' composition vs this project's paths.

Run from the repository root (after ``pip install --no-build-isolation .``)::

    python benchmarks/bench_train.py [--device auto|cpu|cuda] [--model xtasc|mtcp|all] [--size H W]
        [--batch-size B] [--steps N] [--warmup N] [--configs NAME ...] [--json PATH] [--markdown PATH]
        [--profile-steps N] [--compile-backend NAME] [--max-minutes M] [--dry-run]

What one step is: exactly the training step of ``python -m xtc_ext.train``. Every configuration builds an
:class:`xtc_ext.engine.Trainer` from the command line of the training program (``xtc_ext.cli``) and the recipe
of the model (``xtc_ext.recipes``), so the model, the task weighting (XTasC-Net: uncertainty; MT-CP: LPS), the
optimizer (Adam), autocast, the memory format and ``torch.compile`` are the engine's own. One timed step =
``optimizer.zero_grad``, the engine's forward + loss + weighting under autocast, its finite-loss check (a host
synchronisation, as in training), ``backward`` and ``optimizer.step``. The batch (the first frames of the ten
real NYUv2 frames shipped in the package, ``--dataset frames``, resized to ``--size``, no augmentation; pinned
host memory on CUDA) is read once: data loading is not timed. Every configuration starts from the same seed,
weights and batch, so their losses can be compared step by step.

Configurations (one run measures them all, in this order; ratios are against ``authors``):

* ``default``: what ``python -m xtc_ext.train`` runs when no speed option is given: the fused ops,
  ``--amp auto --channels-last auto`` (resolved on the device as the program resolves them: bf16 autocast and
  channels_last where the device computes bf16 natively, full precision and contiguous elsewhere; the table
  says what they resolved to), no compilation. Reported first: it is the speed a user gets.
* ``authors``: the authors' composition: ``--loss-impl eager`` (every loss is the plain-PyTorch composition of
  ``xtc_ext.reference``: ``F.cross_entropy``-style log-softmax / gather / masked means, written as the authors'
  code computes them), and MT-CP's two model-side ops (the CFM ``sigmoid_gate`` and the coherence
  ``cosine_similarity_loss``) swapped for their ``xtc_ext.reference`` compositions too, since ``--loss-impl``
  does not reach the model; fp32, contiguous tensors, no compilation.
* one factor at a time on top of ``authors``: ``fused`` (the fused ``xtc_ext.ops`` kernels), ``bf16``
  (``--amp bf16`` autocast), ``channels_last`` (``--channels-last on``), ``compile`` (``--compile``);
* ``all``: fused + bf16 + channels_last + compile.

Reported per model and configuration: median step time over ``--steps`` measured steps after ``--warmup``
untimed ones (each step timed on its own with ``time.perf_counter``, with ``torch.cuda.synchronize()`` before
and after on CUDA), images/s = batch / median, the spread (min and max), the warm-up step times (for
``compile`` the excess of the warm-up steps over the median is its compile time; fresh inductor and Triton
caches are used unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so the compile time is cold), the peak memory
during the measured steps (CUDA: ``torch.cuda.max_memory_allocated()``, absolute, after
``reset_peak_memory_stats()``; CPU: the process's peak resident set size above the resident set size just
before the measured steps, read from ``VmHWM`` / ``VmRSS`` in ``/proc/self/status`` after resetting the peak
with ``/proc/self/clear_refs`` and releasing free heap memory with ``malloc_trim``: activations, gradients and
temporaries of a step), the total loss of every step (accuracy: each configuration's losses against
``authors``'s, relative difference; a report, not an assertion), and, over ``--profile-steps`` extra steps
under ``torch.profiler``, the share of the step spent in the ``xtc_ext::`` ops (the inclusive time of the
outermost ``xtc_ext::`` events: CPU time over the profiled wall time; on CUDA also their kernels' time over
all kernels' time).

Outputs: a markdown table (stdout, ``--markdown``) and JSON (``--json``) with the device, torch version, git
commit, command, load average and every raw number. ``--dry-run`` runs everything on the CPU at tiny sizes
(ResNet-18 encoders, 64x64, batch 2, one warm-up and one measured step, ``--compile-backend eager``): it tests
the script, its numbers mean nothing. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # the checkout's Python sources (as tests/conftest.py), bench_ops
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

import xtc_ext  # noqa: E402
from bench_ops import git_commit  # noqa: E402
from xtc_ext import cli, ops, reference  # noqa: E402
from xtc_ext.data import build_splits, get_dataset  # noqa: E402
from xtc_ext.engine import Trainer  # noqa: E402
from xtc_ext.recipes import get_recipe  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration: the training program's options that it sets."""

    loss_impl: str
    amp: str
    channels_last: str
    compile: bool
    description: str
    weighting: Optional[str] = None

    def argv(self) -> List[str]:
        """The ``python -m xtc_ext.train`` options of this configuration."""
        return ["--loss-impl", self.loss_impl, "--amp", self.amp, "--channels-last", self.channels_last,
                "--compile" if self.compile else "--no-compile",
                *(("--weighting", *self.weighting.split()) if self.weighting else ())]


CONFIGS: Dict[str, Config] = {
    "default": Config("fused", "auto", "auto", False, "the program's defaults: fused, --amp auto, --channels-last "
                      "auto, no compile"),
    "authors": Config("eager", "none", "off", False, "eager reference ops (plain PyTorch), fp32, contiguous"),
    "fused": Config("fused", "none", "off", False, "authors + fused xtc_ext ops"),
    "bf16": Config("eager", "bf16", "off", False, "authors + bf16 autocast"),
    "channels_last": Config("eager", "none", "on", False, "authors + channels_last"),
    "compile": Config("eager", "none", "off", True, "authors + torch.compile"),
    "all": Config("fused", "bf16", "on", True, "fused + bf16 + channels_last + compile"),
}
"""Configurations by name, in the default order of a run."""

WEIGHTING_PREFIX = "weighting:"
"""``--weightings NAME ...`` adds the configurations ``weighting:NAME``: ``default`` with ``--weighting NAME``
(a name may carry the weighting's options, quoted: ``"upgrad --jacobian shared-parameters"``), measured against
``weighting:equal`` (the step overhead of a weighting, docs/weighting.md)."""


def config_of(name: str) -> Config:
    """The configuration ``name``: a :data:`CONFIGS` name or ``weighting:NAME``."""
    if name.startswith(WEIGHTING_PREFIX):
        weighting = name[len(WEIGHTING_PREFIX):]
        return Config("fused", "auto", "auto", False, f"default + --weighting {weighting}", weighting)
    return CONFIGS[name]


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """A benchmarked model: its training-program options and its batch / size per device.

    ``sizes`` maps ``"cuda"`` (the paper's setting), ``"cpu"`` (reduced) and ``"dry"`` to
    ``(batch, (H, W))``; ``dry_argv`` replaces the encoder by a smaller one under ``--dry-run``.
    """

    argv: Tuple[str, ...]
    dry_argv: Tuple[str, ...]
    sizes: Dict[str, Tuple[int, Tuple[int, int]]]
    paper: str


MODELS: Dict[str, ModelSetup] = {
    "xtasc": ModelSetup(("--model", "xtasc", "--encoder-depth", "34"), ("--encoder-depth", "18"),
                        {"cuda": (6, (288, 384)), "cpu": (2, (192, 256)), "dry": (2, (64, 64))},
                        "XTasC-Net ResNet-34, NYUv2 at 288x384, batch 6 (XTasC-Net paper §V-C)"),
    "mtcp": ModelSetup(("--model", "mtcp", "--backbone", "resnet50_fpn"), ("--backbone", "resnet18_fpn"),
                       {"cuda": (4, (480, 640)), "cpu": (2, (96, 128)), "dry": (2, (64, 64))},
                       "MT-CP ResNet-50-FPN, NYUD at 480x640, batch 4 (MT-CP paper §4)"),
}

MODEL_OPS = ("sigmoid_gate", "cosine_similarity_loss")
"""Fused ops called by a model itself (MT-CP's CFM), outside ``--loss-impl``."""


# ----------------------------------------------------------------------------------------------
# Building a configuration


def train_args(model: str, config: Config, device: str, batch: int, size: Tuple[int, int],
               extra: Sequence[str] = (), train_extra: Sequence[str] = ()) -> argparse.Namespace:
    """The finalised command line of ``python -m xtc_ext.train`` for ``model`` in ``config``; ``extra`` goes
    before the configuration's options, ``train_extra`` (``--train-args``) after them, so it overrides them."""
    argv = [*MODELS[model].argv, *extra, "--dataset", "frames", "--size", str(size[0]), str(size[1]),
            "--batch-size", str(batch), "--device", device, "--no-augment", "--no-progress", "--no-tensorboard",
            "--output-dir", os.devnull, "--seed", "0", *config.argv(), *train_extra]
    return cli.finalize_args(cli.parse_args(argv))


def load_batch(args: argparse.Namespace, pin: bool) -> Tuple[Any, Dict[str, Any]]:
    """The run's splits and one training batch: the first ``args.batch_size`` frames (cycled), collated."""
    spec = get_dataset(args.dataset)
    recipe = get_recipe(args.model)(args, spec)
    splits = build_splits(spec, args.data_root, classes=int(args.classes), size=tuple(args.size), augment=False,
                          normalize=bool(args.normalize), depth_scaling=args.depth_scaling, tasks=recipe.tasks,
                          val_fraction=args.val_fraction, split_seed=args.split_seed)
    samples = [splits.train[i % len(splits.train)] for i in range(args.batch_size)]
    batch = default_collate(samples)
    if pin:
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return splits, batch


@contextlib.contextmanager
def op_implementation(loss_impl: str) -> Iterator[None]:
    """With ``"eager"``, the model-side fused ops (:data:`MODEL_OPS`) are their ``xtc_ext.reference``
    compositions inside the block (the models look ``xtc_ext.ops.<op>`` up at call time)."""
    if loss_impl != "eager":
        yield
        return
    with mock.patch.multiple(ops, **{name: getattr(reference, name) for name in MODEL_OPS}):
        yield


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """``torch.compile`` calls inside the block use ``backend`` (the engine calls ``torch.compile(model)``)."""
    if backend == "inductor":
        yield
        return
    original = torch.compile
    with mock.patch.object(torch, "compile", lambda model, **kw: original(model, **{"backend": backend, **kw})):
        yield


def step_function(trainer: Trainer, batch: Dict[str, Any]) -> Callable[[], torch.Tensor]:
    """One training step of the engine on ``batch`` (:meth:`Trainer.train_step`, the body of its epoch loop);
    returns the step's values (``values[0]``: total). A non-finite step raises NonFiniteLoss (--nonfinite stop)."""

    def step() -> torch.Tensor:
        return trainer.train_step(batch, 1)[0]

    return step


# ----------------------------------------------------------------------------------------------
# Measuring


class Sync:
    """Host synchronisation with the device (a no-op on the CPU)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __call__(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a region: CUDA ``max_memory_allocated`` (bytes, absolute) or, on the CPU, the peak
    resident set size above the resident set size at the start (bytes; Linux ``/proc``; None elsewhere)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.start_bytes: Optional[int] = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            return
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand free heap pages back, so the baseline is what is in use
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        except OSError:
            self.start_bytes = None
            return
        rss = _status_kib("VmRSS")
        self.start_bytes = None if rss is None else rss * 1024

    def stop(self) -> Dict[str, Optional[int]]:
        if self.cuda:
            torch.cuda.synchronize()
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "before_bytes": self.start_bytes,
                    "method": "torch.cuda.max_memory_allocated"}
        hwm = _status_kib("VmHWM")
        if hwm is None or self.start_bytes is None:
            return {"peak_bytes": None, "before_bytes": None, "method": "unavailable (no /proc/self/clear_refs)"}
        return {"peak_bytes": max(0, hwm * 1024 - self.start_bytes), "before_bytes": self.start_bytes,
                "method": "peak RSS (VmHWM) above RSS before the steps"}


def timed_steps(step: Callable[[], torch.Tensor], n: int, sync: Sync) -> Dict[str, List[float]]:
    """Run ``step`` ``n`` times, each timed on its own: wall seconds (``time.perf_counter``), this process's CPU
    seconds (``time.process_time``, all its threads) and the total loss of each step."""
    out: Dict[str, List[float]] = {"wall": [], "cpu": [], "loss": []}
    for _ in range(n):
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        values = step()
        sync()
        out["wall"].append(time.perf_counter() - start)
        out["cpu"].append(time.process_time() - cpu)
        out["loss"].append(float(values[0]))
    return out


def _device_total(event: Any, self_only: bool) -> float:
    names = ("self_device_time_total", "self_cuda_time_total") if self_only else ("device_time_total",
                                                                                  "cuda_time_total")
    for name in names:
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def _outermost_xtc(events: Sequence[Any]) -> List[Any]:
    def nested(e: Any) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("xtc_ext::"):
                return True
            parent = parent.cpu_parent
        return False

    return [e for e in events if e.name.startswith("xtc_ext::") and not nested(e)]


def fused_op_share(step: Callable[[], torch.Tensor], n: int, sync: Sync) -> Dict[str, Any]:
    """Share of ``n`` steps spent in the ``xtc_ext::`` ops, measured with ``torch.profiler``.

    ``cpu_share``: inclusive CPU time of the outermost ``xtc_ext::`` events over the profiled wall time;
    ``device_share`` (CUDA): the time of the kernels launched inside them over all kernels' time.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if sync.cuda else [])
    sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        sync()
    wall_us = (time.perf_counter() - start) * 1e6
    events = prof.events()
    top = _outermost_xtc(events)
    cpu_us = sum(e.cpu_time_total for e in top)
    result: Dict[str, Any] = {
        "steps": n, "wall_us": wall_us, "fused_cpu_us": cpu_us, "cpu_share": cpu_us / wall_us if wall_us else None,
        "ops": sorted({e.name for e in events if e.name.startswith("xtc_ext::")}),
    }
    if sync.cuda:
        busy = sum(_device_total(e, True) for e in prof.key_averages())
        fused = sum(_device_total(e, False) for e in top)
        result.update(device_busy_us=busy, fused_device_us=fused, device_share=fused / busy if busy else None,
                      device_share_of_wall=fused / wall_us if wall_us else None)
    return result


def run_config(model: str, name: str, opts: argparse.Namespace, splits: Any, batch: Dict[str, Any],
               device: str) -> Dict[str, Any]:
    """Build, warm up, time, measure and profile one configuration of ``model``."""
    config = config_of(name)
    cuda = device.startswith("cuda")
    sync = Sync(cuda)
    args = train_args(model, config, device, opts.batch_size_of[model], opts.size_of[model], opts.extra_argv[model],
                      opts.train_extra)
    recipe = get_recipe(args.model)(args, get_dataset(args.dataset))
    torch._dynamo.reset()
    with op_implementation(config.loss_impl), compile_backend(opts.compile_backend):
        t0 = time.perf_counter()
        trainer = Trainer(cli.engine_config(args), recipe, splits, show_before=False)
        build_s = time.perf_counter() - t0
        step = step_function(trainer, batch)
        warm = timed_steps(step, opts.warmup, sync)
        memory = PeakMemory(cuda)
        memory.start()
        timed = timed_steps(step, opts.steps, sync)
        mem = memory.stop()
        share = fused_op_share(step, opts.profile_steps, sync) if opts.profile_steps else None
    times = timed["wall"]
    median = statistics.median(times)
    compile_s = max(0.0, sum(warm["wall"]) - len(warm["wall"]) * median) if config.compile else None
    result = {
        "config": dataclasses.asdict(config), "argv": config.argv(), "build_s": build_s,
        "warmup_s": warm["wall"], "steps_s": times, "median_s": median, "min_s": min(times), "max_s": max(times),
        "steps_cpu_s": timed["cpu"], "median_cpu_s": statistics.median(timed["cpu"]),
        "images_per_s": opts.batch_size_of[model] / median, "compile_s": compile_s, "memory": mem,
        "losses": warm["loss"] + timed["loss"], "fused_op_share": share, "amp": str(trainer.amp),
        "channels_last": trainer.channels_last,
    }
    del trainer, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def add_ratios(results: Dict[str, Dict[str, Any]]) -> None:
    """Speed-up (authors' median / median, of the wall and of the CPU time), memory ratio and loss differences
    against ``authors``."""
    base = results.get("authors")
    for r in results.values():
        if base is None or "median_s" not in r:
            r.update(speedup=None, speedup_cpu_time=None, memory_ratio=None, loss_rel_diff=None)
            continue
        r["speedup"] = base["median_s"] / r["median_s"]
        r["speedup_cpu_time"] = base["median_cpu_s"] / r["median_cpu_s"] if r["median_cpu_s"] > 0 else None
        pb, pr = base["memory"]["peak_bytes"], r["memory"]["peak_bytes"]
        r["memory_ratio"] = pr / pb if pb and pr is not None else None
        r["loss_rel_diff"] = [abs(a - b) / abs(b) if b else None for a, b in zip(r["losses"], base["losses"])]
    equal = results.get(WEIGHTING_PREFIX + "equal")
    for name, r in results.items():
        if equal is not None and name.startswith(WEIGHTING_PREFIX) and "median_s" in r:
            r["overhead_vs_equal"] = r["median_s"] / equal["median_s"] - 1
            r["overhead_vs_equal_cpu_time"] = r["median_cpu_s"] / equal["median_cpu_s"] - 1


def run_plan(models: Sequence[str], configs: Sequence[str]) -> List[Tuple[str, str]]:
    """The (model, configuration) pairs in the order they run: every model's configurations without
    ``torch.compile`` first, then the compiled ones, configuration by configuration, so that a ``--max-minutes``
    cap drops compilations (minutes each) before anything else."""
    eager = [(m, c) for m in models for c in configs if not config_of(c).compile]
    return eager + [(m, c) for c in configs if config_of(c).compile for m in models]


def model_record(model: str, opts: argparse.Namespace) -> Dict[str, Any]:
    """The per-model part of the results, before any configuration ran."""
    setup = MODELS[model]
    return {"model": model, "paper_setting": setup.paper, "batch_size": opts.batch_size_of[model],
            "size": list(opts.size_of[model]), "argv": [*setup.argv, *opts.extra_argv[model]],
            "train_args": list(opts.train_extra), "configs": {},
            "skipped": {}}


def bench_config(model: str, name: str, opts: argparse.Namespace, data: Tuple[Any, Dict[str, Any]],
                 out: Dict[str, Any]) -> None:
    """Run one configuration into ``out["configs"]``; a failure is recorded (with its first line), not raised."""
    try:
        r = run_config(model, name, opts, *data, opts.device)
    except Exception as exc:  # recorded, the other configurations still run
        first_line = (str(exc).splitlines() or [""])[0][:300]
        out["configs"][name] = {"error": f"{type(exc).__name__}: {first_line}"}
        print(f"  {model:6s} {name:14s} ERROR {out['configs'][name]['error']}", flush=True)
        traceback.print_exc()
        torch._dynamo.reset()
        return
    out["configs"][name] = r
    print(f"  {model:6s} {name:14s} median {r['median_s'] * 1e3:9.1f} ms  {r['images_per_s']:8.2f} img/s  "
          f"loss {r['losses'][0]:.5f}", flush=True)


# ----------------------------------------------------------------------------------------------
# Reporting


def _fmt(x: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:{spec}}{suffix}"


def _share(r: Dict[str, Any], cuda: bool) -> str:
    share = r.get("fused_op_share")
    if not share:
        return "n/a"
    key = "device_share" if cuda else "cpu_share"
    return _fmt(None if share.get(key) is None else 100 * share[key], ".2f", "%")


def _columns(cuda: bool) -> List[str]:
    cpu_time = [] if cuda else ["CPU-time ms (median)", "x authors (CPU time)"]
    return (["config", "what", "step ms (median)", "min-max ms", "images/s", "x authors", *cpu_time,
             "peak MiB (max_memory_allocated)" if cuda else "peak RSS delta MiB", "x authors mem", "first loss",
             "loss rel. diff vs authors (first / last)",
             "xtc_ext ops, % of kernel time" if cuda else "xtc_ext ops, % of step", "compile s"])


def _description(name: str, r: Dict[str, Any]) -> str:
    """The configuration's description; with an ``auto`` setting, what it resolved to on the device."""
    config = config_of(name)
    if "auto" not in (config.amp, config.channels_last):
        return config.description
    amp = "full precision" if r["amp"] == "None" else r["amp"].replace("torch.", "")
    return f"{config.description} (here: {amp}, channels_last {'on' if r['channels_last'] else 'off'})"


def _row(name: str, r: Dict[str, Any], cuda: bool) -> List[str]:
    peak = r["memory"]["peak_bytes"]
    diffs = r.get("loss_rel_diff") or []
    cpu_time = [] if cuda else [f"{r['median_cpu_s'] * 1e3:.1f}", _fmt(r["speedup_cpu_time"], ".2f", "x")]
    return [name, _description(name, r), f"{r['median_s'] * 1e3:.1f}",
            f"{r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}", f"{r['images_per_s']:.2f}",
            _fmt(r["speedup"], ".2f", "x"), *cpu_time, _fmt(None if peak is None else peak / 2**20, ".0f"),
            _fmt(r["memory_ratio"], ".2f", "x"), f"{r['losses'][0]:.5f}",
            "n/a" if not diffs else f"{_fmt(diffs[0], '.1e')} / {_fmt(diffs[-1], '.1e')}", _share(r, cuda),
            _fmt(r["compile_s"], ".1f")]


def markdown(result: Dict[str, Any]) -> str:
    """The results as markdown: a header with the run's facts, one table per model."""
    meta = result["meta"]
    cuda = meta["device_type"] == "cuda"
    columns = _columns(cuda)
    lines = [f"- Device: {meta['device']}; torch {meta['torch']}; xtc_ext commit {meta['git_commit']}; "
             f"threads {meta['threads']}; load average {meta['loadavg_start']} -> {meta['loadavg_end']}",
             f"- Command: `{meta['command']}`",
             f"- Median of {meta['steps']} measured steps after {meta['warmup']} warm-up steps"
             + (" (--dry-run: the numbers mean nothing)" if meta["dry_run"] else ""), ""]
    for m in result["models"].values():
        lines += [f"**{m['model']}** ({m['paper_setting']}); measured: batch {m['batch_size']} at "
                  f"{m['size'][0]}x{m['size'][1]}", "", "| " + " | ".join(columns) + " |",
                  "| --- | --- |" + " ---: |" * (len(columns) - 2)]
        for name, r in m["configs"].items():
            cells = ([name, config_of(name).description, f"error: {r['error']}"] if "error" in r
                     else _row(name, r, cuda))
            lines.append("| " + " | ".join(cells + [""] * (len(columns) - len(cells))) + " |")
        for name, why in m["skipped"].items():
            cells = [name, config_of(name).description, f"skipped: {why}"]
            lines.append("| " + " | ".join(cells + [""] * (len(columns) - len(cells))) + " |")
        lines += ["", *_overhead_table(m["configs"])]
    return "\n".join(lines)


def _overhead_table(configs: Dict[str, Dict[str, Any]]) -> List[str]:
    """The weightings' step time against ``weighting:equal`` (``--weightings``), or nothing."""
    rows = [(n[len(WEIGHTING_PREFIX):], r) for n, r in configs.items() if "overhead_vs_equal" in r]
    if not rows:
        return []
    lines = ["| --weighting | step ms (median) | overhead vs equal | CPU-time ms | overhead vs equal (CPU time) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {w} | {r['median_s'] * 1e3:.1f} | {100 * r['overhead_vs_equal']:+.1f} % | "
              f"{r['median_cpu_s'] * 1e3:.1f} | {100 * r['overhead_vs_equal_cpu_time']:+.1f} % |" for w, r in rows]
    return lines + [""]


def run_meta(opts: argparse.Namespace, device: str, argv: Sequence[str]) -> Dict[str, Any]:
    """Device, versions, commit, command and settings of the run."""
    cuda = device.startswith("cuda")
    if cuda:
        p = torch.cuda.get_device_properties(torch.device(device))
        name = f"{torch.cuda.get_device_name(torch.device(device))} (capability {p.major}.{p.minor})"
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {"device": name, "device_type": "cuda" if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "git_commit": git_commit(), "build_info": dict(xtc_ext.build_info),
            "command": shlex.join(["python", "benchmarks/bench_train.py", *argv]), "dry_run": opts.dry_run,
            "steps": opts.steps, "warmup": opts.warmup, "profile_steps": opts.profile_steps,
            "compile_backend": opts.compile_backend, "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The benchmark's command line (``--help``); fills the per-model batch sizes and sizes."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1'")
    p.add_argument("--model", choices=(*MODELS, "all"), default="all")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="image size for every model (default: the paper's on CUDA; on the CPU 192 256 for XTasC-Net, "
                   "96 128 for MT-CP)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size for every model (default: per model)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 10 on CUDA, 5 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; compile needs >= 2)")
    p.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS), metavar="CONFIG",
                   help=f"configurations, in this order (default all: {' '.join(CONFIGS)})")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="profiled steps per configuration for the share of the xtc_ext ops (0: none; default 2)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; eager with "
                   "--dry-run)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new configuration after this many minutes (the rest is recorded as skipped)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch (torch.set_num_threads; default: torch's, the number of cores)")
    p.add_argument("--train-args", default="", metavar="ARGS",
                   help="more python -m xtc_ext.train options for every configuration, after its own (so they "
                   "override them), e.g. \"--contrastive\" or \"--amp bf16 --channels-last on\"")
    p.add_argument("--weightings", nargs="+", default=(), metavar="NAME",
                   help="also measure the default configuration with each --weighting NAME (quoted with its options: "
                   "\"upgrad --jacobian shared-parameters\") and with --weighting equal, and report the overhead")
    p.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON here")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the markdown table here")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny sizes, 1 step, eager compile backend: tests the plumbing, not the speed")
    a = p.parse_args(argv)
    if a.dry_run:
        a.device = "cpu"
    a.device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto"
                                                                                else a.device)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: CUDA is not available")
    key = "dry" if a.dry_run else ("cuda" if a.device.startswith("cuda") else "cpu")
    if a.weightings:
        a.configs = [*a.configs, *(WEIGHTING_PREFIX + w for w in ("equal", *a.weightings))]
        a.configs = list(dict.fromkeys(a.configs))
    a.models = list(MODELS) if a.model == "all" else [a.model]
    a.size_of = {m: tuple(a.size) if a.size else MODELS[m].sizes[key][1] for m in a.models}
    a.batch_size_of = {m: a.batch_size or MODELS[m].sizes[key][0] for m in a.models}
    a.extra_argv = {m: MODELS[m].dry_argv if a.dry_run else () for m in a.models}
    a.train_extra = tuple(shlex.split(a.train_args))
    default_steps = 1 if a.dry_run else (10 if key == "cuda" else 5)
    a.steps = a.steps if a.steps is not None else default_steps
    a.warmup = a.warmup if a.warmup is not None else (1 if a.dry_run else 3)
    a.profile_steps = a.profile_steps if a.profile_steps is not None else (1 if a.dry_run else 2)
    a.compile_backend = a.compile_backend or ("eager" if a.dry_run else "inductor")
    for name in ("steps", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0 or a.profile_steps < 0:
        p.error("--warmup and --profile-steps must be >= 0")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    return a


@contextlib.contextmanager
def fresh_compile_caches() -> Iterator[bool]:
    """Inductor and Triton caches in a new temporary folder (removed at the end), so that compile times are
    cold, unless ``TORCHINDUCTOR_CACHE_DIR`` is set; yields whether the caches are fresh."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        yield False
        return
    folder = tempfile.mkdtemp(prefix="bench_train_compile_")
    env = {"TORCHINDUCTOR_CACHE_DIR": folder, "TRITON_CACHE_DIR": os.path.join(folder, "triton")}
    try:
        with mock.patch.dict(os.environ, env):
            yield True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark; print the markdown table; write ``--json`` / ``--markdown``; return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    with fresh_compile_caches() as fresh:
        result: Dict[str, Any] = {"meta": run_meta(opts, opts.device, argv), "models": {}}
        result["meta"]["compile_caches_fresh"] = fresh
        _run(opts, result)
    md = markdown(result)
    print()
    print(md)
    for path, text in ((opts.json, json.dumps(result, indent=1, default=str)), (opts.markdown, md)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return result


def _run(opts: argparse.Namespace, result: Dict[str, Any]) -> None:
    deadline = None if opts.max_minutes is None else time.perf_counter() + 60 * opts.max_minutes
    print(f"bench_train: {result['meta']['device']}, torch {torch.__version__}, configs {' '.join(opts.configs)}",
          flush=True)
    models = {m: model_record(m, opts) for m in opts.models}
    data: Dict[str, Tuple[Any, Dict[str, Any]]] = {}
    for model, name in run_plan(opts.models, opts.configs):
        if deadline is not None and time.perf_counter() > deadline:
            models[model]["skipped"][name] = f"--max-minutes {opts.max_minutes:g} reached"
            print(f"  {model:6s} {name:14s} skipped: --max-minutes reached", flush=True)
            continue
        if model not in data:  # the splits and the batch, once per model
            args = train_args(model, CONFIGS["authors"], opts.device, opts.batch_size_of[model],
                              opts.size_of[model], opts.extra_argv[model], opts.train_extra)
            data[model] = load_batch(args, pin=opts.device.startswith("cuda"))
        bench_config(model, name, opts, data[model], models[model])
    for m in models.values():  # results in the order of --configs
        m["configs"] = {c: m["configs"][c] for c in opts.configs if c in m["configs"]}
        add_ratios({k: v for k, v in m["configs"].items() if "error" not in v})
    result["models"] = models
    result["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    result = main()
    errors = [f"{m}/{c}" for m, r in result["models"].items() for c, v in r["configs"].items() if "error" in v]
    if errors:
        sys.exit(f"bench_train: failed configurations: {', '.join(errors)}")
