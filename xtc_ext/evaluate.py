"""``python -m xtc_ext.evaluate``: test metrics, size, speed and Δm of any checkpoint of ``python -m xtc_ext.train``.

Usage::

    python -m xtc_ext.evaluate runs/nyuv2_xtasc/best.pt \\
        --baseline runs/nyuv2_stnet_semseg/metrics.json runs/nyuv2_stnet_depth/metrics.json

The model is rebuilt by its recipe (:mod:`xtc_ext.recipes`: XTasC-Net family, MT-CP, ...) from the arguments
stored in the checkpoint (``--data-root``, ``--dataset`` and ``--split`` override them) and evaluated on the test
split (``val`` by default: the official NYUv2 test split of the MTAN files, the Cityscapes validation split the
XTasC-Net paper reports on, the NYUD_MT / PASCAL_MT validation splits MT-CP reports on).

Reported: the recipe's metrics (:class:`xtc_ext.metrics.MultiTaskEvaluator`; conventions in docs/fidelity.md,
"Metrics"), the number of parameters of the evaluated model (all of them, transfer networks included, as the
XTasC-Net paper's #P; training-only parts such as regularizer projectors are not part of the model), the
inference time per image (the recipe's inference predictions, median over batches after ``--warmup`` passes,
CUDA-synchronised) and, with baseline metrics files, Δm (the recipe's formula).

Exit codes: 0 done; 2 bad arguments or an unreadable checkpoint (one line naming the file); 1 a data file
that cannot be read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from xtc_ext.cli import HelpFormatter, build_parser as build_train_parser, run_program
from xtc_ext.data import DATASETS, get_dataset
from xtc_ext.engine import UsageError, evaluate, load_checkpoint, resolve_device
from xtc_ext.engine.runtime import AMP_CHOICES, resolve_amp, resolve_channels_last
from xtc_ext.engine.logs import write_json
from xtc_ext.metrics import format_metrics_table
from xtc_ext.recipes import get_recipe

__all__ = ["build_parser", "evaluate_checkpoint", "main"]

PROG = "python -m xtc_ext.evaluate"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m xtc_ext.evaluate`` (every option has a help text)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a checkpoint of python -m xtc_ext.train on a test split: the method's metrics, "
        "#parameters, inference time per image, and delta_m against baseline metrics.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="best.pt or last.pt written by python -m xtc_ext.train")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the one stored in the checkpoint)")
    p.add_argument("--dataset", default=None, choices=tuple(DATASETS), help="dataset layout (default: the checkpoint's)")
    p.add_argument("--split", default="val",
                   help="split to evaluate: 'val' is the test split of every dataset with one; ignored by 'frames' "
                   "(one set of frames)")
    p.add_argument("--baseline", nargs="+", default=None, metavar="METRICS_JSON",
                   help="metrics files of baseline runs (train's metrics.json or this program's --output), merged; "
                   "adds delta_m (percent) over the metrics of the method's formula")
    p.add_argument("--batch-size", type=int, default=1, help="evaluation batch size (the timing is per image at this size)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes before timing")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="autocast of the forward passes (default: the training run's --amp, so the metrics match its "
                   "test); the memory format follows the run's --channels-last")
    p.add_argument("--num-figures", type=int, default=0, help="also save PNG figures of this many samples next to --output")
    p.add_argument("--output", default=None, metavar="JSON", help="write the results to this JSON file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar when stderr is a terminal")
    return p


def stored_run_args(stored: Dict[str, Any], args: argparse.Namespace) -> argparse.Namespace:
    """The training arguments of a checkpoint: the current defaults of ``python -m xtc_ext.train`` for options
    it predates, its stored values, and this program's ``--data-root`` / ``--dataset`` overrides."""
    run = build_train_parser().parse_args([])
    for key, value in stored.items():
        setattr(run, key, value)
    if args.dataset is not None and args.dataset != run.dataset:
        run.dataset, run.data_root = args.dataset, None  # the stored folder is another dataset's
        run.size = get_dataset(run.dataset).default_size
    if args.data_root is not None:
        run.data_root = args.data_root
    spec = get_dataset(run.dataset)
    if run.data_root is None:
        if spec.default_root is None:
            raise UsageError(f"--data-root is required for --dataset {run.dataset}")
        run.data_root = str(spec.default_root)
    if run.classes is None:
        run.classes = spec.classes[0]
    run.resume = None
    return run


