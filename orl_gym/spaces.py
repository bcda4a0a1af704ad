"""The env's observation and action spaces, and the observation of a batched state.

One place for the layout every consumer of an observation relies on: the single env and the
vector env (:mod:`orl_gym.env`, :mod:`orl_gym.vector`), the feature extractor that reshapes the
flat Boxes (:mod:`orl_gym.agents`), and the tiles of :mod:`orl_gym.upscale`, which build
observations of their own states. Everything here is importable from :mod:`orl_gym.env`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from gymnasium import spaces

from orl_gym.actions import PARAMETERS

if TYPE_CHECKING:
    from orl_gym.env import EnvParams, EnvState

__all__ = ["LATENT_BOUND", "PROGRESS_FEATURES", "action_space", "observation_space", "observe"]


# Progress features, each in [0, 1]: t / T, position on the schedule, UNet calls and guidance
# evaluations used (both / schedule length), then the last step's four parameters normalized.
PROGRESS_FEATURES = ("t", "schedule_position", "nfe", "guidance_evals",
                     *(f"last_{p}" for p in PARAMETERS))


# Finite bounds for the latent observation (checkers reject infinite ones). Latents of a DDIM run
# stay within a few units of N(0, I); observations are clipped to this bound, which never binds
# for a working model.
LATENT_BOUND = 1.0e4


def action_space(params: EnvParams) -> spaces.Box:
    """Box(-1, 1, (k,), float32): one coordinate per active parameter (``orl_gym.actions``)."""
    return spaces.Box(-1.0, 1.0, (params.actions.size,), np.float32)


def observation_space(params: EnvParams) -> spaces.Dict:
    """One env's observation: flat Boxes, as SB3's MultiInputPolicy and env checker want them.

    lr: the LR image, uint8, CHW flattened (3 * h * w,). latent: z_t, float32, CHW flattened.
    progress: PROGRESS_FEATURES in [0, 1]. (SB3 treats any 3-D Box as an image and wants uint8
    of at least 36x36; our LR images are 16x16 on CPU, so images travel flat and the shipped
    feature extractor reshapes them.)
    """
    return spaces.Dict({
        "lr": spaces.Box(0, 255, (int(np.prod(params.lr_shape)),), np.uint8),
        "latent": spaces.Box(-LATENT_BOUND, LATENT_BOUND, (int(np.prod(params.latent_shape)),), np.float32),
        "progress": spaces.Box(0.0, 1.0, (len(PROGRESS_FEATURES),), np.float32),
    })


def observe(params: EnvParams, state: EnvState) -> dict[str, np.ndarray]:
    """The batch's observations as host arrays (the one host copy per step)."""
    s = state.sampler
    K = len(params.schedule)
    t = s.timestep(params.schedule).clamp(min=0).float() / params.model.num_train_timesteps
    progress = torch.cat([
        torch.stack([t, s.step_index.float() / K, s.nfe.float() / K, s.guidance_evals.float() / K], dim=1),
        state.last_action,
    ], dim=1).clamp(0.0, 1.0)
    lr_uint8 = (s.lr * 255.0).round().clamp(0, 255).to(torch.uint8)
    return {
        "lr": lr_uint8.flatten(1).cpu().numpy(),
        "latent": s.latents.float().flatten(1).clamp(-LATENT_BOUND, LATENT_BOUND).cpu().numpy(),
        "progress": progress.float().cpu().numpy(),
    }
