"""Per-category evaluation: each image once per method, paired intervals, report files."""

from __future__ import annotations

import numpy as np
import pytest

from orl_gym.actions import ActionConfig, encode_params
from orl_gym.data import DataConfig, PairDataset
from orl_gym.evaluation import (
    constant_policy,
    evaluate_method,
    grid_search_constant_action,
    paired_interval,
    write_report,
)


@pytest.fixture(scope="module")
def env_kwargs(tiny_model, image_folder):
    return dict(model=tiny_model, data=str(image_folder), hr_size=32, num_inference_steps=4,
                reward={"lpips_net": None, "lpips_weight": 0.0})


def test_every_image_once_and_report(env_kwargs, tmp_path):
    actions = ActionConfig()
    plain = evaluate_method("No RL", constant_policy(encode_params(actions)), env_kwargs, split="train",
                            num_envs=3, keep_images=2, progress=False)
    fast = evaluate_method("RL", constant_policy(encode_params(actions, stride=2)), env_kwargs, split="train",
                           num_envs=3, keep_images=2, progress=False)
    indices = [row["image_index"] for row in plain.rows]
    n_train = len(PairDataset(DataConfig(source=env_kwargs["data"], split="train", hr_size=32)))
    assert indices == sorted(set(indices)) and len(indices) == n_train  # each train image exactly once
    assert [row["image_index"] for row in fast.rows] == indices
    assert set(plain.column("unet_calls")) == {4.0} and set(fast.column("unet_calls")) == {2.0}
    assert {row["category"] for row in plain.rows} == {"fields", "roads"}
    paths = write_report([plain, fast], tmp_path, rl_name="RL", baselines=("No RL",), header="# test")
    table = paths["table"].read_text()
    assert "| bicubic | fields |" in table and "| RL | all |" in table and "| No RL | all |" in table
    assert paths["grid"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(paths["csv"].read_text().splitlines()) == 1 + 3 * len(indices)


def test_max_images_spreads_over_classes(env_kwargs):
    result = evaluate_method("No RL", constant_policy(encode_params(ActionConfig())), env_kwargs, split="train",
                             num_envs=2, max_images=4, progress=False)
    assert len(result.rows) == 4 and {row["category"] for row in result.rows} == {"fields", "roads"}


def test_paired_interval_matches_a_t_interval():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.5, 2.0, 4.5])
    mean, low, high = paired_interval(a, b)
    diff = a - b
    assert mean == pytest.approx(diff.mean())
    assert high - mean == pytest.approx(3.182446 * diff.std(ddof=1) / 2, rel=1e-5)  # t(0.975, 3) = 3.1824
    assert low < mean < high


def test_grid_search_picks_the_best_setting(env_kwargs):
    action, setting, table = grid_search_constant_action(
        env_kwargs, ActionConfig(), grid={"stride": (1, 4), "eta": (0.0,)}, split="train", num_envs=4, max_images=4)
    assert len(table) == 2
    assert setting["stride"] in (1, 4) and max(row["reward"] for row in table) == next(
        row["reward"] for row in table if row["stride"] == setting["stride"])
    assert action.shape == (4,)
