"""The methods: one recipe per method family, one registry.

A recipe (:class:`~xtc_ext.recipes.base.BaseRecipe` subclass) builds the model, the task weighting and the
loss, runs a training step, evaluates, scores validation results for checkpoint selection, draws figures and
computes Δm; it also declares its own command-line options. The engine (:mod:`xtc_ext.engine`) calls it
through the :class:`~xtc_ext.engine.protocol.Recipe` protocol and knows no method by name.

``RECIPES`` maps every ``--model`` value to its recipe class:

* ``xtasc``, ``mtnet``, ``align``, ``stnet``: :class:`~xtc_ext.recipes.xtasc.XTasCRecipe` (XTasC-Net paper);
* ``mtcp``: :class:`~xtc_ext.recipes.mtcp.MTCPRecipe` (MT-CP paper).

To add a method: write one module with a ``BaseRecipe`` subclass and add it to :data:`RECIPE_CLASSES`.
"""

from __future__ import annotations

from typing import Dict, Tuple, Type

from xtc_ext.recipes.base import BaseRecipe
from xtc_ext.recipes.mtcp import MTCPRecipe
from xtc_ext.recipes.xtasc import XTasCRecipe

__all__ = ["BaseRecipe", "RECIPE_CLASSES", "RECIPES", "XTasCRecipe", "MTCPRecipe", "get_recipe"]

RECIPE_CLASSES: Tuple[Type[BaseRecipe], ...] = (XTasCRecipe, MTCPRecipe)
"""Every recipe, in the order of ``--help``."""

RECIPES: Dict[str, Type[BaseRecipe]] = {model: cls for cls in RECIPE_CLASSES for model in cls.models}
"""``--model`` value -> recipe class."""


def get_recipe(model: str) -> Type[BaseRecipe]:
    """The recipe class of ``--model`` ``model``.

    Raises:
        ValueError: an unknown model (the known ones listed).
    """
    if model not in RECIPES:
        raise ValueError(f"unknown model {model!r}; choose one of {list(RECIPES)}")
    return RECIPES[model]
