"""The report of ``benchmarks/gpu_check.sh``, and its check of a training smoke run.

``python benchmarks/gpu_report.py write OUT WORK`` reads what the steps left (``WORK/steps.tsv``: one line per
step, tab-separated: name, status, exit code, seconds, timeout, note, command; ``WORK/runtime.tsv``: key, value;
``WORK/pytest*.xml``: JUnit XML of the pytest steps; ``OUT/bench_ops.json``, ``OUT/bench_train.json``; the
training runs' ``WORK/<step>/metrics.json``) and writes ``OUT/report.json`` and ``OUT/report.md``. The script
calls it after every step, so a run cut short still leaves a report of what ran.

``python benchmarks/gpu_report.py probe runtime|capability|extension`` prints facts of the Python that runs it
(its torch and device; the device's compute capability; the installed extension's build info, exit 1 when a CUDA
device is present but the extension was built without CUDA).

``python benchmarks/gpu_report.py check-train RUN_DIR [--expect-learning]`` exits 1 (with the reason on stderr)
when the run's ``metrics.json`` is missing, its last epoch's training loss is not finite, or, with
``--expect-learning``, that loss is not below the first epoch's.

Standard library only, except ``probe``, which imports torch (and xtc_ext): the report is written even where
torch is broken.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional

STEP_FIELDS = ("name", "status", "rc", "seconds", "timeout_s", "note", "command")
FAILED = ("FAIL", "TIMEOUT")
BUDGET_S = 480
"""The script's time budget on one H100/H200: 8 minutes."""


def read_steps(work: Path) -> List[Dict[str, Any]]:
    """The step records of ``WORK/steps.tsv`` (in the order the steps ran)."""
    path = work / "steps.tsv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [dict(zip(STEP_FIELDS, row)) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    for r in rows:
        r["rc"] = int(r["rc"]) if r.get("rc", "").lstrip("-").isdigit() else None
        r["seconds"] = float(r["seconds"]) if r.get("seconds") else None
    return rows


