"""Run logs: ``log.jsonl`` and ``log.csv`` (one row per epoch), TensorBoard scalars, JSON files.

Every file goes through :func:`xtc_ext.engine.checkpoint.atomic_write`, so a resumed run rewrites exactly
what its checkpoint knows and a crash never leaves half a line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch.utils.tensorboard import SummaryWriter

from xtc_ext.engine.checkpoint import write_text

__all__ = ["write_json", "write_history", "TensorBoardLog"]


def write_json(path: Path, obj: Any) -> Path:
    """Atomic, indented JSON (NaN and infinities written as JavaScript literals, as Python's json does)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _csv_columns(history: Sequence[Dict[str, Any]]) -> List[str]:
    columns: List[str] = []
    for record in history:
        for key, value in record.items():
            keys = [f"weight_{i}" for i in range(len(value))] if key == "task_weights" else [key]
            columns.extend(k for k in keys if k not in columns)
    return columns


def write_history(out_dir: Path, history: Sequence[Dict[str, Any]]) -> None:
    """Rewrite ``log.jsonl`` (one JSON object per epoch) and ``log.csv`` (the same, the task weights as
    ``weight_i`` columns) from ``history``."""
    write_text(out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_csv_columns(history), restval="", lineterminator="\n")
    writer.writeheader()
    for record in history:
        row = {k: v for k, v in record.items() if k != "task_weights"}
        row.update({f"weight_{i}": w for i, w in enumerate(record.get("task_weights", []))})
        writer.writerow(row)
    write_text(out_dir / "log.csv", buf.getvalue())


class TensorBoardLog:
    """TensorBoard scalars in ``log_dir`` with optimizer steps on the x axis, or nothing when disabled.

    ``purge_step``: on resume, events at or after this step from an interrupted earlier run are dropped.
    """

    def __init__(self, enabled: bool, log_dir: Path, purge_step: Optional[int]) -> None:
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if enabled else None

    def epoch(self, record: Dict[str, Any], step_losses: Sequence[float], first_step: int) -> None:
        """Write one epoch: every numeric entry of ``record`` at its step (``train/``, ``val/``, ``time/``
        groups, task weights as ``weights/task_i``) and the per-step total losses."""
        if self.writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key in ("epoch", "step", "best") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            group = "val" if key.startswith("val_") else ("time" if key.endswith("_s") else "train")
            self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", value, step)
        for i, w in enumerate(record.get("task_weights", [])):
            self.writer.add_scalar(f"weights/task_{i}", w, step)
        self.writer.add_scalar("train/epoch", record["epoch"], step)
        for i, value in enumerate(step_losses):
            self.writer.add_scalar("train_step/loss", value, first_step + i + 1)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
