"""The TorchJD weighting family (xtc_ext/weighting/jacobian.py): the gradients it writes against TorchJD's own
autojac (mtl_backward + jac_to_grad), the unaggregated extra terms, fp16 scaling and skipped steps, its refusals,
and every aggregator training XTasC-Net and MT-CP (tiny stand-ins) end to end, with an exact resume."""

import argparse
import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixtures import write_frames
from tiny_models import use_tiny_models
from xtc_ext import cli
from xtc_ext import train as train_mod
from xtc_ext.weighting import AGGREGATORS, WEIGHTINGS, JacobianWeighting
from xtc_ext.weighting import jacobian as jd_module

torchjd = pytest.importorskip("torchjd")  # pip install ".[test]" brings it (with its solver extras)
from torchjd.autojac import jac_to_grad, mtl_backward  # noqa: E402


class TwoHeads(nn.Module):
    """An encoder (the shared module) and two heads; ``shared_module()`` is the models' hook."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])

    def shared_module(self):
        return self.encoder

    def forward(self, x):
        z = self.encoder(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)


def _losses(preds, y1, y2):
    return torch.stack([F.mse_loss(preds[0], y1), (preds[1] - y2).abs().mean()])


def _ours(name, mode="representation", extra_weight=0.0, scaler=None, **options):
    model = TwoHeads()
    weighting = JacobianWeighting(2, name, jacobian=mode, **options)
    weighting.attach(model)
    x, y1, y2 = _data()
    z, preds = model(x)
    losses = _losses(preds, y1, y2)
    total = weighting(losses) + extra_weight * z.pow(2).mean()
    weighting.scaled_backward(total, losses, (), scaler or torch.amp.GradScaler("cpu", enabled=False))
    return model, weighting


def _reference(name, mode, **options):
    """TorchJD's own step: mtl_backward then jac_to_grad, over the representation or the shared parameters."""
    model = TwoHeads()
    x, y1, y2 = _data()
    z = model.encoder(x)
    leaf = z.detach().requires_grad_()  # representation: the "parameter" whose Jacobian is aggregated
    features = leaf * 1.0 if mode == "representation" else z
    losses = _losses([h(features).squeeze(-1) for h in model.heads], y1, y2)
    aggregator = jd_module._build_aggregator(name, options, 2)
    shared = [leaf] if mode == "representation" else list(model.encoder.parameters())
    mtl_backward(list(losses), features=features, shared_params=shared, retain_graph=True)
    jac_to_grad(shared, aggregator)
    if mode == "representation":
        z.backward(leaf.grad)
    return model


@pytest.mark.parametrize("mode", ["representation", "shared-parameters"])
@pytest.mark.parametrize("name", ["upgrad", "mgda", "pcgrad", "imtl-g", "config", "nash-mtl"])
def test_the_gradients_are_torchjds_own_aggregation(name, mode):
    (ours, _), ref = _ours(name, mode), _reference(name, mode)
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=k)


