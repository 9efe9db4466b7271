"""Shared settings of the regularizer tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Many small ops: with OpenMP threads on a shared, loaded CPU, spin-waiting makes them far
    slower than one thread.  Restored after each module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
