"""The training loop (xtc_ext.engine.fit) with a toy method: outputs, exact resume, selection, the
non-finite policies, refusing non-finite weights, and failed checkpoint writes."""

import errno
import json
import math

import pytest
import torch

from toy_recipe import ToyRecipe, toy_config, toy_splits
from xtc_ext.engine import NonFiniteLoss, checkpoint, fit, load_checkpoint
from xtc_ext.engine import optim as engine_optim


def _times_removed(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "elapsed_s")} for r in history]


def test_a_run_writes_small_checkpoints_logs_and_selects_on_validation(tmp_path):
    out = tmp_path / "run"
    result = fit(toy_config(out), ToyRecipe(), toy_splits())
    assert result["steps"] == 12 and result["epochs_trained"] == 3 and result["skipped_steps"] == 0
    assert (out / "last.pt").stat().st_size < 50_000 and (out / "best.pt").is_file()
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    scores = [r["val_score"] for r in history]
    assert result["selection"]["best_epoch"] == 1 + max(range(3), key=lambda i: (scores[i], -i))
    assert load_checkpoint(out / "best.pt")["epoch"] == result["selection"]["best_epoch"]
    assert json.loads((out / "metrics.json").read_text())["test"]["num_samples"] == 4
    assert "| abs_err (m) |" in (out / "metrics.md").read_text()


def test_resume_is_exact(tmp_path):
    straight = fit(toy_config(tmp_path / "a"), ToyRecipe(), toy_splits())
    fit(toy_config(tmp_path / "b", epochs=1), ToyRecipe(), toy_splits())
    resumed = fit(toy_config(tmp_path / "b", resume=str(tmp_path / "b" / "last.pt")), ToyRecipe(), toy_splits())
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert straight["step_losses"] == resumed["step_losses"]
    assert _times_removed(a["history"]) == _times_removed(b["history"])


def test_a_nonfinite_loss_stops_at_its_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as exc:
        fit(toy_config(out), ToyRecipe(nan_at_step=6), toy_splits())  # 4 steps per epoch: epoch 2, step 6
    message = str(exc.value)
    assert "step 6" in message and "epoch 2" in message and "depth_loss=nan" in message
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 4
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())


def test_skip_drops_the_update_counts_it_and_finishes(tmp_path):
    out = tmp_path / "run"
    result = fit(toy_config(out, nonfinite="skip"), ToyRecipe(nan_at_step=6), toy_splits())
    assert result["skipped_steps"] == 1 and result["steps"] == 12
    history = load_checkpoint(out / "last.pt")["history"]
    assert [r.get("skipped_steps", 0) for r in history] == [0, 1, 0]
    assert all(math.isfinite(r["loss"]) for r in history)  # the epoch means leave the skipped step out
    assert math.isnan(result["step_losses"][5]) and math.isfinite(result["step_losses"][6])


def test_nonfinite_weights_are_never_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="no checkpoint written"):
        fit(toy_config(out, nonfinite="skip"), ToyRecipe(poison_at_step=7), toy_splits())
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def fails_second_time(obj, f):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", fails_second_time)
    with pytest.raises(OSError, match="the previous last.pt is intact"):
        fit(toy_config(out), ToyRecipe(), toy_splits())
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_poly_schedule_follows_the_mtcp_authors_formula():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = engine_optim.build_schedule("poly", opt, step_size=60, gamma=0.5, epochs=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * (1 - e / 4) ** 0.9 for e in range(4)])
    with pytest.raises(ValueError, match="unknown lr schedule"):
        engine_optim.build_schedule("cosine", opt, step_size=1, gamma=1, epochs=1)
