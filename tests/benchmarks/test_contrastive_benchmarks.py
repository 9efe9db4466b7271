"""The contrastive regularizer's measurement scripts (nothing timed is asserted on).

``benchmarks/bench_contrastive.py --engine`` builds the two training steps (without / with ``--contrastive``)
through the training program's command line, recipe and engine; ``benchmarks/contrastive_runs.py`` turns the
runs' ``log.jsonl`` / ``metrics.json`` into the table of docs/contrastive.md.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def contrastive_runs():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("contrastive_runs")


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


def _fake_run(folder: Path, losses, contrastive=None, epoch_s=(3.0, 2.0, 4.0), miou=0.5):
    folder.mkdir(parents=True)
    rows = []
    for i, (loss, t) in enumerate(zip(losses, epoch_s)):
        row = {"epoch": i + 1, "loss": loss, "epoch_time_s": t}
        if contrastive is not None:
            row["contrastive"] = contrastive[i]
        rows.append(json.dumps(row))
    (folder / "log.jsonl").write_text("\n".join(rows) + "\n")
    test = {"mIoU": miou, "pixel_acc": 0.8, "abs_err": 0.7, "rmse": 1.1}
    (folder / "metrics.json").write_text(json.dumps({"test": test}))


def test_summary_takes_the_last_epoch_and_the_host_loss(contrastive_runs, tmp_path):
    _fake_run(tmp_path / "xtasc_on_s0", [2.0, 1.5, 1.25], contrastive=[0.2, 0.1, 0.05])
    row = contrastive_runs.summarise(tmp_path, "xtasc", "on", 0)
    assert row["loss"] == 1.25 and row["host loss"] == pytest.approx(1.2) and row["contrastive"] == 0.05
    assert row["epoch s"] == 3.0  # median of epochs 2..N: the first epoch (warm-up) is left out
    assert row["mIoU"] == 0.5


def test_table_gives_mean_and_std_over_seeds(contrastive_runs, tmp_path, capsys):
    for seed, miou in enumerate((0.4, 0.6)):
        _fake_run(tmp_path / f"xtasc_off_s{seed}", [2.0, 1.0, 1.0], miou=miou)
        _fake_run(tmp_path / f"xtasc_on_s{seed}", [2.0, 1.5, 1.5], contrastive=[0.1, 0.1, 0.1], miou=miou,
                  epoch_s=(1.0, 4.0, 2.0))
    args = contrastive_runs.argparse.Namespace(models=["xtasc"], seeds=[0, 1], out=tmp_path, settings=["off", "on"])
    contrastive_runs.table(args)
    out = capsys.readouterr().out
    off = next(line for line in out.splitlines() if line.startswith("| off |"))
    on = next(line for line in out.splitlines() if line.startswith("| on |"))
    assert "| - |" in off  # no contrastive term without the regularizer
    assert "0.5 ± 0.14" in off and "1.4 ± 0" in on  # mIoU mean ± sample std; host loss 1.5 - 0.1
    assert "epoch time on / off, per seed: 1.000, 1.000" in out
