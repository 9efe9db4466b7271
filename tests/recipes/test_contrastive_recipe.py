"""--contrastive in the recipes: the term joins the host's loss, its gradients reach the decoders and the
projectors, its draws are logged and follow the checkpointed generator (exact resume), the projectors are
absent from the evaluated model, and runs that cannot use it are refused."""

import json

import pytest
import torch

from fixtures import write_frames
from tiny_models import use_tiny_models
from xtc_ext import cli
from xtc_ext import evaluate as eval_mod
from xtc_ext import train as train_mod
from xtc_ext.data import get_dataset
from xtc_ext.recipes import get_recipe
from toy_recipe import run_step


def _recipe(*argv):
    args = cli.finalize_args(cli.parse_args([*argv]))
    return get_recipe(args.model)(args, get_dataset(args.dataset))


@pytest.mark.parametrize("argv, missing", [(["--model", "stnet", "--task", "depth"], "two or more tasks"),
                                          (["--model", "mtcp", "--mtcp-tasks", "depth"], "two or more tasks"),
                                          (["--contrastive-margin", "0"], "--contrastive-margin must be > 0"),
                                          (["--contrastive-depth-gap", "0"], "--contrastive-depth-gap must be")])
def test_runs_that_cannot_use_it_are_refused(argv, missing):
    with pytest.raises(SystemExit, match=missing):
        cli.finalize_args(cli.parse_args(["--contrastive", *argv]))


def test_the_term_joins_the_loss_and_trains_decoders_and_projectors():
    torch.manual_seed(0)
    recipe = _recipe("--encoder-depth", "18", "--lam", "0.1", "--contrastive", "--contrastive-anchors", "64",
                     "--contrastive-weight", "0.5")
    model = recipe.build_model()
    weighting = recipe.build_weighting(model)
    aux = recipe.build_auxiliary(model)
    batch = {"image": torch.randn(2, 3, 32, 32), "seg": torch.randint(0, 13, (2, 32, 32)),
             "depth": torch.rand(2, 1, 32, 32) * 4 + 0.5}
    out = run_step(recipe, model.train(), weighting, batch, torch.Generator().manual_seed(3))
    assert out.names[-1] == "contrastive" and out.values.shape == (len(out.names),)
    assert out.values[-1] > 0 and out.values[0] == out.total.detach()
    out.total.backward()
    projectors = [p for p in aux.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert projectors and model.seg_decoder.block5.conv3[0].weight.grad.abs().sum() > 0
    assert recipe.epoch_log() in ({"draws_depth<-semseg": 1, "draws_semseg<-depth": 1},) and recipe.epoch_log() == {}


def test_the_options_reach_the_regularizer():
    recipe = _recipe("--encoder-depth", "18", "--contrastive", "--contrastive-depth-criterion", "ordering",
                     "--contrastive-depth-gap", "0.3", "--contrastive-cross-image", "--contrastive-mining", "closest")
    reg = recipe.build_auxiliary(recipe.build_model())["contrastive"]
    assert reg.criteria["depth"].gap == 0.3 and reg.criteria["semseg"].gap is None
    assert reg.cross_image and reg.mining == "closest"
    default = _recipe("--encoder-depth", "18", "--contrastive").build_auxiliary(recipe.build_model())["contrastive"]
    assert default.criteria["depth"].gap is None and not default.cross_image and default.mining == "random"


@pytest.fixture
def frames(tmp_path, monkeypatch):
    use_tiny_models(monkeypatch)
    root = tmp_path / "frames"
    write_frames(root, ids=["0001", "0002", "0003", "0004"])
    return root


def _argv(root, out, *extra):
    return ["--data-root", str(root), "--size", "32", "32", "--batch-size", "2", "--epochs", "2", "--lam", "0.1",
            "--contrastive", "--contrastive-anchors", "32", "--output-dir", str(out), "--no-progress",
            "--no-tensorboard", "--num-figures", "0", *extra]


def test_a_run_logs_the_draws_checkpoints_the_projectors_and_resumes_exactly(frames, tmp_path):
    straight = train_mod.main(_argv(frames, tmp_path / "a"))
    train_mod.main(_argv(frames, tmp_path / "b", "--epochs", "1"))
    resumed = train_mod.main(["--resume", str(tmp_path / "b" / "last.pt"), "--epochs", "2"])
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert any(k.startswith("contrastive.projectors.semseg.depth") for k in a["auxiliary"])
    for part in ("model", "auxiliary"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert straight["step_losses"] == resumed["step_losses"]
    record = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])
    assert record["contrastive"] > 0 and record["draws_semseg<-depth"] == record["draws_depth<-semseg"] == 2
    assert {p.name for p in (tmp_path / "a" / "figures").iterdir()} == {"contrastive_before.png", "contrastive_after.png"}


def test_the_projectors_are_not_part_of_the_evaluated_model(frames, tmp_path):
    with_reg = train_mod.main(_argv(frames, tmp_path / "with"))
    without = train_mod.main(_argv(frames, tmp_path / "without", "--no-contrastive"))
    assert with_reg["num_parameters"] == without["num_parameters"]
    evaluated = eval_mod.main([str(tmp_path / "with" / "last.pt"), "--no-progress", "--warmup", "0"])
    assert evaluated["num_parameters"] == without["num_parameters"] and evaluated["inference_ms_per_image"] > 0
