"""The command line of ``python -m xtc_ext.train``: options, YAML configs, resume defaults, checks.

Options come from three places: the common ones below (data, optimisation, outputs), the datasets of the
registry (:mod:`xtc_ext.data`: ``--dataset`` choices and their defaults) and the recipes (:mod:`xtc_ext.recipes`:
each adds its own option group). Precedence: options on the command line > ``--config`` file > the arguments
stored in the ``--resume`` checkpoint > built-in defaults.

A YAML config is a mapping of option names (dashes or underscores, without the leading ``--``) to values:
numbers, strings, lists (``size: [96, 128]``) and booleans for switches (``augment: false``). It is turned into
command-line tokens and parsed by the same argparse parser, so types, choices and counts are checked exactly
as on the command line, and every error names the file and the key.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from xtc_ext.data import DATASETS, DEPTH_SCALINGS, DatasetSpec, get_dataset
from xtc_ext.engine import LR_SCHEDULES, OPTIMIZERS, RUN_ARGS_FILE, CheckpointError, TrainConfig, load_checkpoint
from xtc_ext.engine.config import NONFINITE_POLICIES, SELECTION_CRITERIA
from xtc_ext.engine.errors import UsageError, exit_with_error
from xtc_ext.engine.runtime import AMP_CHOICES, SWITCH_CHOICES, resolve_device
from xtc_ext.losses import LOSS_IMPLS
from xtc_ext.recipes import RECIPES, recipe_classes
from xtc_ext.recipes.regularization import add_contrastive_arguments
from xtc_ext.weighting import WEIGHTINGS, weighting_classes

__all__ = ["PROG", "CONFIG_DIR", "build_parser", "shipped_names", "shipped_file", "list_configs", "config_path",
           "config_tokens", "load_config", "parse_args", "check_command_line", "finalize_args", "engine_config", "default_output_dir",
           "recipe_options", "HelpFormatter", "RaisingParser", "run_program"]

log = logging.getLogger("xtc_ext.train")
T = TypeVar("T")


def run_program(prog: str, body: Callable[[], T],
                runtime_errors: Tuple[Type[BaseException], ...] = (OSError,)) -> T:
    """Run the body of the program ``prog`` (``python -m xtc_ext.evaluate``, ``.predict``, ``.export``): INFO logs
    to stderr unless logging is configured already; a bad argument or checkpoint (:class:`UsageError`,
    :class:`CheckpointError`) ends it with one line ``PROG: error: ...`` and exit code 2, one of
    ``runtime_errors`` with one line and exit code 1 (docs/training.md, "exit codes")."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return body()
    except (UsageError, CheckpointError) as e:
        exit_with_error(prog, e, 2)
    except runtime_errors as e:
        exit_with_error(prog, e, 1)

