"""kill -9 at any moment of a run, then --resume, finishes it with the result of the uninterrupted run.

Each run is a child process of ``python -m xtc_ext.train`` on tiny stand-in models (tests/child_train.py);
``KILL_AT`` makes the child SIGKILL itself at a training step (``step:N``) or in the middle of writing its
N-th checkpoint (``save:N``: the temporary file is half written when the process dies).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures import write_frames

CHILD = Path(__file__).resolve().parents[1] / "child_train.py"


def _run(argv, kill_at=None):
    env = dict(os.environ, KILL_AT=kill_at or "")
    return subprocess.run([sys.executable, str(CHILD), *argv], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    root = base / "frames"
    write_frames(root, ids=["0001", "0002", "0003", "0004"])
    return base, root


def _argv(root, out):
    return ["--data-root", str(root), "--size", "32", "32", "--epochs", "3", "--batch-size", "2", "--lam", "0.1",
            "--output-dir", str(out), "--no-progress", "--no-tensorboard", "--num-figures", "0"]


@pytest.mark.parametrize("kill_at", ["step:2", "save:1", "step:3", "save:2", "step:6"])
def test_kill_then_resume_finishes_the_run_exactly(setup, kill_at):
    base, root = setup
    straight_out = base / "straight"
    if not (straight_out / "metrics.json").is_file():
        done = _run(_argv(root, straight_out))
        assert done.returncode == 0, done.stderr
    out = base / kill_at.replace(":", "_")
    killed = _run(_argv(root, out), kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(["--resume", str(out / "last.pt")])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(straight_out / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight_out, out))
    assert ma["step_losses"] == mb["step_losses"] and ma["test"] == mb["test"]
    assert not list(out.glob(".*.tmp"))  # the half-written temporary file of a killed write was replaced
