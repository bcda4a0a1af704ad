"""Shared fixtures: tiny seeded random models (no downloads) and the real-image root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from orl_gym.models import LDMSR, LDMSRArchitecture

# Two cores shared by the suite: one intra-op thread keeps timings stable and avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model() -> LDMSR:
    """A tiny random LDM-SR (x4) on the CPU, seeded: the same weights every run."""
    return LDMSRArchitecture.tiny().build(seed=0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real aerial images named by ORL_GYM_DATA (CI: ../shared/data); skip when unset."""
    root = os.environ.get("ORL_GYM_DATA")
    if not root:
        pytest.skip("ORL_GYM_DATA is not set: real-image tests need the shared data folder")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        pytest.fail(f"ORL_GYM_DATA={root} is not a folder")
    return path