PROG = "python -m xtc_ext.train"
"""The program name in ``--help`` and in the ``PROG: error: ...`` lines."""

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The shipped YAML configs (one per row of the papers' tables), usable as ``--config NAME``."""

_NOT_CONFIGURABLE = {"help", "config", "resume"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with one default per option: argparse's ``(default: X)`` is added only where the default is
    not None and the help text does not state it already as ``(default ...)`` (a default that depends on the
    dataset or the method is described in the help text instead)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=tuple(DATASETS), default="frames",
                   help="; ".join(f"'{name}': {spec.summary}" for name, spec in DATASETS.items()))
    g.add_argument("--data-root", default=None,
                   help="dataset folder (default for 'frames': the ten real NYUv2 frames shipped in the package; "
                   "required for the others)")
    classes = sorted({c for spec in DATASETS.values() for c in spec.classes})
    g.add_argument("--classes", type=int, choices=classes, default=None,
                   help="label set (default: the dataset's first): "
                   + "; ".join(f"{n}: {' or '.join(map(str, s.classes))}" for n, s in DATASETS.items()))
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="resize to H W, multiples of 32 (default per dataset: "
                   + ", ".join(f"{n} {s.default_size[0]} {s.default_size[1]}"
                               for n, s in DATASETS.items() if s.default_size)
                   + "; the other datasets keep their stored size)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random scale crop (1, 1.2, 1.5) and horizontal flip of the training samples")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet-normalise the input images (XTasC-Net paper §V-A; the authors' NYUv2 code does not)")
    g.add_argument("--depth-scaling", choices=("auto",) + tuple(DEPTH_SCALINGS), default="auto",
                   help="depth rescaling under the scale crop: 'auto' = the dataset's own (NYUv2 metres: divide "
                   "by the scale; Cityscapes disparity: none, as the authors)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of the TRAIN split held out for validation and checkpoint selection, in [0, 1) "
                   "(default 0.1; 0 for 'frames'); 0 disables validation and selection (the test uses the last epoch)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (independent of --seed)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _add_method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and loss")
    g.add_argument("--model", choices=tuple(RECIPES), default="xtasc",
                   help="; ".join(f"'{m}': {cls.models[m]}" for m, cls in RECIPES.items())
                   + " (each family's options are in its own group below)")
    g.add_argument("--weighting", choices=sorted(WEIGHTINGS), default=None,
                   help="task weighting of the task losses (XTasC-Net paper Eq. 16): the XTasC-Net family takes "
                   "equal, uncertainty, dwa, gradnorm (ignored by stnet); mtcp takes the MT-CP Table 4 loss "
                   "schemes equal (EW), lps-log (log smoothing), lps-prio (prioritization without the log), lps "
                   "(full LPS), and uncertainty, dwa (default: uncertainty for the XTasC-Net family, lps for mtcp)")
    g.add_argument("--loss-impl", choices=sorted(LOSS_IMPLS), default="fused", help="fused xtc_ext ops or the eager references")
    g.add_argument("--nonfinite", choices=NONFINITE_POLICIES, default="stop",
                   help="a non-finite training loss: 'stop' the run at that step (exit code 1, the last checkpoint "
                   "stays the last finite one) or 'skip' that step's update (counted in the log)")


def _add_optimisation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="training epochs (paper: NYUv2 100, Cityscapes 250)")
    g.add_argument("--batch-size", type=int, default=6,
                   help="training batch size, GLOBAL under torchrun (each of N processes loads batch-size / N; paper: "
                   "NYUv2 6, Cityscapes 8)")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam",
                   help="optimizer (XTasC-Net paper: Adam; the MT-CP authors: AdamW lr 5e-5, weight decay 1e-4, "
                   "betas 0.9 0.999, poly schedule)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the optimizer (MT-CP authors: 1e-4 with AdamW)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate (XTasC-Net paper: 1e-4; MT-CP authors: 5e-5)")
    g.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"), default=(0.9, 0.99),
                   help="Adam betas (XTasC-Net authors' multi-task code: 0.9 0.99; their Base ST-Net and the MT-CP "
                   "authors: 0.9 0.999)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step",
                   help="'step': multiply the learning rate by --lr-gamma every --lr-step epochs (XTasC-Net paper); "
                   "'poly': lr * (1 - epoch / epochs) ** 0.9 (the MT-CP authors' schedule)")
    g.add_argument("--lr-step", type=int, default=60, help="step schedule: multiply the learning rate by --lr-gamma "
                   "every this many epochs (paper: NYUv2 60, Cityscapes 80)")
    g.add_argument("--lr-gamma", type=float, default=0.5, help="step schedule factor (paper: 0.5, halving)")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps in all (0: no limit; for smoke tests, a partial last epoch)")

    g = p.add_argument_group("speed: precision, memory format, compilation, processes")
    g.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                   help="autocast of the forward passes: 'auto' = bf16 where the device computes it natively (CUDA "
                   "with bf16, CPUs with AVX-512 BF16 or AMX), none elsewhere; 'bf16'; 'fp16' (CUDA, with a gradient "
                   "scaler whose state is checkpointed); 'none'. "
                   "The fused losses take the low-precision tensors directly and accumulate in float32")
    g.add_argument("--channels-last", choices=SWITCH_CHOICES, default="auto",
                   help="model and images in torch.channels_last: 'auto' = on with CUDA or bf16 autocast, off for "
                   "fp32 on the CPU")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the training model (the fused ops compile without graph breaks; the first "
                   "steps are slower while it compiles)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="under torchrun on CUDA: synchronise the BatchNorm statistics over the processes (SyncBatchNorm); "
                   "refused on the CPU (exit code 2)")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("validation, test and outputs")
    g.add_argument("--eval-every", type=int, default=1, help="validate every this many epochs (and after the last one)")
    g.add_argument("--select-by", choices=SELECTION_CRITERIA, default="score",
                   help="best.pt criterion: 'score' = the method's validation score, higher is better (XTasC-Net "
                   "family: mean(mIoU, pixel_acc) - mean(abs_err/abs_err0, rel_err/rel_err0) with the errors of the first "
                   "validation; mtcp: the mean over tasks of the improvement of one metric per task against the first "
                   "validation); 'loss' = sum of the unweighted task losses on validation, lower is better")
    g.add_argument("--baseline", nargs="+", default=None, metavar="METRICS_JSON",
                   help="metrics.json files of baseline runs (e.g. the single-task runs): the test metrics then "
                   "include delta_m (percent) against their merged metrics")
    g.add_argument("--num-figures", type=int, default=3, help="PNG figures of this many test samples")
    g.add_argument("--checkpoint-every", type=int, default=1, help="write last.pt every this many epochs (and after the last)")
    g.add_argument("--output-dir", default=None,
                   help="where checkpoints, logs, metrics and figures go (default: runs/DATASET_MODEL, e.g. "
                   "runs/frames_xtasc, runs/nyudmt_mtcp; --model stnet adds its task: runs/nyuv2_stnet_semseg)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard scalars to OUTPUT_DIR/tb")
    g.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--seed", type=int, default=0, help="seed of Python, NumPy, torch, model init, data order and augmentation")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bars when stderr is a terminal (a log written to a file or a pipe gets one line "
                   "per epoch, no bar)")


