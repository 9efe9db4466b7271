"""python -m xtc_ext.train with the XTasC-Net family: variants, datasets, protocol, resume, outputs, errors.

Every run is tiny (the stand-in models of tests/tiny_models.py, 32x64 images, a few steps; checkpoints of a
few kilobytes) on fixtures written in the exact on-disk formats (tests/fixtures.py), except the
fused-vs-eager check, which prefers the ten real frames. The real architectures are tested in tests/models
and tests/recipes.
"""

import csv
import json
import math

import pytest
import torch
from PIL import Image

from conftest import REAL_FRAMES
from fixtures import write_cityscapes, write_frames, write_mtan, write_mtan_cityscapes
from tiny_models import use_tiny_models
from xtc_ext import train as train_mod
from xtc_ext.engine import loop as engine_loop

TIME_KEYS = ("epoch_time_s", "elapsed_s")


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    return use_tiny_models(monkeypatch)


@pytest.fixture
def frames_dir(tmp_path):
    if (REAL_FRAMES / "rgb").is_dir():
        return REAL_FRAMES
    root = tmp_path / "frames"
    write_frames(root)
    return root


@pytest.fixture
def tiny_frames(tmp_path):
    root = tmp_path / "tiny_frames"
    write_frames(root)  # 3 frames, 48x64
    return root


@pytest.fixture
def mtan_root(tmp_path):
    root = tmp_path / "mtan"
    write_mtan(root, "train", n=4, h=32, w=64)
    write_mtan(root, "val", n=2, h=32, w=64)
    return root


def _argv(root, out, *extra, dataset="frames", size=("32", "64")):
    argv = [
        "--dataset", dataset, "--data-root", str(root), "--encoder-depth", "18",
        "--epochs", "2", "--batch-size", "2", "--lam", "0.1",
        "--output-dir", str(out), "--no-progress", "--no-tensorboard", "--num-figures", "1",
    ]
    if size:
        argv += ["--size", *size]
    return argv + list(extra)


def _without_times(history):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in history]


# --------------------------------------------------------------------------- #
# losses and outputs
# --------------------------------------------------------------------------- #
def test_fused_and_eager_losses_agree_for_first_steps(frames_dir, tmp_path):
    common = ("--size", "64", "64", "--max-steps", "3", "--num-figures", "0")
    fused = train_mod.main(_argv(frames_dir, tmp_path / "fused", *common, "--loss-impl", "fused", size=None))
    eager = train_mod.main(_argv(frames_dir, tmp_path / "eager", *common, "--loss-impl", "eager", size=None))
    assert len(fused["step_losses"]) == 3
    assert fused["step_losses"] == pytest.approx(eager["step_losses"], rel=1e-4)
    # different seeds really change the run (the comparison above can fail)
    other = train_mod.main(_argv(frames_dir, tmp_path / "seed1", *common, "--seed", "1", size=None))
    assert other["step_losses"][0] != pytest.approx(fused["step_losses"][0], rel=1e-4)


def test_run_writes_checkpoints_logs_tensorboard_metrics_and_figures(tiny_frames, tmp_path, tiny):
    out = tmp_path / "run"
    result = train_mod.main(_argv(tiny_frames, out, "--tensorboard", "--val-fraction", "0.34", "--num-figures", "2",
                                  "--batch-size", "1"))
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / name, weights_only=True)  # plain tensors and values only
        assert {"model", "optimizer", "scheduler", "weighting", "rng", "epoch", "step", "args", "history"} <= set(ckpt)
        assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda", "loader", "regularizer"}
        assert "log_vars" in ckpt["weighting"]
        tiny.xtasc(13).load_state_dict(ckpt["model"])  # strict: the complete model
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["loss"]) and "val_mIoU" in r and "val_score" in r for r in history)
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["loss"]) == pytest.approx(history[1]["loss"])
    assert {"weight_0", "weight_1", "val_abs_err", "lr"} <= set(rows[0])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    for key in ("mIoU", "pixel_acc", "abs_err", "rel_err", "rmse"):
        assert math.isfinite(metrics["test"][key])
    assert 0.0 <= metrics["test"]["mIoU"] <= 1.0
    assert metrics["num_parameters"] == sum(p.numel() for p in tiny.xtasc(13).parameters())
    table = (out / "metrics.md").read_text()
    assert "| mIoU |" in table and "abs_err (m)" in table and "best.pt" in table
    assert len(metrics["figures"]) == 2
    for rel in metrics["figures"]:
        with Image.open(out / rel) as png:
            assert png.mode in ("RGB", "RGBA") and png.width > 200 and png.height > 100
    assert not list(out.glob("*.tmp"))


