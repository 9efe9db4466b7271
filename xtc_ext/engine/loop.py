"""The training loop: epochs of training steps, validation and checkpoint selection, the final test.

:func:`fit` runs a whole training run for any :class:`~xtc_ext.engine.protocol.Recipe` on a
:class:`~xtc_ext.data.DataSplits` (the run protocol, docs/training.md):

* ``--val-fraction`` of the training split is the validation set (``splits.val``); every ``--eval-every``
  epochs (and after the last) the model is validated and ``best.pt`` keeps the best epoch
  (``--select-by score``: :meth:`Recipe.score`, or ``loss``: the validation loss);
* ``last.pt`` is written every ``--checkpoint-every`` epochs, after the last one and when ``best.pt``
  changes; checkpoints hold everything a resume needs (:meth:`Trainer.checkpoint_state`), so ``--resume``
  continues bitwise like the uninterrupted run (CPU);
* at the end ``best.pt`` (or the last epoch without validation) is tested once on ``splits.test``; results go
  to ``metrics.json``, ``metrics.md`` and figures (:mod:`xtc_ext.engine.report`);
* ``args.json`` holds the run's arguments from its start, so that a run killed before its first checkpoint
  can be resumed (from scratch) like any other.

Failure handling: a non-finite loss stops the run at that step (``--nonfinite stop``, :class:`NonFiniteLoss`)
or drops that step's update (``skip``, counted in the log); a checkpoint is never written with non-finite
weights; a failed write leaves the previous checkpoint intact (:func:`~xtc_ext.engine.checkpoint.atomic_write`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

import xtc_ext
from xtc_ext.data import DataSplits
from xtc_ext.engine.checkpoint import (
    args_dict,
    capture_rng_state,
    copy_file,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from xtc_ext.engine.evaluation import evaluate
from xtc_ext.engine.logs import TensorBoardLog, write_history, write_json
from xtc_ext.engine.optim import build_optimizer, build_schedule
from xtc_ext.engine.protocol import Recipe
from xtc_ext.engine.report import write_report
from xtc_ext.engine.runtime import make_loader, resolve_device, seed_everything

__all__ = ["CHECKPOINT_FORMAT", "NONFINITE_POLICIES", "RUN_ARGS_FILE", "NonFiniteLoss", "TrainState", "Trainer", "fit"]

log = logging.getLogger("xtc_ext.train")

CHECKPOINT_FORMAT = 3
"""Version of the checkpoint layout (3: the regularizer generator and the skipped-step count)."""

RUN_ARGS_FILE = "args.json"
"""Written in the output folder when a run starts: its arguments, so that ``--resume OUTPUT_DIR/last.pt`` of a
run killed before its first checkpoint starts it again from scratch (``xtc_ext.cli.parse_args``)."""

NONFINITE_POLICIES = ("stop", "skip")
"""``--nonfinite`` choices: stop the run at a non-finite loss, or skip that step's update."""


class NonFiniteLoss(RuntimeError):
    """A training step produced a non-finite loss and ``--nonfinite stop`` is in effect.

    The message gives the step, the epoch and the non-finite loss terms; the last checkpoint on disk is the
    last one written before (every checkpoint holds finite weights).
    """


