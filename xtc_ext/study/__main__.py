"""``python -m xtc_ext.study STUDY [--jobs N] [--dry-run | --report] [--output-dir DIR] [TRAIN OPTIONS]``.

Runs the unfinished runs of a study (a file, or the name of one in ``xtc_ext/configs/studies/``), then writes its
tables and figure to the study folder and prints the tables. Options that are not the study's own are training
options given to every run (``--data-root DATA``). ``--dry-run`` lists the runs, their state and their commands;
``--report`` rebuilds the tables and figure from what is on disk. The file format: docs/studies.md.

Exit codes: 0 every run finished; 1 a run failed (listed in ``STUDY_FOLDER/failures.log``; the tables hold the
others) or a report could not be built; 2 a bad study file or option (one line naming it); 130 interrupted
(Ctrl-C or SIGTERM: the running runs are stopped and resume at the next invocation).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from xtc_ext.engine import UsageError, exit_with_error
from xtc_ext.study.report import write_report
from xtc_ext.study.runner import run_command, run_state, run_study, threads_per_process
from xtc_ext.study.spec import Study, list_studies, load_study

PROG = "python -m xtc_ext.study"


def build_parser() -> argparse.ArgumentParser:
    """The study command's own options; the others are passed to every run."""
    p = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Run a study (rows x seeds of python -m xtc_ext.train), resumably, and write its tables and "
        "figure. Options not listed here are training options given to every run (e.g. --data-root DATA).",
        epilog="shipped studies: " + ", ".join(list_studies()))
    p.add_argument("study", help="a study YAML file, or the name of one in xtc_ext/configs/studies/")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at the same time; each process gets max(1, cores // (jobs * processes)) threads")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; run nothing")
    mode.add_argument("--report", action="store_true", help="only rebuild the tables and figure from the runs on disk")
    p.add_argument("--output-dir", default=None,
                   help="the study folder (default: the study's output_dir, else runs/study_NAME)")
    return p


def _dry_run(study: Study, jobs: int) -> None:
    threads = threads_per_process(jobs, study.processes)
    print(f"study {study.name}: {len(study.rows)} rows x {len(study.seeds)} seeds = {len(study.runs)} runs in "
          f"{study.output_dir}, {jobs} at a time, {study.processes} process(es) x {threads} thread(s) each")
    for run in study.runs:
        print(f"{run_state(run):8} {run.name}: python {' '.join(run_command(run, study.processes)[1:])}")


def _report(study: Study) -> None:
    for path in write_report(study):
        if path.suffix == ".md":
            print("\n" + path.read_text(), end="")
        print(f"wrote {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m xtc_ext.study`` (see the module docstring for the exit codes)."""
    args, extra = build_parser().parse_known_args(argv)
    try:
        if args.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
        study = load_study(args.study, extra=extra, output_dir=args.output_dir)
        if args.dry_run:
            _dry_run(study, args.jobs)
            return 0
        failed: List[str] = []
        if not args.report:
            failed = list(run_study(study, jobs=args.jobs).failed)
        _report(study)
    except UsageError as e:
        exit_with_error(PROG, e, 2)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        exit_with_error(PROG, e, 1)
    if failed:
        print(f"{PROG}: {len(failed)} run(s) failed: {', '.join(failed)} (see {study.output_dir}/failures.log)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
