"""Train XTasC-Net (segmentation + depth with cross-task consistency) on NYUv2.

Usage: ``python -m xtc_ext.train --help``. Defaults train on the ten real NYUv2 frames of
``../shared/data/nyuv2-test10`` at a CPU-friendly size (about ten minutes on two cores) with the
paper's NYUv2 optimisation settings (Adam lr 1e-4, betas (0.9, 0.99), lr halved every 60 epochs,
batch 6, lambda 1e-4, uncertainty weighting; XTasC-Net paper §V-B).

Outputs in ``--output-dir``: ``checkpoint.pt`` (model, optimizer, scheduler, weighting, epoch,
arguments; written atomically), ``log.jsonl`` (one JSON line per epoch), ``metrics.json``
(metrics before and after training, loss history, run facts) and ``prediction.png`` (input,
ground truth and prediction of segmentation and depth for one frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import xtc_ext
from python_models import XTasCNet
from xtc_ext.data import MTANNYUv2, NYUv2Frames
from xtc_ext.losses import LOSS_IMPLS, XTasCLoss
from xtc_ext.metrics import DepthMeter, SegmentationMeter
from xtc_ext.visualize import save_prediction_figure
from xtc_ext.weighting import WEIGHTINGS, build_weighting

log = logging.getLogger("xtc_ext.train")

DEFAULT_DATA_ROOT = "../shared/data/nyuv2-test10"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m xtc_ext.train``."""
    p = argparse.ArgumentParser(
        prog="python -m xtc_ext.train",
        description="Train XTasC-Net (semantic segmentation + depth, cross-task consistency) on NYUv2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="dataset folder")
    g.add_argument(
        "--layout",
        choices=("frames", "mtan"),
        default="frames",
        help="'frames': PNG folders rgb/ depth/ label13|label40/ (trains and evaluates on the same frames); "
        "'mtan': MTAN .npy layout {train,val}/{image,label,depth}/{i}.npy (trains on train, evaluates on val)",
    )
    g.add_argument("--classes", type=int, choices=(13, 40), default=13, help="label set of the 'frames' layout")
    g.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=(96, 128),
        help="training/eval size for the 'frames' layout (multiples of 32); MTAN data keeps its stored size",
    )
    g.add_argument("--no-augment", action="store_true", help="disable random scale-crop and flip")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")

    g = p.add_argument_group("model and loss")
    g.add_argument("--encoder-depth", type=int, choices=(18, 34, 50, 101, 152), default=34, help="ResNet depth")
    g.add_argument("--lam", type=float, default=1e-4, help="lambda of both tasks (paper: 1e-4 NYUv2, 0.01 Cityscapes)")
    g.add_argument("--weighting", choices=sorted(WEIGHTINGS), default="uncertainty", help="task weighting")
    g.add_argument("--loss-impl", choices=sorted(LOSS_IMPLS), default="fused", help="fused ops or eager references")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="training epochs (paper NYUv2: 100)")
    g.add_argument("--batch-size", type=int, default=6, help="training batch size (paper NYUv2: 6)")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99), help="Adam betas")
    g.add_argument("--lr-step", type=int, default=60, help="halve the learning rate every this many epochs")
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: no limit)")

    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--seed", type=int, default=0, help="seed of Python, NumPy, torch and the data order")
    g.add_argument("--output-dir", default="runs/xtasc_nyuv2", help="where checkpoint, logs, metrics and PNG go")
    g.add_argument("--save-every", type=int, default=25, help="also checkpoint every this many epochs (0: end only)")
    g.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def _check_args(args: argparse.Namespace) -> None:
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.lr_step >= 1, f"--lr-step must be >= 1, got {args.lr_step}"),
        (0.0 <= args.lam <= 1.0, f"--lam must be in [0, 1], got {args.lam}"),
        (all(s > 0 and s % 32 == 0 for s in args.size), f"--size must be positive multiples of 32, got {args.size}"),
        (args.workers >= 0 and args.max_steps >= 0 and args.save_every >= 0, "counts must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"error: {message}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises SystemExit for an unavailable CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, int]:
    """(train set, evaluation set, number of classes) for the chosen layout."""
    augment = not args.no_augment
    if args.layout == "frames":
        size = tuple(args.size)
        train = NYUv2Frames(args.data_root, size=size, classes=args.classes, augment=augment)
        evaluation = NYUv2Frames(args.data_root, size=size, classes=args.classes, augment=False)
        return train, evaluation, args.classes
    train = MTANNYUv2(args.data_root, split="train", augment=augment)
    evaluation = MTANNYUv2(args.data_root, split="val", augment=False)
    return train, evaluation, 13


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        batch["image"].to(device, non_blocking=True),
        batch["seg"].to(device, non_blocking=True),
        batch["depth"].to(device, non_blocking=True),
    )


