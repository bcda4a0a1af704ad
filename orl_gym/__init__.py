"""orl_gym: reinforcement learning that steers the sampler of a latent-diffusion SR model.

``import orl_gym`` registers ``orl_gym/LDMSR-v0`` (single and vector entry points); the heavy
modules (torch, diffusers) load on first use.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__version__ = "0.1.0"
ENV_ID = "orl_gym/LDMSR-v0"

__all__ = ["ENV_ID", "make_sb3_env", "__version__"]

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="orl_gym.env:LDMSuperResolutionEnv",
        vector_entry_point="orl_gym.vector:LDMSuperResolutionVectorEnv",
    )


def make_sb3_env(num_envs: int = 1, **kwargs: Any):
    """The batched env as a Stable-Baselines3 VecEnv (see ``orl_gym.vector.make_sb3_env``)."""
    from orl_gym.vector import make_sb3_env as _make

    return _make(num_envs=num_envs, **kwargs)
