"""The README's main job measured: ``python -m xtc_ext.train`` on the ten shipped NYUv2 frames, reported as the
section "Measured on the ten real frames" of docs/reproducing.md (the text between its ``ten-frames`` markers).

    python benchmarks/ten_frames.py --write docs/reproducing.md            # the README job, 100 epochs
    python benchmarks/ten_frames.py --out /tmp/r -- --epochs 2 --encoder-depth 18   # any training options

Runs the training program in a fresh process (the options after ``--`` are passed on; none: the README's
defaults), then reads its ``metrics.json`` and ``log.jsonl`` and prints (or writes into the doc) the section:
the command, commit, torch version, device and CPU count, the median epoch time and the wall time, the checkpoint
size, and the test metrics before and after training. Timings are those of the machine at that moment: the
section says how many CPUs it had, not whether they were shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- ten-frames:begin -->", "<!-- ten-frames:end -->"
METRICS = (("mIoU", "mIoU ({classes} classes)", "{:.3f}"), ("pixel_acc", "pixel accuracy", "{:.3f}"),
           ("abs_err", "depth abs error", "{:.2f} m"), ("rel_err", "depth rel error", "{:.3f}"),
           ("rmse", "depth RMSE", "{:.2f} m"))


def commit() -> str:
    """The checkout's short commit, with ``+changes`` when the working tree differs from it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def section(out_dir: Path, train_args: Sequence[str], wall_s: float) -> str:
    """The markdown section of a finished run in ``out_dir``."""
    m = json.loads((out_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    epoch_s = statistics.median(r["epoch_time_s"] for r in rows)
    ckpt_mb = (out_dir / "last.pt").stat().st_size / 1e6
    command = "python -m xtc_ext.train" + "".join(" " + shlex.quote(a) for a in train_args)
    lines = [
        f"`{command}` ({m['model']}, {m['num_parameters']:,} parameters, batch {m['batch_size_global']}, "
        f"{m['epochs_trained']} epochs, {m['steps']} steps; {m['amp']} autocast, channels_last "
        f"{'on' if m['channels_last'] else 'off'}), measured by `benchmarks/ten_frames.py` at commit {commit()} "
        f"with torch {m['torch_version']} on {m['device']} ({os.cpu_count()} CPUs).",
        "",
        f"- **Time:** median epoch {epoch_s:.1f} s; {wall_s / 60:.1f} minutes in all (start, training, the "
        f"evaluations and figures); `last.pt` is {ckpt_mb:.0f} MB (with the optimizer state).",
        "- **Evaluation** is on the same ten frames: the point is to show that the pipeline learns, not to "
        "measure generalisation.",
        "",
        f"| metric | before training | after {m['epochs_trained']} epochs |",
        "| --- | ---: | ---: |",
        f"| training loss (epoch mean) | {m['first_epoch_loss']:.3f} (epoch 1) | {m['last_epoch_loss']:.3f} "
        f"(epoch {m['epochs_trained']}) |",
    ]
    for key, label, fmt in METRICS:
        lines.append(f"| {label.format(classes=m['num_classes'])} | {fmt.format(m['before_training'][key])} | "
                     f"{fmt.format(m['test'][key])} |")
    return "\n".join(lines) + "\n"


def write_into(doc: Path, text: str) -> None:
    """Replace the text between the ``ten-frames`` markers of ``doc``.

    Raises:
        ValueError: ``doc`` lacks the markers (named).
    """
    content = doc.read_text()
    if BEGIN not in content or END not in content:
        raise ValueError(f"--write: {doc} has no {BEGIN} ... {END} markers")
    head, rest = content.split(BEGIN, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}")


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: List[str] = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="the run's output folder (default: a temporary one)")
    p.add_argument("--write", default=None, metavar="DOC", help="write the section into DOC between its markers")
    args = p.parse_args(own)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out or tmp)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xtc_ext.train", "--output-dir", str(out_dir), "--no-progress",
                        *train_args], check=True)
        text = section(out_dir, train_args, time.perf_counter() - start)
    if args.write:
        write_into(Path(args.write), text)
    print(text)
    return text


if __name__ == "__main__":
    main()
