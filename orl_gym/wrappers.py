"""Composable reward terms: re-weight the paid terms or add your own, without touching the env.

The env pays ``RewardModel.final`` when an image finishes and keeps, for that step, the finished
rows' images, HR, LR and every term as device tensors (``env.unwrapped.last_step``). These
wrappers recompute the final reward from them on the device, with no second decode and no
metric computed twice::

    env = RewardTerms(gym.make("orl_gym/LDMSR-v0"), weights={"psnr": 1.0, "ssim": 0.0},
                      extra_terms={"sharpness": (0.05, my_fn)})   # my_fn(sr, hr, lr) -> (B,)
    venv = RewardTermsVector(gym.make_vec(...), weights=...)       # the same for the batch

Weights name the terms of ``orl_gym.rewards.TERM_NAMES``; unnamed terms keep the env's weight.
Intermediate (shaping) rewards pass through unchanged. ``info`` (``final_info`` for the vector
env) gains ``wrapped_reward`` and one ``term_<name>`` per extra term.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gymnasium as gym
import numpy as np
import torch

from orl_gym.env import StepResult
from orl_gym.rewards import TERM_NAMES, RewardConfig, combine_terms

__all__ = ["RewardTerms", "RewardTermsVector", "final_reward_delta"]

TermFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_terms(weights: Mapping[str, float], extra_terms: Mapping[str, tuple[float, TermFn]],
                 reward_config: RewardConfig) -> None:
    unknown = sorted(set(weights) - set(TERM_NAMES))
    if unknown:
        raise ValueError(f"weights: unknown terms {unknown}; terms: {list(TERM_NAMES)}")
    if weights.get("lpips", 0.0) != 0.0 and reward_config.lpips_net is None:
        # Said now, not when the first image finishes: the env computes no LPIPS to weight.
        raise ValueError("weights: lpips needs LPIPS, which this env does not compute (its reward.lpips_net "
                         "is None); make the env with reward={'lpips_net': 'alex', ...} or leave lpips out")
    for name, spec in extra_terms.items():
        if name in TERM_NAMES or not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
            raise ValueError(f"extra_terms[{name!r}]: expected (weight, fn(sr, hr, lr) -> (B,) tensor) under a new name")


def final_reward_delta(
    result: StepResult,
    env_weights: Mapping[str, float],
    weights: Mapping[str, float],
    extra_terms: Mapping[str, tuple[float, TermFn]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(B,) reward change for the rows that finished in ``result`` and the extra terms' values."""
    batch = result.reward.shape[0]
    delta = np.zeros(batch, dtype=np.float32)
    values: dict[str, np.ndarray] = {}
    if result.final_reward is None:
        return delta, values
    metrics = result.final_reward.metrics
    new = combine_terms(metrics, {**env_weights, **weights})
    for name, (weight, fn) in extra_terms.items():
        term = fn(result.final_images, result.final_hr, result.final_lr)
        if term.shape != new.shape:
            raise ValueError(f"extra_terms[{name!r}]: returned shape {tuple(term.shape)}, expected {tuple(new.shape)}")
        new = new + weight * term.to(new.dtype)
        column = np.full(batch, np.nan)
        column[result.final_rows.cpu().numpy()] = term.double().cpu().numpy()
        values[f"term_{name}"] = column
    rows = result.final_rows.cpu().numpy()
    delta[rows] = (new - result.final_reward.reward).float().cpu().numpy()
    values["wrapped_reward"] = np.full(batch, np.nan)
    values["wrapped_reward"][rows] = new.double().cpu().numpy()
    return delta, values


class RewardTerms(gym.Wrapper):
    """Re-weight or extend the final reward of a single ``orl_gym/LDMSR-v0`` env."""

    def __init__(self, env: gym.Env, *, weights: Mapping[str, float] | None = None,
                 extra_terms: Mapping[str, tuple[float, TermFn]] | None = None) -> None:
        super().__init__(env)
        self.weights, self.extra_terms = dict(weights or {}), dict(extra_terms or {})
        _check_terms(self.weights, self.extra_terms, env.unwrapped.params.reward_model.config)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        base = self.env.unwrapped
        delta, values = final_reward_delta(base.last_step, base.params.reward_model.config.weights,
                                           self.weights, self.extra_terms)
        if terminated or truncated:
            info = {**info, **{k: float(v[0]) for k, v in values.items()}}
        return obs, float(reward + delta[0]), terminated, truncated, info


class RewardTermsVector(gym.vector.VectorWrapper):
    """Re-weight or extend the final reward of the batched ``orl_gym/LDMSR-v0`` env."""

    def __init__(self, env: gym.vector.VectorEnv, *, weights: Mapping[str, float] | None = None,
                 extra_terms: Mapping[str, tuple[float, TermFn]] | None = None) -> None:
        super().__init__(env)
        self.weights, self.extra_terms = dict(weights or {}), dict(extra_terms or {})
        _check_terms(self.weights, self.extra_terms, env.unwrapped.params.reward_model.config)

    def step(self, actions):
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        base = self.env.unwrapped
        delta, values = final_reward_delta(base.last_step, base.params.reward_model.config.weights,
                                           self.weights, self.extra_terms)
        if values and "final_info" in infos:
            done = terminated | truncated
            for key, column in values.items():
                infos["final_info"][key] = np.where(done, column, 0.0)
                infos["final_info"][f"_{key}"] = done.copy()
        return obs, rewards + delta, terminated, truncated, infos
