"""The task registry (xtc_ext/tasks.py): a task is one TaskSpec, and every consumer looks it up.

A toy task registered here (and only here) flows through the dataset registry, the evaluator, the
results table, the loss dispatch, the figures and the contrastive regularizer without any other module
knowing it; the built-in specs carry the facts the consumers used to keep in their own tables.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from xtc_ext.data import DatasetSpec, get_dataset
from xtc_ext.losses import task_loss
from xtc_ext.losses.mtcp import depth_loss
from xtc_ext.metrics import MultiTaskEvaluator, format_metrics_table
from xtc_ext.recipes import XTasCRecipe
from xtc_ext.regularizers import CrossTaskContrastive
from xtc_ext.tasks import TASKS, Metric, TaskSpec, get_task, register_task
from xtc_ext.visualize import save_prediction_figure

TOY = TaskSpec(name="toy_height", title="height", sample_key="height", channels=1, loss="l1", meter="depth",
               metric_prefix="height_", metrics=(Metric("height_abs_err", False, "{:.3f}", in_task_unit=True),
                                                 Metric("height_rmse", False, in_task_unit=True)),
               main_metric="height_rmse", unit="cm", void=0, contrastive_kind="depth", figure="scalar")


@pytest.fixture
def toy_task():
    """Register the toy task for one test (the registry is left as it was)."""
    register_task(TOY)
    yield TOY
    del TASKS[TOY.name]


def test_a_new_task_is_one_registry_entry(toy_task, tmp_path):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, generator=g) * 5 + 1
    target[:, :, :2] = 0  # void rows
    pred = target + 0.5
    # a dataset may offer it: its channels come from the spec
    spec = DatasetSpec(name="toy", summary="toy", classes=(3,), tasks=("semseg", "toy_height"), default_size=None,
                       factory=lambda root, split, request: [])
    assert spec.task_channels(3) == {"semseg": 3, "toy_height": 1}
    # its default loss (kind "l1")
    assert torch.equal(task_loss("toy_height", pred, target), depth_loss(pred, target))
    # its meter and metric names
    ev = MultiTaskEvaluator({"toy_height": 1})
    ev.update({"toy_height": pred}, {"toy_height": target})
    metrics = ev.compute()
    assert metrics["height_abs_err"] == pytest.approx(0.5) and metrics["height_rmse"] == pytest.approx(0.5)
    assert "height_rel_err" in metrics and "abs_err" not in metrics
    # its rows in the results table, labelled with its unit, in its format
    table = format_metrics_table(metrics)
    assert "| height_abs_err (cm) | 0.500 |" in table and "| height_rmse (cm) | 0.5000 |" in table
    # its figure row
    image = torch.rand(3, 8, 8, generator=g)
    two = save_prediction_figure(tmp_path / "two.png", image, {"toy_height": target[0]}, {"toy_height": pred[0]},
                                 image_normalized=False, dpi=40)
    with Image.open(two) as im:
        assert np.asarray(im).std() > 10
    # a contrastive source of its kind, with its void value
    reg = CrossTaskContrastive({"semseg": 4}, {"semseg": "categorical", "toy_height": TOY.contrastive_kind},
                               ignore_index={"semseg": get_task("semseg").void, "toy_height": TOY.void})
    assert reg.voids == {"semseg": -1.0, "toy_height": 0.0}


def test_registry_refuses_bad_and_duplicate_specs():
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("semseg"))
    with pytest.raises(ValueError, match="metric 'mIoU' is already task 'semseg'"):
        register_task(TaskSpec(name="other", title="x", sample_key="x", channels=2, loss="cross_entropy",
                               meter="segmentation", metrics=(Metric("mIoU", True),), main_metric="mIoU"))
    with pytest.raises(ValueError, match="loss must be one of"):
        TaskSpec(name="x", title="x", sample_key="x", channels=1, loss="hinge", meter=None)
    with pytest.raises(ValueError, match="main_metric"):
        TaskSpec(name="x", title="x", sample_key="x", channels=1, loss="l1", meter="depth",
                 metrics=(Metric("x_rmse", False),), main_metric="x_abs_err")
    with pytest.raises(ValueError, match="unknown task 'segmentation'.*semseg"):
        get_task("segmentation")
    assert "other" not in TASKS


def test_builtin_specs_hold_the_facts_of_the_old_tables():
    assert list(TASKS) == ["semseg", "depth", "normals", "sal", "human_parts", "edge"]
    assert {t: get_task(t).sample_key for t in TASKS} == {
        "semseg": "seg", "depth": "depth", "normals": "normals", "sal": "sal", "human_parts": "human_parts",
        "edge": "edge"}
    assert {t: (s.main_metric, s.metric(s.main_metric).higher_is_better) for t, s in TASKS.items() if s.meter} == {
        "semseg": ("mIoU", True), "depth": ("rmse", False), "normals": ("normals_mean", False),
        "sal": ("sal_mIoU", True), "human_parts": ("parts_mIoU", True)}
    assert {t: s.contrastive_kind for t, s in TASKS.items()} == {
        "semseg": "categorical", "depth": "depth", "normals": "normals", "sal": "binary",
        "human_parts": "categorical", "edge": "edge"}
    assert get_task("semseg").output_channels(40) == 40 and get_task("human_parts").output_channels(21) == 7
    assert (get_task("depth").unit, get_task("normals").unit) == ("m", "deg")


def test_a_binary_source_that_keeps_255_is_void_not_foreground():
    reg = CrossTaskContrastive({"semseg": 4}, {"semseg": "categorical", "sal": "binary"},
                               ignore_index={"sal": get_task("sal").void})
    sal = torch.tensor([[[[0.0, 1.0], [255.0, -1.0]]]])
    grid = reg.source_grid("sal", sal, (2, 2))
    assert grid.valid.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="ignore_index: 'depth' is not a source"):
        CrossTaskContrastive({"semseg": 4}, {"semseg": "categorical", "sal": "binary"}, ignore_index={"depth": 0})


def test_a_checkpoint_of_the_old_task_name_still_builds():
    """Base ST-Net checkpoints written before the registry store ``task: segmentation``."""
    args = argparse.Namespace(model="stnet", task="segmentation", classes=13, encoder_depth=18, lam=0.0,
                              loss_impl="eager", lp="l1", contrastive=False)
    recipe = XTasCRecipe(args, get_dataset("frames"))
    assert recipe.tasks == ("semseg",) and args.task == "semseg"
    assert recipe.build_model().task == "semseg"
