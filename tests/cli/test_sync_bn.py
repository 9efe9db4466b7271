"""``--sync-bn`` off CUDA is refused at start (docs/training.md, Distributed training): one line naming the
option, exit code 2, before any dataset or model is built. torch's SyncBatchNorm works only with GPU modules;
under torchrun on the CPU the run used to end in torch's traceback at the first training step."""

import os
import subprocess
import sys

import pytest
import torch

from xtc_ext import cli
from xtc_ext import train as train_mod


@pytest.fixture
def nothing_is_built(monkeypatch):
    def unreachable(args):
        raise AssertionError("the run started although --sync-bn cannot work on this device")

    monkeypatch.setattr(train_mod, "train", unreachable)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_sync_bn_off_cuda_is_one_line_and_exit_code_2(device, nothing_is_built, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" resolves to the CPU
    with pytest.raises(SystemExit) as exc:
        train_mod.main(["--sync-bn", "--device", device, "--epochs", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ": error: --sync-bn needs CUDA" in err and "cpu" in err and "--no-sync-bn" in err


def test_no_sync_bn_and_the_default_pass_on_the_cpu():
    for argv in ([], ["--no-sync-bn"], ["--sync-bn", "--no-sync-bn"]):
        args = cli.finalize_args(cli.parse_args(["--device", "cpu", *argv]))
        assert args.sync_bn is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none available)")
def test_sync_bn_is_accepted_on_cuda():
    assert cli.finalize_args(cli.parse_args(["--sync-bn", "--device", "cuda"])).sync_bn is True


def test_torchrun_on_the_cpu_refuses_sync_bn_instead_of_torchs_traceback(tmp_path):
    """The reported case: ``torchrun ... --sync-bn`` on the CPU. The worker stops with the one line and exit
    code 2 (torchrun then reports the failed worker); nothing is written to the output folder."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "xtc_ext.train",
         "--sync-bn", "--device", "cpu", "--epochs", "1", "--max-steps", "1", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "error: --sync-bn needs CUDA" in output, output
    assert "SyncBatchNorm layers only work with GPU modules" not in output, output
    assert "exitcode" not in output or "exitcode  : 2" in output or "exitcode: 2" in output, output
    assert not out.exists()