def test_the_extra_terms_are_added_to_the_aggregated_update_unaggregated():
    plain, _ = _ours("mgda")
    extra, _ = _ours("mgda", extra_weight=0.5)
    model = TwoHeads()  # the extra term's own gradient
    x, _, _ = _data()
    (0.5 * model.encoder(x).pow(2).mean()).backward()
    for a, b, e in zip(extra.encoder.parameters(), plain.encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(a.grad, b.grad + e.grad, rtol=1e-5, atol=1e-6)
    for a, b in zip(extra.heads.parameters(), plain.heads.parameters()):  # the heads do not see z's term
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("mode", ["representation", "shared-parameters"])
def test_fp16_scaled_gradients_are_unscaled_before_aggregating(mode):
    plain, w_plain = _ours("upgrad", mode)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled, w_scaled = _ours("upgrad", mode, scaler=scaler)
    torch.testing.assert_close(w_scaled.weights(), w_plain.weights(), rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.SGD(scaled.parameters(), lr=0.0)
    scaler.unscale_(optimizer)
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["representation", "shared-parameters"])
def test_a_non_finite_step_is_skipped_by_the_gradient_scaler(mode):
    model = TwoHeads()
    weighting = JacobianWeighting(2, "upgrad", jacobian=mode)
    weighting.attach(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y1, y2 = _data()
    _, preds = model(x)
    losses = torch.stack([F.mse_loss(preds[0], y1) * float("inf"), F.mse_loss(preds[1], y2)])
    weighting.scaled_backward(weighting(losses), losses, (), scaler)  # the aggregator never sees the inf
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 12  # the step was skipped and the scale backed off
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_state_round_trips_through_state_dict():
    _, trained = _ours("gradvac")
    fresh = JacobianWeighting(2, "gradvac")
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.aggregator.gramian_weighting._phi_t, trained.aggregator.gramian_weighting._phi_t)
    assert torch.equal(fresh.weights(), trained.weights())


def test_refusals_name_the_cause(monkeypatch):
    with pytest.raises(ValueError, match="two or more task losses"):
        JacobianWeighting(1, "upgrad")
    with pytest.raises(ValueError, match="--jacobian must be one of"):
        JacobianWeighting(2, "upgrad", jacobian="features")
    with pytest.raises(ValueError, match="shared_module\\(\\) hook"):
        JacobianWeighting(2, "mgda").attach(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="no training forward"):
        JacobianWeighting(2, "mgda").scaled_backward(torch.zeros(()), torch.zeros(2), (), None)
    real = importlib.util.find_spec
    monkeypatch.setattr(jd_module, "find_spec", lambda name: None if name == "quadprog" else real(name))
    with pytest.raises(ValueError, match='--weighting upgrad needs .*quadprog.*pip install "torchjd\\[quadprog-projector\\]"'):
        JacobianWeighting(2, "upgrad")
    JacobianWeighting(2, "mgda")  # needs no solver
    monkeypatch.setattr(jd_module, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match='needs TorchJD, which is not installed: pip install "xtc_ext\\[jd\\]"'):
        JacobianWeighting(2, "mgda")


def _argv(root, out, model, *extra):
    argv = ["--model", model, "--dataset", "frames", "--data-root", str(root), "--size", "32", "32",
            "--batch-size", "2", "--output-dir", str(out), "--no-progress", "--no-tensorboard", "--num-figures", "0",
            "--val-fraction", "0", "--lr", "1e-3", *extra]
    return argv + (["--backbone", "resnet18_fpn"] if model == "mtcp" else [])


@pytest.fixture(scope="module")
def frame_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    write_frames(root)  # three small frames: two steps of batch 2 per epoch
    return root


@pytest.fixture
def frames(frame_files, monkeypatch):
    use_tiny_models(monkeypatch)
    return frame_files


def _finalize(frames, out, model, *extra):
    return cli.finalize_args(cli.parse_args(_argv(frames, out, model, *extra)))


def test_the_program_lists_and_refuses_by_name(frames, tmp_path, monkeypatch):
    text = cli.build_parser().format_help()
    assert all(name in text for name in AGGREGATORS) and "--jacobian" in text and "--cagrad-c" in text
    with pytest.raises(SystemExit, match="--compile with --weighting upgrad is not supported"):
        _finalize(frames, tmp_path / "a", "xtasc", "--weighting", "upgrad", "--compile")
    with pytest.raises(SystemExit, match="--cagrad-c applies to --weighting cagrad only"):
        _finalize(frames, tmp_path / "b", "mtcp", "--weighting", "upgrad", "--cagrad-c", "0.3")
    with pytest.raises(SystemExit, match="--gradvac-beta: invalid value 2.0"):
        _finalize(frames, tmp_path / "c", "mtcp", "--weighting", "gradvac", "--gradvac-beta", "2")
    real = importlib.util.find_spec
    monkeypatch.setattr(jd_module, "find_spec", lambda name: None if name == "cvxpy" else real(name))
    with pytest.raises(SystemExit, match='pip install "torchjd\\[nash-mtl\\]"'):
        _finalize(frames, tmp_path / "d", "xtasc", "--weighting", "nash-mtl")


FAMILIES = {
    "gramian": [n for n, a in AGGREGATORS.items() if a.ddp == "gramian"],
    "columns": [n for n, a in AGGREGATORS.items() if a.ddp == "columns"],
    "gather": [n for n, a in AGGREGATORS.items() if a.ddp == "gather"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_aggregator_trains_both_models_end_to_end(frames, tmp_path, family):
    for i, name in enumerate(FAMILIES[family]):
        for model in ("xtasc", "mtcp"):
            mode = ("representation", "shared-parameters")[i % 2]  # both Jacobians over the family
            extra = ("--contrastive", "--contrastive-anchors", "16") if i % 3 == 0 else ()
            out = tmp_path / f"{model}_{name}"
            result = train_mod.main(_argv(frames, out, model, "--weighting", name, "--jacobian", mode,
                                          "--epochs", "1", *extra))
            losses = result["step_losses"]
            assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses))), (name, model)
            state = torch.load(out / "last.pt", weights_only=True)
            assert WEIGHTINGS.lookup(name) is JacobianWeighting and "_extra_state" in state["weighting"]
            row = json.loads((out / "log.jsonl").read_text().splitlines()[0])
            assert len(row["task_weights"]) == (2 if model == "xtasc" else 3)