@dataclasses.dataclass
class TrainState:
    """The progress of a run, saved in its checkpoints (plain values)."""

    epoch: int = 0
    step: int = 0
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    step_losses: List[float] = dataclasses.field(default_factory=list)
    best: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"epoch": None, "score": None})
    val_reference: Optional[Dict[str, float]] = None
    before_training: Optional[Dict[str, Any]] = None
    train_time_s: float = 0.0
    skipped_steps: int = 0

    @classmethod
    def from_checkpoint(cls, state: Dict[str, Any]) -> "TrainState":
        """The state stored in a checkpoint (older formats: missing fields take their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: state[k] for k in names if k in state and state[k] is not None}
        kept.setdefault("before_training", state.get("before_training"))
        return cls(**kept)


def _all_finite(module: torch.nn.Module) -> bool:
    tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class Trainer:
    """One training run of ``recipe`` on ``splits`` configured by ``args`` (see :func:`fit`).

    Args:
        args: the parsed and finalised command line (``python -m xtc_ext.train --help``).
        recipe: the method.
        splits: train / validation / test sets.
        show_before: evaluate the untrained model on the test set first (when the test set is the training
            data, as for the ten frames, to show that training learns).
    """

    def __init__(self, args: argparse.Namespace, recipe: Recipe, splits: DataSplits, *, show_before: bool) -> None:
        self.args, self.recipe, self.splits, self.show_before = args, recipe, splits, show_before
        self.device = resolve_device(args.device)
        seed_everything(args.seed)
        self.out_dir = Path(args.output_dir)
        self.generators = {"loader": torch.Generator().manual_seed(args.seed),
                           "regularizer": torch.Generator().manual_seed(args.seed + 1)}
        self.train_loader = self._loader(splits.train, True, self.generators["loader"])
        self.val_loader = self._loader(splits.val, False) if splits.val is not None else None
        self.test_loader = self._loader(splits.test, False)
        self.model = recipe.build_model().to(self.device)
        self.weighting = recipe.build_weighting(self.model).to(self.device)
        params = list(self.model.parameters()) + list(self.weighting.optimizer_parameters())
        self.optimizer = build_optimizer(args.optimizer, params, lr=args.lr, betas=args.betas,
                                         weight_decay=args.weight_decay)
        self.scheduler = build_schedule(args.lr_schedule, self.optimizer, step_size=args.lr_step,
                                        gamma=args.lr_gamma, epochs=args.epochs)
        self.state = TrainState()
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self._start = time.perf_counter()

    def _loader(self, dataset, shuffle: bool, generator: Optional[torch.Generator] = None):
        generator = generator if generator is not None else torch.Generator().manual_seed(self.args.seed)
        return make_loader(dataset, self.args.batch_size, shuffle=shuffle, workers=self.args.workers,
                           generator=generator, device=self.device)

    # ------------------------------------------------------------------ checkpoints
    def resume(self, state: Dict[str, Any]) -> None:
        """Restore model, weighting, optimizer, schedule, progress and every RNG state from a checkpoint."""
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState.from_checkpoint(state)
        restore_rng_state(state["rng"], self.generators)

    def checkpoint_state(self) -> Dict[str, Any]:
        """Everything a resume needs, as plain tensors and values (``torch.load(weights_only=True)``)."""
        st = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(self.generators),
            "args": args_dict(self.args),
            "num_classes": int(self.args.classes),
            "tasks": list(self.recipe.tasks),
            **dataclasses.asdict(st),
            "train_time_s": self.elapsed(),
            "xtc_ext_version": getattr(xtc_ext, "__version__", None),
        }

    def elapsed(self) -> float:
        """Training time of the run so far in seconds (resumed runs included)."""
        return self.state.train_time_s + time.perf_counter() - self._start

    def save(self, improved: bool) -> None:
        """Write ``last.pt`` (and copy it to ``best.pt`` when ``improved``), refusing non-finite weights.

        Raises:
            FloatingPointError: the model or weighting holds a non-finite value (nothing is written).
            OSError: the write failed; the previous checkpoint is intact (the message says so).
        """
        if not (_all_finite(self.model) and _all_finite(self.weighting)):
            raise FloatingPointError(f"non-finite weights after epoch {self.state.epoch}: no checkpoint written; "
                                     f"the last checkpoint on disk is the last finite one")
        last = save_checkpoint(self.out_dir / "last.pt", self.checkpoint_state())
        if improved:
            copy_file(last, self.out_dir / "best.pt")

    # ------------------------------------------------------------------ training
    def _check_step(self, values: torch.Tensor, epoch: int) -> bool:
        """True when the step's loss values are finite; else raise (stop) or return False (skip)."""
        if bool(torch.isfinite(values).all()):
            return True
        bad = [n for n, v in zip(self.recipe.loss_names, values.tolist()) if not math.isfinite(v)]
        message = (f"non-finite loss at step {self.state.step + 1} (epoch {epoch}): "
                   f"{', '.join(f'{n}={v}' for n, v in zip(self.recipe.loss_names, values.tolist()) if n in bad)}")
        if self.args.nonfinite == "stop":
            raise NonFiniteLoss(message + "; stopping (--nonfinite skip drops such steps instead); the last "
                                "checkpoint on disk is the last finite one")
        log.warning("%s; update skipped (--nonfinite skip)", message)
        return False

    def train_epoch(self, epoch: int) -> Tuple[Dict[str, Any], List[float], bool]:
        """One epoch of training steps. Returns ``(record, per-step total losses, stop)``; ``stop`` when
        ``--max-steps`` was reached."""
        args, st = self.args, self.state
        self.model.train()
        self.weighting.train()
        lr = self.optimizer.param_groups[0]["lr"]
        kept: List[torch.Tensor] = []
        totals: List[float] = []
        skipped = 0
        stop = False
        for batch in tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=not args.progress):
            self.optimizer.zero_grad(set_to_none=True)  # before the weighting: GradNorm writes its gradient there
            out = self.recipe.training_step(self.model, self.weighting, batch, self.device,
                                            self.generators["regularizer"])
            values = out.values.detach().float()
            if self._check_step(values, epoch):
                out.total.backward()
                self.optimizer.step()
                kept.append(values)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
            totals.append(float(values[0]))
            st.step += 1
            if args.max_steps and st.step >= args.max_steps:
                stop = True
                break
        self.scheduler.step()
        names = self.recipe.loss_names
        mean = torch.stack(kept).double().mean(dim=0) if kept else torch.full((len(names),), math.nan)
        if kept:
            self.weighting.epoch_end(mean[self.recipe.weighting_slice].float().to(self.device))
        record: Dict[str, Any] = {"epoch": epoch, "step": st.step, "lr": lr}
        record.update({name: float(v) for name, v in zip(names, mean.tolist())})
        record["task_weights"] = [float(w) for w in self.weighting.weights().tolist()]
        if skipped:
            record["skipped_steps"] = skipped
            st.skipped_steps += skipped
        return record, totals, stop

    def validate(self, epoch: int, record: Dict[str, Any], last: bool) -> bool:
        """Validate when due (every ``--eval-every`` epochs and after the last), add the ``val_*`` metrics
        and ``val_score`` to ``record``; returns whether the epoch is the best so far."""
        if self.val_loader is None or not (epoch % self.args.eval_every == 0 or last):
            return False
        st = self.state
        val = evaluate(self.model, self.val_loader, self.recipe, self.device)
        if st.val_reference is None:
            st.val_reference = self.recipe.score_reference(val)
        score = self.recipe.score(val, st.val_reference) if self.args.select_by == "score" else -val["loss"]
        record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float) and k != "num_samples"})
        record["val_score"] = score
        improved = st.best["score"] is None or score > st.best["score"]
        if improved:
            st.best = {"epoch": epoch, "score": score}
        record["best"] = improved
        return improved

    def _log_epoch(self, record: Dict[str, Any], improved: bool) -> None:
        names = self.recipe.loss_names
        val = ""
        if "val_score" in record:
            val = f" | val score {record['val_score']:.4f}" + (" (best)" if improved else "")
        log.info("epoch %3d | %s | w %s%s", record["epoch"], " | ".join(f"{n} {record[n]:.4f}" for n in names),
                 " ".join(f"{w:.3f}" for w in record["task_weights"]), val)

    def header(self) -> str:
        """The run's one-line description (model, data, splits, device, method settings)."""
        a, d = self.args, self.splits.describe
        return (f"{self.recipe.name}, {a.classes} classes, {self.num_parameters:,} parameters | dataset {a.dataset} at "
                f"{a.data_root} | train {d['train']} | val {d['val']} | test {d['test']} | device {self.device} | "
                f"{self.recipe.describe()} | xtc_ext built with torch {xtc_ext.build_info['torch_version']}")

    def train(self) -> None:
        """The epochs from the current state to ``--epochs`` (or ``--max-steps``)."""
        args, st = self.args, self.state
        if self.show_before and st.before_training is None:
            st.before_training = evaluate(self.model, self.test_loader, self.recipe, self.device)
        tb = TensorBoardLog(args.tensorboard, self.out_dir / "tb", purge_step=st.step + 1 if st.step else None)
        if st.history:
            write_history(self.out_dir, st.history)
        stop = bool(args.max_steps and st.step >= args.max_steps)
        start = st.epoch + 1
        epochs = tqdm(range(start, args.epochs + 1), desc="epochs", disable=not args.progress or stop,
                      dynamic_ncols=True, initial=start - 1, total=args.epochs)
        try:
            for epoch in epochs if not stop else ():
                epoch_start = time.perf_counter()
                record, totals, stop = self.train_epoch(epoch)
                last = epoch == args.epochs or stop
                improved = self.validate(epoch, record, last)
                record["epoch_time_s"] = time.perf_counter() - epoch_start
                record["elapsed_s"] = self.elapsed()
                st.epoch = epoch
                st.history.append(record)
                st.step_losses.extend(totals)
                write_history(self.out_dir, st.history)
                tb.epoch(record, totals, st.step - len(totals))
                self._log_epoch(record, improved)
                if epoch % args.checkpoint_every == 0 or last or improved:
                    self.save(improved)
                if stop:
                    break
        finally:
            tb.close()

    def test(self) -> Dict[str, Any]:
        """Test ``best.pt`` (or the last epoch without validation) once on the test set; returns the results."""
        st = self.state
        best_path = self.out_dir / "best.pt"
        if st.best["epoch"] is not None and best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
            tested, selection = "best.pt", f"best validation {self.args.select_by} (epoch {st.best['epoch']})"
        else:
            tested, selection = "last.pt", "none: last epoch (no validation set)"
        test = evaluate(self.model, self.test_loader, self.recipe, self.device, progress=self.args.progress,
                        desc="test")
        criterion = self.args.select_by if self.splits.val is not None else "none"
        return {"test": test, "selection": {"criterion": criterion, "best_epoch": st.best["epoch"],
                                            "best_score": st.best["score"], "tested_checkpoint": tested,
                                            "description": selection}}


