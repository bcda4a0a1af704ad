"""The batched environment: N images in one batch, one UNet call per step for all of them.

``LDMSuperResolutionVectorEnv`` is a ``gymnasium.vector.VectorEnv`` (``gym.make_vec(ENV_ID,
num_envs=N, vectorization_mode="vector_entry_point")``) that resets finished images in the same
step, by mask (``AutoresetMode.SAME_STEP``: ``info["final_obs"]`` / ``info["final_info"]`` hold
what the finished images ended with). ``LDMSuperResolutionVecEnv`` is the same batch as a
Stable-Baselines3 ``VecEnv`` (``terminal_observation`` and ``TimeLimit.truncated`` in infos), so
SB3 does not wrap it in a DummyVecEnv. Both run ``orl_gym.env.step_batch`` /
``reset_rows``: the same code as the single env, with N rows.

Seeding: ``reset(seed=s)`` seeds env i with ``s + i`` (a list gives each its own), exactly as N
single envs ``reset(seed=s + i)``; the batch then reproduces them row by row.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from orl_gym.env import (
    EnvConfig,
    EnvState,
    action_space,
    build_params,
    make_seeded_generators,
    observation_space,
    observe,
    render_frame,
    reset_rows,
    step_batch,
)

__all__ = ["LDMSuperResolutionVectorEnv", "LDMSuperResolutionVecEnv", "make_sb3_env"]


def _seed_list(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, int | np.integer):
        return [int(seed) + i for i in range(num_envs)]
    seeds = list(seed)
    if len(seeds) != num_envs:
        raise ValueError(f"seed: expected an int or {num_envs} seeds, got {len(seeds)}")
    return seeds


class LDMSuperResolutionVectorEnv(gym.vector.VectorEnv):
    """N ``orl_gym/LDMSR-v0`` envs as one batch on one device (see ``LDMSuperResolutionEnv``)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, **kwargs: Any) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.config = EnvConfig.from_kwargs(**kwargs)
        self.params = build_params(self.config)
        self.single_observation_space = observation_space(self.params)
        self.single_action_space = action_space(self.params)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.state: EnvState | None = None
        self.last_step = None  # StepResult of the last step (device tensors, for reward wrappers)
        self._np_randoms: list[np.random.Generator] = []

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        rows = range(self.num_envs)
        seeds = _seed_list(seed, self.num_envs)
        if self.state is None or seed is not None:
            # Each row gets the RNG a single env reset(seed=seeds[i]) would have.
            self._np_randoms = [seeding.np_random(s)[0] for s in seeds]
            generators = [make_seeded_generators(rng, self.params.device) for rng in self._np_randoms]
            self.state = reset_rows(self.params, None, rows, data_generators=[g[0] for g in generators],
                                    noise_generators=[g[1] for g in generators])
        else:
            self.state = reset_rows(self.params, self.state, rows)
        return observe(self.params, self.state), self._reset_info()

    def _reset_info(self, reset: np.ndarray | None = None) -> dict[str, Any]:
        """The new episodes' info (which image), with Gymnasium's ``_key`` masks: for every row, or,
        after a same-step autoreset, for the rows where ``reset`` is True."""
        labels = self.state.labels.numpy()
        mask = np.ones(self.num_envs, dtype=bool) if reset is None else reset
        info = {"image_index": self.state.image_index.numpy().copy(), "label": labels.copy(),
                "category": np.asarray(self.params.dataset.classes, dtype=object)[labels]}
        return {**info, **{f"_{key}": mask.copy() for key in info}}

    def step(self, actions):
        if self.state is None:
            raise RuntimeError("step() before reset(): call reset() first")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"actions: expected shape {self.action_space.shape}, got {actions.shape}")
        result = step_batch(self.params, self.state, actions)
        self.state, self.last_step = result.state, result
        obs = observe(self.params, self.state)
        done = result.terminated | result.truncated
        step_info = {"action_clipped": result.action_clipped.astype(np.int64),
                     "unet_calls": self.state.sampler.nfe.cpu().numpy()}
        # Gymnasium's same-step convention (as SyncVectorEnv's): a finished row's step info goes to
        # final_info with its metrics, and the top level then describes the row's new episode.
        infos: dict[str, Any] = {**step_info, **{f"_{key}": np.ones(self.num_envs, dtype=bool) for key in step_info}}
        if done.any():
            rows = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for r in rows:
                final_obs[r] = {k: v[r] for k, v in obs.items()}
            final_info: dict[str, Any] = {}
            for key, column in {**result.final_metrics, **step_info}.items():
                final_info[key] = np.where(done, column, 0)  # keeps the column's dtype
                final_info[f"_{key}"] = done.copy()
            # Same-step autoreset, by mask: only the finished rows get a new image and z_T.
            self.state = reset_rows(self.params, self.state, rows.tolist())
            obs = observe(self.params, self.state)
            # The new episodes have taken no action and made no UNet call yet.
            infos["action_clipped"] = np.where(done, 0, infos["action_clipped"])
            infos["unet_calls"] = np.where(done, 0, infos["unet_calls"])
            infos.update({"final_obs": final_obs, "_final_obs": done.copy(),
                          "final_info": final_info, "_final_info": done.copy(), **self._reset_info(done)})
        return obs, result.reward, result.terminated, result.truncated, infos

    def render(self):
        if self.render_mode != "rgb_array" or self.state is None:
            return None
        return tuple(render_frame(self.params, self.state, i) for i in range(self.num_envs))


