"""The command line of python -m xtc_ext.train (xtc_ext.cli): defaults, the shipped YAML configs, the
precedence of command line over config, config errors naming the key, and the help text."""

import pytest

from xtc_ext import cli
from xtc_ext.data import get_dataset


def test_no_argument_defaults_are_the_ten_frames_demo():
    args = cli.finalize_args(cli.parse_args([]))
    assert (args.dataset, args.data_root, args.classes, args.size) == ("frames", str(get_dataset("frames").default_root), 13, [96, 128])
    assert (args.model, args.encoder_depth, args.epochs, args.batch_size, args.lr) == ("xtasc", 34, 100, 6, 1e-4)
    assert (args.betas, args.lr_step, args.lr_gamma, args.lam, args.weighting) == ([0.9, 0.99], 60, 0.5, 1e-4, "uncertainty")
    assert args.val_fraction == 0.0 and args.augment and args.normalize


PAPER = {
    "cityscapes": dict(epochs=250, batch_size=8, lr_step=80, lam=0.01, classes=7, size=[128, 256]),
    "nyuv2": dict(epochs=100, batch_size=6, lr_step=60, lam=1e-4),
}


@pytest.mark.parametrize("name", cli.list_configs())
def test_shipped_configs_hold_the_paper_protocol(name):
    cfg = cli.load_config(name)
    dataset = name.split("_")[0]
    args = cli.finalize_args(cli.parse_args(["--config", name, "--data-root", "DATA"]))
    assert args.dataset == dataset and args.lr == 1e-4 and args.lr_gamma == 0.5 and args.encoder_depth == 34
    assert args.val_fraction == 0.1 and args.output_dir == f"runs/{name}"
    for key, value in PAPER[dataset].items():
        if key == "lam" and args.model in ("mtnet", "stnet"):
            value = 0.0
        assert getattr(args, key) == value, (name, key)
    assert args.betas == ([0.9, 0.999] if args.model == "stnet" else [0.9, 0.99])
    if name.endswith("_equal"):
        assert args.weighting == "equal"
    elif name.endswith("_gradnorm"):
        assert args.weighting == "gradnorm" and cfg["gradnorm_alpha"] == 0.16
    elif args.model != "stnet":
        assert args.weighting == "uncertainty"


def test_every_table_row_has_a_config():
    names = set(cli.list_configs())
    for dataset in ("cityscapes", "nyuv2"):
        for row in ("stnet_semseg", "stnet_depth", "mtnet", "align", "xtasc",
                    "mtnet_equal", "xtasc_equal", "xtasc_gradnorm", "mtnet_gradnorm"):
            assert f"{dataset}_{row}" in names


def test_command_line_overrides_config(tmp_path):
    args = cli.parse_args(["--config", "nyuv2_xtasc", "--epochs", "3", "--lam", "0.5", "--no-augment"])
    assert (args.epochs, args.lam, args.augment, args.lr_step, args.batch_size) == (3, 0.5, False, 60, 6)
    path = tmp_path / "mine.yml"
    path.write_text("model: stnet\ntask: depth\nlr: 2e-4\nsize: [64, 96]\naugment: false\nlr-step: 7\n")
    args = cli.parse_args(["--config", str(path), "--augment"])
    assert (args.model, args.task, args.lr, args.size, args.augment, args.lr_step) == ("stnet", "depth", 2e-4, [64, 96], True, 7)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 3\nbogus_key: 1\n", "bogus_key"),
        ("epochs: three\n", "epochs"),
        ("size: [64]\n", "size"),
        ("model: resnet\n", "model"),
        ("augment: 1\n", "augment"),
        ("resume: last.pt\n", "resume"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_config_exits_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message) as exc:
        cli.parse_args(["--config", str(path)])
    assert exc.value.code == 2  # a bad argument, as on the command line


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(SystemExit, match="nyuv2_xtasc"):
        cli.parse_args(["--config", "no_such_config"])


def test_help_documents_every_option(capsys):
    parser = cli.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--config", "--resume", "--dataset", "--data-root", "--classes", "--size", "--val-fraction",
                   "--model", "--task", "--lam", "--seg-consistency", "--lp", "--weighting", "--gradnorm-alpha",
                   "--eval-every", "--select-by", "--baseline", "--epochs", "--batch-size", "--lr", "--betas",
                   "--lr-step", "--encoder-depth", "--loss-impl", "--device", "--seed", "--output-dir", "--no-augment",
                   "--no-tensorboard", "--no-progress", "--lr-schedule", "--gradnorm-optimizer", "--nonfinite",
                   "--backbone", "--mtcp-tasks", "--no-cfm", "--lps-beta"):
        assert option in text


def test_recipe_options_are_refused_with_another_model():
    with pytest.raises(SystemExit, match="--lps-beta applies to --weighting lps, lps-log, lps-prio only"):
        cli.finalize_args(cli.parse_args(["--lps-beta", "3"]))
    with pytest.raises(SystemExit, match="--gradnorm-alpha applies to --weighting gradnorm only"):
        cli.finalize_args(cli.parse_args(["--weighting", "dwa", "--gradnorm-alpha", "0.16"]))
    with pytest.raises(SystemExit, match="--encoder-depth applies to --model xtasc, mtnet, align, stnet only"):
        cli.finalize_args(cli.parse_args(["--model", "mtcp", "--encoder-depth", "18"]))
    # the options of the chosen family are accepted
    args = cli.finalize_args(cli.parse_args(["--model", "mtcp", "--lps-beta", "3", "--lr-schedule", "poly"]))
    assert args.lps_beta == 3.0 and args.lr_schedule == "poly" and args.weighting == "lps"


def test_a_dataset_without_a_needed_task_is_refused():
    with pytest.raises(SystemExit, match="--dataset pascal has no depth targets"):
        cli.finalize_args(cli.parse_args(["--dataset", "pascal", "--data-root", "D"]))
    args = cli.finalize_args(cli.parse_args(["--dataset", "nyudmt", "--data-root", "D"]))
    assert args.model == "xtasc" and args.classes == 40  # NYUD_MT has semseg and depth


