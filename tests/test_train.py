"""python -m xtc_ext.train: end-to-end runs on real frames / fixtures, fused vs eager, outputs, CLI."""

import json
import math

import pytest
import torch
from PIL import Image

from conftest import REAL_FRAMES
from fixtures import write_frames, write_mtan
from python_models import XTasCNet
from xtc_ext import train as train_mod


@pytest.fixture
def frames_dir(tmp_path):
    if (REAL_FRAMES / "rgb").is_dir():
        return REAL_FRAMES
    root = tmp_path / "frames"
    write_frames(root)
    return root


def _argv(root, out, *extra, layout="frames"):
    return [
        "--data-root", str(root), "--layout", layout, "--size", "64", "64", "--encoder-depth", "18",
        "--epochs", "2", "--batch-size", "2", "--max-steps", "3", "--lam", "0.1",
        "--output-dir", str(out), "--no-progress", *extra,
    ]


def test_fused_and_eager_losses_agree_for_first_steps(frames_dir, tmp_path):
    fused = train_mod.main(_argv(frames_dir, tmp_path / "fused", "--loss-impl", "fused"))
    eager = train_mod.main(_argv(frames_dir, tmp_path / "eager", "--loss-impl", "eager"))
    assert len(fused["step_losses"]) == 3
    assert fused["step_losses"] == pytest.approx(eager["step_losses"], rel=1e-4)
    # different seeds really change the run (the comparison above can fail)
    other = train_mod.main(_argv(frames_dir, tmp_path / "seed1", "--seed", "1"))
    assert other["step_losses"][0] != pytest.approx(fused["step_losses"][0], rel=1e-4)


def test_run_writes_checkpoint_log_metrics_and_figure(frames_dir, tmp_path):
    out = tmp_path / "run"
    result = train_mod.main(_argv(frames_dir, out, "--max-steps", "0", "--epochs", "2", "--weighting", "uncertainty"))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "weighting", "epoch", "args"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and "log_vars" in ckpt["weighting"]
    model = XTasCNet(13, encoder_depth=18)
    model.load_state_dict(ckpt["model"])  # strict: the checkpoint is a complete XTasC-Net
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    for key in ("mIoU", "pixel_acc", "abs_err", "rel_err", "rmse"):
        assert math.isfinite(metrics["after_training"][key])
    assert 0.0 <= metrics["after_training"]["mIoU"] <= 1.0
    with Image.open(out / "prediction.png") as png:
        assert png.mode in ("RGB", "RGBA") and png.width > 200 and png.height > 100
    assert not list(out.glob("*.tmp"))


def test_mtan_layout_trains_on_train_and_evaluates_on_val(tmp_path):
    root = tmp_path / "mtan"
    write_mtan(root, "train", n=3, h=64, w=64)
    write_mtan(root, "val", n=2, h=64, w=64)
    result = train_mod.main(_argv(root, tmp_path / "run", layout="mtan"))
    assert result["eval_set"] == "val"
    assert all(math.isfinite(v) for v in result["step_losses"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    train_mod.save_checkpoint(path, {"epoch": 1})

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.torch, "save", crash)
    with pytest.raises(OSError):
        train_mod.save_checkpoint(path, {"epoch": 2})
    assert torch.load(path)["epoch"] == 1  # the checkpoint already written survives


def test_help_documents_every_option(capsys):
    parser = train_mod.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--data-root", "--layout", "--size", "--epochs", "--batch-size", "--lr", "--encoder-depth",
                   "--lam", "--weighting", "--loss-impl", "--device", "--seed", "--output-dir"):
        assert option in text


@pytest.mark.parametrize(
    "extra, message",
    [(["--size", "100", "100"], "multiples of 32"), (["--lam", "2"], "--lam"), (["--epochs", "0"], "--epochs")],
)
def test_bad_arguments_exit_with_a_message(frames_dir, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        train_mod.main(_argv(frames_dir, tmp_path / "bad", *extra))


def test_missing_data_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_mod.main(_argv(tmp_path / "nowhere", tmp_path / "run"))
