"""Study files: YAML loading, validation and the expansion into runs (docs/studies.md).

A study is a mapping with these keys (only ``axes`` or ``runs`` is required)::

    name: demo                 # default: the file's stem
    output_dir: runs/study_demo  # default: runs/study_NAME; the study command's --output-dir overrides it
    base: {dataset: frames}    # training options of every run; ``config: NAME`` starts from a shipped config
    axes:                      # the cross product of the axes, in this order
      weighting: [equal, uncertainty]           # an option name and its values
      model:                                    # or labels -> options
        xtasc18: {model: xtasc, encoder_depth: 18}
        mtnet: {model: mtnet}
    runs:                      # rows added after the cross product (or the only rows): label -> options
      stnet_semseg: {model: stnet, task: semseg}
    seeds: [0, 1, 2]           # every row runs once per seed (--seed)
    processes: 1               # processes per run: > 1 starts each run with torchrun --nproc-per-node
    baseline: [stnet_semseg]   # Δm baseline: row labels or metrics files (default: the single-task rows)
    keep_checkpoints: true     # false: delete the .pt files of a run once its metrics.json is written

Option keys are those of ``python -m xtc_ext.train --help`` without the dashes, as in a ``--config`` file
(:func:`xtc_ext.cli.config_tokens`); ``config`` names a config file or a shipped config. Each run is checked by
the training program's own parser when the study is loaded, so a typo fails before anything runs, with a
message naming the file, the row and the key.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from xtc_ext.cli import (
    build_parser,
    check_command_line,
    config_path,
    config_tokens,
    finalize_args,
    shipped_file,
    shipped_names,
)
from xtc_ext.engine import UsageError

__all__ = ["STUDY_DIR", "Row", "Run", "Study", "list_studies", "load_study", "label_of"]

STUDY_DIR = Path(__file__).resolve().parents[1] / "configs" / "studies"
"""The shipped studies, usable by name: ``python -m xtc_ext.study demo``."""

_KEYS = ("name", "description", "output_dir", "base", "axes", "runs", "seeds", "processes", "baseline",
         "keep_checkpoints")
_RESERVED = {"seed": "the study's seeds", "output_dir": "the study's folder", "resume": "the study's resume"}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Row:
    """One configuration of a study (one row of its table): its label and its training options.

    Attributes:
        label: the row's name in tables and run folders (``xtasc18_equal``; letters, digits, ``._+-``).
        options: option name -> value, the base options updated by the row's own (``config`` included).
    """

    label: str
    options: Dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One training run: a row and a seed.

    Attributes:
        row: its :class:`Row`.
        seed: its ``--seed``.
        folder: its output folder (``STUDY_FOLDER/LABEL_sSEED``).
        argv: the training program's arguments (without ``--resume``), ``--seed`` and ``--output-dir`` included.
        dataset: the ``--dataset`` it trains on (after its ``--config``).
    """

    row: Row
    seed: int
    folder: Path
    argv: Tuple[str, ...]
    dataset: str

    @property
    def name(self) -> str:
        """The folder's name, ``LABEL_sSEED``: stable and readable, the run's name in progress lines."""
        return self.folder.name


@dataclass(frozen=True)
class Study:
    """A loaded, checked study.

    Attributes:
        name: its name. path: its file. output_dir: the study folder.
        rows: the configurations, in table order. seeds: the seeds of every row.
        runs: rows x seeds, row-major. processes: processes per run (torchrun when > 1).
        baseline: row labels or metrics files of the Δm baseline; empty: the single-task rows.
        keep_checkpoints: False deletes the ``*.pt`` files of a finished run.
    """

    name: str
    path: Path
    output_dir: Path
    rows: Tuple[Row, ...]
    seeds: Tuple[int, ...]
    runs: Tuple[Run, ...] = field(repr=False)
    processes: int = 1
    baseline: Tuple[str, ...] = ()
    keep_checkpoints: bool = True


def list_studies() -> List[str]:
    """Names of the studies shipped in ``xtc_ext/configs/studies/``."""
    return shipped_names(STUDY_DIR)


