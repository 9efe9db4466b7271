"""pytest configuration shared by the test modules (``tests/<area>/test_*.py``, one folder per package area).

Tests run the checkout's Python sources: the repository root goes first on ``sys.path``. The
compiled ``xtc_ext._C`` is found in the installed copy (``pip install --no-build-isolation .``);
``xtc_ext`` refuses to import if that build is stale for the checkout's ``csrc/``.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Test modules live in sub-folders mirroring the package (ops/, data/, models/, ...) and import the
# shared helpers of this folder (``fixtures``, ``conftest``) by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The ten real NYUv2 frames shipped inside the package as package data (the default root of
# ``--dataset frames``, ``xtc_ext.data.frames.NYUV2_TEST10``); XTC_NYUV2_FRAMES overrides.
REAL_FRAMES = Path(os.environ.get("XTC_NYUV2_FRAMES", ROOT / "xtc_ext" / "data" / "nyuv2_test10"))
