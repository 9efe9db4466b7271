"""Train XTasC-Net and its baselines (Base ST-Net, Base MT-Net, Align-Net) on NYUv2 or Cityscapes.

Usage: ``python -m xtc_ext.train --help``. With no arguments it trains XTasC-Net (ResNet-34) on the
ten real NYUv2 frames of ``../shared/data/nyuv2-test10`` at 96x128 (about ten minutes on two CPU
cores) with the paper's NYUv2 optimisation (Adam lr 1e-4, betas (0.9, 0.99), lr halved every 60
epochs, batch 6, lambda 1e-4, uncertainty weighting; XTasC-Net paper §V-C). The paper's runs are
YAML files in ``xtc_ext/configs/`` (``--config nyuv2_xtasc``); options given on the command line
override the file.

Protocol (no model selection on the test split, unlike the authors' code, reference notes §3.1
item 13): ``--val-fraction`` of the TRAIN split is held out (the same files read without
augmentation), validated every ``--eval-every`` epochs; ``best.pt`` keeps the epoch with the best
validation score (:func:`validation_score`); the test split (NYUv2: MTAN ``val`` = the official
test split; Cityscapes: ``val``) is evaluated once, at the end, with ``best.pt``.

Outputs in ``--output-dir``: ``last.pt`` (every ``--checkpoint-every`` epochs) and ``best.pt``
(model, optimizer, scheduler, weighting, every RNG state, epoch, arguments, history; written
atomically, loadable with ``torch.load(..., weights_only=True)``), ``log.jsonl`` and ``log.csv`` (one
row per epoch), ``tb/`` (TensorBoard scalars), ``metrics.json`` and ``metrics.md`` (test metrics),
``figures/*.png`` (predictions on a few test samples).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import xtc_ext
from python_models import MTCP, BaseSTNet, XTasCNet
from xtc_ext import data as xdata
from xtc_ext.evaluate import (
    class_names,
    depth_unit,
    evaluate_model,
    format_metrics_table,
    load_baselines,
    model_delta_m,
    save_figures,
)
from xtc_ext import mtcp_train
from xtc_ext.losses import DEPTH_LOSSES, LOSS_IMPLS, SEG_CONSISTENCY, XTasCLoss, single_task_loss
from xtc_ext.mtcp_losses import NORMALS_KINDS, MTCPLoss
from xtc_ext.weighting import WEIGHTINGS, build_weighting

log = logging.getLogger("xtc_ext.train")

DEFAULT_DATA_ROOT = "../shared/data/nyuv2-test10"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CHECKPOINT_FORMAT = 2

DATASETS = ("frames", "nyuv2", "cityscapes", "cityscapes-mtan", "nyudmt", "pascal")
"""``--dataset`` choices: the ten-frames PNG layout, MTAN NYUv2 .npy, official Cityscapes files,
MTAN Cityscapes .npy, Vandenhende's NYUD_MT and PASCAL_MT layouts (MT-CP only)."""

MTCP_ONLY_DATASETS = ("nyudmt", "pascal")

MODELS = {"xtasc": "XTasC-Net", "mtnet": "Base MT-Net", "align": "Align-Net", "stnet": "Base ST-Net", "mtcp": "MT-CP"}
"""``--model`` choices and their names in the paper (§V-D)."""

DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "frames": {"classes": 13, "size": (96, 128), "val_fraction": 0.0},
    "nyuv2": {"classes": 13, "size": None, "val_fraction": 0.1},
    "cityscapes": {"classes": 7, "size": (128, 256), "val_fraction": 0.1},
    "cityscapes-mtan": {"classes": 7, "size": None, "val_fraction": 0.1},
    "nyudmt": {"classes": 40, "size": (480, 640), "val_fraction": 0.1},
    "pascal": {"classes": 21, "size": (512, 512), "val_fraction": 0.1},
}
"""Values that ``--classes``, ``--size`` and ``--val-fraction`` take when not given."""

CLASS_CHOICES = {"frames": (13, 40), "nyuv2": (13,), "cityscapes": (7, 19), "cityscapes-mtan": (7, 19),
                 "nyudmt": (40,), "pascal": (21,)}

TEST_SPLIT = {"frames": "the training frames", "nyuv2": "val", "cityscapes": "val", "cityscapes-mtan": "val",
              "nyudmt": "val", "pascal": "val"}
"""What the final test reads: the MTAN NYUv2 ``val`` split is the official NYUv2 test split; the
Cityscapes ``val`` split is the split the paper reports on; the frames layout has no test split."""

_NOT_CONFIGURABLE = {"help", "config", "resume"}


