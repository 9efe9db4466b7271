"""The evaluation loop: metrics of a model over a data loader, optionally with the inference time."""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from xtc_ext.engine.protocol import Recipe
from xtc_ext.engine.runtime import autocast, progress_bar

__all__ = ["evaluate"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, recipe: Recipe, device: torch.device, *,
             amp: Optional[torch.dtype] = None, channels_last: bool = False, time_inference: bool = False,
             warmup: int = 3, progress: bool = False, desc: str = "eval") -> Dict[str, Any]:
    """Metrics of ``model`` (eval mode, the recipe's inference predictions) over ``loader``.

    Returns the recipe evaluator's metrics (:class:`xtc_ext.metrics.MultiTaskEvaluator`: per-task metrics,
    mean losses, ``loss``, ``num_samples``). Under a process group every rank evaluates its shard of the
    data and the evaluator's sums are all-reduced, so every rank returns the metrics of the whole loader's
    dataset. ``amp``: autocast dtype of the forward passes (the metrics are computed in float32);
    ``channels_last``: images in channels_last. With ``time_inference``: ``warmup`` untimed forward passes on
    the first batch, then every batch's forward pass is timed (``torch.cuda.synchronize`` before and after on
    CUDA), adding ``inference_ms_per_image`` (median over batches of batch time / batch size) and
    ``timed_batches``.
    """
    model.eval()
    evaluator = recipe.evaluator()
    times: List[float] = []
    warmed = not time_inference or warmup <= 0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for batch in progress_bar(loader, progress, desc=desc, leave=False):
        image = batch["image"].to(device, non_blocking=True, memory_format=fmt)
        with autocast(device, amp):
            if not warmed:
                for _ in range(warmup):
                    recipe.predict(model, image)
                warmed = True
            if time_inference:
                _sync(device)
                t0 = time.perf_counter()
            predictions = recipe.predict(model, image)
            if time_inference:
                _sync(device)
                times.append((time.perf_counter() - t0) / image.shape[0])
        evaluator.update(predictions, recipe.targets(batch, device))
    evaluator.all_reduce(device)
    out = evaluator.compute()
    if times:
        out["inference_ms_per_image"] = 1000.0 * statistics.median(times)
        out["timed_batches"] = len(times)
    return out
