"""A minimal method for engine tests: a 1x1-conv depth regressor on random images.

It implements the engine's Recipe protocol with a model of 4 parameters, so that the training loop,
checkpoints, resume and failure handling are tested without any real network (checkpoints of ~1 KB); the
runs are configured by the engine's TrainConfig alone (no command line: the engine is a library).
``nan_at_step`` makes the loss NaN at that (1-based) step; ``poison_at_step`` writes inf into a weight.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from xtc_ext.data import DataSplits
from xtc_ext.engine import StepOutput, TrainConfig
from xtc_ext.metrics import MultiTaskEvaluator, format_metrics_table
from xtc_ext.weighting import build_weighting


class ToyRecipe:
    name = "toy depth regressor"
    tasks = ("depth",)

    def __init__(self, nan_at_step=None, poison_at_step=None):
        self.nan_at_step, self.poison_at_step = nan_at_step, poison_at_step
        self.steps = 0

    def build_model(self):
        return nn.Conv2d(3, 1, 1)

    def build_weighting(self, model):
        return build_weighting("uncertainty", 1)

    def build_auxiliary(self, model):
        return nn.ModuleDict()

    def epoch_log(self):
        return {}

    def describe(self):
        return "toy"

    def run_info(self):
        return {"depth_unit": "m"}

    def describe_data(self):
        return "toy data"

    def metrics_table(self, metrics, before):
        return format_metrics_table(metrics, depth_unit="m", before=before)

    def training_step(self, model, batch, device, generator):
        self.steps += 1
        if self.poison_at_step == self.steps:
            with torch.no_grad():
                model.weight[0, 0, 0, 0] = float("inf")
        loss = (model(batch["image"]) - batch["depth"]).abs().mean()
        if self.nan_at_step == self.steps:
            loss = loss * float("nan")
        return StepOutput(losses={"depth": loss}, logged={"depth_loss": loss})

    def predict(self, model, image):
        return {"depth": model(image)}

    def targets(self, batch, device):
        return {"depth": batch["depth"]}

    def evaluator(self):
        return MultiTaskEvaluator({"depth": 1}, lambda t, p, tg: (p - tg[t]).abs().mean())

    def score_reference(self, metrics):
        return {}

    def score(self, metrics, reference):
        return -metrics["abs_err"]

    def delta_m(self, metrics, baseline_files):
        raise AssertionError("not used")

    def figures(self, model, data, indices, out_dir, title, device):
        return []

    def training_figures(self, model, data, out_dir, device, stage):
        return []


def run_step(recipe, model, weighting, batch, generator=None):
    """One training step of ``recipe`` as the engine runs it: ``SimpleNamespace(total, losses, values, names)``
    (``values``: detached float32, ``total`` first, then the logged values)."""
    out = recipe.training_step(model, batch, torch.device("cpu"), generator or torch.Generator())
    total, losses = out.weighted(weighting)
    names = out.names()
    return SimpleNamespace(total=total, losses=losses, values=out.values(total)[:len(names)], names=names, step=out)


def toy_splits(n_train=8, n_val=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def samples(n):
        return [{"image": torch.randn(3, 4, 4, generator=g), "depth": torch.rand(1, 4, 4, generator=g) + 0.5,
                 "name": str(i)} for i in range(n)]

    return DataSplits(samples(n_train), samples(n_val), samples(n_val),
                      {"train": f"{n_train} toy", "val": f"{n_val} toy", "test": f"{n_val} toy"})


def toy_config(out_dir, **fields) -> TrainConfig:
    """The engine's configuration of a toy run in ``out_dir`` (3 epochs, batch 2, lr 0.01, quiet; ``fields``
    override any field of the four groups by name)."""
    options = {"output_dir": str(out_dir), "epochs": 3, "batch_size": 2, "progress": False, "tensorboard": False,
               "num_figures": 0, "lr": 0.01, **fields}
    return TrainConfig.from_options(options)
