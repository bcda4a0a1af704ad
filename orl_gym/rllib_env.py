"""The batched env as Ray RLlib's env runner reads it (``orl-gym train --engine rllib``).

RLlib's ``SingleAgentEnvRunner`` builds its env with ``gym.make_vec(..., vectorization_mode=
"vector_entry_point")``, so :func:`make_rllib_env` hands it ONE ``LDMSuperResolutionVectorEnv`` of
``num_envs_per_env_runner`` images (one UNet call per step for all of a runner's images, not N
copies in a ``SyncVectorEnv``), wrapped in :class:`RLlibBatchedEnv` for two things the runner needs:

- **Autoreset.** The runner reads a vector env in Gymnasium's next-step autoreset mode (the step
  that ends an episode returns its last observation; the *next* step returns the new episode's
  first one, its reward is dropped and its action ignored). The batched env resets finished
  images in the same step (``AutoresetMode.SAME_STEP``) and steps every row together, so the
  wrapper returns the final observation when a row finishes and, on the next step, starts that
  row's episode again (``orl_gym.env.reset_rows``) after the batch step, whose work on that row is
  discarded: one row-step and one drawn image per episode are spent on this (the drawn image is
  skipped, not scored). Without it RLlib would drop every episode's first transition and end each
  episode on the next image's observation.
- **Observations.** RLlib's default encoders take one flat Box: the Dict observation is flattened
  by ``orl_gym.agents.flatten_observation`` (lr / 255, latent, progress, in that key order), the
  layout of the SB3 side and of the offline algorithms; ``orl_gym.rllib.RLlibPolicy`` flattens the
  same way at evaluation.

Seeding: RLlib resets runner ``w`` with ``seed + w``; the wrapper passes ``(seed + w) * N`` to the
batched env, which seeds its rows ``(seed + w) * N + i``, so no two runners share a row's seed (and
with it the image order and noise).

Nothing here imports Ray: the adapter is plain Gymnasium, tested without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from orl_gym import ENV_ID
from orl_gym.agents import flatten_observation
from orl_gym.env import observe, reset_rows

__all__ = ["RLlibBatchedEnv", "flat_observation_space", "make_rllib_env"]


def flat_observation_space(space: gym.spaces.Dict) -> gym.spaces.Box:
    """The Box of :func:`orl_gym.agents.flatten_observation`'s layout for a Dict observation."""
    low = flatten_observation({k: s.low[None] for k, s in space.spaces.items()})[0]
    high = flatten_observation({k: s.high[None] for k, s in space.spaces.items()})[0]
    return gym.spaces.Box(low, high, low.shape, np.float32)


class RLlibBatchedEnv(gym.vector.VectorWrapper):
    """The batched env in the form RLlib's ``SingleAgentEnvRunner`` reads: next-step autoreset,
    one flat float32 Box observation, runners' seeds kept apart (see the module docstring).

    Infos (Gymnasium's dict-of-arrays with ``_key`` masks, which RLlib turns into one dict per
    image): ``action_clipped`` / ``unet_calls`` on every step of a running episode; the image's
    final metrics (psnr, ssim, lpips, unet_calls, reward terms, its image_index and label, ...) on
    the step that ends it; the next image's ``image_index`` / ``label`` / ``category`` on the step
    that starts it (and at reset).
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        base = env.unwrapped
        if base.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP or not hasattr(base, "params"):
            raise ValueError(f"RLlibBatchedEnv wraps orl_gym's batched env (same-step autoreset), got {base!r}")
        self.single_observation_space = flat_observation_space(env.single_observation_space)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.metadata = {**env.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self._pending = np.zeros(self.num_envs, dtype=bool)  # rows whose new episode starts next step

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        if isinstance(seed, int | np.integer):
            seed = int(seed) * self.num_envs  # rows seed * N + i: runner seeds seed + w never overlap
        obs, info = self.env.reset(seed=seed, options=options)
        self._pending[:] = False
        return flatten_observation(obs), self._put_start_info({}, np.ones(self.num_envs, dtype=bool))

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        obs = {k: v.copy() for k, v in obs.items()}
        reward, terminated, truncated = reward.copy(), terminated.copy(), truncated.copy()
        starting = self._pending.copy()
        if starting.any():
            # These rows' episodes ended last step: RLlib expects their new episode's first
            # observation now. The batch step just advanced them with an action RLlib computed
            # from the old episode's last observation, so that step is discarded: start the row
            # again (the same call the batched env's own autoreset makes).
            base = self.env.unwrapped
            rows = np.flatnonzero(starting)
            base.state = reset_rows(base.params, base.state, rows.tolist())
            fresh = observe(base.params, base.state)
            for key in obs:
                obs[key][rows] = fresh[key][rows]
            reward[rows], terminated[rows], truncated[rows] = 0.0, False, False
        done = terminated | truncated
        running = ~done & ~starting
        out: dict[str, Any] = {}
        for key in ("action_clipped", "unet_calls"):
            _put(out, key, info[key], running)
        if done.any():
            final_obs = info["final_obs"]
            for r in np.flatnonzero(done):  # next-step autoreset: the episode's own last observation
                for key in obs:
                    obs[key][r] = final_obs[r][key]
            for key, column in info["final_info"].items():
                if not key.startswith("_"):
                    _put(out, key, column, done)
        if starting.any():
            self._put_start_info(out, starting)
        self._pending = done
        return flatten_observation(obs), reward, terminated, truncated, out

    def _put_start_info(self, info: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
        """``info`` with which image each row of ``mask`` starts (as the batched env's reset info)."""
        base = self.env.unwrapped
        labels = base.state.labels.numpy()
        _put(info, "image_index", base.state.image_index.numpy(), mask)
        _put(info, "label", labels, mask)
        _put(info, "category", np.asarray(base.params.dataset.classes, dtype=object)[labels], mask)
        return info


def _put(info: dict[str, Any], key: str, values: np.ndarray, mask: np.ndarray) -> None:
    """Set ``key`` for the rows of ``mask`` (merged with rows an earlier call set)."""
    values = np.asarray(values)
    if key in info:
        info[key] = np.where(mask, values, info[key])
        info[f"_{key}"] = info[f"_{key}"] | mask
    else:
        info[key] = np.where(mask, values, np.zeros_like(values))
        info[f"_{key}"] = mask.copy()


def make_rllib_env(env_config: Mapping[str, Any]) -> RLlibBatchedEnv:
    """RLlib's env creator (``tune.register_env(RLLIB_ENV, make_rllib_env)``): one batched env of
    ``env_config["num_envs"]`` images (the runner's ``num_envs_per_env_runner``, which RLlib adds
    under vector-entry-point vectorization), the other keys being the env's kwargs. (Importing this
    module imports orl_gym, which registers ENV_ID in the Ray worker's process.)"""
    kwargs = dict(env_config)
    num_envs = int(kwargs.pop("num_envs", 1))
    return RLlibBatchedEnv(gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                        **kwargs))
