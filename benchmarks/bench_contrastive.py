"""CPU cost of the cross-task contrastive regularizer (forward + backward) against a host's step.

Default setting (issue 11): XTasC-Net ResNet-34, 96x128 input, batch 6, targets "semseg" (13 classes)
and "depth" (each the other's only source), K = 512 anchors, D = 128, any mining rule (``--mining``).
``--model mtcp`` times MT-CP ResNet-18 FPN instead (targets semseg, depth, normals, features at
H/4 x W/4); ``--encoder-depth`` sets XTasC-Net's ResNet; ``--amp bf16`` runs every timed forward
under CPU bfloat16 autocast with the model and images in channels_last, as ``python -m xtc_ext.train``
does by default on a CPU with native bfloat16.

- ``step``: forward + backward of the model with a plain loss on its outputs (no optimizer).
- ``regularizer``: forward + backward of the regularizer alone, on the model's features detached
  into leaves (its backward stops there; materialising their gradient is included).
- ``step + regularizer``: the model step with the regularizer's loss added (the real overhead:
  its gradient joins the heads' gradient on the features).

Runs are interleaved (step, regularizer, step + regularizer, repeated) so that load changes on a
shared machine affect all three alike; medians of torch.utils.benchmark measurements are reported.
``--cpu-time`` times with ``time.process_time`` instead of wall-clock time: with one thread it is
the compute time of this process, robust to other processes competing for the cores.

``--engine`` times what a user feels instead: the whole training step of ``python -m xtc_ext.train``
(the engine's ``Trainer``: forward, the recipe's losses and task weighting, the finite check, backward,
Adam step of the model and of the projectors) without and with ``--contrastive``, built as in
``benchmarks/bench_train.py`` on the first frames of the ten packaged NYUv2 frames, interleaved step by
step in one process (XTasC-Net uses ``--encoder-depth``; MT-CP ResNet-18 FPN).

Usage: ``PYTHONPATH=. python benchmarks/bench_contrastive.py [--threads N] [--rounds R] [--model mtcp]
[--engine]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import bench_train
from python_models import MTCP, XTasCNet
from xtc_ext.cli import engine_config
from xtc_ext.data import get_dataset
from xtc_ext.engine import Trainer
from xtc_ext.recipes import get_recipe
from xtc_ext.regularizers import MINING, CrossTaskContrastive
from xtc_ext.tasks import get_task


def build_host(args: argparse.Namespace) -> Tuple[torch.nn.Module, Dict[str, torch.Tensor], Callable]:
    """The host model (train mode), random labels of its tasks and a plain loss on its outputs."""
    n, (h, w) = args.batch, args.size
    labels = {"semseg": torch.randint(-1, 13, (n, h, w)), "depth": torch.rand(n, 1, h, w) * 9.0 + 0.5}
    if args.model == "xtasc":
        def host_loss(out):
            return out.seg_logits.float().square().mean() + out.depth.float().square().mean()
        return XTasCNet(13, encoder_depth=args.encoder_depth).train(), labels, host_loss
    labels["normals"] = F.normalize(torch.randn(n, 3, h, w), dim=1)

    def mtcp_loss(out):
        preds = [*out.predictions.values(), *(p for ps in out.intermediate.values() for p in ps)]
        return sum(p.float().square().mean() for p in preds) + out.coherence_loss.float()
    return MTCP({"semseg": 13, "depth": 1, "normals": 3}, backbone="resnet18_fpn").train(), labels, mtcp_loss


def engine_overhead(args: argparse.Namespace, timer: Callable[[], float]) -> None:
    """``--engine``: median training-step time of the engine without / with ``--contrastive``, interleaved."""
    host = (["--model", "xtasc", "--encoder-depth", str(args.encoder_depth)] if args.model == "xtasc"
            else ["--model", "mtcp", "--backbone", "resnet18_fpn"])
    precision = ["--amp", "bf16", "--channels-last", "on"] if args.amp == "bf16" else ["--amp", "none",
                                                                                       "--channels-last", "off"]
    reg = ["--contrastive", "--contrastive-anchors", str(args.anchors), "--contrastive-mining", args.mining]
    steps = {}
    for name, extra in (("step", precision), ("step + regularizer", precision + reg)):
        targs = bench_train.train_args(args.model, bench_train.CONFIGS["fused"], "cpu", args.batch,
                                       tuple(args.size), host, extra)
        splits, batch = bench_train.load_batch(targs, pin=False)
        recipe = get_recipe(targs.model)(targs, get_dataset(targs.dataset))
        trainer = Trainer(engine_config(targs), recipe, splits, show_before=False)
        steps[name] = bench_train.step_function(trainer, batch)
        for _ in range(3):  # warm-up
            steps[name]()
    times: Dict[str, list] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            t = timer()
            step()
            times[k].append(timer() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"engine training step, {' '.join(host[1:])}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"amp {args.amp}, K={args.anchors}, mining={args.mining}, threads {args.threads}, {args.rounds} "
          f"interleaved rounds, {'CPU' if args.cpu_time else 'wall-clock'} time")
    for k, v in med.items():
        print(f"  {k:20s} median {v * 1e3:9.1f} ms  (per round {', '.join(f'{x * 1e3:.0f}' for x in times[k])})")
    print(f"  overhead of the regularizer: {(med['step + regularizer'] / med['step'] - 1) * 100:.1f}% of the step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--model", choices=("xtasc", "mtcp"), default="xtasc")
    ap.add_argument("--encoder-depth", type=int, choices=(18, 34), default=34, help="XTasC-Net's ResNet")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128))
    ap.add_argument("--anchors", type=int, default=512)
    ap.add_argument("--mining", choices=MINING, default="random")
    ap.add_argument("--amp", choices=("none", "bf16"), default="none",
                    help="bf16: CPU bfloat16 autocast and channels_last (the training program's CPU default)")
    ap.add_argument("--cpu-time", action="store_true", help="time.process_time instead of wall-clock time")
    ap.add_argument("--engine", action="store_true", help="the whole training step of the engine, without / with "
                    "--contrastive (see the module docstring)")
    args = ap.parse_args()
    if args.engine:
        torch.set_num_threads(args.threads)
        engine_overhead(args, time.process_time if args.cpu_time else time.perf_counter)
        return
    torch.manual_seed(0)
    model, labels, host_loss = build_host(args)
    reg = CrossTaskContrastive(model.feature_channels, {t: get_task(t).contrastive_kind for t in model.feature_channels},
                               anchors=args.anchors, mining=args.mining)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, *args.size)
    if args.amp == "bf16":
        model, image = model.to(memory_format=torch.channels_last), image.to(memory_format=torch.channels_last)

    def amp() -> contextlib.AbstractContextManager:
        if args.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    with torch.no_grad(), amp():
        feats = {k: v.detach() for k, v in model(image).features.items()}

    def step(with_reg: bool) -> None:
        with amp():
            out = model(image)
            loss = host_loss(out)
            if with_reg:
                loss = loss + 0.1 * reg(out.features, labels, generator=gen).loss
        loss.backward()

    def regularizer() -> None:
        leaves = {k: v.requires_grad_(True) for k, v in feats.items()}
        with amp():
            loss = reg(leaves, labels, generator=gen).loss
        loss.backward()
        for v in leaves.values():
            v.grad = None

    kw = dict(num_threads=args.threads, timer=time.process_time if args.cpu_time else time.perf_counter)
    timers = {
        "step": benchmark.Timer("step(False)", globals={"step": step}, **kw),
        "regularizer": benchmark.Timer("regularizer()", globals={"regularizer": regularizer}, **kw),
        "step + regularizer": benchmark.Timer("step(True)", globals={"step": step}, **kw),
    }
    for t in timers.values():  # warm-up
        t.timeit(1)
    times = {k: [] for k in timers}
    for _ in range(args.rounds):
        for k, t in timers.items():
            times[k].append(t.timeit(1 if k != "regularizer" else 5).mean)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [r / s for r, s in zip(times["regularizer"], times["step"])]
    host = f"XTasC-Net R{args.encoder_depth}" if args.model == "xtasc" else "MT-CP R18-FPN"
    print(f"{host}, batch {args.batch}, {args.size[0]}x{args.size[1]}, amp {args.amp}, K={args.anchors}, "
          f"mining={args.mining}, threads {args.threads}, "
          f"{args.rounds} interleaved rounds, {'CPU' if args.cpu_time else 'wall-clock'} time")
    for k, v in med.items():
        print(f"  {k:20s} median {v * 1e3:9.1f} ms  (min {min(times[k]) * 1e3:.1f}, max {max(times[k]) * 1e3:.1f})")
    print(f"  regularizer / step: median {statistics.median(ratios) * 100:.1f}% "
          f"(per round {', '.join(f'{r * 100:.1f}' for r in ratios)})")
    print(f"  (step + regularizer) - step: {(med['step + regularizer'] - med['step']) * 1e3:.1f} ms "
          f"({(med['step + regularizer'] / med['step'] - 1) * 100:.1f}%)")


if __name__ == "__main__":
    main()
