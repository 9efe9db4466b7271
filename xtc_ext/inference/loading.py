"""A trained model back from its checkpoint: the run's arguments, its recipe, its model, its input geometry.

:func:`load_trained_model` is the one way :mod:`xtc_ext.predict` and :mod:`xtc_ext.export` get a model: the
checkpoint is read by :func:`xtc_ext.engine.load_checkpoint` (``weights_only=True``), the network is rebuilt by
the run's recipe (:mod:`xtc_ext.recipes`, as ``python -m xtc_ext.evaluate`` does) and its weights loaded.
:class:`InferenceModel` is the evaluation graph that deployment runs: the recipe's inference predictions
(``Recipe.predict``; XTasC-Net without its transfer networks, no loss) as a tuple in task order.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

import xtc_ext
from xtc_ext.cli import build_parser as build_train_parser
from xtc_ext.data import DatasetSpec, get_dataset
from xtc_ext.engine import CheckpointError, Recipe, load_checkpoint
from xtc_ext.recipes import get_recipe

__all__ = ["SIZE_MULTIPLE", "TrainedModel", "InferenceModel", "load_trained_model"]

log = logging.getLogger("xtc_ext.inference")

SIZE_MULTIPLE = 32
"""The models' input height and width must be multiples of this (the encoders downsample 32 times)."""


@dataclass
class TrainedModel:
    """A checkpoint's model, rebuilt and loaded, in eval mode on the CPU.

    Attributes:
        model: the network (its class is the recipe's: ``XTasCNet``, ``BaseSTNet``, ``MTCP``...).
        recipe: the run's recipe (its ``predict`` gives the inference predictions).
        run: the run's training arguments (``python -m xtc_ext.train`` defaults for options it predates).
        spec: the run's dataset (class names, depth unit, default size).
        checkpoint: the file it was read from; ``epoch``: its epoch; ``version``: the ``xtc_ext`` version that
            wrote it (None for checkpoints older than that entry).
    """

    model: nn.Module
    recipe: Recipe
    run: argparse.Namespace
    spec: DatasetSpec
    checkpoint: Path
    epoch: Optional[int]
    version: Optional[str]

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The predicted tasks, in the order of :class:`InferenceModel`'s outputs."""
        return tuple(self.recipe.tasks)

    @property
    def input_size(self) -> Optional[Tuple[int, int]]:
        """The ``(H, W)`` the model was trained at (the run's ``--size``, else the dataset's default), or None
        for a dataset kept at its stored size (then the inputs are padded to multiples of :data:`SIZE_MULTIPLE`)."""
        size = self.run.size if self.run.size is not None else self.spec.default_size
        return None if size is None else (int(size[0]), int(size[1]))

    @property
    def normalize(self) -> bool:
        """Whether the model's inputs are ImageNet-normalised (the run's ``--normalize``)."""
        return bool(self.run.normalize)

    def class_names(self, task: str) -> Optional[Tuple[str, ...]]:
        """Legend names of the classes of a categorical ``task`` (``semseg``: the dataset's table for the run's
        class count; ``human_parts``: the PASCAL part groups), or None when there are none."""
        if task == "semseg":
            names = self.spec.class_names(int(self.run.classes))
            return None if names is None else tuple(names)
        if task == "human_parts":
            from xtc_ext.data import PASCAL_HUMAN_PARTS_NAMES

            return tuple(PASCAL_HUMAN_PARTS_NAMES)
        return None


class InferenceModel(nn.Module):
    """The evaluation graph of a trained model: ``image [N, 3, H, W]`` float -> a tuple of the recipe's
    inference predictions ``[N, C_t, H, W]`` in ``tasks`` order (semseg / human_parts logits, depth in the
    dataset's depth unit, normals unnormalised 3-vectors, sal one logit; see ``Recipe.predict``).

    H and W must be positive multiples of :data:`SIZE_MULTIPLE` (the models raise ValueError otherwise).
    """

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.model = trained.model
        self.recipe = trained.recipe
        self.tasks = trained.tasks

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        predictions = self.recipe.predict(self.model, image)
        return tuple(predictions[t] for t in self.tasks)


def _run_arguments(stored: Dict[str, Any], path: Path) -> argparse.Namespace:
    run = build_train_parser().parse_args([])
    for key, value in stored.items():
        setattr(run, key, value)
    try:
        spec = get_dataset(run.dataset)
        if run.classes is None:
            run.classes = spec.classes[0]
        get_recipe(run.model)
    except ValueError as e:
        raise CheckpointError(f"{path} names a model or dataset this version of xtc_ext does not know: {e}") from None
    return run


def load_trained_model(checkpoint: Union[str, Path]) -> TrainedModel:
    """Rebuild the model of a ``python -m xtc_ext.train`` checkpoint through its recipe and load its weights.

    Args:
        checkpoint: ``best.pt`` / ``last.pt`` of a run.

    Returns:
        A :class:`TrainedModel` (model in eval mode, float32, on the CPU).

    Raises:
        CheckpointError: one line naming the file: not a checkpoint (missing, unreadable, truncated, not a torch
            file, no ``model``/``args``), a model or dataset unknown to this version, or weights that do not fit
            the model this version builds (a checkpoint of another version; the message names both versions).
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    run = _run_arguments(state["args"], path)
    spec = get_dataset(run.dataset)
    version = state.get("xtc_ext_version")
    try:
        recipe = get_recipe(run.model)(run, spec)
        model = recipe.build_model()
    except (ValueError, TypeError, SystemExit) as e:
        raise CheckpointError(f"cannot rebuild the model of {path} (written by xtc_ext {version}): {e}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} was written by xtc_ext {version}; its weights do not fit the model of xtc_ext "
                              f"{xtc_ext.__version__} ({detail})") from None
    if version is not None and version != xtc_ext.__version__:
        log.warning("%s was written by xtc_ext %s (this is %s); its weights fit", path, version, xtc_ext.__version__)
    model.eval()
    return TrainedModel(model=model, recipe=recipe, run=run, spec=spec, checkpoint=path, epoch=state.get("epoch"),
                        version=version)
