"""``python -m xtc_ext.predict``: a trained model's predictions on your own images.

Usage::

    python -m xtc_ext.predict runs/frames_xtasc/last.pt photo.jpg more_photos/ "shots/**/*.png" --output-dir preds

INPUT: image files (PNG, JPEG or anything Pillow reads; RGB, grayscale converted), folders (their PNG/JPEG
files) and glob patterns. The model is rebuilt from the checkpoint by its recipe (any model and dataset
``python -m xtc_ext.train`` trains); each image is resized to the size the model was trained at (or, for
datasets kept at their stored size, padded to multiples of 32) and every prediction is mapped back to the
image's own size. Per image and task: a picture and the raw values (segmentation: colours with a class legend and
the label PNG; depth: colours with a colour bar, ``.npy`` and 16-bit millimetres; normals RGB; saliency grey;
human parts like segmentation), and a side-by-side sheet (files: :mod:`xtc_ext.inference.render`;
docs/inference.md).

Exit codes: 0 done; 2 bad arguments, an input that names no image or an unreadable image, or a checkpoint that
cannot be used (one line naming it; nothing is written); 1 an output that cannot be written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from xtc_ext.cli import HelpFormatter, run_program
from xtc_ext.engine import UsageError, resolve_device
from xtc_ext.engine.runtime import AMP_CHOICES, resolve_amp, resolve_channels_last
from xtc_ext.inference import PredictOptions, check_images, find_images, load_trained_model, predict_files

__all__ = ["build_parser", "main"]

PROG = "python -m xtc_ext.predict"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m xtc_ext.predict`` (every option has a help text)."""
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Predict every task of a trained model on your own images and write pictures, raw values "
        "and a side-by-side sheet per image.")
    p.add_argument("checkpoint", help="best.pt or last.pt written by python -m xtc_ext.train")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of PNG/JPEG files, or glob patterns")
    p.add_argument("--output-dir", required=True, help="folder for the outputs (created)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="network input size, multiples of 32 (default: the size the model was trained at; datasets "
                   "kept at their stored size: each image padded to multiples of 32)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                   help="autocast of the forward passes (default: the training run's --amp); the memory format "
                   "follows the run's --channels-last")
    p.add_argument("--sheet", action=argparse.BooleanOptionalAction, default=True,
                   help="also write <name>_sheet.png: the input and every task side by side")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar when stderr is a terminal")
    return p


def _predict(args: argparse.Namespace) -> Dict[Path, List[Path]]:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.size is not None and any(s <= 0 or s % 32 for s in args.size):
        raise UsageError(f"--size must be positive multiples of 32, got {args.size}")
    paths = find_images(args.inputs)
    check_images(paths)
    trained = load_trained_model(args.checkpoint)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp or trained.run.amp, device)
    options = PredictOptions(device=device, amp=amp,
                             channels_last=resolve_channels_last(trained.run.channels_last, device, amp),
                             batch_size=args.batch_size, size=None if args.size is None else tuple(args.size),
                             sheet=args.sheet, progress=args.progress)
    return predict_files(trained, paths, Path(args.output_dir), options)


def main(argv: Optional[Sequence[str]] = None) -> Dict[Path, List[Path]]:
    """Entry point of ``python -m xtc_ext.predict``: returns input path -> the files written for it."""
    args = build_parser().parse_args(argv)
    written = run_program(PROG, lambda: _predict(args))
    print(f"{sum(len(v) for v in written.values())} files for {len(written)} image(s) in {args.output_dir}")
    return written


if __name__ == "__main__":
    main()
