"""What python -m xtc_ext.train prints: bad arguments as one argparse-style line with exit code 2, one default
per option in --help, no progress bar (no escape codes) when stderr is not a terminal, and the default
output folder named after the dataset and the model."""

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import write_frames
from tiny_models import use_tiny_models
from xtc_ext import cli, evaluate
from xtc_ext import train as train_mod

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_frames(tmp_path, monkeypatch):
    use_tiny_models(monkeypatch)
    root = tmp_path / "tiny_frames"
    write_frames(root)  # 3 frames, 48x64
    return root


def _tiny_argv(root, out, *extra):
    return ["--data-root", str(root), "--encoder-depth", "18", "--epochs", "2", "--batch-size", "2",
            "--size", "32", "64", "--output-dir", str(out), "--no-tensorboard", "--num-figures", "0", *extra]


def test_a_bad_value_exits_the_process_with_code_2_and_one_argparse_style_line():
    run = subprocess.run([sys.executable, "-m", "xtc_ext.train", "--epochs", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "python -m xtc_ext.train: error: --epochs must be >= 1, got 0"


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--dataset", "cityscapes"], "--data-root is required for --dataset cityscapes (its data are not shipped): "
                                  "docs/data.md, section 'cityscapes', says where to download them"),
    (["--lps-beta", "3"], "--lps-beta applies to --weighting lps, lps-log, lps-prio only"),
    (["--config", "no_such_config"], "unknown config"),
    (["--device", "cuda:x"], "--device"),
])
def test_bad_arguments_exit_with_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the checkout
    with pytest.raises(SystemExit) as exc:
        train_mod.main(argv + ["--no-tensorboard"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("python -m xtc_ext.train: error: ") and message in err


def test_evaluate_bad_values_exit_with_code_2(capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["whatever.pt", "--batch-size", "0"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("python -m xtc_ext.evaluate: error: --batch-size must be >= 1")


@pytest.mark.parametrize("parser", [cli.build_parser(), evaluate.build_parser()], ids=["train", "evaluate"])
def test_help_shows_one_default_per_option(parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # one line per option's help
    text = parser.format_help()
    for line in text.splitlines():
        assert line.lower().count("default") <= 1, line
    assert "(default: None)" not in text
    assert "(default: auto)" in text  # --device: argparse's own default notes are kept


@pytest.mark.parametrize("argv, folder", [
    ([], "runs/frames_xtasc"),
    (["--model", "mtcp", "--dataset", "nyudmt", "--data-root", "D"], "runs/nyudmt_mtcp"),
    (["--model", "stnet", "--task", "semseg", "--dataset", "nyuv2", "--data-root", "D"], "runs/nyuv2_stnet_semseg"),
    (["--model", "stnet", "--task", "depth", "--dataset", "nyuv2", "--data-root", "D"], "runs/nyuv2_stnet_depth"),
    (["--model", "mtnet", "--dataset", "cityscapes", "--data-root", "D"], "runs/cityscapes_mtnet"),
    (["--output-dir", "elsewhere"], "elsewhere"),
])
def test_default_output_dir_is_named_after_dataset_and_model(argv, folder):
    assert cli.finalize_args(cli.parse_args(argv)).output_dir == folder


def test_default_output_dir_matches_the_shipped_configs_names():
    for name in ("nyuv2_xtasc", "cityscapes_mtnet", "nyuv2_stnet_semseg", "cityscapes_stnet_depth", "nyuv2_align"):
        args = cli.parse_args(["--config", name, "--data-root", "D"])
        args.output_dir = None
        assert cli.finalize_args(args).output_dir == f"runs/{name}"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _train_output(argv, stderr, monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", stderr)
    with caplog.at_level(logging.INFO, logger="xtc_ext.train"):
        train_mod.main(argv)
    return stderr.getvalue()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tiny_frames, tmp_path, monkeypatch, caplog):
    err = _train_output(_tiny_argv(tiny_frames, tmp_path / "pipe"), io.StringIO(), monkeypatch, caplog)
    assert "\r" not in err and "\x1b[" not in err and "it/s" not in err
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 2  # the progress of a logged run: one line per epoch


def test_progress_bar_on_a_terminal_unless_disabled(tiny_frames, tmp_path, monkeypatch, caplog):
    err = _train_output(_tiny_argv(tiny_frames, tmp_path / "tty"), _Terminal(), monkeypatch, caplog)
    assert "\r" in err and "epochs" in err
    err = _train_output(_tiny_argv(tiny_frames, tmp_path / "off", "--no-progress"), _Terminal(), monkeypatch, caplog)
    assert "\r" not in err