def fit(args: argparse.Namespace, recipe: Recipe, splits: DataSplits, *, show_before: bool = False,
        figure_title: Optional[str] = None) -> Dict[str, Any]:
    """Train, select and test as configured by ``args``; write the outputs to ``args.output_dir``.

    Returns:
        the dict also written to ``metrics.json`` (:func:`xtc_ext.engine.report.write_report`).

    Raises:
        CheckpointError: ``args.resume`` is not a usable checkpoint.
        NonFiniteLoss: a non-finite loss with ``--nonfinite stop``.
        FloatingPointError: non-finite weights at a checkpoint.
        OSError: a checkpoint or log could not be written (previous files intact).
    """
    resume_state = load_checkpoint(args.resume) if getattr(args, "resume", None) else None
    trainer = Trainer(args, recipe, splits, show_before=show_before)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.output_dir) / RUN_ARGS_FILE, args_dict(args))
    if resume_state is not None:
        trainer.resume(resume_state)
        log.info("resumed %s at epoch %d (step %d)", args.resume, trainer.state.epoch, trainer.state.step)
        del resume_state
    log.info("%s", trainer.header())
    trainer.train()
    tested = trainer.test()
    figures = recipe.figures(trainer.model, splits.test, range(min(args.num_figures, len(splits.test))),
                             trainer.out_dir / "figures", figure_title or recipe.name, trainer.device)
    run = {"num_parameters": trainer.num_parameters, "splits": splits.describe, "train_time_s": trainer.elapsed(),
           "device": trainer.device}
    return write_report(args, recipe, progress=dataclasses.asdict(trainer.state), run=run, tested=tested,
                        figures=figures)
