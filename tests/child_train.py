"""``python -m xtc_ext.train`` on the tiny stand-in models, as a separate process (for kill -9 and torchrun
tests). Usage: ``python tests/child_train.py ARGS...`` or ``torchrun ... tests/child_train.py ARGS...``.

``KILL_AT=step:N`` makes the process SIGKILL itself at its N-th training step, ``KILL_AT=save:N`` in the
middle of writing its N-th checkpoint (the temporary file is half written when it dies).
"""

import os
import signal
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import pytest  # noqa: E402

from tiny_models import use_tiny_models  # noqa: E402
from xtc_ext import train  # noqa: E402
from xtc_ext.engine import checkpoint  # noqa: E402
from xtc_ext.recipes import XTasCRecipe  # noqa: E402


def _install_kill(spec: str) -> None:
    kind, _, n = spec.partition(":")
    count = [0]
    if kind == "save":
        real_save = checkpoint.torch.save

        def save(obj, f):
            count[0] += 1
            if count[0] == int(n):
                with open(f, "wb") as fh:
                    fh.write(b"half a checkpoint")
                    fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f)

        checkpoint.torch.save = save
    elif kind == "step":
        real_step = XTasCRecipe.training_step

        def step(self, *args, **kwargs):
            count[0] += 1
            if count[0] == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self, *args, **kwargs)

        XTasCRecipe.training_step = step


if __name__ == "__main__":
    use_tiny_models(pytest.MonkeyPatch())
    if os.environ.get("KILL_AT"):
        _install_kill(os.environ["KILL_AT"])
    train.main(sys.argv[1:])
