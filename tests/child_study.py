"""``python -m xtc_ext.study`` whose runs train the tiny stand-in models (each run is ``python
tests/child_train.py ARGS``, see that file; ``KILL_AT`` in the environment reaches the runs). Usage:
``python tests/child_study.py STUDY [OPTIONS]``.
"""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from xtc_ext.study import __main__ as study_cli  # noqa: E402
from xtc_ext.study import runner  # noqa: E402

CHILD_TRAIN = str(Path(__file__).resolve().parent / "child_train.py")

if __name__ == "__main__":
    runner.TRAIN_PROGRAM = (CHILD_TRAIN,)
    sys.exit(study_cli.main(sys.argv[1:]))
