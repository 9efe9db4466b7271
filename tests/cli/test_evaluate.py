"""python -m xtc_ext.evaluate on checkpoints of every recipe (XTasC-Net family and MT-CP).

The runs use the stand-in models of tests/tiny_models.py (module-wide), so their checkpoints are small;
evaluate rebuilds them through the same recipes.
"""

import json

import pytest

from fixtures import write_frames, write_mtan
from tiny_models import use_tiny_models
from xtc_ext import evaluate as eval_mod
from xtc_ext import train as train_mod
from xtc_ext.metrics import delta_m


@pytest.fixture(scope="module", autouse=True)
def tiny():
    with pytest.MonkeyPatch.context() as mp:
        yield use_tiny_models(mp)

# --------------------------------------------------------------------------- #
# the command line, end to end on an MTAN NYUv2 fixture
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny XTasC-Net run and a tiny Base ST-Net (segmentation) run on the same fixture."""
    base = tmp_path_factory.mktemp("evaluate")
    root = base / "nyuv2"
    write_mtan(root, "train", n=4, h=32, w=64)
    write_mtan(root, "val", n=3, h=32, w=64)
    common = ["--dataset", "nyuv2", "--data-root", str(root), "--encoder-depth", "18", "--epochs", "1",
              "--batch-size", "2", "--lam", "0.1", "--no-progress", "--no-tensorboard", "--num-figures", "0"]
    xtasc = train_mod.main(common + ["--output-dir", str(base / "xtasc")])
    stseg = train_mod.main(common + ["--output-dir", str(base / "stseg"), "--model", "stnet", "--task", "semseg"])
    return {"base": base, "root": root, "xtasc": xtasc, "stseg": stseg}


def test_evaluate_reproduces_the_test_metrics_and_adds_size_speed_delta_m(runs, tmp_path):
    base = runs["base"]
    depth_baseline = tmp_path / "st_depth.json"
    depth_baseline.write_text(json.dumps({"metrics": {"abs_err": 3.0, "rel_err": 0.9}}))
    out = tmp_path / "eval.json"
    result = eval_mod.main([str(base / "xtasc" / "best.pt"), "--output", str(out), "--warmup", "1", "--no-progress",
                            "--baseline", str(base / "stseg" / "metrics.json"), str(depth_baseline)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    trained = runs["xtasc"]
    assert result["num_parameters"] == trained["num_parameters"]
    assert result["split"] == "val" and result["num_samples"] == 3
    m = result["metrics"]
    # the same checkpoint on the same split: the test metrics of the training run (batch 1 here, 2 there)
    assert m["mIoU"] == trained["test"]["mIoU"] and m["pixel_acc"] == trained["test"]["pixel_acc"]
    for key in ("abs_err", "rel_err", "rmse"):
        assert m[key] == pytest.approx(trained["test"][key], rel=1e-5)
    assert result["inference_ms_per_image"] > 0 and m["timed_batches"] == 3
    baseline = {"mIoU": runs["stseg"]["test"]["mIoU"], "pixel_acc": runs["stseg"]["test"]["pixel_acc"],
                "abs_err": 3.0, "rel_err": 0.9}
    assert result["baseline"] == baseline
    assert result["delta_m_keys"] == ["mIoU", "pixel_acc", "abs_err", "rel_err"]
    assert result["delta_m"] == pytest.approx(delta_m(m, baseline), rel=1e-12)


def test_evaluate_single_task_checkpoint_and_split_override(runs, tmp_path):
    result = eval_mod.main([str(runs["base"] / "stseg" / "best.pt"), "--split", "train", "--no-progress",
                            "--batch-size", "2", "--warmup", "0", "--baseline", str(runs["base"] / "xtasc" / "metrics.json"),
                            "--num-figures", "1", "--output", str(tmp_path / "st.json")])
    assert result["split"] == "train" and result["num_samples"] == 4  # the whole train split
    assert set(result["delta_m_keys"]) == {"mIoU", "pixel_acc"}  # a segmentation model: its two metrics
    assert "abs_err" not in result["metrics"]
    assert len(result["figures"]) == 1 and (tmp_path / "st").is_dir()


def test_evaluate_data_root_override_names_a_missing_path(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        eval_mod.main([str(runs["base"] / "xtasc" / "best.pt"), "--data-root", str(tmp_path / "elsewhere")])
    assert exc.value.code == 1 and "elsewhere" in capsys.readouterr().err


def test_evaluate_rejects_a_non_checkpoint_in_one_line_with_exit_code_2(runs, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((runs["base"] / "xtasc" / "best.pt").read_bytes()[:5000])
    for path in (bad, truncated, tmp_path / "absent.pt"):
        with pytest.raises(SystemExit) as exc:
            eval_mod.main([str(path)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and path.name in err


def test_evaluate_an_mtcp_checkpoint(tmp_path):
    root = tmp_path / "frames"
    write_frames(root)
    out = tmp_path / "mtcp"
    trained = train_mod.main(["--model", "mtcp", "--data-root", str(root), "--size", "64", "64", "--epochs", "1",
                              "--batch-size", "2", "--output-dir", str(out), "--no-progress", "--no-tensorboard",
                              "--num-figures", "0"])
    result = eval_mod.main([str(out / "last.pt"), "--no-progress", "--warmup", "0", "--batch-size", "3",
                            "--baseline", str(out / "metrics.json")])
    assert result["model"].startswith("MT-CP") and result["tasks"] == ["semseg", "depth", "normals"]
    assert result["num_parameters"] == trained["num_parameters"] and result["split"] == "frames"
    for key in ("mIoU", "rmse", "normals_mean", "depth_loss", "normals_loss"):
        assert result["metrics"][key] == pytest.approx(trained["test"][key], rel=1e-5), key
    assert result["delta_m"] == pytest.approx(0.0, abs=1e-6)  # against its own test metrics
    assert result["delta_m_keys"] == ["mIoU", "rmse", "normals_mean"]


def test_evaluate_help_documents_every_option(capsys):
    parser = eval_mod.build_parser()
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"{action.option_strings or action.dest} has no help text"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--data-root", "--dataset", "--split", "--baseline", "--device", "--output", "--batch-size"):
        assert option in text
