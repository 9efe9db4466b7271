"""A study's tables and figure, built from the ``metrics.json`` files of its finished runs.

One table per dataset, rows = the study's rows, columns = the test metrics of the task registry
(:mod:`xtc_ext.tasks`, in registry order) that the runs report, then Δm; a cell is ``mean ± std (n)`` over the
seeds (sample standard deviation; ``mean (1)`` for one run; ``-`` for none). The best mean of each column is in
bold (the metric's direction from the registry; Δm: higher is better).

Δm: against the study's single-task baselines. The baseline metrics are the mean over the seeds of each
baseline row (by default the rows whose runs train one task: ``--model stnet`` or one ``--mtcp-tasks``), merged
over the rows (one row per task, as :func:`xtc_ext.metrics.load_baselines` merges files); they are written to
``baseline_DATASET.json`` in the study folder. Each run's Δm is its recipe's (XTasC-Net paper Eq. 17 over
mIoU, pixel_acc, abs_err, rel_err; MT-CP §4 over one metric per task: :meth:`xtc_ext.recipes.BaseRecipe.delta_m`)
against that file; the cell is the mean ± std of the runs' Δm.

After Δm come the training columns (:data:`TRAINING`: the last epoch's loss, its contrastive term, the median
epoch time), where the runs have them.

Files, per dataset, in the study folder: ``table_DATASET.md``, ``table_DATASET.csv`` (``METRIC_mean``,
``METRIC_std``, ``METRIC_n`` columns) and ``figure_DATASET.png`` (bars with ± std error bars of each task's
main metric and of Δm, one panel each, one bar per row).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xtc_ext.data import get_dataset
from xtc_ext.metrics import load_baselines
from xtc_ext.recipes import get_recipe
from xtc_ext.study.spec import Study
from xtc_ext.tasks import TASKS

__all__ = ["DELTA_M", "TRAINING", "Cell", "RowResult", "Table", "collect", "build_tables", "write_report", "format_cell"]

DELTA_M = "delta_m"
"""The Δm column's key in the CSV (percent); the markdown header says ``Δm (%)``."""

TRAINING = ("train_loss", "contrastive", "epoch_time_s")
"""The training columns after Δm, where the runs have them: the last epoch's mean training loss
(``metrics.json`` ``last_epoch_loss``), its weighted contrastive term (``log.jsonl``, with ``--contrastive``;
the host's own loss is ``train_loss - contrastive``) and the median epoch time in seconds (epochs 2..N of
``log.jsonl``, the first one included only when it is the only one). Not marked best."""


