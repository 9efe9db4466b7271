"""The GPU acceptance script ``benchmarks/gpu_check.sh`` in its ``--dry-run`` form on the CPU: every step runs
(or is skipped with its reason), the report is written, a failing step makes the script fail and is named,
and the steps after it still run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("runtime", "build", "cuda_vs_cpu", "sync_debug", "launches", "pytest", "memcheck", "racecheck", "initcheck",
         "bench_ops", "bench_train", "train_bf16", "train_torchrun")
SANITIZERS = ("memcheck", "racecheck", "initcheck")
CUDA_VS_CPU_STEPS = ("cuda_vs_cpu", "sync_debug", "launches")
FILES = {"report.md", "report.json", "log.txt", "bench_ops.json", "bench_ops.md", "bench_train.json",
         "bench_train.md"}

pytestmark = [
    pytest.mark.skipif(os.environ.get("XTC_GPU_CHECK") == "1", reason="running inside gpu_check.sh itself"),
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                       reason="needs bash and coreutils timeout"),
]


def _run(out: Path, *args: str, fail: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "XTC_GPU_CHECK_FAIL": fail}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out)
    return out, proc


def test_dry_run_passes_and_writes_one_report(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert files == FILES and len(files) <= 8  # no folders at all
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "PASS" and report["failed_steps"] == [] and report["dry_run"] is True
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert list(status) == list(STEPS)
    assert status == {**{s: "PASS" for s in STEPS}, **{s: "SKIPPED" for s in SANITIZERS}}
    for s in report["steps"]:
        assert s["seconds"] is not None and s["seconds"] >= 0
        assert s["status"] == "SKIPPED" or s["command"], s["name"]
    assert report["runtime"]["runtime"] and report["runtime"]["commit"]
    assert report["pytest"]["pytest"]["tests"] > 0 and report["pytest"]["pytest"]["failures"] == 0
    for name in CUDA_VS_CPU_STEPS:  # collected and skipped on the CPU (no CUDA device), none failed
        counts = report["pytest"][f"pytest_{name}"]
        assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0, (name, counts)
        if not torch.cuda.is_available():
            assert counts["skipped"] == counts["tests"], (name, counts)
    assert report["bench_ops"]["rows"] > 0
    assert set(report["bench_train"]["models"]["mtcp"]["configs"]) == {"authors", "fused"}
    for run in ("train_bf16", "train_torchrun"):
        assert report["training"][run]["steps"] == 1 and report["training"][run]["amp"] == "bfloat16", run
    assert report["training"]["train_torchrun"]["world_size"] == 1


def test_report_markdown_names_every_step(dry_run):
    out, proc = dry_run
    md = (out / "report.md").read_text()
    assert "**Verdict: PASS**" in md and "--dry-run" in md
    for name in STEPS:
        assert f"| {name} | " in md, name
    assert "| memcheck | SKIPPED |" in md and "| initcheck | SKIPPED |" in md and "dry run (no GPU)" in md
    assert "## pytest_cuda_vs_cpu" in md and "## pytest_launches" in md
    log = (out / "log.txt").read_text()
    assert "===== bench_train:" in log and "===== train_torchrun:" in log
    assert proc.stdout.rstrip().splitlines()[-1] == "gpu_check: PASS"


def test_a_failing_step_fails_the_script_and_the_rest_still_runs(tmp_path):
    proc = _run(tmp_path, "--only", "runtime,pytest,bench_ops", fail="pytest")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED steps: pytest" in proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert report["verdict"] == "FAIL" and report["failed_steps"] == ["pytest"]
    assert status["runtime"] == "PASS" and status["pytest"] == "FAIL" and status["bench_ops"] == "PASS"
    assert all(status[s] == "SKIPPED" for s in STEPS if s not in ("runtime", "pytest", "bench_ops"))
    md = (tmp_path / "report.md").read_text()
    assert "**Verdict: FAIL: failed steps pytest**" in md and "| pytest | FAIL |" in md
    assert "forced failure (XTC_GPU_CHECK_FAIL=pytest)" in (tmp_path / "log.txt").read_text()


def test_a_failed_build_skips_the_steps_that_need_it(tmp_path):
    proc = _run(tmp_path, "--only", "build,pytest", fail="build")
    assert proc.returncode == 1 and "FAILED steps: build" in proc.stderr
    steps = {s["name"]: s for s in json.loads((tmp_path / "report.json").read_text())["steps"]}
    assert steps["build"]["status"] == "FAIL"
    assert steps["pytest"]["status"] == "SKIPPED" and "build failed" in steps["pytest"]["note"]


def test_usage_errors(tmp_path):
    for args in ([], ["--bogus", str(tmp_path)], [str(tmp_path), str(tmp_path / "second")]):
        proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "usage:" in proc.stderr, args


def test_report_shows_the_recorded_values(tmp_path):
    """The values the CUDA-vs-CPU tests record (JUnit properties) reach the report: the launches table and the
    other tests' lines."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    (work / "steps.tsv").write_text("launches\tPASS\t0\t1.0\t120\tnote\tcmd\n")
    (work / "pytest_launches.xml").write_text(
        '<testsuites><testsuite tests="2" failures="0" errors="0" skipped="0" time="1.0">'
        '<testcase classname="t" name="test_launches_per_op[sigmoid_gate-fp32]"><properties>'
        '<property name="fwd_kernels" value="1"/><property name="fwd_copies" value="0"/>'
        '<property name="bwd_kernels" value="1"/><property name="bwd_copies" value="0"/>'
        '<property name="fwd_names" value="gate_fwd"/><property name="bwd_names" value="gate_bwd"/>'
        '</properties></testcase>'
        '<testcase classname="t" name="test_cosine_eps_1e_46_zero_vectors[fp32-mean]"><properties>'
        '<property name="cpu_outcome" value="ValueError(eps)"/></properties></testcase>'
        '</testsuite></testsuites>')
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), "write", str(out), str(work)],
                   check=True, timeout=60)
    report = json.loads((out / "report.json").read_text())
    props = report["pytest"]["pytest_launches"]["properties"]
    assert props["test_launches_per_op[sigmoid_gate-fp32]"]["fwd_kernels"] == "1"
    md = (out / "report.md").read_text()
    assert "| test_launches_per_op[sigmoid_gate-fp32] | 1 | 0 | 1 | 0 | gate_fwd; gate_bwd |" in md
    assert "- test_cosine_eps_1e_46_zero_vectors[fp32-mean]: cpu_outcome ValueError(eps)" in md
