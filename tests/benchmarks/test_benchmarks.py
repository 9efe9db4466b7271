"""The GPU benchmark script's CPU-independent logic, through its ``--dry-run`` mode.

``benchmarks/bench_ops.py --dry-run`` runs the whole pipeline (copy bandwidth, inputs, correctness
check, fused/eager/torch.compile timing, byte counting, JSON and markdown writing, target check)
on the CPU with tiny shapes. Nothing here times anything that is asserted on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ops.py"
OPS = ("masked_cross_entropy", "masked_l1_loss")
SIZES = ("nyuv2", "cityscapes_full")
DTYPES = ("fp32", "bf16")
PASSES = ("fwd", "fwd_bwd")


@pytest.fixture(scope="module")
def bench_ops():
    spec = importlib.util.spec_from_file_location("bench_ops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ops"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_ops")
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--ops", *OPS,
           "--sizes", *SIZES, "--dtypes", *DTYPES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny shapes: threads only add fork-join waits
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_dry_run_writes_json_and_markdown(dry_run):
    out, stdout = dry_run
    data = json.loads((out / "bench_ops.json").read_text())
    md = (out / "bench_ops.md").read_text()

    meta = data["meta"]
    assert meta["dry_run"] is True
    for key in ("device", "torch", "cuda", "build_info", "git_commit", "timestamp"):
        assert key in meta
    assert data["copy_bw"]["start"]["gbps"] > 0 and data["copy_bw"]["end"]["gbps"] > 0
    assert data["copy_bw_gbps"] > 0

    rows = {(r["op"], r["size"], r["dtype"], r["pass"]): r for r in data["rows"]}
    expected = {(o, s, d, p) for o in OPS for s in SIZES for d in DTYPES for p in PASSES}
    assert set(rows) == expected
    for key, r in rows.items():
        assert r["useful_bytes"] > 0 and r["gbps"] > 0 and r["pct_copy_bw"] > 0, key
        assert r["n_sets"] >= 3 and len(r["impls"]["fused"]["times_ms"]) == r["reps"] == 2
        for impl in ("fused", "eager"):
            assert r["impls"][impl]["status"] == "ok" and r["impls"][impl]["median_ms"] > 0, (key, impl)
        comp = r["impls"]["compile"]  # compiled, or n/a with the reason recorded
        assert comp["status"] == "ok" or comp["reason"], (key, comp)
        assert r["speedup_vs_eager"] > 0
        assert r["check"]["ok"], (key, r["check"])
        assert r["impls"]["fused"]["peak_extra_bytes"] is None  # no CUDA memory statistics on the CPU

    ce = rows[("masked_cross_entropy", "nyuv2", "fp32", "fwd_bwd")]
    N, C, H, W = ce["shape"]
    assert C == 13 and ce["pixels"] == N * H * W
    assert ce["useful_bytes"] == ce["pixels"] * (3 * C * 4 + 2 * 8 + 8)  # logits x3, labels x2, lse w+r
    l1 = rows[("masked_l1_loss", "cityscapes_full", "bf16", "fwd")]
    assert l1["shape"][1] == 1 and l1["useful_bytes"] == l1["pixels"] * 2 * 2

    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| op ", "| --- "))]
    assert len(table) == len(expected)
    for o, s, d, p in expected:
        assert any(line.startswith(f"| {o} | {s} | ") and f" | {d} | {p} | " in line for line in table), (o, s, d, p)
    assert "Design-brief targets" in stdout and "fused vs eager correctness check: 16/16 rows ok" in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("wrote ")


def test_useful_byte_formulas_positive_for_every_op(bench_ops):
    assert set(bench_ops.USEFUL_BYTES) == {"masked_cross_entropy", "masked_l1_loss", "soft_cross_entropy",
                                           "cosine_similarity_loss", "sigmoid_gate"}
    for op, passes in bench_ops.USEFUL_BYTES.items():
        assert set(passes) == {"fwd", "fwd_bwd"}
        for size in bench_ops.OP_SIZES[op]:
            N, C, H, W = bench_ops.op_shape(op, size)
            for s in (2, 4):
                fwd = bench_ops.useful_bytes(op, "fwd", N * H * W, C, s, 8)
                both = bench_ops.useful_bytes(op, "fwd_bwd", N * H * W, C, s, 8)
                assert 0 < fwd < both, (op, size, s)


def test_missing_ops_are_skipped_with_a_note(bench_ops, tmp_path, monkeypatch, capsys):
    """An op absent from xtc_ext.ops is skipped (printed, recorded), not an error."""
    monkeypatch.delattr(bench_ops.ops, "masked_l1_loss", raising=False)
    with torch.random.fork_rng():  # main() seeds the global generator
        result = bench_ops.main(["--dry-run", "--out", str(tmp_path), "--ops", "masked_l1_loss", "masked_cross_entropy",
                                 "--sizes", "nyuv2", "--dtypes", "fp32", "--passes", "fwd", "--no-compile"])
    assert "note: skipping masked_l1_loss" in capsys.readouterr().out
    assert "masked_l1_loss" in result["skipped_ops"] and result["ops"] == ["masked_cross_entropy"]
    assert [(r["op"], r["pass"]) for r in result["rows"]] == [("masked_cross_entropy", "fwd")]
    assert result["rows"][0]["impls"]["compile"] == {"status": "n/a", "reason": "skipped (--no-compile)"}
    md = (tmp_path / "bench_ops.md").read_text()
    assert "Skipped ops: masked_l1_loss" in md and "| masked_cross_entropy | nyuv2 | 2x13x8x12 | fp32 | fwd |" in md
