"""python -m xtc_ext.train --model mtcp: NYUD (frames, NYUD_MT) and PASCAL_MT runs, the Table 3
ablation flags, LPS weights across epochs and resume.

Every run is tiny (the MT-CP stand-in of tests/tiny_models.py, 64x64 images, a few steps); the real MT-CP
model built by the recipe is tested in tests/recipes/test_mtcp_recipe.py."""

import json

import pytest
import torch

from conftest import REAL_FRAMES
from fixtures import write_frames, write_nyudmt, write_pascalmt
from tiny_models import use_tiny_models
from xtc_ext import cli
from xtc_ext import train as train_mod


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    return use_tiny_models(monkeypatch)

TIME_KEYS = ("epoch_time_s", "elapsed_s")


def _argv(root, out, *extra, dataset="frames"):
    return [
        "--model", "mtcp", "--backbone", "resnet18_fpn", "--dataset", dataset, "--data-root", str(root),
        "--size", "64", "64", "--epochs", "1", "--batch-size", "2", "--output-dir", str(out),
        "--no-progress", "--no-tensorboard", "--num-figures", "0", *extra,
    ]


def _history(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_mtcp_trains_on_frames_with_three_tasks(tmp_path):
    root = REAL_FRAMES
    if not (root / "rgb").is_dir():
        root = tmp_path / "frames"
        write_frames(root)
    out = tmp_path / "run"
    result = train_mod.main(_argv(root, out, "--max-steps", "2", "--classes", "40", "--val-fraction", "0.3",
                                  "--num-figures", "1", "--tensorboard"))
    assert result["tasks"] == ["semseg", "depth", "normals"] and result["steps"] == 2
    test = result["test"]
    for key in ("mIoU", "pixel_acc", "abs_err", "rel_err", "rmse", "normals_mean", "normals_median",
                "normals_11.25", "normals_22.5", "normals_30"):
        assert key in test and test[key] == test[key], key
    rec = _history(out)[0]
    for key in ("loss", "semseg_loss", "depth_loss", "normals_loss", "semseg_intermediate", "coherence", "val_score"):
        assert key in rec
    assert rec["task_weights"] == [1.0, 1.0, 1.0]
    assert "weight_2" in (out / "log.csv").read_text().splitlines()[0]
    assert (out / "best.pt").is_file() and len(result["figures"]) == 1 and (out / result["figures"][0]).is_file()
    assert any((out / "tb").iterdir())
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert {"share_history", "lps_weights", "num_epochs"} <= set(ckpt["weighting"])
    assert test["rmse"] >= 0 and test["depth_loss"] > 0


def test_mtcp_trains_on_nyudmt(tmp_path):
    root = tmp_path / "nyud"
    write_nyudmt(root)
    result = train_mod.main(_argv(root, tmp_path / "run", "--max-steps", "2", "--val-fraction", "0.34",
                                  dataset="nyudmt"))
    assert result["tasks"] == ["semseg", "depth", "normals"] and result["num_classes"] == 40
    assert result["test"]["num_samples"] == 1 and "normals_mean" in result["test"]


def test_mtcp_trains_on_pascal(tmp_path):
    root = tmp_path / "pascal"
    write_pascalmt(root)
    result = train_mod.main(_argv(root, tmp_path / "run", "--max-steps", "2", "--val-fraction", "0.34",
                                  "--weighting", "lps-log", "--normals-loss", "l1", dataset="pascal"))
    assert result["tasks"] == ["semseg", "human_parts", "sal"] and result["num_classes"] == 21
    for key in ("mIoU", "parts_mIoU", "sal_maxF"):
        assert key in result["test"]
    assert "depth_loss" not in _history(tmp_path / "run")[0]


def test_mtcp_datasets_and_defaults(tmp_path):
    args = cli.finalize_args(cli.parse_args(["--model", "mtcp", "--dataset", "nyudmt", "--data-root", "D"]))
    assert (args.weighting, args.size, args.classes, args.optimizer) == ("lps", [480, 640], 40, "adam")
    args = cli.finalize_args(cli.parse_args(["--model", "mtcp", "--dataset", "pascal", "--data-root", "D"]))
    assert (args.size, args.classes) == ([512, 512], 21)
    assert cli.finalize_args(cli.parse_args([])).weighting == "uncertainty"
    with pytest.raises(SystemExit, match="has no depth targets"):  # PASCAL has no depth for XTasC-Net
        cli.finalize_args(cli.parse_args(["--dataset", "pascal", "--data-root", "D"]))
    with pytest.raises(SystemExit, match="--model mtcp does not support --weighting gradnorm"):
        cli.finalize_args(cli.parse_args(["--model", "mtcp", "--weighting", "gradnorm"]))


def test_lps_weights_change_across_epochs(tmp_path):
    root = tmp_path / "frames"
    write_frames(root)
    result = train_mod.main(_argv(root, tmp_path / "run", "--epochs", "3", "--val-fraction", "0"))
    weights = [r["task_weights"] for r in _history(tmp_path / "run")]
    assert weights[0] == [1.0, 1.0, 1.0] and weights[-1] != [1.0, 1.0, 1.0]
    assert abs(sum(weights[-1]) - 3.0) < 1e-4 and result["epochs_trained"] == 3


def test_mtcp_resume_continues_exactly(tmp_path):
    root = tmp_path / "frames"
    write_frames(root, ids=["0001", "0002", "0003", "0004"])
    extra = ("--epochs", "2", "--val-fraction", "0.25", "--optimizer", "adamw", "--weight-decay", "1e-4")
    straight = train_mod.main(_argv(root, tmp_path / "straight", *extra))
    train_mod.main(_argv(root, tmp_path / "split", *extra, "--epochs", "1"))
    resumed = train_mod.main(["--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "2"])
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["args"]["model"] == "mtcp"
    for part in ("model", "weighting"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert straight["step_losses"] == resumed["step_losses"]
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_bad_mtcp_task_exits_naming_it():
    with pytest.raises(SystemExit, match="'sal'"):
        cli.finalize_args(cli.parse_args(["--model", "mtcp", "--mtcp-tasks", "semseg", "sal"]))
    with pytest.raises(SystemExit, match="--model mtcp only"):
        cli.finalize_args(cli.parse_args(["--mtcp-tasks", "depth"]))


def test_mtcp_delta_m_against_single_task_runs(tmp_path):
    root = tmp_path / "frames"
    write_frames(root)
    common = ("--max-steps", "1", "--val-fraction", "0")
    seg = train_mod.main(_argv(root, tmp_path / "seg", *common, "--mtcp-tasks", "semseg"))
    dep = train_mod.main(_argv(root, tmp_path / "dep", *common, "--mtcp-tasks", "depth"))
    assert seg["tasks"] == ["semseg"] and dep["tasks"] == ["depth"] and "normals_mean" not in seg["test"]
    files = [str(tmp_path / "seg" / "metrics.json"), str(tmp_path / "dep" / "metrics.json")]
    mt = train_mod.main(_argv(root, tmp_path / "mt", *common, "--mtcp-tasks", "semseg", "depth", "--baseline", *files))
    written = json.loads((tmp_path / "mt" / "metrics.json").read_text())
    b_seg = json.loads((tmp_path / "seg" / "metrics.json").read_text())["test"]["mIoU"]
    b_dep = json.loads((tmp_path / "dep" / "metrics.json").read_text())["test"]["rmse"]
    m_seg, m_dep = written["test"]["mIoU"], written["test"]["rmse"]
    expected = 100.0 / 2 * ((m_seg - b_seg) / b_seg - (m_dep - b_dep) / b_dep)
    assert written["delta_m_keys"] == ["mIoU", "rmse"] and mt["delta_m"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert written["delta_m"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert "Delta_m" in (tmp_path / "mt" / "metrics.md").read_text()
    with pytest.raises(ValueError, match="normals_mean"):  # a task without a baseline is named
        train_mod.main(_argv(root, tmp_path / "mt3", *common, "--baseline", *files))