def evaluate_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    """Rebuild the model of ``args.checkpoint`` through its recipe, evaluate it and return the results dict
    (also written to ``args.output`` when given).

    Raises:
        UsageError: bad ``--batch-size``/``--warmup``/``--workers``/``--num-figures``.
        CheckpointError: ``args.checkpoint`` is not a usable checkpoint.
        FileNotFoundError, ValueError: the data (named).
    """
    if args.batch_size < 1 or args.warmup < 0 or args.workers < 0 or args.num_figures < 0:
        raise UsageError("--batch-size must be >= 1; --warmup, --workers and --num-figures >= 0")
    state = load_checkpoint(args.checkpoint)
    run = stored_run_args(state["args"], args)
    spec = get_dataset(run.dataset)
    recipe = get_recipe(run.model)(run, spec)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp or run.amp, device)
    channels_last = resolve_channels_last(run.channels_last, device, amp)
    model = recipe.build_model()
    model.load_state_dict(state["model"])
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    epoch = state.get("epoch")
    del state
    split = "frames" if spec.test_split is None else args.split
    dataset = spec.build(run.data_root, args.split, classes=int(run.classes),
                         size=None if run.size is None else tuple(run.size), augment=False,
                         normalize=bool(run.normalize), depth_scaling=run.depth_scaling, tasks=recipe.tasks)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate(model, loader, recipe, device, amp=amp, channels_last=channels_last, time_inference=True,
                       warmup=args.warmup, progress=args.progress, desc="evaluate")
    result: Dict[str, Any] = {
        "checkpoint": str(args.checkpoint), "epoch": epoch, "model": recipe.name, "variant": run.model,
        "tasks": list(recipe.tasks), "dataset": run.dataset, "data_root": str(run.data_root), "split": split,
        "depth_unit": recipe.depth_unit, "num_samples": metrics["num_samples"],
        "num_parameters": sum(p.numel() for p in model.parameters()), "batch_size": args.batch_size,
        "inference_ms_per_image": metrics.get("inference_ms_per_image"),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_version": torch.__version__, "amp": str(amp).replace("torch.", "") if amp else "none",
        "channels_last": channels_last, "metrics": metrics,
    }
    if args.baseline:
        result.update(recipe.delta_m(metrics, args.baseline))
    if args.num_figures:
        fig_dir = Path(args.output).with_suffix("") if args.output else Path(args.checkpoint).parent / f"eval_{split}"
        result["figures"] = [str(p) for p in recipe.figures(model, dataset, range(min(args.num_figures, len(dataset))),
                                                            fig_dir, recipe.name, device)]
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.output), result)
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``python -m xtc_ext.evaluate``: prints a markdown table and returns the results."""
    args = build_parser().parse_args(argv)
    result = run_program(PROG, lambda: evaluate_checkpoint(args))
    extra = {
        "#parameters": f"{result['num_parameters']:,}",
        "inference time / image": f"{result['inference_ms_per_image']:.2f} ms (batch {result['batch_size']}, {result['device']})",
    }
    if "delta_m" in result:
        extra["delta_m"] = f"{result['delta_m']:+.2f} % (over {', '.join(result['delta_m_keys'])})"
    print(f"{result['model']} | {result['dataset']} {result['split']} ({result['num_samples']} samples) | "
          f"epoch {result['epoch']} of {result['checkpoint']}")
    print(format_metrics_table(result["metrics"], depth_unit=result["depth_unit"], extra=extra))
    return result


if __name__ == "__main__":
    main()
