"""The MT-CP recipe with the real model: ablation flags, task subsets, targets, the RMSE convention of
Vandenhende's evaluation, the per-task metric of the score and of Delta_MTL."""

import math

import pytest
import torch

from python_models import MTCP
from xtc_ext import cli
from xtc_ext.data import get_dataset
from xtc_ext.recipes import get_recipe
from xtc_ext.recipes.mtcp import main_metric, mtcp_validation_score
from toy_recipe import run_step


def _recipe(*argv):
    args = cli.finalize_args(cli.parse_args(["--model", "mtcp", "--backbone", "resnet18_fpn", *argv]))
    return get_recipe(args.model)(args, get_dataset(args.dataset))


@pytest.mark.parametrize("flags, cfm, srm", [([], True, True), (["--no-cfm"], False, True), (["--no-srm"], True, False)])
def test_ablation_flags_build_the_right_model(flags, cfm, srm):
    model = _recipe(*flags).build_model()
    assert isinstance(model, MTCP) and model.use_cfm == cfm and model.use_srm == srm
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.train()(torch.randn(2, 3, 64, 64))
    assert set(out.predictions) == {"semseg", "depth", "normals"}
    if not cfm:
        assert float(out.coherence_loss) == 0.0
    has_intermediate = any(len(v) for v in (out.intermediate or {}).values())
    assert has_intermediate == srm


def test_single_task_mtcp_has_one_head_and_no_cfm():
    recipe = _recipe("--mtcp-tasks", "depth")
    assert recipe.args.cfm is False and recipe.args.weighting == "equal" and recipe.tasks == ("depth",)
    model = recipe.build_model()
    assert isinstance(model, MTCP) and list(model.tasks) == ["depth"] and not model.use_cfm and model.use_srm
    with torch.no_grad():
        out = model.train()(torch.randn(2, 3, 64, 64))
    assert set(out.predictions) == {"depth"} and float(out.coherence_loss) == 0.0


def test_training_step_on_the_real_model_and_zeroed_invalid_targets():
    torch.manual_seed(0)
    recipe = _recipe()
    model = recipe.build_model()
    weighting = recipe.build_weighting(model)
    depth = torch.rand(2, 1, 64, 64) + 0.5
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1)
    valid = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    valid[:, :, :8] = False
    batch = {"image": torch.randn(2, 3, 64, 64), "seg": torch.randint(-1, 13, (2, 64, 64)), "depth": depth,
             "depth_valid": valid, "normals": normals, "normals_valid": valid}
    targets = recipe.targets(batch, torch.device("cpu"))
    assert (targets["depth"][:, :, :8] == 0).all() and (targets["normals"][:, :, :8] == 0).all()
    assert torch.equal(targets["depth"][:, :, 8:], depth[:, :, 8:])
    out = run_step(recipe, model.train(), weighting, batch, torch.Generator())
    assert out.values.shape == (len(out.names),) and torch.isfinite(out.values).all()
    out.total.backward()
    assert all(p.grad is not None for p in model.heads.parameters())


def test_rmse_follows_vandenhende_and_the_other_errors_do_not():
    recipe = _recipe("--mtcp-tasks", "depth")
    ev = recipe.evaluator()
    pred = torch.tensor([-1.0, 2.0]).reshape(1, 1, 1, 2)
    target = torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2)
    ev.update({"depth": pred}, {"depth": target})
    m = ev.compute()
    assert m["rmse"] == pytest.approx(math.sqrt(((1e-9 - 1.0) ** 2) / 2))  # the prediction <= 0 counts as 1e-9
    assert m["abs_err"] == pytest.approx(1.0)  # |-1 - 1| / 2: raw prediction


def test_saliency_uses_max_miou_for_score_and_delta():
    assert (main_metric("sal").name, main_metric("sal").higher_is_better) == ("sal_mIoU", True)
    recipe = _recipe("--dataset", "pascal", "--data-root", "D")
    keys, lower = recipe.delta_metrics()
    assert keys == ("mIoU", "parts_mIoU", "sal_mIoU") and lower == ()
    ref = {"mIoU": 0.3, "parts_mIoU": 0.2, "sal_mIoU": 0.5}
    better = {"mIoU": 0.33, "parts_mIoU": 0.2, "sal_mIoU": 0.5, "sal_maxF": 0.9}
    assert mtcp_validation_score(better, ref) == pytest.approx(0.01)
    assert mtcp_validation_score({"rmse": float("nan")}, {"rmse": 1.0}) == float("-inf")