@pytest.mark.parametrize("name", ["nash-mtl", "gradvac", "graddrop"])
def test_resume_continues_exactly(frames, tmp_path, name):
    common = ("--weighting", name)
    straight = train_mod.main(_argv(frames, tmp_path / "straight", "mtcp", *common, "--epochs", "2"))
    train_mod.main(_argv(frames, tmp_path / "split", "mtcp", *common, "--epochs", "1"))
    resumed = train_mod.main(["--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "2"])
    assert resumed["step_losses"] == straight["step_losses"]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_check_args_ignores_other_weightings():
    args = argparse.Namespace(weighting="equal", compile=True)
    JacobianWeighting.check_args(args)  # nothing of this family is checked for another --weighting


@pytest.mark.parametrize("model_name", ["xtasc", "mtcp"])
def test_the_real_models_shared_representation_is_cut_once(model_name):
    """XTasC-Net's encoder returns five nested skip maps (each computed from the previous one), MT-CP's backbone
    one map: with the representation Jacobian, the shared module's gradient is that of ``sum_t w_t L_t`` with the
    aggregator's weights (each skip map counted once), and the heads' that of ``sum_t L_t``."""
    from python_models import MTCP, XTasCNet

    def build():
        torch.manual_seed(0)
        if model_name == "xtasc":
            return XTasCNet(5, encoder_depth=18, with_transfer=False)
        return MTCP({"semseg": 5, "depth": 1}, backbone="resnet18_fpn", use_srm=False, embed_dim=16)

    def losses_of(model, x):
        out = model(x)
        seg, depth = (out.seg_logits, out.depth) if model_name == "xtasc" else (
            out.predictions["semseg"], out.predictions["depth"])
        return torch.stack([F.cross_entropy(seg, torch.zeros_like(seg[:, 0], dtype=torch.long)), depth.abs().mean()])

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = build().train()
    weighting = JacobianWeighting(2, "mgda")
    weighting.attach(ours)
    losses = losses_of(ours, x)
    weighting.scaled_backward(weighting(losses), losses, (), torch.amp.GradScaler("cpu", enabled=False))
    w = weighting.weights()
    assert torch.isfinite(w).all() and not torch.equal(w, torch.ones(2))
    ref = build().train()
    shared = {id(p) for p in ref.shared_module().parameters()}
    losses = losses_of(ref, x)
    shared_grads = torch.autograd.grad((w * losses).sum(), list(ref.shared_module().parameters()), retain_graph=True)
    losses.sum().backward()
    for p, g in zip(ref.shared_module().parameters(), shared_grads):
        p.grad = g
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert shared  # the shared module has parameters