def build_parser(parser_class: type = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser of ``python -m xtc_ext.train`` (every option has a help text), an instance of ``parser_class``."""
    p = parser_class(
        prog=PROG,
        description="Train a multi-task dense-prediction model (XTasC-Net and its baselines, MT-CP), select the "
        "checkpoint on a held-out part of the training split and test it once on the test split.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", default=None,
                   help="YAML file, or the name of one in xtc_ext/configs/ (e.g. nyuv2_xtasc); its keys are option names "
                   "(dashes or underscores) and set the defaults, options given on the command line override them")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its last.pt (or best.pt): restores model, optimizer, scheduler, weighting, "
                   "RNG states and history; the stored arguments are the defaults, options given now override them")
    _add_data_options(p)
    _add_method_options(p)
    for cls in recipe_classes():
        cls.add_arguments(p)
    for weighting in weighting_classes():
        weighting.add_arguments(p)
    add_contrastive_arguments(p)
    _add_optimisation_options(p)
    _add_output_options(p)
    return p


def recipe_options(parser: argparse.ArgumentParser) -> Dict[str, Tuple[str, Any, Tuple[str, ...]]]:
    """dest -> (option string, default, the ``--model`` values it applies to) of every recipe-specific option."""
    common = build_parser_without_recipes()
    common_dests = {a.dest for a in common._actions}
    out = {}
    for cls in recipe_classes():
        probe = argparse.ArgumentParser(add_help=False)
        cls.add_arguments(probe)
        for a in probe._actions:
            if a.dest not in common_dests:
                out[a.dest] = (a.option_strings[0], a.default, tuple(cls.models))
    return out


def build_parser_without_recipes() -> argparse.ArgumentParser:
    """The common options only (used to tell which options belong to a recipe)."""
    p = argparse.ArgumentParser(add_help=False)
    for add in (_add_data_options, _add_method_options, _add_optimisation_options, _add_output_options):
        add(p)
    return p


# --------------------------------------------------------------------------- configs
def shipped_names(folder: Path) -> List[str]:
    """Names of the YAML files shipped in ``folder`` (``xtc_ext/configs/``, ``xtc_ext/configs/studies/``)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def shipped_file(name_or_path: str, folder: Path, kind: str, plural: str) -> Path:
    """An existing file path, or the NAME of ``folder/NAME.yaml`` (a shipped ``kind``: config, study).

    Raises:
        UsageError: neither exists (the message lists the shipped ``plural``).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    named = folder / f"{name_or_path}.yaml"
    shipped = f"shipped {plural}: {', '.join(shipped_names(folder))}"
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        raise UsageError(f"{kind} file not found: {p} ({shipped})")
    if not named.is_file():
        raise UsageError(f"unknown {kind} {name_or_path!r} (no file {named}); {shipped}")
    return named


def list_configs() -> List[str]:
    """Names of the YAML configs shipped in ``xtc_ext/configs/`` (usable as ``--config NAME``)."""
    return shipped_names(CONFIG_DIR)


def config_path(name_or_path: str) -> Path:
    """Resolve ``--config``: an existing file path, or a NAME of ``xtc_ext/configs/NAME.yaml``.

    Raises:
        UsageError: neither exists (the message lists the shipped configs).
    """
    return shipped_file(name_or_path, CONFIG_DIR, "config", "configs")


class RaisingParser(argparse.ArgumentParser):
    """An argparse parser whose errors raise :class:`UsageError` (the message) instead of exiting: configs and
    options given from Python (:func:`xtc_ext.train.prepare`)."""

    def error(self, message: str):  # argparse calls this for every parse error
        raise UsageError(message)


def config_tokens(raw: Mapping[str, Any], where: str, parser: Optional[argparse.ArgumentParser] = None) -> List[str]:
    """The command-line tokens of a mapping of option names (dashes or underscores, no leading ``--``) to values,
    as in a YAML config: ``{"size": [96, 128], "augment": False}`` -> ``["--size", "96", "128", "--no-augment"]``.
    ``parser``: an already built :func:`build_parser`, to look the keys up in.

    Raises:
        UsageError: an unknown key (``config``, ``resume`` and ``help`` included) or a value of the wrong kind
            (a switch needs true or false; None and mappings are refused); the message names ``where`` and the key.
    """
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: List[str] = []
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest in _NOT_CONFIGURABLE or dest not in actions:
            raise UsageError(f"{where}: unknown key {key!r} (keys are the options of "
                             f"`python -m xtc_ext.train --help` without the dashes)")
        action = actions[dest]
        opt = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise UsageError(f"{where}: key {key!r}: expected true or false, got {value!r}")
            tokens.append(opt if value else "--no-" + opt[2:])
        elif isinstance(value, (list, tuple)):
            tokens += [opt] + [str(v) for v in value]
        elif value is None or isinstance(value, (bool, dict)):
            raise UsageError(f"{where}: key {key!r}: expected a number or a string, got {value!r}")
        else:
            tokens += [opt, str(value)]
    return tokens


def load_config(name_or_path: str, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    """Read a YAML config into ``{option dest: value}``, checked by the options of :func:`build_parser`
    (``parser``: an already built one, to look the keys up in).

    Raises:
        UsageError: missing file, invalid YAML, a top level that is not a mapping, an unknown key, or a
            value of the wrong type, count or outside the choices (the message names the file and the key).
    """
    parser = parser or build_parser()
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"config {path}: invalid YAML: {e}") from e
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UsageError(f"config {path}: the top level must be a mapping of option names to values")
    tokens = config_tokens(raw, f"config {path}", parser)
    try:
        parsed = build_parser(RaisingParser).parse_args(tokens)
    except UsageError as e:
        raise UsageError(f"config {path}: {e}") from e
    return {str(k).replace("-", "_"): getattr(parsed, str(k).replace("-", "_")) for k in raw}


def parse_args(argv: Optional[Sequence[str]] = None, parser_class: type = argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line (precedence: explicit options > ``--config`` > ``--resume`` arguments > defaults).

    Args:
        argv: the tokens (default: ``sys.argv[1:]``).
        parser_class: the argparse parser class (one whose ``error`` raises instead of exiting, for use from Python).

    Raises:
        SystemExit: parse errors (argparse: usage and one ``error:`` line, exit code 2).
        UsageError: config errors, an unreadable ``--resume`` checkpoint (exit code 2, one line naming the file).
    """
    parser = build_parser(parser_class)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    defaults: Dict[str, Any] = {}
    fresh = False
    if known.resume:
        stored, fresh = _resume_args(known.resume, parser)
        dests = {a.dest for a in parser._actions}
        defaults.update({k: v for k, v in stored.items() if k in dests and k not in _NOT_CONFIGURABLE})
    if known.config:
        defaults.update(load_config(known.config, parser))
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if fresh:
        args.resume = None
    return args


def check_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """:func:`parse_args` for a program that composes training command lines (``python -m xtc_ext.study``): the
    arguments before :func:`finalize_args` (``--config`` applied), without printing a usage or exiting.

    Raises:
        UsageError: a parse error (argparse's message: the option and what is wrong), an unreadable
            ``--config`` or ``--resume``.
    """
    return parse_args(argv, parser_class=RaisingParser)


def _resume_args(path: str, parser: argparse.ArgumentParser) -> Tuple[Dict[str, Any], bool]:
    """The arguments stored in the ``--resume`` checkpoint, and False; or, when the checkpoint does not exist but
    its folder holds the ``args.json`` of a run killed before its first checkpoint, those arguments and True (the
    run starts again from scratch). Raises :class:`UsageError` (exit code 2, one line naming the file) otherwise."""
    try:
        return load_checkpoint(path)["args"], False
    except CheckpointError as e:
        run_args = Path(path).parent / RUN_ARGS_FILE
        if not Path(path).exists() and run_args.is_file():
            log.warning("--resume: %s does not exist yet; restarting the run of %s from scratch", path, run_args)
            try:
                return json.loads(run_args.read_text()), True
            except (OSError, ValueError) as bad:
                raise UsageError(f"--resume: cannot read {run_args}: {bad}") from None
        raise UsageError(f"--resume: {e}") from None


# --------------------------------------------------------------------------- checks and defaults
def _finalize_data(args: argparse.Namespace, spec: DatasetSpec) -> None:
    if args.data_root is None:
        if spec.default_root is None:
            raise UsageError(f"--data-root is required for --dataset {args.dataset} (its data are not shipped): "
                             f"docs/data.md, section '{args.dataset}', says where to download them and how to check them")
        args.data_root = spec.default_root
    args.data_root = str(args.data_root)
    if args.classes is None:
        args.classes = spec.classes[0]
    if args.classes not in spec.classes:
        raise UsageError(f"--classes {args.classes} is not available for --dataset {args.dataset} "
                         f"(choose {' or '.join(map(str, spec.classes))})")
    if args.size is None:
        args.size = spec.default_size
    elif spec.default_size is None:
        raise UsageError(f"--size does not apply to --dataset {args.dataset} (the files keep their stored size)")
    args.size = None if args.size is None else [int(s) for s in args.size]
    if args.val_fraction is None:
        args.val_fraction = spec.val_fraction


def default_output_dir(args: argparse.Namespace) -> str:
    """``runs/DATASET_MODEL`` (``runs/DATASET_stnet_semseg`` or ``_depth`` for a Base ST-Net): the default
    ``--output-dir``, named as the shipped configs name theirs (``--config nyuv2_xtasc`` writes ``runs/nyuv2_xtasc``)."""
    name = f"{args.dataset}_{args.model}"
    task = getattr(args, "task", None)
    if args.model == "stnet" and task:
        name += "_" + task
    return f"runs/{name}"


def _check_recipe_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for dest, (option, default, models) in recipe_options(parser).items():
        if args.model not in models and getattr(args, dest) != default:
            raise UsageError(f"{option} applies to --model {', '.join(models)} only (got --model {args.model})")


def _check_weighting_options(args: argparse.Namespace) -> None:
    """Every weighting's own checks (:meth:`xtc_ext.weighting.Weighting.check_args`), and no option of a weighting
    other than ``--weighting`` given."""
    chosen = WEIGHTINGS.lookup(args.weighting)
    for cls in weighting_classes():
        try:
            cls.check_args(args)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if cls is chosen:
            continue
        probe = argparse.ArgumentParser(add_help=False)
        cls.add_arguments(probe)
        for a in probe._actions:
            if a.option_strings and getattr(args, a.dest) != a.default:
                names = ", ".join(n for n, c in WEIGHTINGS.items() if c is cls)
                raise UsageError(f"{a.option_strings[0]} applies to --weighting {names} only "
                                 f"(got --weighting {args.weighting})")


def _check_sync_bn(args: argparse.Namespace) -> None:
    """Refuse ``--sync-bn`` off CUDA before anything is built: torch's SyncBatchNorm works only with GPU modules
    (under torchrun on the CPU it failed at the first training step with torch's traceback). Exit code 2 and
    one line, as the other unusable arguments of ``--resume`` (docs/training.md, Failures)."""
    if not args.sync_bn:
        return
    device = resolve_device(args.device)
    if device.type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA devices (torch's SyncBatchNorm works only with GPU modules), "
                         f"but this run's device is {device.type}: drop --sync-bn or pass --no-sync-bn")


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the dataset- and method-dependent defaults in place and check every value.

    Raises:
        UsageError: an invalid value or combination (the message names the option), ``--sync-bn`` on a device
            other than CUDA included.
    """
    _check_sync_bn(args)
    spec = get_dataset(args.dataset)
    _finalize_data(args, spec)
    _check_recipe_options(args, build_parser())
    RECIPES.lookup(args.model).finalize_args(args, spec)
    _check_weighting_options(args)
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
    args.betas = [float(b) for b in args.betas]
    engine_config(args)  # the engine options' checks (xtc_ext.engine.config)
    checks = [
        (0.0 <= args.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {args.val_fraction}"),
        (args.size is None or all(s > 0 and s % 32 == 0 for s in args.size),
         f"--size must be positive multiples of 32, got {args.size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return args


def engine_config(args: argparse.Namespace) -> TrainConfig:
    """The engine's typed configuration (:class:`xtc_ext.engine.TrainConfig`) of the finalised command line:
    each field takes the option of its name; ``arguments`` keeps every option (``args.json``, checkpoints).

    Raises:
        UsageError: an engine option outside its range (named).
    """
    arguments = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()}  # JSON- and weights_only-safe
    return TrainConfig.from_options(vars(args), arguments=arguments)
