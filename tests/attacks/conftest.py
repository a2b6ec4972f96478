"""The attack tests use tiny models: one intra-op thread is faster for them, and on a busy 2-core machine
two spinning OpenMP threads can be 50x slower than one."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
