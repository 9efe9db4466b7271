"""Markdown tables of evaluation results (``metrics.md`` of a run, the output of ``python -m xtc_ext.evaluate``)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from xtc_ext.tasks import TASKS

__all__ = ["format_metrics_table"]


def format_metrics_table(metrics: Mapping[str, Any], *, depth_unit: Optional[str] = None,
                         before: Optional[Mapping[str, Any]] = None,
                         extra: Optional[Dict[str, str]] = None) -> str:
    """Markdown table of the metrics present in ``metrics``: the metrics of every registered task
    (:attr:`xtc_ext.tasks.TaskSpec.metrics`, in registration order, with their formats), next to ``before``
    (the untrained model) when given, then the ``extra`` rows (name -> formatted value, e.g. parameter count,
    inference time, Δm). A metric in its task's unit is labelled with the unit: ``depth_unit`` for depth (the
    dataset's; default the task's), the task's :attr:`~xtc_ext.tasks.TaskSpec.unit` for the others."""
    head = "| metric | " + ("before training | after training |" if before else "value |")
    rule = "| --- | " + ("---: | ---: |" if before else "---: |")
    lines = [head, rule]
    for spec in TASKS.values():
        unit = depth_unit if spec.name == "depth" else spec.unit
        for metric in spec.metrics:
            key = metric.name
            if key not in metrics:
                continue
            label = f"{key} ({unit})" if metric.in_task_unit and unit else key
            value = metric.fmt.format(metrics[key])
            if before:
                old = metric.fmt.format(before[key]) if key in before else ""
                lines.append(f"| {label} | {old} | {value} |")
            else:
                lines.append(f"| {label} | {value} |")
    for name, value in (extra or {}).items():
        lines.append(f"| {name} | | {value} |" if before else f"| {name} | {value} |")
    return "\n".join(lines)