@torch.no_grad()
def evaluate(model: XTasCNet, loader: DataLoader, device: torch.device, num_classes: int, ignore_index: int) -> dict:
    """mIoU and pixel accuracy (dataset-level confusion matrix), depth abs/rel error and RMSE (metres)
    over valid pixels, from the direct predictions of ``model`` in eval mode."""
    model.eval()
    seg_meter, depth_meter = SegmentationMeter(num_classes, ignore_index), DepthMeter()
    for batch in loader:
        image, seg, depth = _to_device(batch, device)
        out = model(image, direct_only=True)
        seg_meter.update(out.seg_logits, seg)
        depth_meter.update(out.depth.float(), depth)
    seg_metrics = seg_meter.compute()
    return {"mIoU": seg_metrics["mIoU"], "pixel_acc": seg_metrics["pixel_acc"], **depth_meter.compute()}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file in the same folder, then rename it over
    ``path``: a crash mid-write never destroys the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _metrics_table(before: dict, after: dict) -> str:
    rows = [("mIoU", "{:.4f}"), ("pixel_acc", "{:.4f}"), ("abs_err", "{:.4f} m"), ("rel_err", "{:.4f}"), ("rmse", "{:.4f} m")]
    lines = [f"| {'metric':<10}| {'before':>12} | {'after':>12} |", f"|{'-' * 11}|{'-' * 14}|{'-' * 14}|"]
    for key, fmt in rows:
        lines.append(f"| {key:<10}| {fmt.format(before[key]):>12} | {fmt.format(after[key]):>12} |")
    return "\n".join(lines)


def _save_figure(model: XTasCNet, dataset: Dataset, device: torch.device, num_classes: int, path: Path) -> None:
    sample = dataset[0]
    model.eval()
    with torch.no_grad():
        out = model(sample["image"].unsqueeze(0).to(device), direct_only=True)
    save_prediction_figure(
        path,
        sample["image"],
        sample["seg"],
        out.seg_logits[0].argmax(0).cpu(),
        sample["depth"],
        out.depth[0].float().cpu(),
        num_classes,
        ignore_index=-1,
        title=f"XTasC-Net, frame {sample['name']}",
    )


