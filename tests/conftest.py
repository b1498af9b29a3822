"""Shared fixtures: where the real face data sets are, and a thread cap for the 2-core machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests._requirements import need_faces

# Tests run on 2 cores; more threads than that only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder of the real face data sets (needs ``att_faces``); skipped, or failed under
    ``MIDRE_REQUIRE_FACES=1``, when it is missing (see ``tests/_requirements.py``)."""
    return need_faces("att_faces")