def read_runtime(work: Path) -> Dict[str, str]:
    """``key -> value`` facts of the runtime step (``WORK/runtime.tsv``)."""
    path = work / "runtime.tsv"
    if not path.is_file():
        return {}
    pairs = (line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    return {k: v for k, v in pairs}


def junit_counts(path: Path) -> Optional[Dict[str, Any]]:
    """Tests, failures, errors and skips of a pytest JUnit XML file (None if absent or unreadable), the
    names of the failed tests (at most 20) and the values the tests recorded (``record_property``: test name
    -> {name: value}; the launch counts, copy-kernel counts and messages of tests/ops/test_cuda_vs_cpu.py)."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable JUnit XML: {e}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts["failed_tests"] = failed[:20]
    properties = {}
    for case in root.iter("testcase"):
        recorded = {p.get("name"): p.get("value") for p in case.iter("property")}
        if recorded:
            properties[case.get("name")] = recorded
    counts["properties"] = properties
    return counts


def _load_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_ops_summary(out: Path) -> Optional[Dict[str, Any]]:
    """Rows, errors and the target verdict lines of ``OUT/bench_ops.json``."""
    data = _load_json(out / "bench_ops.json")
    if data is None:
        return None
    return {"rows": len(data.get("rows", [])), "errors": data.get("errors", []),
            "copy_bw_gbps": data.get("copy_bw_gbps"), "targets": data.get("targets", []),
            "stopped_early": data.get("stopped_early")}


def bench_train_summary(out: Path) -> Optional[Dict[str, Any]]:
    """Per model and configuration of ``OUT/bench_train.json``: median ms, images/s, speed-up vs authors,
    peak memory, the fused ops' share and the loss difference vs authors (first step); errors as such."""
    data = _load_json(out / "bench_train.json")
    if data is None:
        return None
    models: Dict[str, Any] = {}
    for model, m in data.get("models", {}).items():
        rows = {}
        for name, r in m.get("configs", {}).items():
            if "error" in r:
                rows[name] = {"error": r["error"]}
                continue
            share = r.get("fused_op_share") or {}
            diffs = r.get("loss_rel_diff") or [None]
            rows[name] = {"median_ms": r["median_s"] * 1e3, "images_per_s": r["images_per_s"],
                          "speedup": r.get("speedup"), "peak_bytes": r["memory"]["peak_bytes"],
                          "fused_share": share.get("device_share", share.get("cpu_share")),
                          "compile_s": r.get("compile_s"), "first_loss_rel_diff": diffs[0]}
        models[model] = {"batch_size": m.get("batch_size"), "size": m.get("size"), "configs": rows,
                         "skipped": m.get("skipped", {})}
    return {"device": data.get("meta", {}).get("device"), "models": models}


def train_summary(run_dir: Path) -> Optional[Dict[str, Any]]:
    """Loss, test metrics and time of a training smoke run's ``metrics.json``."""
    data = _load_json(run_dir / "metrics.json")
    if data is None:
        return None
    test = data.get("test") or {}
    keep = ("mIoU", "pixel_acc", "abs_err", "rel_err", "loss")
    before = data.get("before_training") or {}
    return {"epochs": data.get("epochs_trained"), "steps": data.get("steps"),
            "first_epoch_loss": data.get("first_epoch_loss"), "last_epoch_loss": data.get("last_epoch_loss"),
            "test": {k: test[k] for k in keep if k in test},
            "before_training": {k: before[k] for k in keep if k in before},
            "train_time_s": data.get("train_time_s"), "amp": data.get("amp"), "world_size": data.get("world_size"),
            "device": data.get("device")}


def build_report(out: Path, work: Path, dry_run: bool) -> Dict[str, Any]:
    """Everything of the run as one dict (the content of ``report.json``)."""
    steps = read_steps(work)
    failed = [s["name"] for s in steps if s["status"] in FAILED]
    total = sum(s["seconds"] or 0.0 for s in steps)
    report = {
        "verdict": "FAIL" if failed else "PASS", "failed_steps": failed, "dry_run": dry_run,
        "total_seconds": round(total, 1), "budget_seconds": BUDGET_S, "over_budget": total > BUDGET_S,
        "runtime": read_runtime(work), "steps": steps,
        "pytest": {p.stem: junit_counts(p) for p in sorted(work.glob("pytest*.xml"))},
        "bench_ops": bench_ops_summary(out), "bench_train": bench_train_summary(out),
        "training": {d.name: train_summary(d) for d in sorted(work.iterdir())
                     if d.is_dir() and d.name.startswith("train")},
    }
    return report


def _num(x: Any, spec: str = ".3g") -> str:
    return "n/a" if not isinstance(x, (int, float)) or not math.isfinite(x) else format(x, spec)


def _metrics(values: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {_num(v, '.4g')}" for k, v in values.items()) or "n/a"


def _markdown_bench_train(bt: Dict[str, Any]) -> List[str]:
    lines = [f"## Training-step benchmark ({bt.get('device')}; full table: bench_train.md)", "",
             "| model | config | median ms | images/s | x authors | peak MiB | xtc_ext share | loss diff vs authors "
             "(step 1) | compile s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model, m in bt["models"].items():
        for name, r in m["configs"].items():
            if "error" in r:
                lines.append(f"| {model} | {name} | error: {r['error']} | | | | | | |")
                continue
            peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
            share = None if r["fused_share"] is None else 100 * r["fused_share"]
            lines.append(f"| {model} | {name} | {_num(r['median_ms'], '.1f')} | {_num(r['images_per_s'], '.1f')} | "
                         f"{_num(r['speedup'], '.2f')} | {_num(peak, '.0f')} | {_num(share, '.2f')}% | "
                         f"{_num(r['first_loss_rel_diff'], '.1e')} | {_num(r['compile_s'], '.1f')} |")
        for name, why in m["skipped"].items():
            lines.append(f"| {model} | {name} | skipped: {why} | | | | | | |")
    return lines + [""]


LAUNCH_COLUMNS = ("fwd_kernels", "fwd_copies", "bwd_kernels", "bwd_copies")


def _markdown_properties(properties: Dict[str, Dict[str, str]]) -> List[str]:
    """The values recorded by the tests: a launch table (tests recording ``fwd_kernels``: the ``launches`` step),
    then one line per other test."""
    launches = {t: p for t, p in properties.items() if "fwd_kernels" in p}
    lines: List[str] = []
    if launches:
        lines += ["| test | fwd kernels | fwd copies | bwd kernels | bwd copies | kernels (fwd; bwd) |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for test, p in launches.items():
            names = f"{p.get('fwd_names', '')}; {p.get('bwd_names', '')}".replace("|", "/")
            lines.append(f"| {test} | " + " | ".join(p.get(c, "") for c in LAUNCH_COLUMNS) + f" | {names} |")
        lines.append("")
    others = [f"- {t}: " + ", ".join(f"{k} {v}" for k, v in p.items()) for t, p in properties.items()
              if t not in launches]
    return lines + others + ([""] if others else [])


def markdown(report: Dict[str, Any]) -> str:
    """``report.md``: verdict, runtime facts, the steps, then each step's summary."""
    rt = report["runtime"]
    head = "GPU acceptance check"
    if report["dry_run"]:
        head += " (--dry-run on the CPU: no build, no GPU; plumbing only)"
    verdict = report["verdict"]
    if report["failed_steps"]:
        verdict += f": failed steps {', '.join(report['failed_steps'])}"
    budget = (f"{report['total_seconds']:.0f} s of the {report['budget_seconds']} s budget"
              + (" (OVER BUDGET)" if report["over_budget"] else ""))
    lines = [f"# {head}", "", f"**Verdict: {verdict}**; {budget}", ""]
    lines += [f"- {k}: {v}" for k, v in rt.items()]
    lines += ["", "| step | status | seconds | timeout s | note |", "| --- | --- | ---: | ---: | --- |"]
    for s in report["steps"]:
        seconds = _num(s["seconds"], ".1f")
        lines.append(f"| {s['name']} | {s['status']} | {seconds} | {s['timeout_s']} | {s['note']} |")
    lines += ["", "Commands: report.json (`steps[].command`); output of every step: log.txt.", ""]
    for name, counts in report["pytest"].items():
        if counts:
            shown = {k: v for k, v in counts.items() if k not in ("failed_tests", "properties")}
            lines += [f"## {name}", "", ", ".join(f"{k} {v}" for k, v in shown.items()), ""]
            lines += [f"- failed: {t}" for t in counts.get("failed_tests", [])] + [""]
            lines += _markdown_properties(counts.get("properties") or {})
    ops = report["bench_ops"]
    if ops:
        lines += [f"## Op benchmark (bench_ops.md): {ops['rows']} rows, copy bandwidth "
                  f"{_num(ops['copy_bw_gbps'], '.0f')} GB/s", ""] + [f"- {t}" for t in ops["targets"]] + [""]
    if report["bench_train"]:
        lines += _markdown_bench_train(report["bench_train"])
    for name, t in report["training"].items():
        if t:
            lines += [f"## Training smoke `{name}`", "",
                      f"{t['epochs']} epochs, {t['steps']} steps, amp {t['amp']}, world size {t['world_size']}, "
                      f"{_num(t['train_time_s'], '.1f')} s; training loss "
                      f"{_num(t['first_epoch_loss'], '.4f')} (epoch 1) -> "
                      f"{_num(t['last_epoch_loss'], '.4f')}; test: {_metrics(t['test'])}; before training: "
                      f"{_metrics(t['before_training'])}", ""]
    return "\n".join(lines)


def check_train(run_dir: Path, expect_learning: bool) -> int:
    """0 when the run's ``metrics.json`` holds a finite last-epoch loss (below the first with
    ``expect_learning``); else 1, with the reason on stderr."""
    t = train_summary(run_dir)
    if t is None:
        print(f"check-train: no readable {run_dir / 'metrics.json'}", file=sys.stderr)
        return 1
    first, last = t["first_epoch_loss"], t["last_epoch_loss"]
    if not isinstance(last, (int, float)) or not math.isfinite(last):
        print(f"check-train: last epoch loss is {last!r}", file=sys.stderr)
        return 1
    if expect_learning and not (isinstance(first, (int, float)) and last < first):
        print(f"check-train: training loss did not decrease ({first!r} -> {last!r})", file=sys.stderr)
        return 1
    print(f"check-train: {run_dir.name}: loss {first} -> {last}; test {t['test']}")
    return 0


def probe(what: str) -> int:
    """Print facts of this Python: ``runtime`` (``key<TAB>value`` lines: Python, torch, CUDA, the device),
    ``capability`` (the device's compute capability, e.g. ``9.0``; exit 1 without a CUDA device) or
    ``extension`` (the installed xtc_ext's build info and which optional test packages import)."""
    import importlib.util
    import platform

    try:
        import torch
    except ImportError as e:
        print(f"torch\tdoes not import: {e}")
        return 1
    cuda = torch.cuda.is_available()
    if what == "capability":
        if not cuda:
            print("no CUDA device", file=sys.stderr)
            return 1
        print("%d.%d" % torch.cuda.get_device_capability(0))
        return 0
    if what == "runtime":
        device = (f"{torch.cuda.get_device_name(0)}, capability "
                  f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))}" if cuda else "no CUDA device")
        print(f"python\t{platform.python_version()}\ntorch\t{torch.__version__} (CUDA {torch.version.cuda})\n"
              f"device\t{device}")
        return 0
    import xtc_ext

    optional = {m: importlib.util.find_spec(m) is not None for m in ("hypothesis", "importlinter", "pytest_benchmark")}
    print(json.dumps({"build_info": dict(xtc_ext.build_info), "optional_test_packages": optional}))
    return 0 if not cuda or xtc_ext.build_info.get("with_cuda") else 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write OUT/report.json and OUT/report.md")
    w.add_argument("out", type=Path)
    w.add_argument("work", type=Path)
    w.add_argument("--dry-run", action="store_true")
    c = sub.add_parser("check-train", help="check a training smoke run's metrics.json")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--expect-learning", action="store_true")
    q = sub.add_parser("probe", help="print facts of this Python's torch, device or installed xtc_ext")
    q.add_argument("what", choices=("runtime", "capability", "extension"))
    a = p.parse_args(argv)
    if a.command == "check-train":
        return check_train(a.run_dir, a.expect_learning)
    if a.command == "probe":
        return probe(a.what)
    report = build_report(a.out, a.work, a.dry_run)
    (a.out / "report.json").write_text(json.dumps(report, indent=1))
    (a.out / "report.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
