"""Reward-term wrappers: re-weighting and extra terms, single and batched, from device tensors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import orl_gym
from orl_gym.actions import encode_params
from orl_gym.wrappers import RewardTerms, RewardTermsVector


@pytest.fixture(scope="module")
def env_kwargs(tiny_model, image_folder):
    return dict(model=tiny_model, data=str(image_folder), hr_size=32, num_inference_steps=4,
                reward={"lpips_net": None, "lpips_weight": 0.0})


def _mean_brightness(sr, hr, lr):
    return sr.mean(dim=(1, 2, 3))


def _episode(env, seed):
    env.reset(seed=seed)
    action = encode_params(env.unwrapped.params.actions, stride=2)
    while True:
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return reward, info


def test_same_weights_change_nothing_and_reweighting_uses_the_paid_terms(env_kwargs):
    base_reward, base_info = _episode(gym.make(orl_gym.ENV_ID, **env_kwargs), 3)
    same = RewardTerms(gym.make(orl_gym.ENV_ID, **env_kwargs), weights={"psnr": 0.4})
    assert _episode(same, 3)[0] == pytest.approx(base_reward, abs=1e-6)

    psnr_only = RewardTerms(gym.make(orl_gym.ENV_ID, **env_kwargs),
                            weights={"psnr": 1.0, "ssim": 0.0, "efficiency": 0.0})
    reward, info = _episode(psnr_only, 3)
    assert reward == pytest.approx(base_info["term_psnr"], abs=1e-5)
    assert info["wrapped_reward"] == pytest.approx(reward, abs=1e-5)


def test_extra_term_on_device_tensors(env_kwargs):
    base_reward, _ = _episode(gym.make(orl_gym.ENV_ID, **env_kwargs), 5)
    env = RewardTerms(gym.make(orl_gym.ENV_ID, **env_kwargs), extra_terms={"brightness": (0.5, _mean_brightness)})
    reward, info = _episode(env, 5)
    assert 0.0 <= info["term_brightness"] <= 1.0
    assert reward == pytest.approx(base_reward + 0.5 * info["term_brightness"], abs=1e-5)
    with pytest.raises(ValueError, match="unknown terms"):
        RewardTerms(gym.make(orl_gym.ENV_ID, **env_kwargs), weights={"sharpness": 1.0})


def test_vector_wrapper_equals_single_wrapper(env_kwargs):
    extra = {"brightness": (0.5, _mean_brightness)}
    venv = RewardTermsVector(gym.make_vec(orl_gym.ENV_ID, num_envs=2, vectorization_mode="vector_entry_point",
                                          **env_kwargs), weights={"psnr": 1.0}, extra_terms=extra)
    venv.reset(seed=10)
    action = np.stack([encode_params(venv.unwrapped.params.actions, stride=2)] * 2)
    venv.step(action)
    _, rewards, terminated, _, infos = venv.step(action)
    assert terminated.all()
    for i in range(2):
        env = RewardTerms(gym.make(orl_gym.ENV_ID, **env_kwargs), weights={"psnr": 1.0}, extra_terms=extra)
        reward, info = _episode(env, 10 + i)
        assert rewards[i] == pytest.approx(reward, abs=1e-5)
        assert infos["final_info"]["term_brightness"][i] == pytest.approx(info["term_brightness"], abs=1e-6)
    assert torch.is_tensor(venv.unwrapped.last_step.final_images)


def test_weighting_a_term_the_env_does_not_compute_fails_at_construction(env_kwargs):
    with pytest.raises(ValueError, match="lpips needs LPIPS"):
        RewardTerms(gym.make(orl_gym.ENV_ID, **env_kwargs), weights={"lpips": 0.2})
    venv = gym.make_vec(orl_gym.ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    with pytest.raises(ValueError, match="lpips needs LPIPS"):
        RewardTermsVector(venv, weights={"lpips": 0.2})
