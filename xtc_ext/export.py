"""``python -m xtc_ext.export``: a trained model as a ``torch.export`` program, an AOTInductor package or ONNX.

Usage::

    python -m xtc_ext.export runs/frames_xtasc/last.pt --format export --output model.pt2
    python -m xtc_ext.export runs/frames_xtasc/last.pt --format aoti --output model_aoti.pt2
    python -m xtc_ext.export runs/frames_xtasc/last.pt --format onnx --output model.onnx

The exported graph is the model's evaluation graph (the recipe's inference predictions, float32; input
``image [N, 3, H, W]``, N dynamic, H and W fixed at ``--size``, by default the size the model was trained at;
outputs one ``[N, C_t, H, W]`` tensor per task, in the order printed). Each file is checked against eager on the
ten frames shipped with the package, in this process and in a fresh one (the maximum absolute difference per
task is printed and, with ``--report``, written as JSON). How it works: :mod:`xtc_ext.inference.exporting`;
loading the files: docs/inference.md.

Exit codes: 0 done; 2 bad arguments, a checkpoint that cannot be used, or a format that cannot be written here
(one line naming what blocks it, e.g. a missing package); 1 an output that cannot be written, or a file that does
not load in a fresh process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from xtc_ext.cli import HelpFormatter, run_program
from xtc_ext.engine import UsageError
from xtc_ext.engine.checkpoint import write_text
from xtc_ext.inference import load_trained_model
from xtc_ext.inference.exporting import (FORMATS, check_export, export_program, input_spec, onnx_check_available,
                                         write_export)

__all__ = ["build_parser", "export_checkpoint", "main"]

PROG = "python -m xtc_ext.export"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m xtc_ext.export`` (every option has a help text)."""
    p = argparse.ArgumentParser(prog=PROG, formatter_class=HelpFormatter,
                                description="Export a trained model's evaluation graph (torch.export, AOTInductor "
                                "or ONNX) and check it against eager on the ten shipped frames.")
    p.add_argument("checkpoint", help="best.pt or last.pt written by python -m xtc_ext.train")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="'export': torch.export program (.pt2, load with torch.export.load after import xtc_ext); "
                   "'aoti': AOTInductor package (.pt2); 'onnx': ONNX (needs the onnx and onnxscript packages)")
    p.add_argument("--output", required=True, help="the file to write")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input height and width, multiples of 32 (default: the size the model was trained at)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the file with eager on the ten shipped frames, here and in a fresh process")
    p.add_argument("--report", default=None, metavar="JSON", help="also write the results to this JSON file")
    return p


def export_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    """Export ``args.checkpoint`` in ``args.format`` to ``args.output``, check it, and return the results.

    Raises:
        UsageError: bad ``--size``, an ``--output`` the format cannot write, a missing package (named).
        CheckpointError: an unusable checkpoint. RuntimeError: the file does not load in a fresh process.
    """
    trained = load_trained_model(args.checkpoint)
    size = tuple(args.size) if args.size is not None else trained.input_size
    if size is None:
        raise UsageError(f"{args.checkpoint} was trained at the stored size of its dataset; give --size H W")
    if any(s <= 0 or s % 32 for s in size):
        raise UsageError(f"--size must be positive multiples of 32, got {list(size)}")
    output = Path(args.output)
    if args.format == "aoti" and output.suffix != ".pt2":
        raise UsageError(f"--format aoti writes a .pt2 package; --output must end with .pt2, got {output}")
    program = export_program(trained, size)
    write_export(args.format, program, output, trained.tasks)
    result: Dict[str, Any] = {"checkpoint": str(args.checkpoint), "format": args.format, "output": str(output),
                              "model": trained.recipe.name, "tasks": list(trained.tasks),
                              "input": input_spec(program), "check": None}
    blocked = onnx_check_available() if args.format == "onnx" else None
    if args.check and blocked:
        logging.getLogger("xtc_ext.inference").warning("%s not checked: %s", output, blocked)
        result["check"] = f"not checked: {blocked}"
    elif args.check:
        result["check"] = check_export(args.format, output, trained, size)
    if args.report:
        import json

        write_text(args.report, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``python -m xtc_ext.export``: prints what was written and the differences to eager."""
    args = build_parser().parse_args(argv)
    result = run_program(PROG, lambda: export_checkpoint(args), runtime_errors=(OSError, RuntimeError))
    print(f"{result['output']}: {result['format']} of {result['model']}, input image {result['input']}, "
          f"outputs {', '.join(result['tasks'])}")
    check = result["check"]
    if isinstance(check, dict):
        for key in ("max_abs_diff", "fresh_process_max_abs_diff"):
            if check[key] is not None:
                diffs = ", ".join(f"{t} {v:.3g}" for t, v in check[key].items())
                print(f"{key} vs eager on {check['frames']} frames: {diffs}")
    elif check:
        print(check)
    return result


if __name__ == "__main__":
    main()