# --------------------------------------------------------------------------- #
# command line and configs
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m xtc_ext.train`` (every option has a help text)."""
    p = argparse.ArgumentParser(
        prog="python -m xtc_ext.train",
        description="Train XTasC-Net or a baseline (semantic segmentation + depth) on NYUv2 or Cityscapes, "
        "select the checkpoint on a held-out part of the training split and test it once on the test split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML file, or the name of one in xtc_ext/configs/ (e.g. nyuv2_xtasc); its keys are option names "
        "(dashes or underscores) and set the defaults, options given on the command line override them",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run from its last.pt (or best.pt): restores model, optimizer, scheduler, weighting, RNG "
        "states and history; the stored arguments are the defaults, options given now override them (e.g. --epochs)",
    )

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="frames",
                   help="'frames': PNG folders rgb/ depth/ label13|label40/ (the ten real NYUv2 frames; no test split: "
                   "the test reads the training frames); 'nyuv2': MTAN .npy {train,val}/{image,label,depth}/{i}.npy "
                   "(test = val, the official test split); 'cityscapes': official leftImg8bit/ gtFine/ disparity/ "
                   "files (test = val); 'cityscapes-mtan': MTAN .npy {train,val}/{image,label_7,label_19,depth}/{i}.npy "
                   "(test = val); 'nyudmt' / 'pascal' (--model mtcp only): Vandenhende's NYUD_MT / PASCAL_MT layouts "
                   "(test = val; default size 480 640 / 512 512)")
    g.add_argument("--data-root", default=None,
                   help=f"dataset folder (default for 'frames': {DEFAULT_DATA_ROOT}; required for the others)")
    g.add_argument("--classes", type=int, choices=(7, 13, 19, 21, 40), default=None,
                   help="label set: 13 or 40 for 'frames' (default 13), 13 for 'nyuv2', 7 or 19 for Cityscapes (default 7), "
                   "40 for 'nyudmt', 21 for 'pascal'")
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="resize to H W (multiples of 32) for 'frames' (default 96 128) and 'cityscapes' (default 128 256); "
                   "the .npy datasets keep their stored size")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random scale crop (1, 1.2, 1.5) and horizontal flip of the training samples")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet-normalise the input images (paper §V-A; the authors' NYUv2 code does not)")
    g.add_argument("--depth-scaling", choices=("auto",) + tuple(xdata.DEPTH_SCALINGS), default="auto",
                   help="depth rescaling under the scale crop: 'auto' = the dataset's default (NYUv2 metres: divide by "
                   "the scale; Cityscapes disparity: none, as the authors)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of the TRAIN split held out for validation and checkpoint selection, in [0, 1) "
                   "(default 0.1; 0 for 'frames'); 0 disables validation and selection (the test uses the last epoch)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (independent of --seed)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")

    g = p.add_argument_group("model and loss")
    g.add_argument("--model", choices=tuple(MODELS), default="xtasc",
                   help="'xtasc': XTasC-Net (cross-task consistency); 'mtnet': Base MT-Net (lambda = 0, no TTNets); "
                   "'align': Align-Net (TTNet outputs against the ground truth); 'stnet': Base ST-Net (one task, see --task); "
                   "'mtcp': MT-CP (NYUD: semseg, depth, normals; PASCAL: semseg, human_parts, sal; see the MT-CP options)")
    g.add_argument("--task", choices=("segmentation", "depth"), default=None, help="the task of --model stnet (required there)")
    g.add_argument("--encoder-depth", type=int, choices=(18, 34, 50, 101, 152), default=34, help="ResNet depth of the encoder")
    g.add_argument("--lam", type=float, default=1e-4,
                   help="lambda of both tasks (paper: 1e-4 NYUv2, 0.01 Cityscapes); forced to 0 for mtnet and stnet")
    g.add_argument("--seg-consistency", choices=SEG_CONSISTENCY, default="soft",
                   help="XTasC-Net segmentation consistency target: 'soft' (paper Eq. 13) or 'hard' argmax labels (authors' code)")
    g.add_argument("--lp", choices=DEPTH_LOSSES, default="l1",
                   help="direct depth loss (authors' --lp): l1 (paper Eq. 14), mse, logl1, smoothl1")
    g.add_argument("--weighting", choices=sorted(WEIGHTINGS), default=None,
                   help="task weighting of the task losses (XTasC-Net paper Eq. 16; default 'uncertainty'); ignored by "
                   "stnet. For mtcp (default 'lps') the MT-CP Table 4 loss schemes: 'equal' (EW), 'lps-log' (log "
                   "smoothing), 'lps-prio' (prioritization without the log), 'lps' (full LPS)")
    g.add_argument("--gradnorm-alpha", type=float, default=1.5,
                   help="GradNorm asymmetry alpha (Chen et al. NYUv2: 1.5; the XTasC-Net authors hard-code 0.16)")
    g.add_argument("--dwa-temperature", type=float, default=2.0, help="DWA temperature (MTAN: 2)")
    g.add_argument("--loss-impl", choices=sorted(LOSS_IMPLS), default="fused", help="fused xtc_ext ops or the eager references")

    g = p.add_argument_group("MT-CP (--model mtcp)")
    g.add_argument("--backbone", choices=("resnet50_fpn", "resnet34_fpn", "resnet18_fpn", "mask2former"),
                   default="resnet50_fpn", help="MT-CP backbone ('mask2former' = the paper's, needs --mask2former-path)")
    g.add_argument("--mask2former-path", default=None,
                   help="local Mask2Former directory (save_pretrained) for --backbone mask2former; nothing is downloaded")
    g.add_argument("--mtcp-tasks", nargs="+", default=None, metavar="TASK",
                   help="train MT-CP on these tasks only (default: all of the dataset's; NYUD: semseg depth normals, "
                   "PASCAL: semseg human_parts sal); one task = the single-task baseline (no CFM, no coherence loss)")
    g.add_argument("--cfm", action=argparse.BooleanOptionalAction, default=True,
                   help="Coherence Fusion Modules (--no-cfm: the 'w/o CFM' ablation of MT-CP Table 3, coherence loss 0)")
    g.add_argument("--srm", action=argparse.BooleanOptionalAction, default=True,
                   help="Spatial Refinement Modules (--no-srm: the 'w/o SRM' ablation of Table 3, no intermediate predictions)")
    g.add_argument("--coherence-weight", type=float, default=0.01, help="factor of the CFM coherence loss")
    g.add_argument("--intermediate-weight", type=float, default=0.5,
                   help="factor of the intermediate (SRM) prediction losses (authors' code: 0.5)")
    g.add_argument("--normals-loss", choices=NORMALS_KINDS, default="cosine", help="surface-normals loss")
    g.add_argument("--lps-beta", type=float, default=2.5, help="LPS spread factor beta (paper: 2.5; authors' NYUD driver 7.5)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="training epochs (paper: NYUv2 100, Cityscapes 250)")
    g.add_argument("--batch-size", type=int, default=6, help="training batch size (paper: NYUv2 6, Cityscapes 8)")
    g.add_argument("--optimizer", choices=("adam", "adamw"), default="adam",
                   help="optimizer (XTasC-Net paper: Adam; the MT-CP authors' code: AdamW lr 5e-5, weight decay 1e-4 "
                   "and a poly schedule, approximated here by StepLR)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the optimizer (MT-CP authors: 1e-4 with AdamW)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate (XTasC-Net paper: 1e-4; MT-CP authors: 5e-5)")
    g.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"), default=(0.9, 0.99),
                   help="Adam betas (authors' multi-task code: 0.9 0.99; their Base ST-Net: 0.9 0.999)")
    g.add_argument("--lr-step", type=int, default=60, help="StepLR: multiply the learning rate by --lr-gamma every this "
                   "many epochs (paper: NYUv2 60, Cityscapes 80)")
    g.add_argument("--lr-gamma", type=float, default=0.5, help="StepLR factor (paper: 0.5, halving)")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps in all (0: no limit; for smoke tests, a partial last epoch)")

    g = p.add_argument_group("validation, test and outputs")
    g.add_argument("--eval-every", type=int, default=1, help="validate every this many epochs (and after the last one)")
    g.add_argument("--select-by", choices=("score", "loss"), default="score",
                   help="best.pt criterion: 'score' = mean(mIoU, pixel_acc) - mean(abs_err/abs_err0, rel_err/rel_err0) "
                   "on validation (errors relative to the first validation), higher is better; for mtcp the mean over tasks "
                   "of the improvement vs the first validation (mIoU / maxF differences, depth RMSE and normals mean "
                   "angle relative reductions; xtc_ext.mtcp_train); 'loss' = sum of the "
                   "direct task losses on validation, lower is better")
    g.add_argument("--baseline", nargs="+", default=None, metavar="METRICS_JSON",
                   help="metrics.json files of baseline runs (e.g. the two Base ST-Net runs): the test metrics then "
                   "include delta_m (paper Eq. 17, percent) against their merged metrics")
    g.add_argument("--num-figures", type=int, default=3, help="PNG figures of this many test samples")
    g.add_argument("--checkpoint-every", type=int, default=1, help="write last.pt every this many epochs (and after the last)")
    g.add_argument("--output-dir", default="runs/xtasc_nyuv2", help="where checkpoints, logs, metrics and figures go")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard scalars to OUTPUT_DIR/tb")
    g.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--seed", type=int, default=0, help="seed of Python, NumPy, torch, model init, data order and augmentation")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")
    return p


def list_configs() -> List[str]:
    """Names of the YAML configs shipped in ``xtc_ext/configs/`` (usable as ``--config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str) -> Path:
    """Resolve ``--config``: an existing file path, or a NAME of ``xtc_ext/configs/NAME.yaml``.

    Raises:
        SystemExit: neither exists (the message lists the shipped configs).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        raise SystemExit(f"error: config file not found: {p}")
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if not named.is_file():
        raise SystemExit(f"error: unknown config {name_or_path!r} (no file {named}); shipped configs: {', '.join(list_configs())}")
    return named


def _convert_config_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    def bad(why: str) -> SystemExit:
        """The error for this key."""
        return SystemExit(f"error: config {where}: key {key!r}: {why}, got {value!r}")

    def scalar(v: Any) -> Any:
        """One value converted to the option's type and checked against its choices."""
        if isinstance(v, bool):
            raise bad("expected a number or a string, not a boolean")
        if action.type is int:
            if not isinstance(v, int):
                raise bad("expected an integer")
        elif action.type is float:
            if isinstance(v, str):  # YAML reads 1e-4 (no dot) as a string
                try:
                    v = float(v)
                except ValueError:
                    raise bad("expected a number") from None
            elif not isinstance(v, (int, float)):
                raise bad("expected a number")
            v = float(v)
        elif not isinstance(v, str):
            raise bad("expected a string")
        if action.choices is not None and v not in action.choices:
            raise bad(f"expected one of {list(action.choices)}")
        return v

    if value is None:
        raise bad("a value is required")
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)) or len(value) != action.nargs:
            raise bad(f"expected a list of {action.nargs} values")
        return [scalar(v) for v in value]
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, (list, tuple)) else [value]
        if action.nargs == "+" and not values:
            raise bad("expected a non-empty list")
        return [scalar(v) for v in values]
    return scalar(value)


