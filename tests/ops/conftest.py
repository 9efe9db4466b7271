"""Hypothesis profiles of the property-based op tests (tests/ops/test_properties.py).

``XTC_HYPOTHESIS_PROFILE`` selects one: ``ci`` (default: a few dozen examples per test, seconds, derandomized
so CI is reproducible) or ``thorough`` (hundreds of random examples per test, minutes; run it after changing
a kernel: ``XTC_HYPOTHESIS_PROFILE=thorough python -m pytest tests/ops/test_properties.py``).
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=30, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=600, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("XTC_HYPOTHESIS_PROFILE", "ci"))

# The op test modules share their inputs through tests/ops/op_cases.py (imported by name).
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.append(str(Path(__file__).resolve().parent))  # after tests/: "conftest" stays tests/conftest.py
