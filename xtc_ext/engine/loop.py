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

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

import xtc_ext
from xtc_ext.data import DataSplits
from xtc_ext.engine.checkpoint import (
    capture_rng_state,
    copy_file,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from xtc_ext.engine.config import TrainConfig
from xtc_ext.engine.distributed import Dist, gather_objects, init_distributed, run_on_main, sync_gradients
from xtc_ext.engine.evaluation import evaluate
from xtc_ext.engine.logs import TensorBoardLog, write_history, write_json
from xtc_ext.engine.optim import build_optimizer, build_schedule
from xtc_ext.engine.protocol import Recipe
from xtc_ext.engine.report import write_report
from xtc_ext.engine.runtime import (
    autocast,
    progress_bar,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
    seed_everything,
)
from xtc_ext.engine.setup import build_loaders, per_rank_batch_size, training_model

__all__ = ["CHECKPOINT_FORMAT", "RUN_ARGS_FILE", "NonFiniteLoss", "TrainState", "Trainer", "fit"]

log = logging.getLogger("xtc_ext.train")

CHECKPOINT_FORMAT = 3
"""Version of the checkpoint layout (3: the regularizer generator and the skipped-step count)."""

RUN_ARGS_FILE = "args.json"
"""Written in the output folder when a run starts: its arguments, so that ``--resume OUTPUT_DIR/last.pt`` of a
run killed before its first checkpoint starts it again from scratch (``xtc_ext.cli.parse_args``)."""


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
    flags = [torch.isfinite(t).all() for t in module.state_dict().values()
             if isinstance(t, torch.Tensor) and t.is_floating_point()]  # not extra states (dicts)
    return not flags or bool(torch.stack(flags).all())  # one host synchronisation for the whole state


class Trainer:
    """One training run of ``recipe`` on ``splits`` configured by ``config`` (see :func:`fit`).

    Args:
        config: the engine's configuration (:class:`~xtc_ext.engine.config.TrainConfig`).
        recipe: the method.
        splits: train / validation / test sets.
        show_before: evaluate the untrained model on the test set first (when the test set is the training
            data, as for the ten frames, to show that training learns).
    """

    def __init__(self, config: TrainConfig, recipe: Recipe, splits: DataSplits, *, show_before: bool) -> None:
        self.config, self.recipe, self.splits, self.show_before = config, recipe, splits, show_before
        rt, opt = config.runtime, config.optim
        self.dist, self.device = init_distributed(resolve_device(rt.device))
        self.batch_per_rank = per_rank_batch_size(config.data.batch_size, self.dist)
        self.amp = resolve_amp(rt.amp, self.device)
        self.channels_last = resolve_channels_last(rt.channels_last, self.device, self.amp)
        seed_everything(rt.seed)
        self.out_dir = Path(config.output.output_dir)
        self.generators = {"loader": torch.Generator().manual_seed(rt.seed),
                           "regularizer": torch.Generator().manual_seed(rt.seed + 1)}
        self.loaders = build_loaders(config.data, rt.seed, splits, self.dist, self.device, self.generators["loader"])
        model = recipe.build_model()
        if rt.sync_bn and self.dist.enabled:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else
                              torch.contiguous_format)
        hook = getattr(self.model, "shared_parameters", None)
        self.shared_parameters: Tuple[torch.Tensor, ...] = tuple(hook()) if callable(hook) else ()
        self.weighting = recipe.build_weighting(self.model).to(self.device)
        self._names: Tuple[str, ...] = ("loss",)  # the logged names, known after the first step
        self._tasks: Tuple[str, ...] = ()
        self.auxiliary = recipe.build_auxiliary(self.model).to(self.device)
        params = (list(self.model.parameters()) + list(self.weighting.optimizer_parameters())
                  + list(self.auxiliary.parameters()))
        self.optimizer = build_optimizer(opt.optimizer, params, lr=opt.lr, betas=opt.betas,
                                         weight_decay=opt.weight_decay)
        self.scheduler = build_schedule(opt.lr_schedule, self.optimizer, step_size=opt.lr_step,
                                        gamma=opt.lr_gamma, epochs=opt.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        if self.dist.world_size > 1:  # one augmentation stream per rank (the initialisations above are identical)
            seed_everything(rt.seed + self.dist.rank)
        self.train_model = training_model(self.model, rt.compile, self.dist, self.device)
        self.state = TrainState()
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self._start = time.perf_counter()

    def _evaluate(self, loader, **kwargs) -> Dict[str, Any]:
        return evaluate(self.model, loader, self.recipe, self.device, amp=self.amp,
                        channels_last=self.channels_last, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def resume(self, state: Dict[str, Any]) -> None:
        """Restore model, weighting, training-only modules, optimizer, schedule, gradient scaler, progress and
        every RNG state (this rank's, when the checkpoint holds one per rank) from a checkpoint."""
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.auxiliary.load_state_dict(state.get("auxiliary", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.state = TrainState.from_checkpoint(state)
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) != self.dist.world_size:
            log.warning("checkpoint written by %d process(es), resumed by %d: the data order and augmentation "
                        "continue from rank 0's state, not bitwise like the uninterrupted run",
                        len(ranks), self.dist.world_size)
        restore_rng_state(ranks[self.dist.rank] if self.dist.rank < len(ranks) else ranks[0], self.generators)

    def checkpoint_state(self) -> Dict[str, Any]:
        """Everything a resume needs, as plain tensors and values (``torch.load(weights_only=True)``). Every
        rank must call it (the RNG states of all ranks are gathered)."""
        rng = gather_objects(capture_rng_state(self.generators))
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "auxiliary": self.auxiliary.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng[0],
            "rng_ranks": rng if len(rng) > 1 else [],
            "args": self.config.recorded_arguments(),
            **self.recipe.run_info(),
            "tasks": list(self.recipe.tasks),
            **dataclasses.asdict(self.state),
            "train_time_s": self.elapsed(),
            "world_size": self.dist.world_size,
            "xtc_ext_version": getattr(xtc_ext, "__version__", None),
        }

    def elapsed(self) -> float:
        """Training time of the run so far in seconds (resumed runs included)."""
        return self.state.train_time_s + time.perf_counter() - self._start

    def save(self, improved: bool) -> None:
        """Write ``last.pt`` (and copy it to ``best.pt`` when ``improved``) on rank 0, refusing non-finite
        weights; every rank waits for the write and raises if it failed.

        Raises:
            FloatingPointError: the model, weighting or training-only modules hold a non-finite value (nothing
                is written).
            OSError: the write failed; the previous checkpoint is intact (the message says so).
        """
        if not all(_all_finite(m) for m in (self.model, self.weighting, self.auxiliary)):
            raise FloatingPointError(f"non-finite weights after epoch {self.state.epoch}: no checkpoint written; "
                                     f"the last checkpoint on disk is the last finite one")
        state = self.checkpoint_state()

        def write() -> None:
            last = save_checkpoint(self.out_dir / "last.pt", state)
            if improved:
                copy_file(last, self.out_dir / "best.pt")

        run_on_main(self.dist, write)

    # ------------------------------------------------------------------ training
    def _check_step(self, values: torch.Tensor, epoch: int) -> bool:
        """True when the step's loss values are finite; else raise (stop) or return False (skip)."""
        if bool(torch.isfinite(values).all()):
            return True
        names = self._names + tuple(f"task loss {t}" for t in self._tasks)
        listed = ", ".join(f"{n}={v}" for n, v in zip(names, values.tolist()) if not math.isfinite(v))
        message = f"non-finite loss at step {self.state.step + 1} (epoch {epoch}): {listed}"
        if self.config.runtime.nonfinite == "stop":
            raise NonFiniteLoss(message + "; stopping (--nonfinite skip drops such steps instead); the last "
                                "checkpoint on disk is the last finite one")
        log.warning("%s; update skipped (--nonfinite skip)", message)
        return False

    def _step(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward, losses and their weighting of one batch under autocast. Returns the total loss and the task
        losses ``[T]`` (on the device, for the backward) and the values (the logged ones, then the task losses)
        averaged over the ranks, copied to the host: the step's one host synchronisation, which the finite check,
        the logs and the weighting's epoch means then read without another."""
        # every tensor to the device once, without blocking (the recipes' and the regularizer's own ``.to`` are
        # then no-ops); the image in the run's memory format
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        batch["image"] = batch["image"].to(memory_format=self._format)
        with autocast(self.device, self.amp):
            out = self.recipe.training_step(self.train_model, batch, self.device, self.generators["regularizer"])
            total, losses = out.weighted(self.weighting)
        self._names, self._tasks = out.names(), tuple(out.losses)
        values = out.values(total)
        if self.dist.enabled:  # one small collective: the global values, and a shared finite/non-finite verdict
            torch.distributed.all_reduce(values)
            values /= self.dist.world_size
        return total, losses, values.cpu()

    def _update(self, total: torch.Tensor, losses: torch.Tensor) -> None:
        self.weighting.scaled_backward(total, losses, self.shared_parameters, self.scaler)
        sync_gradients([self.weighting, self.auxiliary])
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def train_step(self, batch: Dict[str, Any], epoch: int) -> Tuple[torch.Tensor, bool]:
        """One training step on ``batch``: zero the gradients (before the weighting: its forward may write
        gradients), forward and losses under autocast, the finite check, the weighting's backward and the
        optimizer step. Returns ``(values, updated)``: the step's values (float32 on the host: the total, the
        logged values, then the task losses) and whether the parameters were updated (False: a non-finite
        step skipped under ``--nonfinite skip``).

        Raises:
            NonFiniteLoss: a non-finite step under ``--nonfinite stop``.
        """
        self.optimizer.zero_grad(set_to_none=True)
        total, losses, values = self._step(batch)
        if self._check_step(values, epoch):
            self._update(total, losses)
            return values, True
        self.optimizer.zero_grad(set_to_none=True)
        return values, False

    def train_epoch(self, epoch: int) -> Tuple[Dict[str, Any], List[float], bool]:
        """One epoch of training steps. Returns ``(record, per-step total losses, stop)``; ``stop`` when
        ``--max-steps`` was reached."""
        st, max_steps = self.state, self.config.optim.max_steps
        for module in (self.model, self.weighting, self.auxiliary):
            module.train()
        if self.loaders.train_sampler is not None:
            self.loaders.train_sampler.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        kept: List[torch.Tensor] = []
        totals: List[float] = []
        skipped, stop = 0, False
        for batch in progress_bar(self.loaders.train, self._progress, desc=f"epoch {epoch}", leave=False):
            values, updated = self.train_step(batch, epoch)
            if updated:
                kept.append(values)
            else:
                skipped += 1
            totals.append(float(values[0]))
            st.step += 1
            if max_steps and st.step >= max_steps:
                stop = True
                break
        self.scheduler.step()
        names = self._names
        size = len(names) + len(self._tasks)
        mean = torch.stack(kept).double().mean(dim=0) if kept else torch.full((size,), math.nan)
        if kept:
            self.weighting.epoch_end(mean[len(names):].float().to(self.device))
        record: Dict[str, Any] = {"epoch": epoch, "step": st.step, "lr": lr}
        record.update({name: float(v) for name, v in zip(names, mean.tolist())})
        record["task_weights"] = [float(w) for w in self.weighting.weights().tolist()]
        record.update(self.recipe.epoch_log())
        if skipped:
            record["skipped_steps"] = skipped
            st.skipped_steps += skipped
        if self.dist.enabled:
            record.update(world_size=self.dist.world_size, batch_size_per_rank=self.batch_per_rank,
                          batch_size_global=self.config.data.batch_size)
        return record, totals, stop

    @property
    def _format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def _progress(self) -> bool:
        return bool(self.config.output.progress) and self.dist.is_main

    def validate(self, epoch: int, record: Dict[str, Any], last: bool) -> bool:
        """Validate when due (every ``--eval-every`` epochs and after the last), add the ``val_*`` metrics
        and ``val_score`` to ``record``; returns whether the epoch is the best so far."""
        if self.loaders.val is None or not (epoch % self.config.output.eval_every == 0 or last):
            return False
        st = self.state
        val = self._evaluate(self.loaders.val)
        if st.val_reference is None:
            st.val_reference = self.recipe.score_reference(val)
        score = self.recipe.score(val, st.val_reference) if self.config.output.select_by == "score" else -val["loss"]
        record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float) and k != "num_samples"})
        record["val_score"] = score
        improved = st.best["score"] is None or score > st.best["score"]
        if improved:
            st.best = {"epoch": epoch, "score": score}
        record["best"] = improved
        return improved

    def _log_epoch(self, record: Dict[str, Any], improved: bool) -> None:
        names = self._names
        val = ""
        if "val_score" in record:
            val = f" | val score {record['val_score']:.4f}" + (" (best)" if improved else "")
        log.info("epoch %3d | %s | w %s%s", record["epoch"], " | ".join(f"{n} {record[n]:.4f}" for n in names),
                 " ".join(f"{w:.3f}" for w in record["task_weights"]), val)

    def header(self) -> str:
        """The run's one-line description (model, data, splits, device, processes, precision, method)."""
        d = self.splits.describe
        procs = (f" | {self.dist.world_size} processes, batch {self.config.data.batch_size} = {self.dist.world_size} x "
                 f"{self.batch_per_rank}" if self.dist.enabled else "")
        precision = f"amp {str(self.amp).replace('torch.', '') if self.amp else 'none'}"
        precision += ", channels_last" if self.channels_last else ""
        precision += ", compiled" if self.config.runtime.compile else ""
        return (f"{self.recipe.name}, {self.num_parameters:,} parameters | {self.recipe.describe_data()} | "
                f"train {d['train']} | val {d['val']} | test {d['test']} | device {self.device}"
                f"{procs} | {precision} | {self.recipe.describe()} | xtc_ext built with torch "
                f"{xtc_ext.build_info['torch_version']}")

    def _finish_epoch(self, record: Dict[str, Any], totals: List[float], tb: TensorBoardLog, improved: bool) -> None:
        st = self.state
        st.epoch = record["epoch"]
        st.history.append(record)
        st.step_losses.extend(totals)
        if self.dist.is_main:
            write_history(self.out_dir, st.history)
            tb.epoch(record, totals, st.step - len(totals))
            self._log_epoch(record, improved)

    def train(self) -> None:
        """The epochs from the current state to ``--epochs`` (or ``--max-steps``)."""
        opt, out, st = self.config.optim, self.config.output, self.state
        if self.show_before and st.before_training is None:
            st.before_training = self._evaluate(self.loaders.test)
        if st.epoch == 0 and self.dist.is_main:
            self.recipe.training_figures(self.model, self.splits.test, self.out_dir / "figures", self.device, "before")
        tb = TensorBoardLog(out.tensorboard and self.dist.is_main, self.out_dir / "tb",
                            purge_step=st.step + 1 if st.step else None)
        if st.history and self.dist.is_main:
            write_history(self.out_dir, st.history)
        stop = bool(opt.max_steps and st.step >= opt.max_steps)
        start = st.epoch + 1
        epochs = progress_bar(range(start, opt.epochs + 1), self._progress and not stop, desc="epochs",
                              dynamic_ncols=True, initial=start - 1, total=opt.epochs)
        try:
            for epoch in epochs if not stop else ():
                epoch_start = time.perf_counter()
                record, totals, stop = self.train_epoch(epoch)
                last = epoch == opt.epochs or stop
                improved = self.validate(epoch, record, last)
                record["epoch_time_s"] = time.perf_counter() - epoch_start
                record["elapsed_s"] = self.elapsed()
                self._finish_epoch(record, totals, tb, improved)
                if epoch % out.checkpoint_every == 0 or last or improved:
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
            tested, selection = "best.pt", f"best validation {self.config.output.select_by} (epoch {st.best['epoch']})"
        else:
            tested, selection = "last.pt", "none: last epoch (no validation set)"
        test = self._evaluate(self.loaders.test, progress=self._progress, desc="test")
        criterion = self.config.output.select_by if self.splits.val is not None else "none"
        return {"test": test, "selection": {"criterion": criterion, "best_epoch": st.best["epoch"],
                                            "best_score": st.best["score"], "tested_checkpoint": tested,
                                            "description": selection}}


