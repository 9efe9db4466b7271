"""kill -9 at any moment of a run, then --resume, finishes it with the result of the uninterrupted run.

Each run is a child process of ``python -m xtc_ext.train`` on tiny stand-in models (tests/tiny_models.py);
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

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

CHILD = f"""
import os, signal, sys
sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]
import pytest
from tiny_models import use_tiny_models
use_tiny_models(pytest.MonkeyPatch())
from xtc_ext.engine import checkpoint
from xtc_ext.recipes import XTasCRecipe
kind, _, n = os.environ.get("KILL_AT", "none:0").partition(":")
count = [0]
if kind == "save":
    real_save = checkpoint.torch.save
    def save(obj, f):
        count[0] += 1
        if count[0] == int(n):
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f)
    checkpoint.torch.save = save
elif kind == "step":
    real_step = XTasCRecipe.training_step
    def step(self, *args, **kwargs):
        count[0] += 1
        if count[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *args, **kwargs)
    XTasCRecipe.training_step = step
from xtc_ext import train
train.main(sys.argv[1:])
"""


def _run(script, argv, kill_at=None):
    env = dict(os.environ, KILL_AT=kill_at or "none:0")
    return subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    root = base / "frames"
    write_frames(root, ids=["0001", "0002", "0003", "0004"])
    script = base / "child.py"
    script.write_text(CHILD)
    return base, root, script


def _argv(root, out):
    return ["--data-root", str(root), "--size", "32", "32", "--epochs", "3", "--batch-size", "2", "--lam", "0.1",
            "--output-dir", str(out), "--no-progress", "--no-tensorboard", "--num-figures", "0"]


@pytest.mark.parametrize("kill_at", ["step:2", "save:1", "step:3", "save:2", "step:6"])
def test_kill_then_resume_finishes_the_run_exactly(setup, kill_at):
    base, root, script = setup
    straight_out = base / "straight"
    if not (straight_out / "metrics.json").is_file():
        done = _run(script, _argv(root, straight_out))
        assert done.returncode == 0, done.stderr
    out = base / kill_at.replace(":", "_")
    killed = _run(script, _argv(root, out), kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(script, ["--resume", str(out / "last.pt")])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(straight_out / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight_out, out))
    assert ma["step_losses"] == mb["step_losses"] and ma["test"] == mb["test"]
    assert not list(out.glob(".*.tmp"))  # the half-written temporary file of a killed write was replaced
