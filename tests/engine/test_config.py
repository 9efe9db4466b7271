"""The engine's typed configuration (xtc_ext.engine.config): checks naming the option, the command line's
defaults equal to the dataclasses', what the records keep, ``prepare`` from Python, and no argparse in the
engine."""

import ast
from pathlib import Path

import pytest
import torch

from xtc_ext import cli
from xtc_ext.engine import (
    DataConfig,
    OptimConfig,
    OutputConfig,
    RuntimeConfig,
    StepOutput,
    TrainConfig,
    UsageError,
)
from xtc_ext.train import prepare

ENGINE = Path(__file__).resolve().parents[2] / "xtc_ext" / "engine"


@pytest.mark.parametrize("group, fields, message", [
    (DataConfig, {"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    (DataConfig, {"workers": -1}, "--workers must be >= 0"),
    (OptimConfig, {"epochs": 0}, "--epochs must be >= 1, got 0"),
    (OptimConfig, {"lr": 0.0}, "--lr must be > 0"),
    (OptimConfig, {"betas": (0.9, 1.0)}, "--betas must be two values in [0, 1)"),
    (OptimConfig, {"betas": (0.9,)}, "--betas must be two values"),
    (OptimConfig, {"lr_gamma": 1.5}, "--lr-gamma must be in (0, 1]"),
    (OptimConfig, {"optimizer": "lbfgs"}, "--optimizer must be one of"),
    (OptimConfig, {"lr_schedule": "cosine"}, "--lr-schedule must be one of"),
    (OptimConfig, {"max_steps": -1}, "--max-steps must be >= 0"),
    (RuntimeConfig, {"amp": "fp8"}, "--amp must be one of"),
    (RuntimeConfig, {"channels_last": "yes"}, "--channels-last must be one of"),
    (RuntimeConfig, {"nonfinite": "ignore"}, "--nonfinite must be one of"),
    (OutputConfig, {"select_by": "accuracy"}, "--select-by must be one of"),
    (OutputConfig, {"eval_every": 0}, "--eval-every must be >= 1"),
    (OutputConfig, {"checkpoint_every": 0}, "--checkpoint-every must be >= 1"),
    (OutputConfig, {"num_figures": -2}, "--num-figures must be >= 0"),
])
def test_a_bad_value_is_refused_naming_the_option(group, fields, message):
    with pytest.raises(UsageError) as exc:
        group(**fields)
    assert message in str(exc.value)


def test_the_command_line_defaults_are_the_dataclass_defaults():
    args = cli.finalize_args(cli.parse_args(["--output-dir", "somewhere"]))
    from_cli = cli.engine_config(args)
    built = TrainConfig(output=OutputConfig(output_dir="somewhere"))
    assert from_cli.flat() == built.flat()
    assert from_cli.arguments["model"] == "xtasc" and "model" not in built.flat()


def test_from_options_takes_the_fields_by_name_and_ignores_the_others():
    config = TrainConfig.from_options({"lr": 0.5, "batch_size": 3, "amp": "none", "resume": "x/last.pt",
                                       "encoder_depth": 18})
    assert (config.optim.lr, config.data.batch_size, config.runtime.amp, config.output.resume) == (0.5, 3, "none",
                                                                                                    "x/last.pt")
    assert config.optim.epochs == OptimConfig().epochs and "encoder_depth" not in config.flat()


def test_the_records_keep_the_other_arguments_and_the_fields_as_changed():
    config = TrainConfig.from_options({"lr": 0.5}, arguments={"model": "mtcp", "lr": 0.5, "betas": [0.9, 0.99]})
    config.optim.lr = 0.25
    recorded = config.recorded_arguments()
    assert recorded["model"] == "mtcp" and recorded["lr"] == 0.25 and recorded["betas"] == [0.9, 0.99]
    assert TrainConfig().recorded_arguments() == TrainConfig().flat()


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "--epochs must be >= 1, got 0"),
    ({"no_such_option": 1}, "xtc_ext.train.prepare(): unknown key 'no_such_option'"),
    ({"model": "nope"}, "invalid choice: 'nope'"),
    ({"augment": "yes"}, "key 'augment': expected true or false"),
])
def test_prepare_raises_naming_the_option_instead_of_exiting(options, message):
    with pytest.raises(UsageError) as exc:
        prepare(**options)
    assert message in str(exc.value)


def test_prepare_builds_the_run_of_the_options():
    run = prepare(model="mtnet", encoder_depth=18, size=[64, 96], epochs=2, lr=3e-4, output_dir="runs/x",
                  config="nyuv2_mtnet_equal", dataset="frames")
    assert (run.config.optim.epochs, run.config.optim.lr, run.config.output.output_dir) == (2, 3e-4, "runs/x")
    assert run.recipe.tasks == ("semseg", "depth") and run.config.arguments["weighting"] == "equal"
    assert tuple(run.splits.train[0]["image"].shape[-2:]) == (64, 96)


def test_a_logged_value_may_not_be_named_loss():
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="'loss' is the engine's weighted total"):
        StepOutput(losses={"depth": one}, logged={"loss": one}).names()


def test_the_engine_reads_no_command_line_namespace():
    for path in sorted(ENGINE.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for a in node.names}
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert "argparse" not in imported and "Namespace" not in attributes, path.name
