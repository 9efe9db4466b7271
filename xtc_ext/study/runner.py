"""Running a study's runs: each one a normal ``python -m xtc_ext.train`` process, N at a time, resumable.

- A run whose folder holds ``metrics.json`` is finished and skipped.
- A run with a ``last.pt`` but no ``metrics.json`` was interrupted: it continues with ``--resume RUN/last.pt``
  (the training program restores model, optimizer, RNG states and history).
- A run killed before its first checkpoint (``args.json`` only) starts again from scratch, as a new one.
- Each process gets ``OMP_NUM_THREADS = max(1, cores // (jobs * processes))`` so that the runs together do not
  oversubscribe the cores; a run of several processes starts under torchrun (``--nproc-per-node``).
- The output of a run goes to ``RUN/train.log`` (appended to when it resumes); one progress line per run goes
  to stdout; a failed run does not stop the study: it is listed in ``STUDY_FOLDER/failures.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from xtc_ext.engine import RUN_ARGS_FILE
from xtc_ext.study.spec import Run, Study

__all__ = ["TRAIN_PROGRAM", "RunOutcome", "run_state", "run_command", "threads_per_process", "run_study",
           "FAILURES_FILE", "LOG_FILE"]

TRAIN_PROGRAM: Tuple[str, ...] = ("-m", "xtc_ext.train")
"""The training program after the Python interpreter (or after torchrun's options)."""

LOG_FILE = "train.log"
"""Each run's stdout and stderr, in its folder."""

FAILURES_FILE = "failures.log"
"""The failed runs of the last invocation, in the study folder (absent when none failed)."""

_CHECKPOINT = "last.pt"
_METRICS = "metrics.json"


@dataclass
class RunOutcome:
    """What happened to the runs of one invocation: run names by outcome, failures with their reason."""

    skipped: List[str] = field(default_factory=list)
    finished: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)


def run_state(run: Run) -> str:
    """``"done"`` (``metrics.json``), ``"resume"`` (``last.pt``), ``"restart"`` (``args.json`` only: killed before
    its first checkpoint) or ``"new"`` (nothing written yet)."""
    folder = run.folder
    if (folder / _METRICS).is_file():
        return "done"
    if (folder / _CHECKPOINT).is_file():
        return "resume"
    return "restart" if (folder / RUN_ARGS_FILE).is_file() else "new"