def train(args: argparse.Namespace) -> dict:
    """Run training as configured by ``args`` (see :func:`build_parser`); returns the metrics dict
    that is also written to ``metrics.json``."""
    _check_args(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_set, eval_set, num_classes = build_datasets(args)
    loader_rng = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        worker_init_fn=_seed_worker,
        generator=loader_rng,
        pin_memory=device.type == "cuda",
    )
    eval_loader = DataLoader(eval_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)

    ignore_index = -1
    model = XTasCNet(num_classes, encoder_depth=args.encoder_depth, with_transfer=args.lam > 0).to(device)
    weighting = build_weighting(args.weighting, 2).to(device)
    criterion = XTasCLoss(args.lam, args.lam, ignore_index=ignore_index, impl=args.loss_impl)
    optimizer = torch.optim.Adam(
        list(model.parameters()) + list(weighting.parameters()), lr=args.lr, betas=tuple(args.betas)
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.5)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "XTasC-Net ResNet-%d, %d classes, %s parameters | %d train / %d eval samples from %s (%s) | device %s | "
        "loss impl %s | xtc_ext built with torch %s",
        args.encoder_depth, num_classes, f"{n_params:,}", len(train_set), len(eval_set), args.data_root,
        args.layout, device, args.loss_impl, xtc_ext.build_info["torch_version"],
    )

    before = evaluate(model, eval_loader, device, num_classes, ignore_index)
    history, step_losses, step = [], [], 0
    ckpt_path = out_dir / "checkpoint.pt"
    start = time.perf_counter()

    def checkpoint(epoch: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "weighting": weighting.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "args": vars(args),
                "num_classes": num_classes,
            },
        )

    epochs = tqdm(range(1, args.epochs + 1), desc="epochs", disable=args.no_progress, dynamic_ncols=True)
    for epoch in epochs:
        model.train()
        epoch_values = []  # per-step loss terms, kept on the device: one host sync per epoch
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=args.no_progress):
            image, seg, depth = _to_device(batch, device)
            terms = criterion(model(image), seg, depth)
            total = weighting(terms.groups)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            epoch_values.append(
                torch.stack([total, terms.seg, terms.depth, terms.seg_consistency, terms.depth_consistency]).detach()
            )
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        values = torch.stack(epoch_values).double().cpu()
        step_losses.extend(values[:, 0].tolist())
        scheduler.step()
        mean = values.mean(dim=0).tolist()
        record = {
            "epoch": epoch,
            "step": step,
            "loss": mean[0],
            "seg_ce": mean[1],
            "depth_l1": mean[2],
            "seg_consistency": mean[3],
            "depth_consistency": mean[4],
            "task_weights": weighting.weights().tolist(),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": time.perf_counter() - start,
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"non-finite training loss at epoch {epoch}: {record}")
        history.append(record)
        with open(out_dir / "log.jsonl", "a" if epoch > 1 else "w") as f:
            f.write(json.dumps(record) + "\n")
        log.info(
            "epoch %3d | loss %.4f | seg CE %.4f | depth L1 %.4f m | cons seg %.4f depth %.4f | w %s",
            epoch, record["loss"], record["seg_ce"], record["depth_l1"], record["seg_consistency"],
            record["depth_consistency"], " ".join(f"{w:.3f}" for w in record["task_weights"]),
        )
        if args.save_every and epoch % args.save_every == 0:
            checkpoint(epoch)
        if args.max_steps and step >= args.max_steps:
            break
    train_time = time.perf_counter() - start
    checkpoint(history[-1]["epoch"])

    after = evaluate(model, eval_loader, device, num_classes, ignore_index)
    _save_figure(model, eval_set, device, num_classes, out_dir / "prediction.png")
    result = {
        "model": f"XTasC-Net ResNet-{args.encoder_depth}",
        "num_parameters": n_params,
        "num_classes": num_classes,
        "eval_set": "training frames" if args.layout == "frames" else "val",
        "before_training": before,
        "after_training": after,
        "first_epoch_loss": history[0]["loss"],
        "last_epoch_loss": history[-1]["loss"],
        "loss_history": [r["loss"] for r in history],
        "step_losses": step_losses,
        "train_time_s": train_time,
        "device": str(device),
        "torch_version": torch.__version__,
        "args": vars(args),
    }
    _write_json(out_dir / "metrics.json", result)
    print(f"\nEvaluation on {result['eval_set']} ({len(eval_set)} samples), direct predictions:")
    print(_metrics_table(before, after))
    print(
        f"training loss {history[0]['loss']:.4f} (epoch 1) -> {history[-1]['loss']:.4f} (epoch {history[-1]['epoch']}), "
        f"{train_time:.0f} s; outputs in {out_dir}/"
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``python -m xtc_ext.train``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    with logging_redirect_tqdm():
        return train(args)


if __name__ == "__main__":
    main()
