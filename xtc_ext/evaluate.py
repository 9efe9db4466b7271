"""Evaluate a checkpoint of ``python -m xtc_ext.train``: test metrics, size, speed and Δm.

Usage::

    python -m xtc_ext.evaluate runs/nyuv2_xtasc/best.pt \\
        --baseline runs/nyuv2_stnet_seg/metrics.json runs/nyuv2_stnet_depth/metrics.json

The model is rebuilt from the arguments stored in the checkpoint (``--data-root``, ``--dataset`` and
``--split`` override them) and evaluated on the test split (``val`` by default: the official NYUv2
test split of the MTAN files, the Cityscapes validation split the paper reports on).

Metrics (paper §V-B; :mod:`xtc_ext.metrics` for the conventions): mIoU and pixel accuracy from a
dataset-level confusion matrix (void excluded), depth absolute error ``mean |p - t|`` and relative
error ``mean |p - t| / t`` (a ratio, not a percentage) pooled over the pixels with target > 0, and
RMSE; all as fractions (the paper's tables print mIoU and pixel accuracy in percent). Also the number
of parameters (all of them, transfer networks included, as the paper's #P), the inference time per
image (direct predictions only, :func:`evaluate_model`) and, given baseline metrics files, Δm (paper
Eq. 17, :func:`xtc_ext.metrics.delta_m`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from python_models import BaseSTNet
from xtc_ext import data as xdata
from xtc_ext.losses import single_task_loss
from xtc_ext.metrics import DepthMeter, SegmentationMeter, delta_m

log = logging.getLogger("xtc_ext.evaluate")

METRIC_KEYS = ("mIoU", "pixel_acc", "abs_err", "rel_err")
"""The four metrics of the paper's tables, the default keys of Δm."""

LOWER_IS_BETTER = ("abs_err", "rel_err", "rmse")


def depth_unit(dataset: str) -> str:
    """Unit of the depth targets and errors of ``dataset``: metres for NYUv2, disparity/256 for
    Cityscapes (the inverse-depth-like target of the paper and the authors' code)."""
    return "disparity/256" if dataset.startswith("cityscapes") else "m"


def class_names(dataset: str, num_classes: int) -> Optional[Sequence[str]]:
    """Class names for figure legends (None when unknown)."""
    if dataset.startswith("cityscapes"):
        return {7: xdata.CITYSCAPES7_CLASS_NAMES, 19: xdata.CITYSCAPES19_CLASS_NAMES}.get(num_classes)
    return xdata.NYU13_CLASS_NAMES if num_classes == 13 else None