@dataclass
class Cell:
    """The values of one metric over a row's runs (one per seed)."""

    values: List[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of runs behind the cell."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over the runs (NaN for none)."""
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over the runs (NaN for fewer than two)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


@dataclass
class RowResult:
    """One row of a table: its label, the test metrics of its finished runs, their tasks."""

    label: str
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    run_args: List[Dict[str, Any]] = field(default_factory=list)
    tasks: List[Tuple[str, ...]] = field(default_factory=list)
    cells: Dict[str, Cell] = field(default_factory=dict)

    @property
    def single_task(self) -> bool:
        """Every finished run of the row trains one task (a default baseline row)."""
        return bool(self.tasks) and all(len(t) == 1 for t in self.tasks)


@dataclass
class Table:
    """The table of one dataset: rows in study order, metric columns (registry order), notes on Δm."""

    dataset: str
    rows: List[RowResult]
    columns: List[str]
    baseline: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def _metric_directions() -> Dict[str, bool]:
    return {m.name: m.higher_is_better for task in TASKS.values() for m in task.metrics}


def _training(folder: Path, result: Dict[str, Any]) -> Dict[str, float]:
    """The :data:`TRAINING` values of a finished run (those it has)."""
    out = {"train_loss": result.get("last_epoch_loss")}
    log = folder / "log.jsonl"
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if epochs:
        out["contrastive"] = epochs[-1].get("contrastive")
        times = [e["epoch_time_s"] for e in epochs[1:] or epochs if _numeric(e.get("epoch_time_s"))]
        out["epoch_time_s"] = statistics.median(times) if times else None
    return {k: float(v) for k, v in out.items() if _numeric(v)}


def collect(study: Study) -> Dict[str, List[RowResult]]:
    """Dataset -> its rows (study order) with the test metrics of their finished runs (``metrics.json``).

    Raises:
        ValueError: a ``metrics.json`` that is not valid JSON or has no ``test`` entry (the file named).
    """
    rows: Dict[Tuple[str, str], RowResult] = {}
    for run in study.runs:
        row = rows.setdefault((run.dataset, run.row.label), RowResult(run.row.label))
        path = run.folder / "metrics.json"
        if not path.is_file():
            continue
        try:
            result = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(result, dict) or not isinstance(result.get("test"), dict):
            raise ValueError(f"{path}: no 'test' metrics (not a metrics.json of python -m xtc_ext.train)")
        row.metrics.append({**result["test"], **_training(run.folder, result)})
        row.run_args.append(dict(result.get("args") or {}))
        row.tasks.append(tuple(result.get("tasks") or ()))
    out: Dict[str, List[RowResult]] = {}
    for (dataset, _), row in rows.items():
        out.setdefault(dataset, []).append(row)
    return out


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _baseline(rows: Sequence[RowResult], study: Study, dataset: str, folder: Path) -> Tuple[Optional[Path], str]:
    """Write the merged baseline metrics of ``dataset`` to ``folder/baseline_DATASET.json``; returns the file
    (None without a baseline) and a note naming the rows or files behind it."""
    named = [b for b in study.baseline if not b.endswith(".json")]
    files = [b for b in study.baseline if b.endswith(".json")]
    chosen = [r for r in rows if r.label in named] if study.baseline else [r for r in rows if r.single_task]
    chosen = [r for r in chosen if r.metrics]
    if not chosen and not files:
        return None, "no baseline rows finished: no Δm"
    merged: Dict[str, float] = {}
    origin: Dict[str, str] = {}
    if files:
        merged, _ = load_baselines(files, list(_metric_directions()))
        origin = {k: "the baseline files" for k in merged}
    for row in chosen:
        for key, cell in row.cells.items():
            if not cell.n or key in TRAINING:
                continue
            if key in origin:
                raise ValueError(f"baseline metric {key!r} comes from both {origin[key]} and row {row.label!r}: "
                                 "name the baseline rows with the study's 'baseline' key")
            merged[key], origin[key] = cell.mean, f"row {row.label!r}"
    path = folder / f"baseline_{dataset}.json"
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path, "baseline: " + ", ".join([r.label for r in chosen] + files) + " (mean over seeds)"


def _delta_m(row: RowResult, baseline: Path) -> Cell:
    cell = Cell()
    for metrics, run_args in zip(row.metrics, row.run_args):
        args = argparse.Namespace(**run_args)
        recipe = get_recipe(args.model)(args, get_dataset(args.dataset))
        cell.values.append(float(recipe.delta_m(metrics, [str(baseline)])["delta_m"]))
    return cell


def build_tables(study: Study) -> List[Table]:
    """The tables of ``study`` from the ``metrics.json`` files on disk (one per dataset, in first-run order).

    Raises:
        ValueError: an unreadable ``metrics.json``, two baseline rows giving the same metric, a baseline file
            that cannot be read (named).
    """
    directions = _metric_directions()
    tables = []
    for dataset, rows in collect(study).items():
        present = {k for r in rows for m in r.metrics for k, v in m.items() if _numeric(v)}
        columns = [k for k in list(directions) + list(TRAINING) if k in present]
        for row in rows:
            row.cells = {k: Cell([float(m[k]) for m in row.metrics if _numeric(m.get(k))]) for k in columns}
        table = Table(dataset, rows, columns)
        baseline, note = _baseline(rows, study, dataset, study.output_dir)
        table.notes.append(note)
        if baseline is not None:
            table.baseline = json.loads(baseline.read_text())
            for row in rows:
                try:
                    row.cells[DELTA_M] = _delta_m(row, baseline)
                except ValueError as e:
                    row.cells[DELTA_M] = Cell()
                    table.notes.append(f"{row.label}: no Δm ({e})")
        tables.append(table)
    return tables


def format_cell(cell: Cell, percent: bool = False) -> str:
    """``mean ± std (n)`` with 4 significant digits (std 2), or 2 decimals and a sign for a ``percent`` (Δm);
    ``mean (1)`` for one run; ``-`` for none."""
    mean, std = (f"{cell.mean:+.2f}", f"{cell.std:.2f}") if percent else (f"{cell.mean:.4g}", f"{cell.std:.2g}")
    if cell.n == 0:
        return "-"
    return f"{mean} (1)" if cell.n == 1 else f"{mean} ± {std} ({cell.n})"


def _best(table: Table, key: str) -> Optional[str]:
    if key in TRAINING:
        return None
    higher = _metric_directions().get(key, True)
    scored = [(r.cells[key].mean, r.label) for r in table.rows if key in r.cells and r.cells[key].n]
    if len(scored) < 2:
        return None
    return (max(scored) if higher else min(scored))[1]


def _keys(table: Table) -> List[str]:
    tested = [k for k in table.columns if k not in TRAINING]
    return tested + ([DELTA_M] if any(DELTA_M in r.cells for r in table.rows) else []) + \
        [k for k in table.columns if k in TRAINING]


def markdown(table: Table, study: Study) -> str:
    """The markdown table of one dataset, with a title line and the notes on Δm."""
    keys = _keys(table)
    runs = sum(len(r.metrics) for r in table.rows)
    lines = [f"### {study.name}: {table.dataset} ({runs} runs, seeds {', '.join(map(str, study.seeds))}; "
             "mean ± std (n))", "",
             "| row | " + " | ".join("Δm (%)" if k == DELTA_M else k for k in keys) + " |",
             "| --- |" + " ---: |" * len(keys)]
    best = {k: _best(table, k) for k in keys}
    for row in table.rows:
        cells = [format_cell(row.cells.get(k, Cell()), percent=k == DELTA_M) for k in keys]
        cells = [f"**{c}**" if best[k] == row.label else c for k, c in zip(keys, cells)]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _write_csv(table: Table, path: Path) -> None:
    keys = _keys(table)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "dataset"] + [f"{k}_{s}" for k in keys for s in ("mean", "std", "n")])
        for row in table.rows:
            values: List[Any] = [row.label, table.dataset]
            for k in keys:
                cell = row.cells.get(k, Cell())
                values += ["" if math.isnan(cell.mean) else cell.mean, "" if math.isnan(cell.std) else cell.std, cell.n]
            writer.writerow(values)


