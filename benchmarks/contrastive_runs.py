"""The ten-frame comparison of docs/contrastive.md "Measured on the ten frames": runs and table.

For XTasC-Net (ResNet-18) and MT-CP (ResNet-18 FPN), trains on the ten packaged NYUv2 frames
(``--dataset frames``, 96x128, batch 5) with and without ``--contrastive`` (default weight 0.1,
512 anchors), seeds 0, 1, 2, one run at a time (without, then with, for each seed, so that a load
change on a shared machine hits both runs of a pair alike). Then prints per model and setting the
mean and sample standard deviation over the seeds of:

- the final training loss (last epoch's mean): the total, and the total minus the ``contrastive``
  term (the host's own loss, comparable between the two settings);
- the test metrics on the frames (the training frames again: a sanity check, not a generalisation
  measurement);
- the median ``epoch_time_s`` of epochs 2..N, and the ratio with / without of the same seed.

Usage (from the repository root; outputs go to ``--out``, never into the repository)::

    python benchmarks/contrastive_runs.py run --out /tmp/contrastive_runs
    python benchmarks/contrastive_runs.py table --out /tmp/contrastive_runs

``--settings on ordering cross-image closest`` compares the regularizer's options instead (section
"The options on the ten frames" of docs/contrastive.md).

``run`` skips a run whose ``metrics.json`` exists, so an interrupted sweep can be restarted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

MODELS: Dict[str, List[str]] = {
    "xtasc": ["--model", "xtasc", "--encoder-depth", "18"],
    "mtcp": ["--model", "mtcp", "--backbone", "resnet18_fpn"],
}
COMMON = ["--size", "96", "128", "--batch-size", "5", "--no-progress", "--num-figures", "1"]
METRICS = {"xtasc": ["mIoU", "pixel_acc", "abs_err", "rmse"], "mtcp": ["mIoU", "rmse", "normals_mean"]}
SETTINGS = {
    "off": [],
    "on": ["--contrastive"],
    "ordering": ["--contrastive", "--contrastive-depth-criterion", "ordering"],
    "cross-image": ["--contrastive", "--contrastive-cross-image"],
    "semihard": ["--contrastive", "--contrastive-mining", "semihard"],
    "closest": ["--contrastive", "--contrastive-mining", "closest"],
}
"""``--settings`` choices: without the regularizer, with its defaults, and with one option changed each."""


def run_dir(out: Path, model: str, setting: str, seed: int) -> Path:
    """Output folder of one run: ``OUT/<model>_<off|on>_s<seed>``."""
    return out / f"{model}_{setting}_s{seed}"


def command(model: str, setting: str, seed: int, epochs: int, out: Path) -> List[str]:
    """The training command of one run."""
    return [sys.executable, "-m", "xtc_ext.train", *MODELS[model], *COMMON, "--epochs", str(epochs),
            "--seed", str(seed), *SETTINGS[setting], "--output-dir", str(run_dir(out, model, setting, seed))]


def run_all(args: argparse.Namespace) -> None:
    """Train every (model, seed, setting) run in turn; existing results are kept."""
    for model in args.models:
        for seed in args.seeds:
            for setting in args.settings:
                if (run_dir(args.out, model, setting, seed) / "metrics.json").exists():
                    continue
                cmd = command(model, setting, seed, args.epochs[model], args.out)
                print(" ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True)


def summarise(out: Path, model: str, setting: str, seed: int) -> Dict[str, float]:
    """Final losses, test metrics and median epoch time (epochs 2..N) of one finished run."""
    folder = run_dir(out, model, setting, seed)
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    test = json.loads((folder / "metrics.json").read_text())["test"]
    last = log[-1]
    row = {"loss": last["loss"], "host loss": last["loss"] - last.get("contrastive", 0.0),
           "contrastive": last.get("contrastive", float("nan")),
           "epoch s": statistics.median(r["epoch_time_s"] for r in log[1:])}
    row.update({k: test[k] for k in METRICS[model]})
    return row


def fmt(values: List[float]) -> str:
    """``mean ± std`` (sample std over the seeds; 4 significant digits); ``-`` for a term not logged."""
    if any(math.isnan(v) for v in values):
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {std:.2g}"


def table(args: argparse.Namespace) -> None:
    """Print one markdown table per model, then the per-seed epoch-time ratios to the first setting."""
    for model in args.models:
        rows = {s: [summarise(args.out, model, s, seed) for seed in args.seeds] for s in args.settings}
        first = args.settings[0]
        cols = list(rows[first][0])
        print(f"\n{model} (seeds {', '.join(map(str, args.seeds))}, mean ± std)\n")
        print("| setting | " + " | ".join(cols) + " |")
        print("| --- |" + " ---: |" * len(cols))
        for s, runs in rows.items():
            print(f"| {s} | " + " | ".join(fmt([r[c] for r in runs]) for c in cols) + " |")
        for s in args.settings[1:]:
            ratios = [x["epoch s"] / y["epoch s"] for x, y in zip(rows[s], rows[first])]
            print(f"\nepoch time {s} / {first}, per seed: " + ", ".join(f"{r:.3f}" for r in ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("run", "table"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/contrastive_runs"))
    ap.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=["off", "on"],
                    help="the runs of each model and seed, in this order; the table's ratios are to the first")
    ap.add_argument("--epochs-xtasc", type=int, default=40)
    ap.add_argument("--epochs-mtcp", type=int, default=40)
    args = ap.parse_args()
    args.epochs = {"xtasc": args.epochs_xtasc, "mtcp": args.epochs_mtcp}
    (run_all if args.action == "run" else table)(args)


if __name__ == "__main__":
    main()
