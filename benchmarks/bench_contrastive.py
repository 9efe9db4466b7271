"""CPU cost of the cross-task contrastive regularizer (forward + backward) against an XTasC-Net step.

Setting of issue 11: XTasC-Net ResNet-34, 96x128 input, batch 6, targets "semseg" (13 classes) and
"depth" (each the other's only source), K = 512 anchors, D = 128, random and semi-hard mining.

- ``step``: forward + backward of the model with a plain loss on its outputs (no optimizer).
- ``regularizer``: forward + backward of the regularizer alone, on the model's features detached
  into leaves (its backward stops there; materialising their gradient is included).
- ``step + regularizer``: the model step with the regularizer's loss added (the real overhead:
  its gradient joins the heads' gradient on the features).

Runs are interleaved (step, regularizer, step + regularizer, repeated) so that load changes on a
shared machine affect all three alike; medians of torch.utils.benchmark measurements are reported.
``--cpu-time`` times with ``time.process_time`` instead of wall-clock time: with one thread it is
the compute time of this process, robust to other processes competing for the cores.

Usage: ``PYTHONPATH=. python benchmarks/bench_contrastive.py [--threads N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.utils.benchmark as benchmark

from python_models import XTasCNet
from xtc_ext.regularizers import CrossTaskContrastive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128))
    ap.add_argument("--anchors", type=int, default=512)
    ap.add_argument("--mining", choices=("random", "semihard"), default="random")
    ap.add_argument("--cpu-time", action="store_true", help="time.process_time instead of wall-clock time")
    args = ap.parse_args()
    torch.manual_seed(0)
    n, (h, w) = args.batch, args.size
    model = XTasCNet(13, encoder_depth=34).train()
    reg = CrossTaskContrastive(model.feature_channels, {"semseg": "categorical", "depth": "depth"},
                               anchors=args.anchors, mining=args.mining)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(n, 3, h, w)
    labels = {"semseg": torch.randint(-1, 13, (n, h, w)), "depth": torch.rand(n, 1, h, w) * 9.0 + 0.5}
    with torch.no_grad():
        feats = {k: v.detach() for k, v in model(image).features.items()}

    def step(with_reg: bool) -> None:
        out = model(image)
        loss = out.seg_logits.square().mean() + out.depth.square().mean()
        if with_reg:
            loss = loss + 0.1 * reg(out.features, labels, generator=gen).loss
        loss.backward()

    def regularizer() -> None:
        leaves = {k: v.requires_grad_(True) for k, v in feats.items()}
        reg(leaves, labels, generator=gen).loss.backward()
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
    print(f"XTasC-Net R34, batch {n}, {h}x{w}, K={args.anchors}, mining={args.mining}, threads {args.threads}, "
          f"{args.rounds} interleaved rounds, {'CPU' if args.cpu_time else 'wall-clock'} time")
    for k, v in med.items():
        print(f"  {k:20s} median {v * 1e3:9.1f} ms  (min {min(times[k]) * 1e3:.1f}, max {max(times[k]) * 1e3:.1f})")
    print(f"  regularizer / step: median {statistics.median(ratios) * 100:.1f}% "
          f"(per round {', '.join(f'{r * 100:.1f}' for r in ratios)})")
    print(f"  (step + regularizer) - step: {(med['step + regularizer'] - med['step']) * 1e3:.1f} ms "
          f"({(med['step + regularizer'] / med['step'] - 1) * 100:.1f}%)")


if __name__ == "__main__":
    main()
