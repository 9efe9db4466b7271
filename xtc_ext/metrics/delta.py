"""Multi-task performance Δm against baseline runs, and the loading of baseline metrics files.

- :func:`delta_m`: XTasC-Net paper Eq. 17 (= MT-CP's Delta_MTL, §4, after Vandenhende et al.).
- :func:`metrics_from_json` / :func:`load_baselines`: the metrics of ``metrics.json`` files written by
  ``python -m xtc_ext.train`` (``test`` entry), of ``python -m xtc_ext.evaluate --output`` files
  (``metrics`` entry) or of flat ``{"mIoU": ...}`` files, merged over several files (e.g. one single-task
  run per task).
- :func:`delta_m_over`: Δm over the metrics of a list that the model and the baseline both have.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

__all__ = ["delta_m", "delta_m_over", "metrics_from_json", "load_baselines"]


def delta_m(model_metrics: Mapping[str, float], baseline_metrics: Mapping[str, float],
            lower_is_better: Sequence[str] = ("abs_err", "rel_err"),
            keys: Sequence[str] = ("mIoU", "pixel_acc", "abs_err", "rel_err")) -> float:
    """Multi-task performance change of a model against a baseline, in percent (XTasC-Net paper Eq. 17).

    ``delta_m = (100 / |M|) * sum_{i in keys} (-1)^{l_i} (M_m,i - M_b,i) / M_b,i`` with ``l_i = 1`` for the
    metrics in ``lower_is_better`` (errors) and 0 otherwise. Each term is relative, so the units of a
    metric do not matter as long as model and baseline use the same (fractions or percent). The paper's
    baseline is Base ST-Net (one single-task network per task, their metrics merged); positive is better.

    Args:
        model_metrics: metric name -> value of the model (extra keys are ignored).
        baseline_metrics: metric name -> value of the baseline.
        lower_is_better: names of the metrics where lower is better.
        keys: the metrics M to average over (default the paper's four).

    Returns:
        delta_m in percent (e.g. 3.82 for the paper's NYUv2 Base MT-Net, Table III).

    Raises:
        ValueError: empty ``keys``; a key missing from either dict (the message names it and the
            dict); a non-finite value or a zero baseline value.

    Source: XTasC-Net paper §V-B Eq. 17 (after Maninis et al. 2019 / Vandenhende et al.); the NYUv2 values
    of its Tables III and VIII reproduce from the tables (tests/metrics/test_delta.py). MT-CP's Delta_MTL
    (§4) is the same formula with one metric per task.
    """
    if not keys:
        raise ValueError("delta_m needs at least one metric key")
    total = 0.0
    for key in keys:
        for what, metrics in (("model", model_metrics), ("baseline", baseline_metrics)):
            if key not in metrics:
                raise ValueError(f"delta_m: metric {key!r} missing from the {what} metrics (has {sorted(metrics)})")
        m, b = float(model_metrics[key]), float(baseline_metrics[key])
        if not (math.isfinite(m) and math.isfinite(b)):
            raise ValueError(f"delta_m: metric {key!r} is not finite (model {m}, baseline {b})")
        if b == 0:
            raise ValueError(f"delta_m: baseline metric {key!r} is 0 (relative change undefined)")
        sign = -1.0 if key in lower_is_better else 1.0
        total += sign * (m - b) / b
    return 100.0 * total / len(keys)


def delta_m_over(model_metrics: Mapping[str, Any], baseline: Mapping[str, float], keys: Sequence[str],
                 lower_is_better: Sequence[str]) -> Tuple[float, List[str]]:
    """Δm (:func:`delta_m`, percent) over the metrics of ``keys`` that both ``model_metrics`` and
    ``baseline`` have (a single-task model is compared on its own task's metrics).

    Returns:
        ``(delta_m, [the metric keys used])``.

    Raises:
        ValueError: no metric of ``keys`` in common (both key sets named).
    """
    used = [k for k in keys if k in model_metrics and k in baseline]
    if not used:
        raise ValueError(f"no metric of {list(keys)} in common between the model ({sorted(model_metrics)}) and "
                         f"the baseline ({sorted(baseline)})")
    return delta_m(model_metrics, baseline, lower_is_better=tuple(lower_is_better), keys=tuple(used)), used


def metrics_from_json(obj: Mapping[str, Any], keys: Sequence[str]) -> Dict[str, float]:
    """The metrics of a metrics file: ``obj["test"]`` (train's metrics.json), ``obj["metrics"]``
    (evaluate's output), or ``obj`` itself (a flat dict such as ``{"mIoU": 0.3, ...}``); only the
    finite numeric entries of ``keys`` are kept."""
    src = obj
    for entry in ("test", "metrics"):
        if isinstance(obj.get(entry), dict):
            src = obj[entry]
            break
    out = {}
    for k in keys:
        v = src.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


def load_baselines(paths: Sequence, keys: Sequence[str]) -> Tuple[Dict[str, float], List[str]]:
    """Merge the metrics ``keys`` of one or more baseline files (see :func:`metrics_from_json`), e.g. a
    Base ST-Net segmentation run (mIoU, pixel_acc) and a depth run (abs_err, rel_err).

    Returns:
        ``(merged metrics, [file names])``.

    Raises:
        FileNotFoundError: a missing file (named).
        ValueError: unreadable JSON, a file without any of the metrics, or two files giving different
            values for one metric (both files named).
    """
    merged: Dict[str, float] = {}
    origin: Dict[str, str] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"baseline metrics file not found: {p}")
        try:
            obj = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"baseline metrics file {p} is not valid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ValueError(f"baseline metrics file {p} does not hold a JSON object")
        m = metrics_from_json(obj, keys)
        if not m:
            raise ValueError(f"baseline metrics file {p} has none of the metrics {list(keys)}")
        for k, v in m.items():
            if k in merged and merged[k] != v:
                raise ValueError(f"baseline metric {k!r} differs between {origin[k]} ({merged[k]}) and {p} ({v})")
            merged[k], origin[k] = v, str(p)
    return merged, [str(Path(p)) for p in paths]
