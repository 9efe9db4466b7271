"""``python -m xtc_ext.train``: train a multi-task model, select its checkpoint on validation, test it once.

With no arguments it trains XTasC-Net (ResNet-34) on the ten real NYUv2 frames shipped in the package at
96x128 (about ten minutes on two CPU cores) with the XTasC-Net paper's NYUv2 optimisation (Adam lr 1e-4,
betas (0.9, 0.99), lr halved every 60 epochs, batch 6, lambda 1e-4, uncertainty weighting; §V-C). The papers'
runs are YAML files in ``xtc_ext/configs/`` (``--config nyuv2_xtasc``). Every option: ``--help``;
the reference: docs/training.md.

This module is the command line only: :mod:`xtc_ext.cli` parses and checks the options, the dataset comes
from the registry of :mod:`xtc_ext.data`, the method from :mod:`xtc_ext.recipes`, and :func:`xtc_ext.engine.fit`
runs training, selection and the test.

Exit codes: 0 done; 1 the run failed (a non-finite loss with ``--nonfinite stop``, non-finite weights, a file
that could not be written or read); 2 bad arguments or an unreadable ``--resume`` checkpoint. Failures print one
line, ``python -m xtc_ext.train: error: ...`` as argparse does, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from xtc_ext.cli import PROG, finalize_args, parse_args
from xtc_ext.data import build_splits, get_dataset
from xtc_ext.engine import CheckpointError, NonFiniteLoss, UsageError, exit_with_error, fit
from xtc_ext.engine.distributed import shutdown
from xtc_ext.recipes import get_recipe

__all__ = ["train", "main"]

log = logging.getLogger("xtc_ext.train")


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training, validation and the final test as configured by the finalised ``args``
    (:func:`xtc_ext.cli.finalize_args`); returns the dict also written to ``metrics.json``.

    Raises:
        the errors of :func:`xtc_ext.engine.fit` and of the dataset readers (missing or malformed files, named).
    """
    spec = get_dataset(args.dataset)
    recipe = get_recipe(args.model)(args, spec)
    splits = build_splits(spec, args.data_root, classes=int(args.classes),
                          size=None if args.size is None else tuple(args.size), augment=bool(args.augment),
                          normalize=bool(args.normalize), depth_scaling=args.depth_scaling, tasks=recipe.tasks,
                          val_fraction=args.val_fraction, split_seed=args.split_seed)
    on_training_data = spec.test_split is None
    title = recipe.name if on_training_data else f"{recipe.name}, {spec.name} test"
    return fit(args, recipe, splits, show_before=on_training_data, figure_title=title)


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