def load_config(name_or_path: str, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    """Read a YAML config into ``{option dest: value}``, checked against the options of ``parser``.

    Keys are option names without the leading dashes, with dashes or underscores (``lr-step`` or
    ``lr_step``); values have the option's type (lists for ``--size``/``--betas``/``--baseline``,
    booleans for ``--augment``-style switches). ``config`` and ``resume`` cannot be set in a file.

    Raises:
        SystemExit: missing file, invalid YAML, a top level that is not a mapping, an unknown key
            (the message names it and the file), or a value of the wrong type or outside the choices.
    """
    import yaml

    parser = parser or build_parser()
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SystemExit(f"error: config {path}: invalid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SystemExit(f"error: config {path}: the top level must be a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest in _NOT_CONFIGURABLE or dest not in actions:
            raise SystemExit(f"error: config {path}: unknown key {key!r} (keys are the options of "
                             f"`python -m xtc_ext.train --help` without the dashes)")
        out[dest] = _convert_config_value(actions[dest], str(key), value, str(path))
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line with the precedence: explicit options > ``--config`` file > the
    arguments stored in the ``--resume`` checkpoint > built-in defaults."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    defaults: Dict[str, Any] = {}
    if known.resume:
        stored = load_checkpoint(known.resume)["args"]
        dests = {a.dest for a in parser._actions}
        defaults.update({k: v for k, v in stored.items() if k in dests and k not in _NOT_CONFIGURABLE})
    if known.config:
        defaults.update(load_config(known.config, parser))
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the dataset- and model-dependent defaults in place and check every value.

    Raises:
        SystemExit: an invalid value or combination (the message names the option).
    """
    ds = DATASET_DEFAULTS[args.dataset]
    if args.data_root is None:
        if args.dataset != "frames":
            raise SystemExit(f"error: --data-root is required for --dataset {args.dataset}")
        args.data_root = DEFAULT_DATA_ROOT
    args.data_root = str(args.data_root)
    if args.classes is None:
        args.classes = ds["classes"]
    if args.classes not in CLASS_CHOICES[args.dataset]:
        raise SystemExit(f"error: --classes {args.classes} is not available for --dataset {args.dataset} "
                         f"(choose {' or '.join(map(str, CLASS_CHOICES[args.dataset]))})")
    if args.size is None:
        args.size = ds["size"]
    elif ds["size"] is None:
        raise SystemExit(f"error: --size does not apply to --dataset {args.dataset} (the .npy files keep their stored size)")
    args.size = None if args.size is None else [int(s) for s in args.size]
    if args.val_fraction is None:
        args.val_fraction = ds["val_fraction"]
    if args.dataset in MTCP_ONLY_DATASETS and args.model != "mtcp":
        raise SystemExit(f"error: --dataset {args.dataset} is for --model mtcp only (got --model {args.model})")
    if args.weighting is None:
        args.weighting = "lps" if args.model == "mtcp" else "uncertainty"
    if args.model == "mtcp":
        if args.backbone == "mask2former" and not args.mask2former_path:
            raise SystemExit("error: --backbone mask2former needs --mask2former-path")
        if args.weighting in ("gradnorm",):
            raise SystemExit("error: --model mtcp supports --weighting equal, uncertainty, dwa, lps, lps-log, lps-prio")
        if args.mtcp_tasks:
            names = mtcp_train.select_tasks(mtcp_train.mtcp_tasks(args.dataset, 1), args.mtcp_tasks)
            args.mtcp_tasks = list(names)
            if len(names) == 1:
                if args.cfm:
                    log.info("--mtcp-tasks %s: single task, no auxiliary tasks -> --no-cfm", args.mtcp_tasks[0])
                args.cfm, args.weighting = False, "equal"
    elif getattr(args, "mtcp_tasks", None):
        raise SystemExit(f"error: --mtcp-tasks applies to --model mtcp only (got --model {args.model})")
    if args.model == "stnet":
        if args.task is None:
            raise SystemExit("error: --model stnet needs --task segmentation or --task depth")
    elif args.task is not None:
        raise SystemExit(f"error: --task applies to --model stnet only (got --model {args.model})")
    if args.model in ("mtnet", "stnet") and args.lam != 0:
        log.info("--model %s trains without transfer networks: lambda %g -> 0", args.model, args.lam)
        args.lam = 0.0
    args.betas = [float(b) for b in args.betas]
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.coherence_weight >= 0 and args.intermediate_weight >= 0,
         "--coherence-weight and --intermediate-weight must be >= 0"),
        (args.lps_beta >= 0, f"--lps-beta must be >= 0, got {args.lps_beta}"),
        (args.lr_step >= 1, f"--lr-step must be >= 1, got {args.lr_step}"),
        (0 < args.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {args.lr_gamma}"),
        (all(0 <= b < 1 for b in args.betas), f"--betas must be in [0, 1), got {args.betas}"),
        (0.0 <= args.lam <= 1.0, f"--lam must be in [0, 1], got {args.lam}"),
        (0.0 <= args.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {args.val_fraction}"),
        (args.size is None or all(s > 0 and s % 32 == 0 for s in args.size),
         f"--size must be positive multiples of 32, got {args.size}"),
        (args.gradnorm_alpha >= 0, f"--gradnorm-alpha must be >= 0, got {args.gradnorm_alpha}"),
        (args.dwa_temperature > 0, f"--dwa-temperature must be > 0, got {args.dwa_temperature}"),
        (args.eval_every >= 1, f"--eval-every must be >= 1, got {args.eval_every}"),
        (args.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {args.checkpoint_every}"),
        (args.workers >= 0 and args.max_steps >= 0 and args.num_figures >= 0,
         "--workers, --max-steps and --num-figures must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"error: {message}")
    return args


def args_to_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """Plain (JSON- and ``weights_only``-safe) copy of ``args``: tuples become lists, paths strings."""
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


# --------------------------------------------------------------------------- #
# devices, seeds, RNG state
# --------------------------------------------------------------------------- #
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises SystemExit for an unavailable CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def capture_rng_state(loader_generator: torch.Generator) -> Dict[str, Any]:
    """Every RNG state a training epoch draws from: Python ``random``, NumPy, torch CPU (the
    augmentation of the datasets with ``--workers 0``), CUDA (all devices), and the training
    DataLoader's generator (shuffle order, worker seeds). Stored as tensors and plain values so the
    checkpoint loads with ``weights_only=True``."""
    py = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def restore_rng_state(state: Dict[str, Any], loader_generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_generator.set_state(state["loader"])


# --------------------------------------------------------------------------- #
# data and model
# --------------------------------------------------------------------------- #
@dataclass
class DataSplits:
    """The three parts of a run: ``train`` (augmented), ``val`` (None when ``--val-fraction 0``)
    and ``test``, with the number of classes and a description of each part."""

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    num_classes: int
    describe: Dict[str, str]


def _dataset_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    kw: Dict[str, Any] = {"normalize": bool(args.normalize)}
    if args.depth_scaling != "auto" and args.dataset != "pascal":
        kw["depth_scaling"] = args.depth_scaling
    return kw


def build_split_dataset(args: argparse.Namespace, split: str, augment: bool) -> Dataset:
    """One split of ``args.dataset`` (``split`` is ignored by the frames layout, which has one)."""
    kw = _dataset_kwargs(args)
    root = args.data_root
    size = None if args.size is None else tuple(args.size)
    if args.dataset == "frames":
        return xdata.NYUv2Frames(root, size=size, classes=args.classes, augment=augment,
                                 with_normals=args.model == "mtcp", **kw)
    if args.dataset == "nyudmt":
        return xdata.NYUDMT(root, split=split, size=size, augment=augment, **kw)
    if args.dataset == "pascal":
        return xdata.PASCALMT(root, split=split, size=size, augment=augment,
                              tasks=tuple(mtcp_train.PASCAL_TASKS), **kw)
    if args.dataset == "nyuv2":
        return xdata.MTANNYUv2(root, split=split, augment=augment, **kw)
    if args.dataset == "cityscapes":
        return xdata.CityscapesFiles(root, split=split, classes=args.classes, size=size, augment=augment, **kw)
    return xdata.MTANCityscapes(root, split=split, classes=args.classes, augment=augment, **kw)


def build_datasets(args: argparse.Namespace) -> DataSplits:
    """Train / validation / test sets of a run (see the module docstring for the protocol).

    The validation set is ``--val-fraction`` of the TRAIN split (:func:`xtc_ext.data.split_indices`
    with ``--split-seed``), read by a second, non-augmenting instance over the same files; the
    training set is the rest, augmented when ``--augment``. The test set is the ``val`` split
    (the frames layout: all frames again).
    """
    train_full = build_split_dataset(args, "train", augment=bool(args.augment))
    train_plain = build_split_dataset(args, "train", augment=False)
    test = train_plain if args.dataset == "frames" else build_split_dataset(args, "val", augment=False)
    if args.val_fraction > 0:
        try:
            train, val = xdata.split_train_val(train_full, args.val_fraction, args.split_seed, val_dataset=train_plain)
        except ValueError as e:
            raise SystemExit(f"error: --val-fraction {args.val_fraction}: {e}") from e
    else:
        train, val = train_full, None
    where = "frames" if args.dataset == "frames" else "train split"
    describe = {
        "train": f"{len(train)} samples of the {where}" + (" (augmented)" if args.augment else ""),
        "val": (f"{len(val)} held-out samples of the {where} (fraction {args.val_fraction}, split seed {args.split_seed})"
                if val is not None else "none (--val-fraction 0: no validation, no selection)"),
        "test": f"{len(test)} samples: {TEST_SPLIT[args.dataset]}",
    }
    return DataSplits(train, val, test, int(args.classes), describe)


def model_tasks(args: argparse.Namespace) -> Tuple[str, ...]:
    """Tasks the run's model predicts: ``("segmentation", "depth")``, the stnet task alone, or the
    MT-CP tasks of the dataset (e.g. ``("semseg", "depth", "normals")``)."""
    if args.model == "mtcp":
        return tuple(mtcp_train.select_tasks(mtcp_train.mtcp_tasks(args.dataset, args.classes), getattr(args, "mtcp_tasks", None)))
    return (args.task,) if args.model == "stnet" else ("segmentation", "depth")


def model_name(args: argparse.Namespace) -> str:
    """Human-readable model name, e.g. ``"XTasC-Net ResNet-34"``."""
    if args.model == "mtcp":
        ablation = "".join(f" w/o {m}" for m, on in (("CFM", args.cfm), ("SRM", args.srm)) if not on)
        subset = f" ({', '.join(args.mtcp_tasks)})" if getattr(args, "mtcp_tasks", None) else ""
        return f"MT-CP {args.backbone}{subset}{ablation}"
    name = MODELS[args.model] + (f" ({args.task})" if args.model == "stnet" else "")
    return f"{name} ResNet-{args.encoder_depth}"


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The network of ``--model``: XTasCNet (with TTNets for xtasc/align when lambda > 0, without
    for mtnet) or BaseSTNet for stnet."""
    if args.model == "mtcp":
        tasks = mtcp_train.select_tasks(mtcp_train.mtcp_tasks(args.dataset, num_classes), getattr(args, "mtcp_tasks", None))
        return MTCP(tasks, backbone=args.backbone, use_cfm=bool(args.cfm) and len(tasks) > 1,
                    use_srm=bool(args.srm), mask2former_path=args.mask2former_path)
    if args.model == "stnet":
        return BaseSTNet(args.task, num_classes if args.task == "segmentation" else None, encoder_depth=args.encoder_depth)
    with_transfer = args.model in ("xtasc", "align") and args.lam > 0
    return XTasCNet(num_classes, encoder_depth=args.encoder_depth, with_transfer=with_transfer)


def shared_parameter(model: nn.Module) -> torch.Tensor:
    """GradNorm's ``W``: the weight of the encoder's last shared conv (``layer4[-1].conv2`` of a
    BasicBlock ResNet-18/34, ``conv3`` of a Bottleneck ResNet-50+), as the authors' code."""
    block = model.encoder.layer4[-1]
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).weight


def build_weighting_for(args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """The task weighting of the run (one equal-weighted task for stnet)."""
    if args.model == "stnet":
        return build_weighting("equal", 1)
    kwargs: Dict[str, Any] = {}
    if args.model == "mtcp":
        if args.weighting.startswith("lps"):
            kwargs["beta"] = args.lps_beta
        elif args.weighting == "dwa":
            kwargs["temperature"] = args.dwa_temperature
        return build_weighting(args.weighting, len(model_tasks(args)), **kwargs)
    if args.weighting == "gradnorm":
        kwargs["alpha"] = args.gradnorm_alpha
    elif args.weighting == "dwa":
        kwargs["temperature"] = args.dwa_temperature
    return build_weighting(args.weighting, 2, shared_parameter=shared_parameter(model), **kwargs)


def loss_names(args: argparse.Namespace) -> Tuple[str, ...]:
    """Names of the per-step loss values logged for the run (first: the weighted total)."""
    if args.model == "stnet":
        return ("loss", "seg_loss" if args.task == "segmentation" else "depth_loss")
    if args.model == "mtcp":
        tasks = model_tasks(args)
        return ("loss",) + tuple(f"{t}_loss" for t in tasks) + tuple(f"{t}_intermediate" for t in tasks) + ("coherence",)
    return ("loss", "seg_loss", "depth_loss", "seg_consistency", "depth_consistency", "seg_group", "depth_group")


# --------------------------------------------------------------------------- #
# recipes: what the training loop does per model family
# --------------------------------------------------------------------------- #
class XTasCRecipe:
    """The XTasC-Net family (xtasc, mtnet, align, stnet): one training step, the evaluation, the
    checkpoint-selection score and the figures. The training loop of :func:`train` calls only these
    members, so another model family (:class:`MTCPRecipe`) plugs in without touching the loop.

    ``names``: the logged per-step values (first: the weighted total); ``groups``: the slice of those
    values whose epoch means go to ``weighting.epoch_end``."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, weighting: nn.Module, device: torch.device,
                 num_classes: int, tasks: Sequence[str]) -> None:
        self.args, self.model, self.weighting, self.device = args, model, weighting, device
        self.num_classes, self.tasks = num_classes, tuple(tasks)
        self.ignore_index = xdata.IGNORE_INDEX
        self.names = loss_names(args)
        self.criterion = None
        if args.model != "stnet":
            self.criterion = XTasCLoss(
                args.lam, args.lam, ignore_index=self.ignore_index, impl=args.loss_impl,
                variant="align" if args.model == "align" else "xtasc",
                seg_consistency=args.seg_consistency, depth_loss=args.lp,
            )
        self.groups = slice(-2, None) if self.criterion is not None else slice(1, 2)
        self.eval_kw = dict(ignore_index=self.ignore_index, depth_loss=args.lp, loss_impl=args.loss_impl)

    def step(self, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Forward and loss of one batch: ``(total to backpropagate, detached values [len(names)])``."""
        args = self.args
        image, seg, depth, valid = _batch_to_device(batch, self.device)
        if self.criterion is None:
            task_loss = single_task_loss(args.task, self.model(image), seg, depth, valid, self.ignore_index,
                                         depth_loss=args.lp, impl=args.loss_impl)
            total = self.weighting(task_loss.reshape(1))
            return total, torch.stack([total.detach(), task_loss.detach()])
        terms = self.criterion(self.model(image), seg, depth, valid)
        total = self.weighting(terms.groups)
        values = torch.cat([
            torch.stack([total, terms.seg, terms.depth, terms.seg_consistency, terms.depth_consistency]),
            terms.groups,
        ]).detach()
        return total, values

    def evaluate(self, loader: DataLoader, **kw) -> Dict[str, Any]:
        return evaluate_model(self.model, loader, self.device, self.num_classes, self.tasks, **self.eval_kw, **kw)

    def score_reference(self, metrics: Dict[str, Any]) -> Dict[str, float]:
        return {k: metrics[k] for k in ("abs_err", "rel_err") if k in metrics}

    def score(self, metrics: Dict[str, Any], reference: Dict[str, float]) -> float:
        return validation_score(metrics, reference)

    def table_extra(self, metrics: Dict[str, Any]) -> Optional[Dict[str, str]]:
        return None

    def figures(self, data: Dataset, indices, out_dir: Path, title: str) -> List[Path]:
        return save_figures(self.model, data, indices, self.device, self.num_classes, self.tasks, out_dir,
                            dataset=self.args.dataset, title=title, normalized=bool(self.args.normalize))


class MTCPRecipe(XTasCRecipe):
    """MT-CP (``--model mtcp``): :class:`~xtc_ext.mtcp_losses.MTCPLoss` with the run's weighting (LPS by
    default; the epoch means of the final per-task losses feed ``weighting.epoch_end``), the metrics,
    score and figures of :mod:`xtc_ext.mtcp_train`."""

    def __init__(self, args, model, weighting, device, num_classes, tasks) -> None:
        self.args, self.model, self.weighting, self.device = args, model, weighting, device
        self.num_classes, self.tasks = num_classes, tuple(tasks)
        self.names = loss_names(args)
        self.criterion = MTCPLoss(self.tasks, weighting, coherence_weight=args.coherence_weight,
                                  intermediate_weight=args.intermediate_weight, normals_kind=args.normals_loss,
                                  impl=args.loss_impl, ignore_index=xdata.IGNORE_INDEX)
        self.groups = slice(1, 1 + len(self.tasks))

    def step(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        terms = self.criterion(self.model(image), mtcp_train.targets_from_batch(batch, self.tasks, self.device))
        values = torch.cat([terms.total.reshape(1), terms.per_task_final, terms.per_task_intermediate,
                            terms.coherence.reshape(1)]).detach()
        return terms.total, values

    def evaluate(self, loader, **kw):
        return mtcp_train.evaluate_mtcp(self.model, loader, self.device, self.criterion, **kw)

    def score_reference(self, metrics):
        return mtcp_train.score_reference(metrics)

    def score(self, metrics, reference):
        return mtcp_train.mtcp_validation_score(metrics, reference)

    def table_extra(self, metrics):
        return mtcp_train.metrics_table_extra(metrics)

    def figures(self, data, indices, out_dir, title):
        return mtcp_train.save_mtcp_figures(self.model, data, indices, self.device, out_dir, title=title,
                                            depth_unit=depth_unit(self.args.dataset),
                                            class_names=class_names(self.args.dataset, self.num_classes),
                                            normalized=bool(self.args.normalize), ignore_index=xdata.IGNORE_INDEX)


def build_recipe(args: argparse.Namespace, model: nn.Module, weighting: nn.Module, device: torch.device,
                 num_classes: int, tasks: Sequence[str]) -> XTasCRecipe:
    """The recipe of ``--model``."""
    cls = MTCPRecipe if args.model == "mtcp" else XTasCRecipe
    return cls(args, model, weighting, device, num_classes, tasks)


def build_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    """``--optimizer`` (Adam or AdamW) with ``--lr``, ``--betas``, ``--weight-decay``."""
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=args.lr, betas=tuple(args.betas), weight_decay=args.weight_decay)


# --------------------------------------------------------------------------- #
# checkpoints and files
# --------------------------------------------------------------------------- #
def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file in the same folder, then rename it over
    ``path``: a crash mid-write never destroys the previous checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by this program (``weights_only=True``: no code is unpickled).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: not a checkpoint of this program.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, another format, ...
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise ValueError(f"{path} is not a checkpoint of python -m xtc_ext.train (no 'model'/'args')")
    return state


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _csv_columns(history: List[dict]) -> List[str]:
    columns: List[str] = []
    for record in history:
        for key, value in record.items():
            if key == "task_weights":
                keys = [f"weight_{i}" for i in range(len(value))]
            else:
                keys = [key]
            for k in keys:
                if k not in columns:
                    columns.append(k)
    return columns


def write_logs(out_dir: Path, history: List[dict]) -> None:
    """Rewrite ``log.jsonl`` (one JSON object per epoch) and ``log.csv`` (the same, task weights as
    ``weight_i`` columns) from ``history`` (atomic; a resumed run rewrites what the checkpoint knows)."""
    _write_text(out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_csv_columns(history), restval="", lineterminator="\n")
    writer.writeheader()
    for record in history:
        row = {k: v for k, v in record.items() if k != "task_weights"}
        row.update({f"weight_{i}": w for i, w in enumerate(record.get("task_weights", []))})
        writer.writerow(row)
    _write_text(out_dir / "log.csv", buf.getvalue())


class _TensorBoard:
    """SummaryWriter in ``OUTPUT_DIR/tb`` (x axis: optimizer steps), or a no-op when disabled."""

    def __init__(self, enabled: bool, log_dir: Path, purge_step: Optional[int]) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is a dependency, but be clear when it is missing
                raise SystemExit(f"error: TensorBoard logging needs the 'tensorboard' package ({e}); "
                                 "install it or pass --no-tensorboard") from e
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def epoch(self, record: dict, step_losses: Sequence[float], first_step: int) -> None:
        """Write one epoch: the numeric entries of ``record`` at its step, and the per-step losses."""
        if self.writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key in ("epoch", "step", "best") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            group = "val" if key.startswith("val_") else ("time" if key.endswith("_s") else "train")
            self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", value, step)
        for i, w in enumerate(record.get("task_weights", [])):
            self.writer.add_scalar(f"weights/task_{i}", w, step)
        self.writer.add_scalar("train/epoch", record["epoch"], step)
        for i, value in enumerate(step_losses):
            self.writer.add_scalar("train_step/loss", value, first_step + i + 1)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- #
# validation score
# --------------------------------------------------------------------------- #
def validation_score(metrics: Dict[str, float], reference: Dict[str, float]) -> float:
    """Checkpoint-selection score of validation ``metrics`` (higher is better).

    ``score = mean(mIoU, pixel_acc) - mean(abs_err / abs_err_ref, rel_err / rel_err_ref)`` over the
    metrics the model has (one task only for Base ST-Net), where ``*_ref`` are the errors of the
    first validation of the run (``reference``; a zero or non-finite reference counts as 1). The
    segmentation part moves by 0.01 per point of mIoU / accuracy, the depth part by 0.01 per percent
    of error change, so neither task's units dominate (Cityscapes depth errors are ~0.01, NYUv2 ~0.6).
    """
    parts = []
    seg = [metrics[k] for k in ("mIoU", "pixel_acc") if k in metrics]
    if seg:
        parts.append(sum(seg) / len(seg))
    depth = []
    for k in ("abs_err", "rel_err"):
        if k in metrics:
            ref = reference.get(k, float("nan"))
            ref = ref if math.isfinite(ref) and ref > 0 else 1.0
            depth.append(metrics[k] / ref)
    if depth:
        parts.append(-sum(depth) / len(depth))
    score = sum(parts)
    return score if math.isfinite(score) else float("-inf")


# --------------------------------------------------------------------------- #
# training
# --------------------------------------------------------------------------- #
def _batch_to_device(batch: dict, device: torch.device):
    image = batch["image"].to(device, non_blocking=True)
    seg = batch["seg"].to(device, non_blocking=True)
    depth = batch["depth"].to(device, non_blocking=True)
    valid = batch.get("depth_valid")
    valid = (depth > 0) if valid is None else valid.to(device, non_blocking=True)
    return image, seg, depth, valid


def _make_loader(dataset: Dataset, args: argparse.Namespace, device: torch.device, shuffle: bool,
                 generator: torch.Generator) -> DataLoader:
    # Every loader owns a generator: iterating a loader never draws from the global torch RNG.
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=shuffle,
        num_workers=args.workers,
        worker_init_fn=_seed_worker,
        generator=generator,
        pin_memory=device.type == "cuda",
    )


def train(args: argparse.Namespace) -> dict:
    """Run training, validation and the final test as configured by ``args`` (see
    :func:`build_parser`); returns the dict that is also written to ``metrics.json``."""
    finalize_args(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    out_dir = Path(args.output_dir)
    resume_state = load_checkpoint(args.resume) if args.resume else None

    splits = build_datasets(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes, tasks = splits.num_classes, model_tasks(args)
    loader_rng = torch.Generator().manual_seed(args.seed)
    train_loader = _make_loader(splits.train, args, device, True, loader_rng)
    val_loader = (_make_loader(splits.val, args, device, False, torch.Generator().manual_seed(args.seed))
                  if splits.val is not None else None)
    test_loader = _make_loader(splits.test, args, device, False, torch.Generator().manual_seed(args.seed))

    model = build_model(args, num_classes).to(device)
    weighting = build_weighting_for(args, model).to(device)
    recipe = build_recipe(args, model, weighting, device, num_classes, tasks)
    optimizer = build_optimizer(args, list(model.parameters()) + list(weighting.parameters()))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)
    n_params = sum(p.numel() for p in model.parameters())
    names = recipe.names

    history: List[dict] = []
    step_losses: List[float] = []
    step, start_epoch = 0, 1
    best = {"epoch": None, "score": None}
    val_reference: Optional[Dict[str, float]] = None
    before: Optional[dict] = None
    train_time_before = 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        weighting.load_state_dict(resume_state["weighting"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        history = list(resume_state["history"])
        step_losses = list(resume_state["step_losses"])
        step, start_epoch = int(resume_state["step"]), int(resume_state["epoch"]) + 1
        best = dict(resume_state["best"])
        val_reference = resume_state.get("val_reference")
        before = resume_state.get("before_training")
        train_time_before = float(resume_state.get("train_time_s", 0.0))
        restore_rng_state(resume_state["rng"], loader_rng)
        log.info("resumed %s at epoch %d (step %d)", args.resume, start_epoch - 1, step)
        del resume_state

    log.info(
        "%s, %d classes, %s parameters | dataset %s at %s | train %s | val %s | test %s | device %s | "
        "weighting %s | lambda %g | loss impl %s | xtc_ext built with torch %s",
        model_name(args), num_classes, f"{n_params:,}", args.dataset, args.data_root, splits.describe["train"],
        splits.describe["val"], splits.describe["test"], device,
        "n/a (single task)" if args.model == "stnet" else args.weighting, args.lam, args.loss_impl,
        xtc_ext.build_info["torch_version"],
    )

    if args.dataset == "frames" and before is None:
        # No test split exists for the frames layout: show the untrained model on the same frames.
        before = recipe.evaluate(test_loader)

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    tb = _TensorBoard(args.tensorboard, out_dir / "tb", purge_step=step + 1 if step else None)
    if history:
        write_logs(out_dir, history)
    start = time.perf_counter()

    def checkpoint_state(epoch: int) -> dict:
        """Everything a resume needs, as plain tensors and values."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "weighting": weighting.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng_state(loader_rng),
            "epoch": epoch,
            "step": step,
            "args": args_to_dict(args),
            "num_classes": num_classes,
            "tasks": list(tasks),
            "history": history,
            "step_losses": step_losses,
            "best": best,
            "val_reference": val_reference,
            "before_training": before,
            "train_time_s": train_time_before + time.perf_counter() - start,
            "xtc_ext_version": xtc_ext.__version__ if hasattr(xtc_ext, "__version__") else None,
        }

    stop = bool(args.max_steps and step >= args.max_steps)
    epochs = tqdm(range(start_epoch, args.epochs + 1), desc="epochs", disable=not args.progress or stop,
                  dynamic_ncols=True, initial=start_epoch - 1, total=args.epochs)
    for epoch in epochs if not stop else ():
        epoch_start = time.perf_counter()
        model.train()
        weighting.train()
        lr = optimizer.param_groups[0]["lr"]
        values_per_step = []  # per-step loss values, kept on the device: one host sync per epoch
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not args.progress):
            optimizer.zero_grad(set_to_none=True)  # before the weighting: GradNorm writes its gradient there
            total, values = recipe.step(batch)
            total.backward()
            optimizer.step()
            values_per_step.append(values.float())
            step += 1
            if args.max_steps and step >= args.max_steps:
                stop = True
                break
        values = torch.stack(values_per_step).double().cpu()
        mean = values.mean(dim=0)
        first_step = step - len(values_per_step)
        step_losses.extend(values[:, 0].tolist())
        groups_mean = mean[recipe.groups]
        weighting.epoch_end(groups_mean.float().to(device))
        scheduler.step()
        record: Dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
        record.update({name: float(v) for name, v in zip(names, mean.tolist())})
        record["task_weights"] = [float(w) for w in weighting.weights().tolist()]
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"non-finite training loss at epoch {epoch}: {record}")

        last_epoch = epoch == args.epochs or stop
        improved = False
        if val_loader is not None and (epoch % args.eval_every == 0 or last_epoch):
            val = recipe.evaluate(val_loader)
            if val_reference is None:
                val_reference = recipe.score_reference(val)
            score = recipe.score(val, val_reference) if args.select_by == "score" else -val["loss"]
            record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float) and k != "num_samples"})
            record["val_score"] = score
            improved = best["score"] is None or score > best["score"]
            if improved:
                best = {"epoch": epoch, "score": score}
            record["best"] = improved
        record["epoch_time_s"] = time.perf_counter() - epoch_start
        record["elapsed_s"] = train_time_before + time.perf_counter() - start
        history.append(record)
        write_logs(out_dir, history)
        tb.epoch(record, values[:, 0].tolist(), first_step)
        log.info("epoch %3d | %s | w %s%s", epoch,
                 " | ".join(f"{n} {record[n]:.4f}" for n in names),
                 " ".join(f"{w:.3f}" for w in record["task_weights"]),
                 (f" | val score {record['val_score']:.4f}" + (" (best)" if improved else "")) if "val_score" in record else "")
        if epoch % args.checkpoint_every == 0 or last_epoch or improved:
            save_checkpoint(last_path, checkpoint_state(epoch))
            if improved:
                _copy_atomic(last_path, best_path)
        if stop:
            break
    tb.close()
    train_time = train_time_before + time.perf_counter() - start

    # ---- the one test, with best.pt (or the last epoch when nothing was validated) ----
    if best["epoch"] is not None and best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
        tested, selection = "best.pt", f"best validation {args.select_by} (epoch {best['epoch']})"
    else:
        tested, selection = "last.pt", "none: last epoch (no validation set)"
    test = recipe.evaluate(test_loader, progress=args.progress, desc="test")
    figures = recipe.figures(splits.test, range(min(args.num_figures, len(splits.test))), out_dir / "figures",
                             f"{model_name(args)}, {args.dataset} test" if args.dataset != "frames" else model_name(args))

    result: Dict[str, Any] = {
        "model": model_name(args),
        "variant": args.model,
        "tasks": list(tasks),
        "num_parameters": n_params,
        "num_classes": num_classes,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "depth_unit": depth_unit(args.dataset),
        "splits": splits.describe,
        "selection": {"criterion": args.select_by if splits.val is not None else "none", "best_epoch": best["epoch"],
                      "best_score": best["score"], "tested_checkpoint": tested, "description": selection},
        "test": test,
    }
    if before is not None:
        result["before_training"] = before
    if args.baseline:
        if args.model == "mtcp":
            baseline, sources = mtcp_train.load_mtcp_baselines(args.baseline)
            dm, keys = mtcp_train.mtcp_delta_m(test, baseline, tasks)
        else:
            baseline, sources = load_baselines(args.baseline)
            dm, keys = model_delta_m(test, baseline)
        result.update({"delta_m": dm, "delta_m_keys": keys, "baseline": baseline, "baseline_files": sources})
    result.update({
        "epochs_trained": history[-1]["epoch"] if history else 0,
        "steps": step,
        "first_epoch_loss": history[0]["loss"] if history else None,
        "last_epoch_loss": history[-1]["loss"] if history else None,
        "loss_history": [r["loss"] for r in history],
        "step_losses": step_losses,
        "train_time_s": train_time,
        "figures": [str(p.relative_to(out_dir)) for p in figures],
        "device": str(device),
        "torch_version": torch.__version__,
        "args": args_to_dict(args),
    })
    _write_json(out_dir / "metrics.json", result)
    table = format_metrics_table(test, before=before, dataset=args.dataset, extra=recipe.table_extra(test))
    lines = [
        f"# {model_name(args)} on {args.dataset}",
        "",
        f"Test: {splits.describe['test']}. Checkpoint: {tested} ({selection}). "
        f"Parameters: {n_params:,}. Depth unit: {depth_unit(args.dataset)}.",
        "",
        table,
    ]
    if "delta_m" in result:
        formula = "MT-CP §4 / Vandenhende Delta_MTL" if args.model == "mtcp" else "paper Eq. 17"
        lines += ["", f"Delta_m ({formula}) over {', '.join(result['delta_m_keys'])} against "
                      f"{', '.join(result['baseline_files'])}: **{result['delta_m']:+.2f} %**"]
    _write_text(out_dir / "metrics.md", "\n".join(lines) + "\n")
    print(f"\nTest ({splits.describe['test']}), {tested}, direct predictions:")
    print(table)
    if "delta_m" in result:
        print(f"delta_m vs baseline: {result['delta_m']:+.2f} %")
    if history:
        print(f"training loss {history[0]['loss']:.4f} (epoch {history[0]['epoch']}) -> {history[-1]['loss']:.4f} "
              f"(epoch {history[-1]['epoch']}), {train_time:.0f} s; outputs in {out_dir}/")
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Entry point of ``python -m xtc_ext.train``."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    with logging_redirect_tqdm():
        return train(args)


if __name__ == "__main__":
    main()
