"""MT-CP pieces of ``python -m xtc_ext.train --model mtcp``: tasks per dataset, targets, evaluation,
checkpoint-selection score and figures (the training loop itself is the one of :mod:`xtc_ext.train`).

Tasks: NYUD-v2 (``--dataset frames`` with normals, ``nyudmt``) ``{"semseg": classes, "depth": 1,
"normals": 3}``; PASCAL-Context (``--dataset pascal``) ``{"semseg": 21, "human_parts": 7, "sal": 1}``.

Metrics (:mod:`xtc_ext.metrics`): semseg ``mIoU``/``pixel_acc``; depth ``abs_err``/``rel_err``/``rmse``
(no depth cap); normals ``normals_mean``/``normals_median`` (degrees) and ``normals_11.25``/
``normals_22.5``/``normals_30`` (percent of pixels within); saliency ``sal_maxF``; human parts
``parts_mIoU``; plus the raw final-prediction loss of every task (``<task>_loss``) and their sum
``loss`` (for ``--select-by loss``).

Validation score (:func:`mtcp_validation_score`, higher is better): the mean over the tasks of the
improvement of one key metric against the first validation of the run: semseg / human-parts mIoU and
saliency maxF as differences (fractions), depth RMSE and normals mean angle as relative reductions
``(ref - m) / ref``. So +0.01 is one point of mIoU or a 1 % error reduction, for every task alike.

Task subsets (``--mtcp-tasks``, :func:`select_tasks`): one task is the single-task baseline (no CFM).
Multi-task performance (:func:`mtcp_delta_m`, MT-CP paper §4 after Vandenhende et al.):
``Delta_MTL = (100 / T) sum_t (-1)^{l_t} (M_t - M_t^STL) / M_t^STL`` over the run's tasks with one metric
per task, the :data:`SCORE_KEYS` metric (``l_t = 1`` for depth RMSE and normals mean angle), against the
merged test metrics of single-task runs (:func:`load_mtcp_baselines`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from xtc_ext.evaluate import load_baselines
from xtc_ext.metrics import DepthMeter, NormalsMeter, SaliencyMeter, SegmentationMeter, delta_m

PASCAL_TASKS = {"semseg": 21, "human_parts": 7, "sal": 1}
"""MT-CP PASCAL-Context tasks and their output channels."""

SCORE_KEYS = {"semseg": ("mIoU", True), "depth": ("rmse", False), "normals": ("normals_mean", False),
              "sal": ("sal_maxF", True), "human_parts": ("parts_mIoU", True)}
"""Per task: the metric of the validation score and whether higher is better."""


def mtcp_tasks(dataset: str, classes: int) -> Dict[str, int]:
    """Task name -> output channels of MT-CP on ``dataset`` (``frames``/``nyudmt``: NYUD tasks)."""
    if dataset == "pascal":
        return dict(PASCAL_TASKS)
    if dataset in ("frames", "nyudmt"):
        return {"semseg": int(classes), "depth": 1, "normals": 3}
    raise SystemExit(f"error: --model mtcp supports --dataset frames, nyudmt and pascal (got {dataset})")


def select_tasks(tasks: Dict[str, int], chosen: Optional[Sequence[str]]) -> Dict[str, int]:
    """The sub-mapping of ``tasks`` named in ``chosen`` (in the dataset's order; ``None``: all).

    Raises:
        SystemExit: a name that is not a task of the dataset (named, with the valid ones).
    """
    if not chosen:
        return dict(tasks)
    bad = [t for t in chosen if t not in tasks]
    if bad:
        raise SystemExit(f"error: --mtcp-tasks: unknown task {bad[0]!r} for this dataset (choose from {', '.join(tasks)})")
    return {t: c for t, c in tasks.items() if t in set(chosen)}


def load_mtcp_baselines(paths: Sequence) -> tuple:
    """Merge the Δm metrics (:data:`SCORE_KEYS`) of single-task runs' metrics.json files (``test``
    entry, else ``metrics``, else the object itself). Returns ``(merged metrics, [file names])``.

    Raises:
        FileNotFoundError: a missing file. ValueError: unreadable JSON, a file without any of the
            metrics, or two files giving different values for one metric (both named).
    """
    return load_baselines(paths, [k for k, _ in SCORE_KEYS.values()])


def mtcp_delta_m(metrics: Dict[str, Any], baseline: Dict[str, float], tasks: Sequence[str]) -> tuple:
    """Δm (percent, positive is better) of an MT-CP run over its ``tasks``, one metric per task
    (:data:`SCORE_KEYS`), against ``baseline``. Returns ``(delta_m, [metric keys])``.

    Raises:
        ValueError: a task's metric missing from the model or the baseline (named).
    """
    keys = tuple(SCORE_KEYS[t][0] for t in tasks)
    lower = tuple(SCORE_KEYS[t][0] for t in tasks if not SCORE_KEYS[t][1])
    return delta_m(metrics, baseline, lower_is_better=lower, keys=keys), list(keys)


def targets_from_batch(batch: dict, tasks: Sequence[str], device: torch.device) -> Dict[str, torch.Tensor]:
    """The :class:`~xtc_ext.mtcp_losses.MTCPLoss` targets of a batch: invalid depth / normals pixels
    are zeroed (the losses' invalid marker), segmentation and human parts keep -1 as ignored."""
    def get(key):
        return batch[key].to(device, non_blocking=True)

    out: Dict[str, torch.Tensor] = {}
    for t in tasks:
        if t == "semseg":
            out[t] = get("seg")
        elif t == "depth":
            depth = get("depth")
            valid = batch.get("depth_valid")
            out[t] = depth if valid is None else depth * valid.to(device).to(depth.dtype)
        elif t == "normals":
            normals = get("normals")
            valid = batch.get("normals_valid")
            out[t] = normals if valid is None else normals * valid.to(device).to(normals.dtype)
        else:
            out[t] = get(t)
    return out


@torch.no_grad()
def evaluate_mtcp(model: nn.Module, loader: DataLoader, device: torch.device, criterion, *,
                  progress: bool = False, desc: str = "eval") -> Dict[str, Any]:
    """Metrics of an MT-CP ``model`` (eval mode, final predictions) over ``loader`` (module docstring)."""
    model.eval()
    tasks = list(criterion.tasks)
    channels = dict(getattr(model, "task_channels", {}))
    meters: Dict[str, Any] = {}
    for t in tasks:
        if t in ("semseg", "human_parts"):
            meters[t] = SegmentationMeter(channels[t], criterion.ignore_index)
        elif t == "depth":
            meters[t] = DepthMeter()
        elif t == "normals":
            meters[t] = NormalsMeter()
        else:
            meters[t] = SaliencyMeter()
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    n_samples = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        image = batch["image"].to(device, non_blocking=True)
        targets = targets_from_batch(batch, tasks, device)
        preds = model(image).predictions
        n = image.shape[0]
        n_samples += n
        for i, t in enumerate(tasks):
            p = preds[t].float()
            meters[t].update(p, targets[t])
            loss_sums[i] += n * criterion.task_loss(t, p, targets[t]).double()
    losses = (loss_sums / max(n_samples, 1)).tolist()
    out: Dict[str, Any] = {}
    for t in tasks:
        m = meters[t].compute()
        if t == "semseg":
            out.update({"mIoU": m["mIoU"], "pixel_acc": m["pixel_acc"]})
        elif t == "human_parts":
            out.update({"parts_mIoU": m["mIoU"], "parts_pixel_acc": m["pixel_acc"]})
        elif t == "depth":
            out.update(m)
        elif t == "normals":
            out.update({f"normals_{k}": v for k, v in m.items()})
        else:
            out.update({"sal_maxF": m["maxF"], "sal_mIoU": m["mIoU"]})
    out.update({f"{t}_loss": v for t, v in zip(tasks, losses)})
    out["loss"] = float(sum(losses))
    out["num_samples"] = n_samples
    return out


def score_reference(metrics: Dict[str, Any]) -> Dict[str, float]:
    """The metrics of the first validation that :func:`mtcp_validation_score` compares with."""
    return {key: float(metrics[key]) for key, _ in SCORE_KEYS.values() if key in metrics}


def mtcp_validation_score(metrics: Dict[str, Any], reference: Dict[str, float]) -> float:
    """Checkpoint-selection score (higher is better; see the module docstring)."""
    parts = []
    for key, higher in SCORE_KEYS.values():
        if key not in metrics:
            continue
        m, ref = float(metrics[key]), float(reference.get(key, float("nan")))
        if higher:
            parts.append(m - (ref if math.isfinite(ref) else 0.0))
        else:
            ref = ref if math.isfinite(ref) and ref > 0 else 1.0
            parts.append((ref - m) / ref)
    score = sum(parts) / len(parts) if parts else float("nan")
    return score if math.isfinite(score) else float("-inf")


def metrics_table_extra(metrics: Dict[str, Any]) -> Dict[str, str]:
    """Rows of the MT-CP metrics that :func:`xtc_ext.evaluate.format_metrics_table` does not print."""
    rows = {}
    for key, fmt in (("normals_mean", "{:.2f} deg"), ("normals_median", "{:.2f} deg"), ("normals_11.25", "{:.2f} %"),
                     ("normals_22.5", "{:.2f} %"), ("normals_30", "{:.2f} %"), ("sal_maxF", "{:.4f}"),
                     ("parts_mIoU", "{:.4f}")):
        if key in metrics:
            rows[key] = fmt.format(metrics[key])
    return rows


@torch.no_grad()
def save_mtcp_figures(model: nn.Module, data: Dataset, indices: Iterable[int], device: torch.device, out_dir: Path, *,
                      title: str = "", depth_unit: str = "m", class_names=None, normalized: bool = True,
                      ignore_index: int = -1) -> List[Path]:
    """PNG figures (input, semseg GT/prediction, depth GT/prediction:
    :func:`xtc_ext.visualize.save_prediction_figure`) of ``data[i]``; only when the model has both
    semseg and depth (NYUD tasks), else none."""
    from xtc_ext.visualize import save_prediction_figure

    channels = dict(getattr(model, "task_channels", {}))
    if "semseg" not in channels or "depth" not in channels:
        return []
    model.eval()
    paths: List[Path] = []
    for k, i in enumerate(indices):
        sample = data[i]
        preds = model(sample["image"].unsqueeze(0).to(device)).predictions
        name = sample.get("name", i)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
        caption = f"{title}, sample {name}" if title else f"sample {name}"
        paths.append(save_prediction_figure(
            Path(out_dir) / f"{k:02d}_{safe}.png", sample["image"], sample["seg"], preds["semseg"][0].argmax(0).cpu(),
            sample["depth"], preds["depth"][0].float().cpu(), channels["semseg"], ignore_index=ignore_index,
            title=f"{caption} (depth in {depth_unit})", class_names=class_names, image_normalized=normalized,
        ))
    return paths
