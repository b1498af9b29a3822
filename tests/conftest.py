"""Shared fixtures: where the real face data sets are, and a thread cap for the 2-core machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tests run on 2 cores; more threads than that only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_datasets_dir() -> Path:
    """``../shared/datasets`` next to the checkout (or $MIDRE_SHARED_DATASETS)."""
    return Path(os.environ.get("MIDRE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real face data sets. CI has them, so a missing folder is an error, not a skip."""
    root = shared_datasets_dir()
    if not (root / "att_faces").is_dir():
        raise FileNotFoundError(f"{root}/att_faces is missing: the face data sets must sit at ../shared/datasets "
                                "(or set MIDRE_SHARED_DATASETS)")
    return root
