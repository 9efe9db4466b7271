"""``python -m xtc_ext.train``: train a multi-task model, select its checkpoint on validation, test it once.

With no arguments it trains XTasC-Net (ResNet-34) on the ten real NYUv2 frames shipped in the package at
96x128 (about ten minutes on two CPU cores) with the XTasC-Net paper's NYUv2 optimisation (Adam lr 1e-4,
betas (0.9, 0.99), lr halved every 60 epochs, batch 6, lambda 1e-4, uncertainty weighting; §V-C). The papers'
runs are YAML files in ``xtc_ext/configs/`` (``--config nyuv2_xtasc``). Every option: ``--help``;
the reference: docs/training.md.

This module is the command line only: :mod:`xtc_ext.cli` parses and checks the options, the dataset comes
from the registry of :mod:`xtc_ext.data`, the method from :mod:`xtc_ext.recipes`, and :func:`xtc_ext.engine.fit`
runs training, selection and the test with the engine's typed configuration (:class:`xtc_ext.engine.TrainConfig`).
From Python (a notebook), :func:`prepare` takes the same options as keywords and returns the :class:`Run`
(config, method, data) to inspect, change and ``fit()`` (README.md, "From Python").

Exit codes: 0 done; 1 the run failed (a non-finite loss with ``--nonfinite stop``, non-finite weights, a file
that could not be written or read); 2 bad arguments or an unreadable ``--resume`` checkpoint. Failures print one
line, ``python -m xtc_ext.train: error: ...`` as argparse does, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any, Dict, Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from xtc_ext.cli import PROG, check_command_line, config_tokens, engine_config, finalize_args, parse_args
from xtc_ext.data import DataSplits, build_splits, get_dataset
from xtc_ext.engine import CheckpointError, NonFiniteLoss, TrainConfig, UsageError, exit_with_error, fit
from xtc_ext.engine.distributed import shutdown
from xtc_ext.recipes import BaseRecipe, get_recipe

__all__ = ["Run", "build_run", "prepare", "train", "main"]

log = logging.getLogger("xtc_ext.train")


@dataclasses.dataclass
class Run:
    """A training run ready to start: what :func:`xtc_ext.engine.fit` takes.

    Attributes:
        config: the engine's configuration (optimisation, runtime, outputs; change it freely before :meth:`fit`).
        recipe: the method, built from the run's options.
        splits: train / validation / test sets.
        show_before: evaluate the untrained model first (the test set is the training data, as for the frames).
        figure_title: title of the prediction figures.
    """

    config: TrainConfig
    recipe: BaseRecipe
    splits: DataSplits
    show_before: bool
    figure_title: str

    def fit(self) -> Dict[str, Any]:
        """Train, select and test (:func:`xtc_ext.engine.fit`); returns the dict written to ``metrics.json``."""
        return fit(self.config, self.recipe, self.splits, show_before=self.show_before, figure_title=self.figure_title)


def build_run(args: argparse.Namespace) -> Run:
    """The :class:`Run` of the finalised ``args`` (:func:`xtc_ext.cli.finalize_args`): the dataset from the
    registry, the recipe of ``--model``, the splits and the engine's config (:func:`xtc_ext.cli.engine_config`).

    Raises:
        the errors of the dataset readers (missing or malformed files, named); UsageError: a bad engine option.
    """
    spec = get_dataset(args.dataset)
    recipe = get_recipe(args.model)(args, spec)
    splits = build_splits(spec, args.data_root, classes=int(args.classes),
                          size=None if args.size is None else tuple(args.size), augment=bool(args.augment),
                          normalize=bool(args.normalize), depth_scaling=args.depth_scaling, tasks=recipe.tasks,
                          val_fraction=args.val_fraction, split_seed=args.split_seed)
    on_training_data = spec.test_split is None
    title = recipe.name if on_training_data else f"{recipe.name}, {spec.name} test"
    return Run(engine_config(args), recipe, splits, show_before=on_training_data, figure_title=title)


def prepare(**options: Any) -> Run:
    """The :class:`Run` of ``options``: the options of ``python -m xtc_ext.train`` as keywords (names with
    underscores, values as in a YAML config: ``prepare(model="mtcp", size=[96, 128], augment=False)``),
    defaults and checks exactly as on the command line. ``config="nyuv2_xtasc"`` starts from a shipped config.

    Raises:
        UsageError: an unknown option or a bad value (named); the errors of :func:`build_run`.
    """
    config = options.pop("config", None)
    argv = config_tokens(options, "xtc_ext.train.prepare()") + (["--config", str(config)] if config else [])
    return build_run(finalize_args(check_command_line(argv)))


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training, validation and the final test as configured by the finalised ``args``
    (:func:`xtc_ext.cli.finalize_args`); returns the dict also written to ``metrics.json``.

    Raises:
        the errors of :func:`xtc_ext.engine.fit` and of the dataset readers (missing or malformed files, named).
    """
    return build_run(args).fit()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``python -m xtc_ext.train`` (see the module docstring for the exit codes)."""
    finished = False
    try:
        args = finalize_args(parse_args(argv))
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
        log.setLevel(logging.INFO)
        with logging_redirect_tqdm():
            result = train(args)
        finished = True
        return result
    except (UsageError, CheckpointError) as e:
        exit_with_error(PROG, e, 2)
    except (NonFiniteLoss, FloatingPointError, OSError) as e:
        exit_with_error(PROG, e, 1)
    finally:
        shutdown(wait=finished)


if __name__ == "__main__":
    main()