class LDMSuperResolutionVecEnv(VecEnv):
    """The batched env as a Stable-Baselines3 ``VecEnv`` (same-step reset, SB3 info conventions).

    ``get_attr`` / ``set_attr`` / ``env_method`` act on the one batched env behind all N indices
    (its attributes are shared by every row), returning one value per requested index.
    """

    def __init__(self, num_envs: int = 1, **kwargs: Any) -> None:
        self.vector_env = LDMSuperResolutionVectorEnv(num_envs=num_envs, **kwargs)
        self.render_mode = self.vector_env.render_mode
        super().__init__(num_envs, self.vector_env.single_observation_space, self.vector_env.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self):
        seeds = [s for s in self._seeds]
        seed = None if all(s is None for s in seeds) else seeds
        obs, info = self.vector_env.reset(seed=seed)
        self._reset_seeds()
        self.reset_infos = [{k: v[i] for k, v in info.items() if not k.startswith("_")} for i in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape == (self.num_envs,) and self.action_space.shape == (1,):
            actions = actions[:, None]  # one action parameter: SB3 may hand a flat (N,) batch
        self._actions = actions  # any other shape: the vector env's step says what it expected

    def step_wait(self):
        obs, rewards, terminated, truncated, vinfo = self.vector_env.step(self._actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            if dones[i]:
                # SB3's convention (DummyVecEnv's): the info of the step that ended the episode,
                # and the new episode's reset info in reset_infos.
                info = {k: v[i].item() for k, v in vinfo["final_info"].items() if not k.startswith("_")}
                info["terminal_observation"] = vinfo["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                self.reset_infos[i] = {k: vinfo[k][i] for k in ("image_index", "label", "category")}
            else:
                info = {"action_clipped": int(vinfo["action_clipped"][i]), "unet_calls": int(vinfo["unet_calls"][i])}
            infos.append(info)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.vector_env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(f"render_mode is {self.render_mode!r}: no images; make the env with "
                          "render_mode='rgb_array'", stacklevel=2)
            return [None] * self.num_envs
        if self.vector_env.state is None:
            return [None] * self.num_envs
        return [render_frame(self.vector_env.params, self.vector_env.state, i) for i in range(self.num_envs)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        indices = [indices] if isinstance(indices, int | np.integer) else list(indices)
        bad = [i for i in indices if not -self.num_envs <= i < self.num_envs]
        if bad:
            raise IndexError(f"indices {bad} out of range for {self.num_envs} envs")
        return [int(i) % self.num_envs for i in indices]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.vector_env, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.vector_env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        # One batched env behind every index: call once, report the result for each index.
        result = getattr(self.vector_env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]


def make_sb3_env(num_envs: int = 1, *, monitor: bool = True, **kwargs: Any) -> VecEnv:
    """The batched env for Stable-Baselines3: ``PPO("MultiInputPolicy", make_sb3_env(64, ...))``.

    With ``monitor`` (default) it is wrapped in SB3's ``VecMonitor``, which records episode
    returns and lengths (``info["episode"]``) for SB3's logs and ``evaluate_policy``.
    """
    env = LDMSuperResolutionVecEnv(num_envs=num_envs, **kwargs)
    return VecMonitor(env) if monitor else env