def _figure(table: Table, study: Study, path: Path) -> None:
    """Bars (one per row) with ± std error bars: one panel per task's main metric, and one of Δm."""
    keys = [t.main_metric for t in TASKS.values() if t.main_metric in table.columns]
    keys += [DELTA_M] if any(DELTA_M in r.cells and r.cells[DELTA_M].n for r in table.rows) else []
    labels = [r.label for r in table.rows]
    fig = Figure(figsize=((1.2 + 0.35 * len(labels)) * max(1, len(keys)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(labels))]
    for i, key in enumerate(keys or ["(no metrics)"]):
        ax = fig.add_subplot(1, max(1, len(keys)), i + 1)
        means = [r.cells[key].mean if key in r.cells else math.nan for r in table.rows]
        stds = [0.0 if key not in r.cells or math.isnan(r.cells[key].std) else r.cells[key].std for r in table.rows]
        stds = [math.nan if math.isnan(m) else s for m, s in zip(means, stds)]  # no bar, no error bar: no run
        ax.bar(range(len(labels)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        higher = _metric_directions().get(key, True)
        ax.set_title(("Δm (%)" if key == DELTA_M else key) + (" ↑" if higher else " ↓"), fontsize=9)
        if key == DELTA_M:
            ax.axhline(0.0, color="black", linewidth=0.6)
    fig.suptitle(f"{study.name}: {table.dataset} (mean ± std over seeds)", fontsize=10)
    fig.savefig(path, dpi=110)


def write_report(study: Study) -> List[Path]:
    """Build the tables (:func:`build_tables`) and write, per dataset, ``table_DATASET.md``, ``table_DATASET.csv``
    and ``figure_DATASET.png`` to the study folder; returns the paths written (markdown first).

    Raises:
        ValueError: see :func:`build_tables`.
    """
    study.output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in build_tables(study):
        stem = study.output_dir / f"table_{table.dataset}"
        stem.with_suffix(".md").write_text(markdown(table, study))
        _write_csv(table, stem.with_suffix(".csv"))
        figure = study.output_dir / f"figure_{table.dataset}.png"
        _figure(table, study, figure)
        written += [stem.with_suffix(".md"), stem.with_suffix(".csv"), figure]
    return written
