"""Distributed training under torchrun with 2 gloo processes on the CPU (tests/child_train.py on the tiny
stand-in models): a 2 x batch-B run equals a 1 x batch-2B run, evaluation counts every sample once, rank 0
alone writes, and resume under torchrun is exact."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures import write_mtan

CHILD = Path(__file__).resolve().parents[1] / "child_train.py"


def _torchrun(nproc, argv, tmp):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--rdzv-endpoint", "localhost:0", str(CHILD), *argv]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    data = base / "mtan"
    write_mtan(data, "train", n=11, h=32, w=32, valid_only=True)  # every pixel valid: per-rank means average exactly
    write_mtan(data, "val", n=5, h=32, w=32, valid_only=True)  # odd: shards of 3 and 2, no padding
    return data


def _argv(root, out, *extra):
    return ["--dataset", "nyuv2", "--data-root", str(root), "--batch-size", "4", "--epochs", "2", "--lam", "0.1",
            "--val-fraction", "0.3", "--no-augment", "--lr", "1e-3", "--output-dir", str(out), "--no-progress",
            "--num-figures", "1", *extra]


@pytest.mark.parametrize("weighting", [("--weighting", "gradnorm", "--gradnorm-alpha", "0.5"),
                                       ("--weighting", "dwa", "--epochs", "3")], ids=["gradnorm", "dwa"])
def test_two_processes_equal_one_process_with_the_same_global_batch(root, tmp_path, weighting):
    _torchrun(2, _argv(root, tmp_path / "two", *weighting), tmp_path)
    _torchrun(1, _argv(root, tmp_path / "one", *weighting), tmp_path)
    a = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["step"] == b["step"] == 2 * a["epoch"]
    # Float tolerance: the ranks' gradients are summed in another order than one process sums its batch, and
    # Adam (lr 1e-3) turns rounding differences of near-zero gradient entries into updates of up to ~lr.
    for part in ("model", "weighting"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-4, atol=1e-4)
    wa = [w for r in a["history"] for w in r["task_weights"]]
    wb = [w for r in b["history"] for w in r["task_weights"]]
    assert wa[-2:] != [1.0, 1.0] and wa == pytest.approx(wb, rel=1e-5)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("two", "one"))
    assert ma["step_losses"] == pytest.approx(mb["step_losses"], rel=1e-5)
    assert ma["test"]["num_samples"] == mb["test"]["num_samples"] == 5  # val split, 3 + 2 shards, no padding
    for key in ("mIoU", "pixel_acc", "abs_err", "rel_err", "rmse", "loss"):  # weights equal to float tolerance
        assert ma["test"][key] == pytest.approx(mb["test"][key], rel=1e-3, abs=2e-3), key
    assert (ma["world_size"], ma["batch_size_per_rank"], ma["batch_size_global"]) == (2, 2, 4)
    record = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[0])
    assert (record["world_size"], record["batch_size_per_rank"]) == (2, 2) and "val_mIoU" in record
    assert len(ma["figures"]) == 1 and not list((tmp_path / "two").glob(".*.tmp"))


def test_resume_under_torchrun_is_exact(root, tmp_path):
    """With the contrastive regularizer on: its projectors' gradients are synchronised and its draws follow the
    checkpointed generator on every rank."""
    reg = ("--contrastive", "--contrastive-anchors", "16")
    _torchrun(2, _argv(root, tmp_path / "straight", *reg), tmp_path)
    _torchrun(2, _argv(root, tmp_path / "split", *reg, "--epochs", "1"), tmp_path)
    _torchrun(2, ["--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "2"], tmp_path)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert len(b["rng_ranks"]) == 2 and b["auxiliary"]
    for part in ("model", "auxiliary"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "split"))
    assert ma["step_losses"] == mb["step_losses"] and ma["test"] == mb["test"]


def test_an_evaluation_on_two_processes_equals_one_on_one_process(root, tmp_path):
    """The same checkpoint tested by 2 processes (shards of 3 and 2 samples, no padding, all-reduced sums) and
    by 1 process: resuming a finished run only runs its test."""
    _torchrun(2, _argv(root, tmp_path / "run", "--epochs", "1"), tmp_path)
    for name in ("two", "one"):
        shutil.copytree(tmp_path / "run", tmp_path / name)
    _torchrun(2, ["--resume", str(tmp_path / "two" / "last.pt"), "--output-dir", str(tmp_path / "two")], tmp_path)
    _torchrun(1, ["--resume", str(tmp_path / "one" / "last.pt"), "--output-dir", str(tmp_path / "one")], tmp_path)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text())["test"] for d in ("two", "one"))
    assert ma["num_samples"] == mb["num_samples"] == 5
    for key, value in mb.items():  # meters: exact sums; mean losses: float32 batch losses in another grouping
        if isinstance(value, float):
            rel = 1e-6 if key.endswith("loss") else 1e-9
            assert ma[key] == pytest.approx(value, rel=rel, abs=1e-12), key


@pytest.mark.parametrize("weighting", [("upgrad",), ("mgda", "--jacobian", "shared-parameters"), ("pcgrad",),
                                       ("config",)],
                         ids=["upgrad", "mgda-shared-parameters", "pcgrad", "config-gathered"])
def test_jacobian_aggregators_on_two_processes_equal_one_process(root, tmp_path, weighting):
    """TorchJD aggregators (xtc_ext/weighting/jacobian.py): the all-reduced Gramian (UPGrad, MGDA, PCGrad), the
    all-gathered Jacobian (ConFIG) or the averaged parameter Jacobian make the 2 x B/2 run the 1 x B run."""
    pytest.importorskip("torchjd")
    argv = ("--weighting", *weighting, "--epochs", "3")
    _torchrun(2, _argv(root, tmp_path / "two", *argv), tmp_path)
    _torchrun(1, _argv(root, tmp_path / "one", *argv), tmp_path)
    a = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["step"] == b["step"] == 2 * a["epoch"] == 6
    for k in a["model"]:  # tolerance: see the test above
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-4)
    wa = [w for r in a["history"] for w in r["task_weights"]]
    wb = [w for r in b["history"] for w in r["task_weights"]]
    # MGDA's Frank-Wolfe solver stops at a duality gap of 1e-3: a rounding difference in the Gramian can change
    # its iteration count, so its weights agree to ~1e-3 and the losses to ~1e-4 (the model still to 1e-4)
    assert wa == pytest.approx(wb, rel=1e-3, nan_ok=True)
    assert a["step_losses"] == pytest.approx(b["step_losses"], rel=1e-4)


def test_mtcp_with_a_jacobian_aggregator_and_the_regularizer_trains_under_torchrun(root, tmp_path):
    """MT-CP (three tasks on the tiny stand-in), GradDrop (each rank aggregates its own columns) and the contrastive
    term added to the aggregated update: one backward per parameter, so DDP's reducer fires once per step."""
    pytest.importorskip("torchjd")
    argv = ["--model", "mtcp", "--backbone", "resnet18_fpn", "--weighting", "graddrop", "--contrastive",
            "--contrastive-anchors", "16"]
    _torchrun(2, [a for a in _argv(root, tmp_path / "two", *argv) if a not in ("--lam", "0.1")], tmp_path)
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4 and all(map(math.isfinite, state["step_losses"]))
