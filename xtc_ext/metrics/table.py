"""Markdown tables of evaluation results (``metrics.md`` of a run, the output of ``python -m xtc_ext.evaluate``)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

__all__ = ["ROWS", "format_metrics_table"]

ROWS = (
    ("mIoU", "{:.4f}"), ("pixel_acc", "{:.4f}"), ("abs_err", "{:.4f}"), ("rel_err", "{:.4f}"), ("rmse", "{:.4f}"),
    ("normals_mean", "{:.2f} deg"), ("normals_median", "{:.2f} deg"), ("normals_11.25", "{:.2f} %"),
    ("normals_22.5", "{:.2f} %"), ("normals_30", "{:.2f} %"), ("sal_maxF", "{:.4f}"), ("sal_mIoU", "{:.4f}"),
    ("parts_mIoU", "{:.4f}"),
)
"""The metrics a table shows, in order, with their formats (those absent from the result are skipped)."""

_IN_DEPTH_UNIT = ("abs_err", "rmse")


def format_metrics_table(metrics: Mapping[str, Any], *, depth_unit: Optional[str] = None,
                         before: Optional[Mapping[str, Any]] = None,
                         extra: Optional[Dict[str, str]] = None) -> str:
    """Markdown table of the metrics of :data:`ROWS` present in ``metrics`` (next to ``before``, the untrained
    model, when given), the depth errors labelled with ``depth_unit``, then the ``extra`` rows
    (name -> formatted value, e.g. parameter count, inference time, Δm)."""
    head = "| metric | " + ("before training | after training |" if before else "value |")
    rule = "| --- | " + ("---: | ---: |" if before else "---: |")
    lines = [head, rule]
    for key, fmt in ROWS:
        if key not in metrics:
            continue
        label = f"{key} ({depth_unit})" if key in _IN_DEPTH_UNIT and depth_unit else key
        value = fmt.format(metrics[key])
        if before:
            old = fmt.format(before[key]) if key in before else ""
            lines.append(f"| {label} | {old} | {value} |")
        else:
            lines.append(f"| {label} | {value} |")
    for name, value in (extra or {}).items():
        lines.append(f"| {name} | | {value} |" if before else f"| {name} | {value} |")
    return "\n".join(lines)
