"""Real studies on the tiny stand-in models (each run ``python tests/child_train.py``, tiny frames, a few steps):
N runs at a time, failed runs (killed at a step) listed while the others finish, an interrupted study resumed without redoing the
finished runs (the interrupted ones continue from their ``last.pt``), SIGTERM stopping the running runs, and the
table and figure written."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures import write_frames
from xtc_ext.study import __main__ as study_cli
from xtc_ext.study import runner

TESTS = Path(__file__).resolve().parents[1]
CHILD_STUDY = TESTS / "child_study.py"
CHILD_TRAIN = str(TESTS / "child_train.py")


@pytest.fixture
def tiny_study(tmp_path):
    frames = tmp_path / "frames"
    write_frames(frames)  # 3 frames, 48x64
    spec = {"base": {"dataset": "frames", "data_root": str(frames), "size": [32, 64], "epochs": 3, "batch_size": 2,
                     "num_figures": 0, "tensorboard": False, "progress": False},
            "axes": {"model": ["xtasc", "mtcp"]},
            "seeds": [0, 1], "keep_checkpoints": False}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, tmp_path / "out"


def _child_study(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, str(CHILD_STUDY), *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_killed_study_resumes_without_redoing_finished_runs(tiny_study, monkeypatch, capsys):
    path, out = tiny_study
    # first invocation: every XTasC-family run kills itself at its 3rd step (after its first last.pt)
    first = _child_study([path, "--jobs", "2", "--output-dir", out], env={"KILL_AT": "step:3"})
    stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 1, stdout + stderr
    assert "2 run(s) failed" in stderr
    failed = sorted(line.split("\t")[0] for line in (out / "failures.log").read_text().splitlines())
    assert failed == ["xtasc_s0", "xtasc_s1"]
    for seed in (0, 1):
        assert (out / f"mtcp_s{seed}" / "metrics.json").is_file() and not list((out / f"mtcp_s{seed}").glob("*.pt"))
        assert (out / f"xtasc_s{seed}" / "last.pt").is_file() and not (out / f"xtasc_s{seed}" / "metrics.json").exists()
    assert "FAILED xtasc_s0" in stdout and "exit code -9" in (out / "failures.log").read_text()
    finished = {s: (out / f"mtcp_s{s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1)}

    # second invocation, in this process: the finished runs are skipped, the killed ones resume
    monkeypatch.setattr(runner, "TRAIN_PROGRAM", (CHILD_TRAIN,))
    monkeypatch.delenv("KILL_AT", raising=False)
    assert study_cli.main([str(path), "--jobs", "2", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {s: (out / f"mtcp_s{s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1)} == finished
    assert "skipped mtcp_s0" in printed and "started mtcp_s0" not in printed
    for seed in (0, 1):
        assert f"started xtasc_s{seed} (resuming from {out / f'xtasc_s{seed}' / 'last.pt'})" in printed
        result = json.loads((out / f"xtasc_s{seed}" / "metrics.json").read_text())
        assert result["epochs_trained"] == 3 and len(result["loss_history"]) == 3
        assert "--resume" in (out / f"xtasc_s{seed}" / "train.log").read_text()
        assert not list((out / f"xtasc_s{seed}").glob("*.pt"))  # keep_checkpoints: false
    assert not (out / "failures.log").exists()
    with open(out / "table_frames.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert rows["xtasc"]["mIoU_n"] == "2" and rows["mtcp"]["rmse_n"] == "2"
    assert "| xtasc |" in printed and (out / "figure_frames.png").stat().st_size > 1000


def test_sigterm_stops_the_running_runs_and_the_next_invocation_resumes(tiny_study, capsys):
    path, out = tiny_study
    spec = yaml.safe_load(path.read_text())
    spec.update(runs={}, seeds=[0], axes={"model": ["xtasc"]})
    spec["base"]["epochs"] = 500
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = _child_study([path, "--output-dir", out])
    checkpoint = out / "xtasc_s0" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and time.monotonic() < deadline and study.poll() is None:
        time.sleep(0.2)
    assert checkpoint.is_file(), study.communicate()
    study.send_signal(signal.SIGTERM)
    stdout, stderr = study.communicate(timeout=60)
    assert study.returncode == 130, stdout + stderr
    assert "interrupted; run it again to resume" in stderr
    log = (out / "xtasc_s0" / "train.log").read_text()
    time.sleep(1.0)
    assert (out / "xtasc_s0" / "train.log").read_text() == log  # the run's process is gone
    assert study_cli.main([str(path), "--output-dir", str(out), "--dry-run"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[1].startswith("resume   xtasc_s0:") and stdout.rstrip().endswith(f"--resume {checkpoint}")