# --------------------------------------------------------------------------- #
# resume
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("weighting", ["uncertainty", "dwa"])
def test_resume_continues_exactly(tmp_path, weighting):
    """3 epochs straight == 1 epoch, then --resume to 3 epochs: same weights, same losses, with
    augmentation on (its RNG is part of the checkpoint), shuffling (4 training frames: the loader's
    generator is part of it too) and validation every epoch."""
    root = tmp_path / "frames6"
    write_frames(root, ids=["0001", "0002", "0003", "0004", "0005", "0006"])
    extra = ("--epochs", "3", "--batch-size", "2", "--val-fraction", "0.34", "--weighting", weighting,
             "--num-figures", "0")
    straight = train_mod.main(_argv(root, tmp_path / "straight", *extra))
    train_mod.main(_argv(root, tmp_path / "split", *extra, "--epochs", "1"))  # the last --epochs wins
    resumed = train_mod.main(["--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "3"])

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 6
    for part in ("model", "weighting"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert straight["step_losses"] == resumed["step_losses"]
    assert _without_times(a["history"]) == _without_times(b["history"])
    logs = [[json.loads(l) for l in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("straight", "split")]
    assert _without_times(logs[0]) == _without_times(logs[1])
    assert straight["test"] == resumed["test"]
    if weighting == "dwa":
        assert a["history"][2]["task_weights"] != [1.0, 1.0]  # DWA state survived the resume


def test_resume_missing_or_corrupt_checkpoint_is_one_line_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    for path, what in ((tmp_path / "nothing.pt", "not found"), (bad, "truncated")):
        with pytest.raises(SystemExit) as exc:
            train_mod.main(["--resume", str(path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and path.name in err and what in err and "Traceback" not in err


# --------------------------------------------------------------------------- #
# variants
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "extra, check",
    [
        (["--model", "mtnet", "--weighting", "equal"], "no_ttnets"),
        (["--model", "align", "--lp", "smoothl1"], "ttnets"),
        (["--model", "xtasc", "--weighting", "gradnorm", "--gradnorm-alpha", "0.5", "--seg-consistency", "hard"], "gradnorm"),
        (["--model", "xtasc", "--lp", "logl1", "--weighting", "dwa"], "ttnets"),
        (["--model", "stnet", "--task", "semseg", "--betas", "0.9", "0.999"], "semseg"),
        (["--model", "stnet", "--task", "depth", "--lp", "mse"], "depth"),
    ],
)
def test_variants_train_and_test(mtan_root, tmp_path, extra, check, tiny):
    out = tmp_path / "run"
    result = train_mod.main(_argv(mtan_root, out, "--max-steps", "2", *extra, dataset="nyuv2", size=None))
    assert len(result["step_losses"]) == 2 and all(math.isfinite(v) for v in result["step_losses"])
    ckpt = torch.load(out / "last.pt", weights_only=True)
    keys = set(ckpt["model"])
    if check == "no_ttnets":
        assert ckpt["args"]["lam"] == 0.0 and not any(k.startswith(("seg_to_depth", "depth_to_seg")) for k in keys)
        assert result["model"].startswith("Base MT-Net")
    elif check in ("ttnets", "gradnorm"):
        assert any(k.startswith("seg_to_depth") for k in keys) and any(k.startswith("depth_to_seg") for k in keys)
    if check == "gradnorm":
        assert set(ckpt["weighting"]) == {"task_weights", "initial_losses", "num_steps"}
        assert int(ckpt["weighting"]["num_steps"]) == 2
        assert sum(ckpt["history"][0]["task_weights"]) == pytest.approx(2.0, rel=1e-5)
    if check in ("semseg", "depth"):
        tiny.stnet(check, 13).load_state_dict(ckpt["model"])
        present = {"semseg": ("mIoU", "pixel_acc"), "depth": ("abs_err", "rel_err")}[check]
        absent = {"semseg": ("abs_err", "rel_err"), "depth": ("mIoU", "pixel_acc")}[check]
        assert all(k in result["test"] for k in present) and not any(k in result["test"] for k in absent)
        assert ckpt["args"]["lam"] == 0.0 and result["tasks"] == [check]
        if check == "semseg":
            assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999) or \
                list(ckpt["optimizer"]["param_groups"][0]["betas"]) == [0.9, 0.999]


# --------------------------------------------------------------------------- #
# datasets and protocol
# --------------------------------------------------------------------------- #
def test_mtan_nyuv2_selects_on_train_and_tests_once_on_val(mtan_root, tmp_path, monkeypatch):
    calls = []
    real = engine_loop.evaluate

    def spy(model, loader, *args, **kwargs):
        calls.append(loader.dataset)
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(engine_loop, "evaluate", spy)
    out = tmp_path / "run"
    result = train_mod.main(_argv(mtan_root, out, "--epochs", "3", "--val-fraction", "0.25",
                                  dataset="nyuv2", size=None))
    # validation every epoch on a Subset of the TRAIN split, then exactly one test on the val split
    assert len(calls) == 4
    for ds in calls[:3]:
        assert isinstance(ds, torch.utils.data.Subset) and ds.dataset.split == "train" and not ds.dataset.augment
        assert len(ds) == 1
    assert calls[3].split == "val" and len(calls[3]) == 2
    assert result["test"]["num_samples"] == 2
    history = json.loads(json.dumps(torch.load(out / "last.pt", weights_only=True)["history"]))
    scores = [r["val_score"] for r in history]
    best_epoch = 1 + max(range(3), key=lambda i: (scores[i], -i))
    assert result["selection"]["best_epoch"] == best_epoch
    assert result["selection"]["tested_checkpoint"] == "best.pt"
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == best_epoch
    assert "before_training" not in result  # the test split is not looked at before the end


def test_select_by_loss_and_eval_every(mtan_root, tmp_path):
    result = train_mod.main(_argv(mtan_root, tmp_path / "run", "--epochs", "3", "--eval-every", "2",
                                  "--select-by", "loss", dataset="nyuv2", size=None))
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]
    assert ["val_loss" in r for r in history] == [False, True, True]  # epoch 2, and the last epoch
    losses = {r["epoch"]: r["val_loss"] for r in history if "val_loss" in r}
    assert result["selection"]["best_epoch"] == min(losses, key=lambda e: (losses[e], e))


def test_val_fraction_zero_disables_selection(tiny_frames, tmp_path):
    out = tmp_path / "run"
    result = train_mod.main(_argv(tiny_frames, out, "--val-fraction", "0"))
    assert result["selection"]["criterion"] == "none" and result["selection"]["tested_checkpoint"] == "last.pt"
    assert not (out / "best.pt").exists()
    assert "before_training" in result  # frames: test = the training frames, shown before and after


@pytest.mark.parametrize("classes", [7, 19])
def test_cityscapes_official_files(tmp_path, classes):
    root = tmp_path / "cs"
    write_cityscapes(root, "train")
    write_cityscapes(root, "val")
    result = train_mod.main(_argv(root, tmp_path / "run", "--classes", str(classes), "--max-steps", "1",
                                  "--epochs", "1", "--val-fraction", "0.34", dataset="cityscapes"))
    assert result["num_classes"] == classes and result["depth_unit"] == "disparity/256"
    assert result["test"]["num_samples"] == 3 and math.isfinite(result["test"]["abs_err"])
    assert "1 held-out" in result["splits"]["val"]


def test_cityscapes_mtan_files(tmp_path):
    root = tmp_path / "csm"
    write_mtan_cityscapes(root, "train", n=3)
    write_mtan_cityscapes(root, "val", n=2)
    result = train_mod.main(_argv(root, tmp_path / "run", "--max-steps", "1", "--epochs", "1",
                                  dataset="cityscapes-mtan", size=None))
    assert result["num_classes"] == 7 and result["test"]["num_samples"] == 2


def test_reader_error_names_the_file(tiny_frames, tmp_path):
    bad = tiny_frames / "depth" / "0007.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="0007.png"):
        train_mod.main(_argv(tiny_frames, tmp_path / "run"))


def test_missing_data_root_names_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_mod.main(_argv(tmp_path / "nowhere", tmp_path / "run"))
    assert exc.value.code == 1 and "nowhere" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# bad arguments
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "100", "100"], "multiples of 32"),
        (["--lam", "2"], "--lam"),
        (["--epochs", "0"], "--epochs"),
        (["--model", "stnet"], "--task"),
        (["--task", "depth"], "--task applies"),
        (["--classes", "19"], "--classes 19"),
        (["--val-fraction", "1.0"], "--val-fraction"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_arguments_exit_with_code_2_and_one_error_line(tiny_frames, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        train_mod.main(_argv(tiny_frames, tmp_path / "bad", *extra))
    _assert_usage_error(exc.value, capsys, message)


def _assert_usage_error(exc, capsys, message):
    err = capsys.readouterr().err.strip()
    assert exc.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("python -m xtc_ext.train: error: ") and message in err, err


def test_dataset_specific_argument_errors(mtan_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_mod.main(["--dataset", "nyuv2"])
    _assert_usage_error(exc.value, capsys, "--data-root is required for --dataset nyuv2")
    with pytest.raises(SystemExit) as exc:
        train_mod.main(_argv(mtan_root, tmp_path / "run", dataset="nyuv2"))
    _assert_usage_error(exc.value, capsys, "--size does not apply")
