"""The methods: one recipe per method family, one registry.

A recipe (:class:`~xtc_ext.recipes.base.BaseRecipe` subclass) builds the model, the task weighting and the
loss, runs a training step, evaluates, scores validation results for checkpoint selection, draws figures and
computes Δm; it also declares its own command-line options. The engine (:mod:`xtc_ext.engine`) calls it
through the :class:`~xtc_ext.engine.protocol.Recipe` protocol and knows no method by name.

``RECIPES`` maps every ``--model`` value to its recipe class:

* ``xtasc``, ``mtnet``, ``align``, ``stnet``: :class:`~xtc_ext.recipes.xtasc.XTasCRecipe` (XTasC-Net paper);
* ``mtcp``: :class:`~xtc_ext.recipes.mtcp.MTCPRecipe` (MT-CP paper).

To add a method: write one module in this package with a ``BaseRecipe`` subclass and one registry entry,
``RECIPES.register(MyRecipe, *MyRecipe.models)``; this package imports every module of itself, so nothing
else changes (the ``--model`` choices, its option group and ``python -m xtc_ext.evaluate`` follow).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Tuple, Type

from xtc_ext.recipes.base import RECIPES, BaseRecipe
from xtc_ext.recipes.xtasc import XTasCRecipe  # first: the order of the --model choices
from xtc_ext.recipes.mtcp import MTCPRecipe

# Any other module of the package (a method added later) registers itself on import.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = ["BaseRecipe", "RECIPES", "XTasCRecipe", "MTCPRecipe", "get_recipe", "recipe_classes"]


def recipe_classes() -> Tuple[Type[BaseRecipe], ...]:
    """Every registered recipe class once, in registration order (the order of ``--help``)."""
    return tuple(dict.fromkeys(RECIPES.values()))


def get_recipe(model: str) -> Type[BaseRecipe]:
    """The recipe class of ``--model`` ``model``.

    Raises:
        ValueError: an unknown model (the known ones listed).
    """
    return RECIPES.lookup(model)
