"""CPU cost of the cross-task contrastive regularizer (forward + backward) against an XTasC-Net step.

Setting of issue 11: XTasC-Net ResNet-34, 96x128 input, batch 6, targets "semseg" (13 classes) and
"depth" (each the other's only source), K = 512 anchors, D = 128, random and semi-hard mining.
The regularizer is timed on features that require a gradient (its backward stops at them); the step
is forward + backward of the model with a plain loss on its outputs (no optimizer), so the ratio is
the regularizer's share of the model's own compute.  torch.utils.benchmark, median of blocked runs.

Usage: ``PYTHONPATH=. python benchmarks/bench_contrastive.py [--threads N] [--min-run-time S]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as benchmark

from python_models import XTasCNet
from xtc_ext.regularizers import CrossTaskContrastive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--min-run-time", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128))
    args = ap.parse_args()
    torch.manual_seed(0)
    n, (h, w) = args.batch, args.size
    model = XTasCNet(13, encoder_depth=34).train()
    image = torch.randn(n, 3, h, w)
    labels = {"semseg": torch.randint(-1, 13, (n, h, w)), "depth": torch.rand(n, 1, h, w) * 9.0 + 0.5}
    with torch.no_grad():
        feats = {k: v.detach() for k, v in model(image).features.items()}
    leaves = {k: v.clone().requires_grad_(True) for k, v in feats.items()}

    def step() -> None:
        out = model(image)
        (out.seg_logits.square().mean() + out.depth.square().mean()).backward()

    def regularizer(reg: CrossTaskContrastive, gen: torch.Generator) -> None:
        reg(leaves, labels, generator=gen).loss.backward()

    results = []
    timer_kw = dict(num_threads=args.threads)
    results.append(benchmark.Timer("step()", globals={"step": step}, label="XTasC-Net R34 step", **timer_kw)
                   .blocked_autorange(min_run_time=args.min_run_time))
    for mining in ("random", "semihard"):
        reg = CrossTaskContrastive(model.feature_channels, {"semseg": "categorical", "depth": "depth"}, mining=mining)
        gen = torch.Generator().manual_seed(0)
        t = benchmark.Timer("f(reg, gen)", globals={"f": regularizer, "reg": reg, "gen": gen},
                            label=f"contrastive ({mining})", **timer_kw)
        results.append(t.blocked_autorange(min_run_time=args.min_run_time))
    step_s = results[0].median
    print(f"batch {n}, {h}x{w}, threads {args.threads}")
    for r in results:
        print(f"{r.label:28s} median {r.median * 1e3:8.2f} ms  IQR {r.iqr * 1e3:6.2f} ms  "
              f"({r.median / step_s * 100:5.1f}% of the step)")


if __name__ == "__main__":
    main()