def label_of(value: Any) -> str:
    """The label of an axis value: the value as written (``0.1``, ``equal``, ``true``); lists joined by
    ``x`` (``[64, 96]`` -> ``64x96``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "x".join(label_of(v) for v in value)
    return str(value)


def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"study {where}: {message}")


def _options(value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping of option names to values, got {value!r}")
    out = {}
    for key, v in value.items():
        dest = str(key).replace("-", "_")
        if dest in _RESERVED:
            raise _fail(where, f"key {key!r} is set by the study ({_RESERVED[dest]}), not by a row")
        out[dest] = v
    return out


def _labelled(items: Mapping[str, Any], where: str) -> List[Tuple[str, Dict[str, Any]]]:
    return [(str(label), _options(opts, f"{where}, {label!r}")) for label, opts in items.items()]


def _axis(name: str, values: Any, where: str) -> List[Tuple[str, Dict[str, Any]]]:
    """One axis as ``[(label, options)]``: a list of values of the option ``name``, or labels -> options."""
    if isinstance(values, dict):
        out = _labelled(values, f"{where}, axis {name!r}")
    elif isinstance(values, list):
        dest = name.replace("-", "_")
        if dest in _RESERVED:
            raise _fail(where, f"axis {name!r} is set by the study ({_RESERVED[dest]}); use 'seeds' for seeds")
        out = [(label_of(v), {dest: v}) for v in values]
    else:
        raise _fail(where, f"axis {name!r}: expected a list of values or a mapping of labels to options, got {values!r}")
    if not out:
        raise _fail(where, f"axis {name!r} has no values")
    return out


def _rows(raw: Mapping[str, Any], where: str) -> List[Row]:
    base = _options(raw.get("base") or {}, f"{where}, base")
    axes = raw.get("axes") or {}
    runs = raw.get("runs") or {}
    if not isinstance(axes, dict) or not isinstance(runs, dict):
        raise _fail(where, "'axes' and 'runs' must be mappings (axis name -> values; label -> options)")
    if not axes and not runs:
        raise _fail(where, "no runs: give 'axes' (a cross product) or 'runs' (labelled rows), or both")
    rows: List[Row] = []
    if axes:
        for combo in itertools.product(*(_axis(str(n), v, where) for n, v in axes.items())):
            options = dict(base)
            for _, opts in combo:
                options.update(opts)
            rows.append(Row("_".join(label for label, _ in combo), options))
    rows += [Row(label, {**base, **opts}) for label, opts in _labelled(runs, f"{where}, runs")]
    seen = set()
    for row in rows:
        if not _LABEL.match(row.label):
            raise _fail(where, f"row label {row.label!r}: use letters, digits and . _ + - (it names run folders)")
        if row.label in seen:
            raise _fail(where, f"two rows are labelled {row.label!r}: labels name the run folders, make them unique")
        seen.add(row.label)
    return rows


def _int_list(raw: Any, key: str, where: str) -> Tuple[int, ...]:
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _fail(where, f"{key!r}: expected an integer or a list of integers, got {raw!r}")
    if len(set(values)) != len(values):
        raise _fail(where, f"{key!r}: repeated values in {raw!r}")
    return tuple(values)


def _row_argv(row: Row, where: str, parser) -> List[str]:
    options = dict(row.options)
    config = options.pop("config", None)
    argv = ["--config", str(config_path(str(config)))] if config is not None else []
    return argv + config_tokens(options, f"{where}, row {row.label!r}", parser)


def _checked(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of a run as the training program checks them (:func:`xtc_ext.cli.finalize_args`: choices,
    ranges, options of another model or weighting), without the data: a missing ``--data-root`` is left to the
    run, which needs it (a dry run or a report of a paper study works without one)."""
    args = check_command_line(argv)
    if args.data_root is None:
        args.data_root = "DATA"
    finalize_args(copy.copy(args))
    return args


def load_study(name_or_path: str, extra: Sequence[str] = (), output_dir: Optional[str] = None) -> Study:
    """Read and check a study file; expand it into runs.

    Args:
        name_or_path: a study file or the name of a shipped one (``xtc_ext/configs/studies/NAME.yaml``).
        extra: training options given to every run after the row's own (``["--data-root", "DATA"]``; they
            override the study's values).
        output_dir: the study folder (default: the file's ``output_dir``, else ``runs/study_NAME``).

    Raises:
        UsageError: a missing file, invalid YAML, an unknown top-level key, a malformed axis, row or seed list,
            duplicate row labels, ``seed``/``output_dir``/``resume`` set by a row or in ``extra``, a baseline
            label that is no row, or a run whose options the training program refuses (the message names the
            file, the row and the key or option).
    """
    path = shipped_file(name_or_path, STUDY_DIR, "study", "studies")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise _fail(where, f"invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise _fail(where, "the top level must be a mapping (keys: " + ", ".join(_KEYS) + ")")
    unknown = [k for k in raw if k not in _KEYS]
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (keys: {', '.join(_KEYS)})")
    for option in (o for o in extra if o.startswith("--")):
        dest = option[2:].split("=")[0].replace("-", "_")
        if dest in _RESERVED or dest == "config":
            raise _fail(where, f"{option} cannot be given to a study's runs "
                        f"({_RESERVED.get(dest, 'name the config in the study base')})")
    name = str(raw.get("name") or path.stem)
    folder = Path(output_dir or raw.get("output_dir") or f"runs/study_{name}")
    seeds = _int_list(raw.get("seeds", [0]), "seeds", where)
    processes = _int_list(raw.get("processes", 1), "processes", where)
    if len(processes) != 1 or processes[0] < 1:
        raise _fail(where, f"'processes': expected one integer >= 1, got {raw.get('processes')!r}")
    rows = _rows(raw, where)
    baseline = raw.get("baseline") or []
    baseline = baseline if isinstance(baseline, list) else [baseline]
    labels = {r.label for r in rows}
    for entry in baseline:
        if str(entry) not in labels and not str(entry).endswith(".json"):
            raise _fail(where, f"baseline {entry!r} is neither a row label ({', '.join(sorted(labels))}) nor a .json file")
    keep = raw.get("keep_checkpoints", True)
    if not isinstance(keep, bool):
        raise _fail(where, f"'keep_checkpoints': expected true or false, got {keep!r}")
    parser = build_parser()
    runs = []
    for row in rows:
        base_argv = _row_argv(row, where, parser) + list(extra)
        for seed in seeds:
            run_dir = folder / f"{row.label}_s{seed}"
            argv = tuple(base_argv + ["--seed", str(seed), "--output-dir", str(run_dir)])
            try:
                args = _checked(argv)
            except UsageError as e:
                raise _fail(where, f"row {row.label!r}: {e.message}") from None
            runs.append(Run(row, seed, run_dir, argv, args.dataset))
    return Study(name, path, folder, tuple(rows), seeds, tuple(runs), processes[0], tuple(map(str, baseline)), keep)
