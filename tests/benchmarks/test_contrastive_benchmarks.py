"""The contrastive regularizer's measurement script (nothing timed is asserted on).

``benchmarks/bench_contrastive.py --engine`` builds the two training steps (without / with ``--contrastive``)
through the training program's command line, recipe and engine. The ten-frame comparison of docs/contrastive.md
is the study ``xtc_ext/configs/studies/contrastive.yaml`` (tests/study).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def test_engine_overhead_runs_both_training_steps():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)])}
    cmd = [sys.executable, str(BENCH / "bench_contrastive.py"), "--engine", "--threads", "1", "--rounds", "1",
           "--encoder-depth", "18", "--batch", "2", "--size", "32", "32", "--anchors", "8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    medians = re.findall(r"^  (step|step \+ regularizer) +median +([0-9.]+) ms", proc.stdout, re.M)
    assert [name for name, _ in medians] == ["step", "step + regularizer"], proc.stdout
    assert all(float(ms) > 0 for _, ms in medians)
    assert "K=8" in proc.stdout and "overhead of the regularizer" in proc.stdout
