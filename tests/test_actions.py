"""Action decoding: ranges, stride bins, the guidance off zone, clipping, errors, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orl_gym.actions import ActionConfig, decode_action, encode_params


def test_round_trip_of_every_parameter():
    config = ActionConfig()
    for setting in ({}, {"stride": 3, "eta": 0.25, "noise_scale": 1.5, "guidance": 0.4}, {"stride": 4, "guidance": 1.0}):
        params = decode_action(encode_params(config, **setting), config).params
        expected = {"stride": 1, "eta": 0.0, "noise_scale": 1.0, "guidance": 0.0, **setting}
        for name, value in expected.items():
            assert getattr(params, name).item() == pytest.approx(value, abs=1e-6), name


def test_stride_bins_are_equal_and_guidance_has_an_off_zone():
    config = ActionConfig(parameters=("stride", "guidance"))
    grid = torch.linspace(-1, 1, 801)
    decoded = decode_action(torch.stack([grid, grid], dim=1), config).params
    counts = torch.bincount(decoded.stride, minlength=5)[1:]
    assert counts.min() >= 199 and counts.max() <= 202  # four strides, a quarter of [-1, 1] each
    off = decoded.guidance == 0
    assert off[grid < 0].all() and not off[grid > 0.01].any()
    assert decoded.guidance.max() == pytest.approx(1.0)


def test_inactive_parameters_take_defaults_and_clipping_is_counted():
    config = ActionConfig(parameters=("eta",))
    decoded = decode_action(np.array([[2.5], [-0.5]], dtype=np.float32), config)
    assert decoded.clipped.tolist() == [1, 0]
    assert decoded.params.eta.tolist() == pytest.approx([1.0, 0.25])
    assert decoded.params.stride.tolist() == [1, 1] and decoded.params.guidance.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad, match", [
    (dict(parameters=("stride", "temperature")), "parameters"),
    (dict(parameters=()), "parameters"),
    (dict(max_stride=0), "max_stride"),
    (dict(eta_range=(0.0, 1.5)), "eta_range"),
    (dict(guidance_off_fraction=1.0), "guidance_off_fraction"),
    (dict(defaults={"temperature": 1.0}), "unknown parameters"),
    (dict(parameters=("eta",), defaults={"stride": 9}), "stride = 9.0 is outside"),
    (dict(parameters=("eta",), defaults={"stride": 1.5}), "stride must be an integer"),
    (dict(parameters=("stride",), defaults={"eta": 2.0}), "eta = 2.0 is outside"),
])
def test_bad_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        ActionConfig(**bad)


def test_bad_actions():
    config = ActionConfig()
    with pytest.raises(ValueError, match="NaN or inf"):
        decode_action(np.array([0.0, np.nan, 0.0, 0.0]), config)
    with pytest.raises(ValueError, match="shape"):
        decode_action(np.zeros((2, 3)), config)
    with pytest.raises(ValueError, match="stride"):
        encode_params(config, stride=2.5)
    with pytest.raises(ValueError, match="not an active parameter"):
        encode_params(ActionConfig(parameters=("eta",)), stride=2)


def test_an_active_parameters_range_need_not_hold_its_default():
    # eta's default 0 is used only by encode_params when eta is active: the range alone is valid.
    config = ActionConfig(eta_range=(0.2, 1.0))
    with pytest.raises(ValueError, match="eta: 0.0 is outside its range"):
        encode_params(config)
    assert decode_action(encode_params(config, eta=0.2), config).params.eta.item() == pytest.approx(0.2)


def test_a_partial_defaults_mapping_changes_only_what_it_names():
    config = ActionConfig(parameters=("eta",), defaults={"stride": 2})
    params = decode_action(np.zeros((1, 1), dtype=np.float32), config).params
    assert params.stride.tolist() == [2] and params.noise_scale.tolist() == [1.0] and params.guidance.tolist() == [0.0]


@pytest.mark.parametrize("guidance_range", [(0.2, 1.0), (0.5, 0.5)])
def test_guidance_off_and_on_encode_whatever_the_on_range(guidance_range):
    config = ActionConfig(guidance_range=guidance_range)
    plain = decode_action(encode_params(config), config).params  # the plain-DDIM action
    assert plain.guidance.tolist() == [0.0] and plain.stride.tolist() == [1]
    high = guidance_range[1]
    assert decode_action(encode_params(config, guidance=high), config).params.guidance.item() == pytest.approx(high)
    with pytest.raises(ValueError, match="must be 0 \\(off\\) or in"):
        encode_params(config, guidance=guidance_range[0] / 2 if guidance_range[0] < high else 0.1)