def predict(model: nn.Module, image: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Direct predictions ``(seg_logits [N,C,H,W] | None, depth [N,1,H,W] | None)`` of an XTasCNet
    (``direct_only=True``: the transfer networks are not run) or a BaseSTNet (one of the two)."""
    if isinstance(model, BaseSTNet):
        out = model(image)
        return (out, None) if model.task == "segmentation" else (None, out)
    out = model(image, direct_only=True)
    return out.seg_logits, out.depth


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    tasks: Sequence[str],
    *,
    ignore_index: int = -1,
    depth_loss: str = "l1",
    loss_impl: str = "fused",
    time_inference: bool = False,
    warmup: int = 3,
    progress: bool = False,
    desc: str = "eval",
) -> Dict[str, Any]:
    """Metrics of ``model`` (eval mode, direct predictions) over ``loader``.

    Returns a dict with, for segmentation, ``mIoU``, ``pixel_acc``, ``iou_per_class`` and
    ``seg_loss`` (mean CE); for depth, ``abs_err``, ``rel_err``, ``rmse`` (over pixels with target
    > 0) and ``depth_loss`` (the training depth loss over the ``depth_valid`` pixels); ``loss`` (the
    sum of the task losses, unweighted) and ``num_samples``. Losses are batch means averaged with
    the batch sizes as weights.

    With ``time_inference``: ``warmup`` untimed forward passes on the first batch, then each batch's
    forward pass is timed (``torch.cuda.synchronize`` before and after on CUDA); adds
    ``inference_ms_per_image`` = the median over batches of (batch time / batch size), and
    ``timed_batches``.
    """
    model.eval()
    seg_meter = SegmentationMeter(num_classes, ignore_index) if "segmentation" in tasks else None
    depth_meter = DepthMeter() if "depth" in tasks else None
    loss_sums = torch.zeros(2, dtype=torch.float64, device=device)
    n_samples = 0
    times: List[float] = []
    warmed = not time_inference or warmup <= 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        image = batch["image"].to(device, non_blocking=True)
        seg = batch["seg"].to(device, non_blocking=True)
        depth = batch["depth"].to(device, non_blocking=True)
        valid = batch.get("depth_valid")
        valid = (depth > 0) if valid is None else valid.to(device, non_blocking=True)
        if not warmed:
            for _ in range(warmup):
                predict(model, image)
            warmed = True
        if time_inference:
            _sync(device)
            t0 = time.perf_counter()
        seg_logits, depth_pred = predict(model, image)
        if time_inference:
            _sync(device)
            times.append((time.perf_counter() - t0) / image.shape[0])
        n = image.shape[0]
        n_samples += n
        if seg_meter is not None:
            seg_meter.update(seg_logits, seg)
            loss_sums[0] += n * single_task_loss("segmentation", seg_logits.float(), seg, None,
                                                 ignore_index=ignore_index, impl=loss_impl).double()
        if depth_meter is not None:
            depth_meter.update(depth_pred.float(), depth.float())
            loss_sums[1] += n * single_task_loss("depth", depth_pred.float(), None, depth.float(), valid,
                                                 depth_loss=depth_loss, impl=loss_impl).double()
    sums = (loss_sums / max(n_samples, 1)).tolist()
    out: Dict[str, Any] = {}
    if seg_meter is not None:
        s = seg_meter.compute()
        out.update({"mIoU": s["mIoU"], "pixel_acc": s["pixel_acc"], "seg_loss": sums[0]})
    if depth_meter is not None:
        out.update(depth_meter.compute())
        out["depth_loss"] = sums[1]
    out["loss"] = (sums[0] if seg_meter is not None else 0.0) + (sums[1] if depth_meter is not None else 0.0)
    if seg_meter is not None:
        out["iou_per_class"] = s["iou_per_class"]
    out["num_samples"] = n_samples
    if time_inference and times:
        out["inference_ms_per_image"] = 1000.0 * statistics.median(times)
        out["timed_batches"] = len(times)
    return out


# --------------------------------------------------------------------------- #
# figures
# --------------------------------------------------------------------------- #
def _save_single_task_figure(path: Path, image, gt, pred, task: str, num_classes: int, ignore_index: int,
                             title: str, unit: str, normalized: bool) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from xtc_ext.visualize import colorize_segmentation, denormalize

    img = image.detach().cpu()
    rgb = (denormalize(img) if normalized else img.clamp(0, 1)).permute(1, 2, 0).numpy()
    fig = Figure(figsize=(13, 4), dpi=100, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(rgb)
    axes[0].set_title("input RGB")
    if task == "segmentation":
        axes[1].imshow(colorize_segmentation(gt, num_classes, ignore_index))
        axes[1].set_title("GT segmentation (void black)")
        axes[2].imshow(colorize_segmentation(pred, num_classes, ignore_index))
        axes[2].set_title("predicted segmentation")
    else:
        g = gt.detach().cpu().float().reshape(gt.shape[-2:]).numpy()
        p = pred.detach().cpu().float().reshape(pred.shape[-2:]).numpy()
        valid = g > 0
        vmin, vmax = (float(g[valid].min()), float(g[valid].max())) if valid.any() else (float(p.min()), float(p.max()))
        if not vmax > vmin:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        im = axes[1].imshow(np.ma.masked_where(~valid, g), vmin=vmin, vmax=vmax, cmap="viridis")
        axes[1].set_title("GT depth (invalid white)")
        axes[2].imshow(p, vmin=vmin, vmax=vmax, cmap="viridis")
        axes[2].set_title("predicted depth")
        fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.03).set_label(unit)
    fig.suptitle(title)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(buf).save(path)
    return path


@torch.no_grad()
def save_figures(model: nn.Module, data: Dataset, indices: Iterable[int], device: torch.device, num_classes: int,
                 tasks: Sequence[str], out_dir: Path, *, dataset: str = "frames", title: str = "",
                 normalized: bool = True, ignore_index: int = -1) -> List[Path]:
    """PNG figures of the predictions on ``data[i]`` for ``i`` in ``indices``, written as
    ``out_dir/{k:02d}_{name}.png``: :func:`xtc_ext.visualize.save_prediction_figure` (input, ground
    truth and prediction of both tasks) for multi-task models, a 1x3 panel (input, ground truth,
    prediction) for a single-task model. ``dataset`` (the layout name) picks the depth unit and the
    class names; ``normalized`` says whether the images are ImageNet-normalised. Returns the paths."""
    from xtc_ext.visualize import save_prediction_figure

    model.eval()
    paths = []
    names = class_names(dataset, num_classes)
    for k, i in enumerate(indices):
        sample = data[i]
        seg_logits, depth_pred = predict(model, sample["image"].unsqueeze(0).to(device))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(sample.get("name", i)))
        path = Path(out_dir) / f"{k:02d}_{safe}.png"
        caption = f"{title}, sample {sample.get('name', i)}" if title else f"sample {sample.get('name', i)}"
        if seg_logits is not None and depth_pred is not None:
            paths.append(save_prediction_figure(
                path, sample["image"], sample["seg"], seg_logits[0].argmax(0).cpu(), sample["depth"],
                depth_pred[0].float().cpu(), num_classes, ignore_index=ignore_index,
                title=f"{caption} (depth in {depth_unit(dataset)})", class_names=names,
                image_normalized=normalized,
            ))
        elif seg_logits is not None:
            paths.append(_save_single_task_figure(path, sample["image"], sample["seg"], seg_logits[0].argmax(0).cpu(),
                                                  "segmentation", num_classes, ignore_index, caption,
                                                  depth_unit(dataset), normalized))
        else:
            paths.append(_save_single_task_figure(path, sample["image"], sample["depth"], depth_pred[0].cpu(),
                                                  "depth", num_classes, ignore_index, caption,
                                                  depth_unit(dataset), normalized))
    return paths


# --------------------------------------------------------------------------- #
# tables, baselines and delta_m
# --------------------------------------------------------------------------- #
_ROWS = (("mIoU", "{:.4f}"), ("pixel_acc", "{:.4f}"), ("abs_err", "{:.4f}"), ("rel_err", "{:.4f}"), ("rmse", "{:.4f}"))


def format_metrics_table(metrics: Dict[str, Any], before: Optional[Dict[str, Any]] = None, dataset: str = "nyuv2",
                         extra: Optional[Dict[str, str]] = None) -> str:
    """Markdown table of the metrics present in ``metrics`` (optionally next to ``before``, the
    untrained model), depth errors with their unit, then ``extra`` rows (name -> formatted value)."""
    unit = depth_unit(dataset)
    head = "| metric | " + ("before training | after training |" if before else "value |")
    rule = "| --- | " + ("---: | ---: |" if before else "---: |")
    lines = [head, rule]
    for key, fmt in _ROWS:
        if key not in metrics:
            continue
        label = f"{key} ({unit})" if key in ("abs_err", "rmse") else key
        value = fmt.format(metrics[key])
        lines.append(f"| {label} | {fmt.format(before[key])} | {value} |" if before else f"| {label} | {value} |")
    for name, value in (extra or {}).items():
        lines.append(f"| {name} | | {value} |" if before else f"| {name} | {value} |")
    return "\n".join(lines)


def metrics_from_json(obj: Dict[str, Any], keys: Sequence[str] = METRIC_KEYS + ("rmse",)) -> Dict[str, float]:
    """The metrics of a metrics file: ``obj["test"]`` (train's metrics.json), ``obj["metrics"]``
    (evaluate's output), or ``obj`` itself (a flat dict such as ``{"mIoU": 0.3, ...}``); only the
    finite numeric entries of ``keys`` (default :data:`METRIC_KEYS` and ``rmse``) are kept."""
    src = obj.get("test") if isinstance(obj.get("test"), dict) else obj.get("metrics") if isinstance(obj.get("metrics"), dict) else obj
    out = {}
    for k in keys:
        v = src.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


def load_baselines(
    paths: Sequence, keys: Sequence[str] = METRIC_KEYS + ("rmse",)
) -> Tuple[Dict[str, float], List[str]]:
    """Merge the metrics ``keys`` of one or more baseline files (see :func:`metrics_from_json`), e.g. a
    Base ST-Net segmentation run (mIoU, pixel_acc) and a depth run (abs_err, rel_err).

    Returns ``(merged metrics, [file names])``.

    Raises:
        FileNotFoundError: a missing file (named).
        ValueError: unreadable JSON, a file without any metric, or two files giving different values
            for one metric (both files named).
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


def model_delta_m(model_metrics: Dict[str, Any], baseline: Dict[str, float]) -> Tuple[float, List[str]]:
    """Δm (paper Eq. 17, percent) of ``model_metrics`` against ``baseline`` over the metrics of
    :data:`METRIC_KEYS` that both have (a single-task model is compared on its own task's two).

    Raises:
        ValueError: no metric in common.
    """
    keys = [k for k in METRIC_KEYS if k in model_metrics and k in baseline]
    if not keys:
        raise ValueError(f"no metric in common between the model ({sorted(model_metrics)}) and the baseline "
                         f"({sorted(baseline)})")
    return delta_m(model_metrics, baseline, keys=tuple(keys)), keys


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m xtc_ext.evaluate`` (every option has a help text)."""
    p = argparse.ArgumentParser(
        prog="python -m xtc_ext.evaluate",
        description="Evaluate a checkpoint of python -m xtc_ext.train on a test split: mIoU, pixel accuracy, depth "
        "abs/rel error, #parameters, inference time per image, and delta_m against baseline metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="best.pt or last.pt written by python -m xtc_ext.train")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the one stored in the checkpoint)")
    p.add_argument("--dataset", default=None, choices=("frames", "nyuv2", "cityscapes", "cityscapes-mtan"),
                   help="dataset layout (default: the checkpoint's)")
    p.add_argument("--split", default="val",
                   help="split to evaluate: 'val' is the test split of NYUv2 (MTAN files) and Cityscapes; "
                   "ignored by 'frames' (one set of frames)")
    p.add_argument("--baseline", nargs="+", default=None, metavar="METRICS_JSON",
                   help="metrics files of baseline runs (train's metrics.json or this program's --output), merged; "
                   "adds delta_m (paper Eq. 17, percent) over the metrics both have")
    p.add_argument("--batch-size", type=int, default=1, help="evaluation batch size (the timing is per image at this size)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes before timing")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--num-figures", type=int, default=0, help="also save PNG figures of this many samples next to --output")
    p.add_argument("--output", default=None, metavar="JSON", help="write the results to this JSON file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    return p


def _stored_run_args(stored: Dict[str, Any], train_mod) -> argparse.Namespace:
    """The training arguments of a checkpoint, completed with the current defaults for options
    it predates (a checkpoint of the first version of the program stored ``layout`` frames|mtan)."""
    run = train_mod.build_parser().parse_args([])
    for key, value in stored.items():
        setattr(run, key, value)
    if "dataset" not in stored and "layout" in stored:
        run.dataset = "nyuv2" if stored["layout"] == "mtan" else "frames"
        if run.dataset == "nyuv2":
            run.size = None
        if "model" not in stored:
            run.model = "xtasc" if float(stored.get("lam", 1e-4)) > 0 else "mtnet"
    if run.data_root is None:
        run.data_root = train_mod.DEFAULT_DATA_ROOT
    if run.classes is None:
        run.classes = train_mod.DATASET_DEFAULTS[run.dataset]["classes"]
    run.resume = None
    return run


def evaluate_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    """Rebuild the model of ``args.checkpoint``, evaluate it and return the results dict (also
    written to ``args.output`` when given)."""
    from xtc_ext import train as train_mod  # train imports this module

    if args.batch_size < 1 or args.warmup < 0 or args.workers < 0 or args.num_figures < 0:
        raise SystemExit("error: --batch-size must be >= 1; --warmup, --workers and --num-figures >= 0")
    state = train_mod.load_checkpoint(args.checkpoint)
    run = _stored_run_args(state["args"], train_mod)
    if args.data_root is not None:
        run.data_root = args.data_root
    if args.dataset is not None and args.dataset != run.dataset:
        run.dataset = args.dataset
        if run.size is None or train_mod.DATASET_DEFAULTS[run.dataset]["size"] is None:
            run.size = train_mod.DATASET_DEFAULTS[run.dataset]["size"]
    device = train_mod.resolve_device(args.device)
    num_classes = int(state["num_classes"])
    tasks = tuple(state.get("tasks") or train_mod.model_tasks(run))
    model = train_mod.build_model(run, num_classes)
    model.load_state_dict(state["model"])
    model.to(device)
    epoch = state.get("epoch")
    del state
    dataset = train_mod.build_split_dataset(run, args.split, augment=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate_model(model, loader, device, num_classes, tasks, depth_loss=getattr(run, "lp", "l1"),
                             loss_impl=getattr(run, "loss_impl", "fused"), time_inference=True, warmup=args.warmup,
                             progress=args.progress, desc="evaluate")
    n_params = sum(p.numel() for p in model.parameters())
    result: Dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "epoch": epoch,
        "model": train_mod.model_name(run),
        "variant": run.model,
        "tasks": list(tasks),
        "dataset": run.dataset,
        "data_root": str(run.data_root),
        "split": "frames" if run.dataset == "frames" else args.split,
        "depth_unit": depth_unit(run.dataset),
        "num_samples": metrics["num_samples"],
        "num_parameters": n_params,
        "batch_size": args.batch_size,
        "inference_ms_per_image": metrics.get("inference_ms_per_image"),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_version": torch.__version__,
        "metrics": metrics,
    }
    if args.baseline:
        baseline, files = load_baselines(args.baseline)
        dm, keys = model_delta_m(metrics, baseline)
        result.update({"delta_m": dm, "delta_m_keys": keys, "baseline": baseline, "baseline_files": files})
    if args.num_figures:
        fig_dir = Path(args.output).with_suffix("") if args.output else Path(args.checkpoint).parent / f"eval_{result['split']}"
        result["figures"] = [str(p) for p in save_figures(
            model, dataset, range(min(args.num_figures, len(dataset))), device, num_classes, tasks, fig_dir,
            dataset=run.dataset, title=train_mod.model_name(run), normalized=bool(getattr(run, "normalize", True)))]
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``python -m xtc_ext.evaluate``: prints a markdown table and returns the results."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    result = evaluate_checkpoint(args)
    extra = {
        "#parameters": f"{result['num_parameters']:,}",
        "inference time / image": f"{result['inference_ms_per_image']:.2f} ms (batch {result['batch_size']}, {result['device']})",
    }
    if "delta_m" in result:
        extra["delta_m"] = f"{result['delta_m']:+.2f} % (over {', '.join(result['delta_m_keys'])})"
    print(f"{result['model']} | {result['dataset']} {result['split']} ({result['num_samples']} samples) | "
          f"epoch {result['epoch']} of {result['checkpoint']}")
    print(format_metrics_table(result["metrics"], dataset=result["dataset"], extra=extra))
    return result


if __name__ == "__main__":
    main()
