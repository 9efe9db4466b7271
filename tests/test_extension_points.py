"""Adding a method or a weighting is one module plus one registry entry (docs/architecture.md, "Touch
points"): a toy method and a toy weighting, each defined and registered here only, train through the
unchanged training program (``python -m xtc_ext.train``'s ``main``), with their own options in ``--help``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from xtc_ext import cli
from xtc_ext import train as train_mod
from xtc_ext.engine import StepOutput
from xtc_ext.metrics import MultiTaskEvaluator
from xtc_ext.recipes import RECIPES
from xtc_ext.recipes.base import BaseRecipe
from xtc_ext.weighting import WEIGHTINGS, Weighting


class ToyDepthMethod(BaseRecipe):
    """A 1x1-conv depth regressor on the frames: a whole method in one class."""

    models = {"toy-depth": "Toy depth method"}
    default_weighting = "equal"
    delta_m_formula = "none"

    @classmethod
    def required_tasks(cls, args, spec):
        return ("depth",)

    def __init__(self, args, spec):
        super().__init__(args, spec)
        self.tasks, self.name = ("depth",), "toy depth"

    def describe(self) -> str:
        return self.name

    def build_model(self) -> nn.Module:
        model = nn.Conv2d(3, 1, 1)
        model.shared_parameters = lambda: [model.weight]
        return model

    def training_step(self, model, batch, device, generator) -> StepOutput:
        image, depth = batch["image"].to(device), batch["depth"].to(device)
        loss = (model(image) - depth).abs().mean()
        return StepOutput(losses={"depth": loss}, logged={"depth_loss": loss})

    def predict(self, model, image):
        return {"depth": model(image)}

    def targets(self, batch, device):
        depth = batch["depth"].to(device)
        return {"depth": depth, "depth_valid": depth > 0}

    def evaluator(self) -> MultiTaskEvaluator:
        return MultiTaskEvaluator({"depth": 1}, lambda task, pred, targets: (pred - targets["depth"]).abs().mean())

    def score_reference(self, metrics):
        return {}

    def score(self, metrics, reference) -> float:
        return -float(metrics["abs_err"])

    def delta_metrics(self):
        return ("abs_err",), ("abs_err",)


class ScaledWeighting(Weighting):
    """``total = scale * sum_t L_t`` with its own option ``--toy-scale`` and its own backward."""

    backward_calls = 0

    def __init__(self, num_tasks: int, scale: float) -> None:
        super().__init__(num_tasks)
        self.scale = scale

    def forward(self, losses):
        self._check(losses)
        return self.scale * losses.sum()

    def weights(self):
        return torch.full((self.num_tasks,), self.scale)

    def backward(self, total, losses, shared_parameters) -> None:
        type(self).backward_calls += 1
        assert len(shared_parameters) == 1  # the model's shared_parameters() hook reached the weighting
        total.backward()

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument_group("toy scaled weighting").add_argument("--toy-scale", type=float, default=1.0)

    @classmethod
    def check_args(cls, args) -> None:
        if args.toy_scale <= 0:
            raise ValueError(f"--toy-scale must be > 0, got {args.toy_scale}")

    @classmethod
    def from_args(cls, name, args, num_tasks, shared_parameters=()):
        return cls(num_tasks, args.toy_scale)


@pytest.fixture
def registered():
    RECIPES.register(ToyDepthMethod, *ToyDepthMethod.models)
    WEIGHTINGS.register(ScaledWeighting, "toy-scaled")
    ScaledWeighting.backward_calls = 0
    yield
    RECIPES.unregister("toy-depth")
    WEIGHTINGS.unregister("toy-scaled")


def test_toy_method_and_weighting_train_through_the_program(registered, tmp_path):
    help_text = cli.build_parser().format_help()
    assert "toy-depth" in help_text and "toy-scaled" in help_text and "--toy-scale" in help_text
    out = tmp_path / "run"
    train_mod.main(["--model", "toy-depth", "--weighting", "toy-scaled", "--toy-scale", "3", "--epochs", "2",
                    "--size", "32", "32", "--batch-size", "5", "--device", "cpu", "--no-progress",
                    "--no-tensorboard", "--num-figures", "0", "--output-dir", str(out)])
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and ScaledWeighting.backward_calls == 4  # 10 frames / batch 5, 2 epochs
    for row in rows:
        assert row["loss"] == pytest.approx(3 * row["depth_loss"], rel=1e-5)
    assert (out / "last.pt").is_file()


def test_the_toy_weighting_checks_its_own_option(registered):
    with pytest.raises(SystemExit, match="--toy-scale must be > 0"):
        cli.finalize_args(cli.parse_args(["--model", "toy-depth", "--weighting", "toy-scaled", "--toy-scale", "0"]))