def usable_cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process(jobs: int, processes: int, cores: Optional[int] = None) -> int:
    """``max(1, cores // (jobs * processes))``: the CPU threads of each training process (``cores``: default
    :func:`usable_cores`)."""
    return max(1, int(cores or usable_cores()) // (jobs * processes))


def run_command(run: Run, processes: int = 1, program: Optional[Sequence[str]] = None) -> List[str]:
    """The command line of ``run``: ``python -m xtc_ext.train ARGS`` (``python -m torch.distributed.run
    --standalone --nproc-per-node K -m xtc_ext.train ARGS`` when ``processes`` > 1), plus
    ``--resume RUN/last.pt`` when the run was interrupted after a checkpoint. ``program``: what follows the
    interpreter (default :data:`TRAIN_PROGRAM`, read at the call)."""
    head = [sys.executable]
    if processes > 1:
        head += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    resume = ["--resume", str(run.folder / _CHECKPOINT)] if run_state(run) == "resume" else []
    return head + list(program or TRAIN_PROGRAM) + list(run.argv) + resume


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


@dataclass
class _Active:
    run: Run
    process: subprocess.Popen
    log: TextIO
    started: float


class _Pool:
    """The running processes of a study and the bookkeeping of their outcomes."""

    def __init__(self, study: Study, jobs: int, program: Optional[Sequence[str]], say: Callable[[str], None]) -> None:
        self.study, self.jobs, self.program, self.say = study, jobs, program, say
        self.env = dict(os.environ)
        threads = str(threads_per_process(jobs, study.processes))
        self.env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self.active: List[_Active] = []
        self.outcome = RunOutcome()
        self.total = len(study.runs)

    def count(self) -> str:
        return f"[{len(self.outcome.skipped) + len(self.outcome.finished) + len(self.outcome.failed)}/{self.total}]"

    def start(self, run: Run) -> None:
        state = run_state(run)
        cmd = run_command(run, self.study.processes, self.program)
        run.folder.mkdir(parents=True, exist_ok=True)
        log = open(run.folder / LOG_FILE, "a")
        log.write(f"=== python -m xtc_ext.study: {time.strftime('%Y-%m-%d %H:%M:%S')} ({state}): {' '.join(cmd)}\n")
        log.flush()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL)
        self.active.append(_Active(run, process, log, time.monotonic()))
        how = {"resume": f"resuming from {run.folder / _CHECKPOINT}", "restart": "restarting (no checkpoint yet)"}
        self.say(f"{self.count()} started {run.name}" + (f" ({how[state]})" if state in how else ""))

    def reap(self) -> None:
        for item in [a for a in self.active if a.process.poll() is not None]:
            self.active.remove(item)
            item.log.close()
            seconds = time.monotonic() - item.started
            code = item.process.returncode
            run = item.run
            if code == 0 and run_state(run) == "done":
                self.outcome.finished.append(run.name)
                self.tidy(run)
                self.say(f"{self.count()} finished {run.name} in {seconds:.0f} s")
            else:
                reason = f"exit code {code}: {_last_line(run.folder / LOG_FILE)}"
                self.outcome.failed[run.name] = reason
                self.say(f"{self.count()} FAILED {run.name} after {seconds:.0f} s ({reason}); log: {run.folder / LOG_FILE}")

    def tidy(self, run: Run) -> None:
        """Delete the checkpoints of a finished run when the study does not keep them."""
        if not self.study.keep_checkpoints:
            for pt in run.folder.glob("*.pt"):
                pt.unlink()

    def stop(self) -> None:
        """Terminate the running processes (SIGTERM, then SIGKILL after 30 s)."""
        for item in self.active:
            item.process.terminate()
        deadline = time.monotonic() + 30
        for item in self.active:
            try:
                item.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                item.process.kill()
                item.process.wait()
            item.log.close()
        self.active.clear()


def _raise_interrupt(signum, frame):  # SIGTERM ends a study as Ctrl-C does: its runs are stopped first
    raise KeyboardInterrupt(f"signal {signum}")


def run_study(study: Study, jobs: int = 1, program: Optional[Sequence[str]] = None,
              say: Callable[[str], None] = lambda line: print(line, flush=True)) -> RunOutcome:
    """Run the unfinished runs of ``study``, ``jobs`` at a time, and return what happened.

    A failed run (non-zero exit, or no ``metrics.json``) is reported and listed in ``failures.log``; the others go
    on. Ctrl-C or SIGTERM terminates the running processes (their last checkpoints stay, so the next invocation
    resumes them) and raises :class:`KeyboardInterrupt`.

    Args:
        study: the loaded study (:func:`xtc_ext.study.spec.load_study`).
        jobs: runs at the same time (>= 1).
        program: the training program's arguments after the interpreter (default :data:`TRAIN_PROGRAM`).
        say: where the progress lines go.

    Raises:
        ValueError: ``jobs`` < 1.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    study.output_dir.mkdir(parents=True, exist_ok=True)
    if jobs * study.processes > usable_cores():
        say(f"note: {jobs} jobs x {study.processes} process(es) > {usable_cores()} cores: the runs share cores "
            "(one thread each)")
    pool = _Pool(study, jobs, program, say)
    pending = []
    for run in study.runs:
        if run_state(run) == "done":
            pool.outcome.skipped.append(run.name)
            pool.tidy(run)  # finished while the previous invocation was being stopped
            say(f"{pool.count()} skipped {run.name} (finished: {run.folder / _METRICS})")
        else:
            pending.append(run)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while pending or pool.active:
            while pending and len(pool.active) < jobs:
                pool.start(pending.pop(0))
            time.sleep(0.2)
            pool.reap()
    finally:
        pool.stop()
        signal.signal(signal.SIGTERM, previous)
    failures = study.output_dir / FAILURES_FILE
    if pool.outcome.failed:
        failures.write_text("".join(f"{name}\t{why}\n" for name, why in pool.outcome.failed.items()))
    elif failures.exists():
        failures.unlink()
    return pool.outcome
