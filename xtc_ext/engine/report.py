"""The end-of-run report: ``metrics.json`` (everything about the run), ``metrics.md`` and a console summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch

from xtc_ext.engine.checkpoint import write_text
from xtc_ext.engine.config import TrainConfig
from xtc_ext.engine.logs import write_json
from xtc_ext.engine.protocol import Recipe

__all__ = ["write_report"]


def _markdown(result: Dict[str, Any], table: str, data: str) -> str:
    sel = result["selection"]
    lines = [
        f"# {result['model']}: {data}",
        "",
        f"Test: {result['splits']['test']}. Checkpoint: {sel['tested_checkpoint']} ({sel['description']}). "
        f"Parameters: {result['num_parameters']:,}.",
        "",
        table,
    ]
    if "delta_m" in result:
        lines += ["", f"Delta_m ({result['delta_m_formula']}) over {', '.join(result['delta_m_keys'])} against "
                      f"{', '.join(result['baseline_files'])}: **{result['delta_m']:+.2f} %**"]
    return "\n".join(lines) + "\n"


def write_report(config: TrainConfig, recipe: Recipe, *, progress: Mapping[str, Any], run: Mapping[str, Any],
                 tested: Mapping[str, Any], figures: Sequence[Path]) -> Dict[str, Any]:
    """Assemble the results of a finished run, write ``metrics.json`` and ``metrics.md`` to the output folder,
    print the test table, and return the results dict (the content of ``metrics.json``).

    Args:
        config: the run's configuration.
        recipe: the method (name, tasks, :meth:`~xtc_ext.engine.protocol.Recipe.run_info`, the metrics table, Δm).
        progress: the :class:`~xtc_ext.engine.loop.TrainState` fields (``history``, ``step``, ``step_losses``,
            ``skipped_steps``, ``before_training``).
        run: ``num_parameters``, ``splits`` (descriptions), ``train_time_s``, ``device``, ``world_size``,
            ``batch_size_per_rank``, ``amp``, ``channels_last``.
        tested: ``test`` (metrics) and ``selection`` (what was tested and why).
        figures: paths of the figures written.
    """
    out_dir = Path(config.output.output_dir)
    history = progress["history"]
    before = progress["before_training"]
    result: Dict[str, Any] = {
        "model": recipe.name,
        **recipe.run_info(),
        "tasks": list(recipe.tasks),
        "num_parameters": run["num_parameters"],
        "splits": dict(run["splits"]),
        **tested,
    }
    if before is not None:
        result["before_training"] = before
    if config.output.baseline:
        result.update(recipe.delta_m(tested["test"], config.output.baseline))
    result.update({
        "epochs_trained": history[-1]["epoch"] if history else 0,
        "steps": progress["step"],
        "skipped_steps": progress["skipped_steps"],
        "first_epoch_loss": history[0]["loss"] if history else None,
        "last_epoch_loss": history[-1]["loss"] if history else None,
        "loss_history": [r["loss"] for r in history],
        "step_losses": list(progress["step_losses"]),
        "train_time_s": run["train_time_s"],
        "figures": [str(Path(p).relative_to(out_dir)) for p in figures],
        "device": str(run["device"]),
        "world_size": run["world_size"],
        "batch_size_per_rank": run["batch_size_per_rank"],
        "batch_size_global": config.data.batch_size,
        "amp": run["amp"],
        "channels_last": run["channels_last"],
        "torch_version": torch.__version__,
        "args": config.recorded_arguments(),
    })
    write_json(out_dir / "metrics.json", result)
    table = recipe.metrics_table(tested["test"], before)
    write_text(out_dir / "metrics.md", _markdown(result, table, recipe.describe_data()))
    _print_summary(result, table, history, out_dir)
    return result


def _print_summary(result: Dict[str, Any], table: str, history: Sequence[Mapping[str, Any]], out_dir: Path) -> None:
    print(f"\nTest ({result['splits']['test']}), {result['selection']['tested_checkpoint']}, direct predictions:")
    print(table)
    if "delta_m" in result:
        print(f"delta_m vs baseline: {result['delta_m']:+.2f} %")
    if history:
        print(f"training loss {history[0]['loss']:.4f} (epoch {history[0]['epoch']}) -> {history[-1]['loss']:.4f} "
              f"(epoch {history[-1]['epoch']}), {result['train_time_s']:.0f} s; outputs in {out_dir}/")
