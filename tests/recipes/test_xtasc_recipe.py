"""The XTasC-Net family recipe with the real models: what it builds for each --model, one training step,
inference predictions, evaluation targets, GradNorm's optimizer choice and the selection score."""

import math

import pytest
import torch

from python_models import BaseSTNet, XTasCNet
from xtc_ext import cli
from xtc_ext.data import get_dataset
from xtc_ext.recipes import XTasCRecipe, get_recipe
from xtc_ext.recipes.xtasc import validation_score
from xtc_ext.weighting import GradNorm, SeparateGradNorm
from toy_recipe import run_step


def _recipe(*argv):
    args = cli.finalize_args(cli.parse_args(["--encoder-depth", "18", *argv]))
    return get_recipe(args.model)(args, get_dataset(args.dataset))


def _batch(n=2, h=32, w=32, classes=13):
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(-1, classes, (n, h, w), generator=g)
    depth = torch.rand(n, 1, h, w, generator=g) * 5
    depth[:, :, :4] = 0  # invalid rows
    return {"image": torch.randn(n, 3, h, w, generator=g), "seg": seg, "depth": depth, "depth_valid": depth > 0}


@pytest.mark.parametrize("model, transfer", [("xtasc", True), ("align", True), ("mtnet", False)])
def test_multi_task_variants_build_the_papers_network(model, transfer):
    recipe = _recipe("--model", model)
    net = recipe.build_model()
    assert isinstance(net, XTasCNet) and net.with_transfer == transfer
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in XTasCNet(13, encoder_depth=18, with_transfer=transfer).parameters())
    assert recipe.tasks == ("semseg", "depth")
    assert recipe.name == f"{XTasCRecipe.models[model]} ResNet-18"


def test_training_step_and_predictions_on_the_real_model():
    torch.manual_seed(0)
    recipe = _recipe("--lam", "0.1")
    net = recipe.build_model()
    weighting = recipe.build_weighting(net)
    out = run_step(recipe, net.train(), weighting, _batch(), torch.Generator())
    assert out.values.shape == (len(out.names),) and torch.isfinite(out.values).all()
    assert out.values[0] == out.total.detach()
    out.total.backward()
    assert net.seg_to_depth.final_conv.weight.grad is not None  # the transfer networks are trained
    assert weighting.log_vars.grad is not None
    preds = recipe.predict(net.eval(), torch.randn(1, 3, 32, 32))
    assert set(preds) == {"semseg", "depth"} and preds["semseg"].shape == (1, 13, 32, 32)


@pytest.mark.parametrize("task, channels", [("semseg", 13), ("depth", 1)])
def test_single_task_baseline(task, channels):
    recipe = _recipe("--model", "stnet", "--task", task)
    canonical = task
    net = recipe.build_model()
    assert isinstance(net, BaseSTNet) and recipe.tasks == (canonical,)
    out = run_step(recipe, net.train(), recipe.build_weighting(net), _batch(), torch.Generator())
    assert out.values.shape == (2,) and out.values[0] == pytest.approx(float(out.values[1]))
    assert recipe.predict(net.eval(), torch.randn(1, 3, 32, 32))[canonical].shape[1] == channels
    ev = recipe.evaluator()
    batch = _batch()
    ev.update(recipe.predict(net, batch["image"]), recipe.targets(batch, torch.device("cpu")))
    metrics = ev.compute()
    assert ("mIoU" in metrics) == (task == "semseg") and ("abs_err" in metrics) == (task == "depth")


def test_evaluation_targets_keep_the_depth_mask():
    recipe = _recipe()
    batch = _batch()
    batch["depth_valid"][0, 0, 10, 10] = False  # a pixel with depth but marked invalid
    t = recipe.targets(batch, torch.device("cpu"))
    assert torch.equal(t["depth_valid"], batch["depth_valid"]) and torch.equal(t["semseg"], batch["seg"])


@pytest.mark.parametrize("choice, cls", [("shared", GradNorm), ("separate", SeparateGradNorm)])
def test_gradnorm_optimizer_choice(choice, cls):
    recipe = _recipe("--weighting", "gradnorm", "--gradnorm-optimizer", choice, "--lr", "3e-4")
    net = recipe.build_model()
    weighting = recipe.build_weighting(net)
    assert type(weighting) is cls
    assert len(list(weighting.optimizer_parameters())) == (1 if choice == "shared" else 0)
    out = run_step(recipe, net.train(), weighting, _batch(), torch.Generator())
    out.total.backward()
    if choice == "separate":  # stepped inside forward by its own Adam (lr = --lr), state in state_dict
        assert weighting.task_weights.grad is None and not torch.equal(weighting.task_weights, torch.ones(2))
        state = weighting.state_dict()
        assert state["_extra_state"]["adam"]["param_groups"][0]["lr"] == 3e-4
        again = recipe.build_weighting(net)
        again.load_state_dict(state)
        assert again._adam.state_dict()["state"][0]["step"] == 1
    else:
        assert weighting.task_weights.grad is not None and set(weighting.state_dict()) == {
            "task_weights", "initial_losses", "num_steps"}


def test_validation_score_balances_the_tasks():
    ref = {"abs_err": 0.02, "rel_err": 20.0}
    base = {"mIoU": 0.5, "pixel_acc": 0.9, "abs_err": 0.02, "rel_err": 20.0}
    better_depth = dict(base, abs_err=0.019, rel_err=19.0)  # 5% lower errors
    better_seg = dict(base, mIoU=0.53, pixel_acc=0.93)  # 3 points higher
    s = validation_score
    assert s(better_depth, ref) - s(base, ref) == pytest.approx(0.05)
    assert s(better_seg, ref) - s(base, ref) == pytest.approx(0.03)
    assert s({"mIoU": 0.4, "pixel_acc": 0.6}, {}) == pytest.approx(0.5)  # a segmentation-only model
    assert s({"abs_err": 1.0, "rel_err": float("nan")}, {"abs_err": 2.0}) == float("-inf")
    assert math.isfinite(s({"abs_err": 1.0, "rel_err": 0.5}, {"abs_err": 0.0}))
