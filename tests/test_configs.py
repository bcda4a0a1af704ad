"""Env presets and the command line's --env-kwargs overrides (orl_gym.configs)."""

from __future__ import annotations

import pytest

from orl_gym.configs import apply_env_overrides, env_preset
from orl_gym.env import EnvConfig


def test_overrides_change_one_field_of_a_nested_mapping_and_keep_the_rest():
    preset = env_preset("tiny-x4")
    result = apply_env_overrides(preset, ["reward.lpips_weight=0.4", "reward.efficiency_weight=0",
                                          "actions.parameters=[stride, eta]", "hr_size=128", "max_images=null"])
    assert result["reward"] == {**preset["reward"], "lpips_weight": 0.4, "efficiency_weight": 0}
    assert result["actions"] == {**preset["actions"], "parameters": ["stride", "eta"]}
    assert result["hr_size"] == 128 and result["max_images"] is None
    assert preset == env_preset("tiny-x4")  # the input is not modified
    config = EnvConfig.from_kwargs(**result)  # what gym.make builds from them
    assert config.reward.lpips_weight == 0.4 and config.reward.psnr_weight == preset["reward"]["psnr_weight"]
    assert tuple(config.actions.parameters) == ("stride", "eta")


def test_a_dotted_key_starts_from_the_defaults_when_the_preset_has_no_such_mapping():
    result = apply_env_overrides({"model": "bundled"}, ["reward.shaping_weight=0.5"])
    assert result == {"model": "bundled", "reward": {"shaping_weight": 0.5}}
    assert EnvConfig.from_kwargs(**result).reward.psnr_weight == 0.4  # RewardConfig's default


@pytest.mark.parametrize("override, message", [
    ("reward.lpips_wieght=0.4", "unknown reward field 'lpips_wieght'; accepted: psnr_weight"),
    ("hr=64", "unknown env argument 'hr'; accepted: model, data"),
    ("hr_size.x=1", "only reward.* and actions.* take dotted keys"),
    ("reward.lpips_weight", "expected KEY=VALUE"),
    ("reward.psnr_weight=.nan", "psnr_weight must be finite"),
    ("reward.psnr_weight=high", "reward.psnr_weight takes a number, got 'high'"),
    ("hr_size=big", "hr_size takes a number, got 'big'"),
    ("output_fix=sharpen", "output_fix: expected one of"),
    ("actions.max_stride=0", "max_stride"),
])
def test_bad_overrides_name_what_is_wrong(override, message):
    with pytest.raises(ValueError) as err:
        apply_env_overrides(env_preset("tiny-x4"), [override])
    assert message in str(err.value)


def test_key_values_parse_as_yaml_and_name_the_option():
    from orl_gym.configs import parse_key_values

    assert parse_key_values(["timestep_spacing=trailing", "steps_offset=1", "x=null"], "--opt", "a=b") == {
        "timestep_spacing": "trailing", "steps_offset": 1, "x": None}
    with pytest.raises(ValueError, match="--opt: expected KEY=VALUE, got 'trailing'"):
        parse_key_values(["trailing"], "--opt", "a=b")