def fit(config: TrainConfig, recipe: Recipe, splits: DataSplits, *, show_before: bool = False,
        figure_title: Optional[str] = None) -> Dict[str, Any]:
    """Train, select and test ``recipe`` on ``splits`` as ``config`` says; write the outputs to
    ``config.output.output_dir``.

    Args:
        config: the engine's configuration (:class:`~xtc_ext.engine.config.TrainConfig`).
        recipe: the method (:class:`~xtc_ext.engine.protocol.Recipe`).
        splits: train / validation / test sets (:class:`~xtc_ext.data.DataSplits`).
        show_before: evaluate the untrained model on the test set first (the ten frames: test = training data).
        figure_title: title of the prediction figures (default: the recipe's name).

    Returns:
        the dict also written to ``metrics.json`` (:func:`xtc_ext.engine.report.write_report`).

    Raises:
        CheckpointError: ``config.output.resume`` is not a usable checkpoint.
        NonFiniteLoss: a non-finite loss with ``--nonfinite stop``.
        FloatingPointError: non-finite weights at a checkpoint.
        OSError: a checkpoint or log could not be written (previous files intact).
    """
    out = config.output
    resume_state = load_checkpoint(out.resume) if out.resume else None
    trainer = Trainer(config, recipe, splits, show_before=show_before)
    main = trainer.dist.is_main
    if main:
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(trainer.out_dir / RUN_ARGS_FILE, config.recorded_arguments())
    if resume_state is not None:
        trainer.resume(resume_state)
        log.info("resumed %s at epoch %d (step %d)", out.resume, trainer.state.epoch, trainer.state.step)
        del resume_state
    if main:
        log.info("%s", trainer.header())
    trainer.train()
    tested = trainer.test()
    result: Dict[str, Any] = {} if main else {"rank": trainer.dist.rank, **tested}

    def report() -> None:  # rank 0 writes the figures and the report; the other ranks wait for it
        figures = recipe.figures(trainer.model, splits.test, range(min(out.num_figures, len(splits.test))),
                                 trainer.out_dir / "figures", figure_title or recipe.name, trainer.device)
        figures += recipe.training_figures(trainer.model, splits.test, trainer.out_dir / "figures", trainer.device,
                                           "after")
        run = {"num_parameters": trainer.num_parameters, "splits": splits.describe, "train_time_s": trainer.elapsed(),
               "device": trainer.device, "world_size": trainer.dist.world_size,
               "batch_size_per_rank": trainer.batch_per_rank,
               "amp": str(trainer.amp).replace("torch.", "") if trainer.amp else "none",
               "channels_last": trainer.channels_last}
        result.update(write_report(config, recipe, progress=dataclasses.asdict(trainer.state), run=run, tested=tested,
                                   figures=figures))

    run_on_main(trainer.dist, report)
    return result
