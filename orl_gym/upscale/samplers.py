"""Who super-resolves each tile: a trained policy choosing every step's sampler parameters, or
one fixed action (``ddim<N>``), with the model and the env settings they run under."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orl_gym import env as env_module
from orl_gym import sampler
from orl_gym.actions import ActionConfig, encode_params
from orl_gym.env import EnvConfig
from orl_gym.models import LDMSR, load_ldmsr

__all__ = ["DEFAULT_SAMPLER", "Policy", "TileSampler", "sampler_from_name", "sampler_from_policy", "sampler_from_run"]

DEFAULT_SAMPLER = "default"
"""The fixed sampler ``upscale`` uses when given none: the model's default sampler, plain DDIM over
the env's default schedule (``orl_gym.env.resolve_num_inference_steps``: the model folder's
``sampler_defaults.json``, else 20 steps), the env's "No RL"."""

Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
"""``policy(obs, episode_start) -> actions (B, k)``, as ``orl_gym.run_policies`` loads them."""



@dataclass(frozen=True)
class TileSampler:
    """How every tile is super-resolved: the model, its DDIM schedule, and who picks each step's
    sampler parameters (a policy, or one fixed action).

    Its fields are the part of ``orl_gym.env.EnvParams`` that ``env.observe``,
    ``env.output_images``, ``env.observation_space`` and ``env.action_space`` read (config,
    model, schedule, actions, lr_shape, latent_shape), so a policy sees each tile exactly as the
    env shows it an image, and tiles decode as the env decodes (``output_fix`` included), with no
    dataset or reward model loaded.

    Attributes:
        config: the env's settings (the run's ``env_kwargs``; for a fixed sampler the defaults
            with its step count): model, hr_size, num_inference_steps, step_budget, actions,
            output_fix, device, dtype.
        model: the loaded LDM-SR model.
        schedule: the default DDIM schedule (``config.num_inference_steps`` steps, None: the model's).
        policy: ``policy(obs, episode_start) -> actions (B, k)``, or None for ``fixed_action``.
        fixed_action: the (k,) action every step takes when there is no policy.
        name: what drives the tiles, for messages and figure labels.
    """

    config: EnvConfig
    model: LDMSR
    schedule: sampler.Schedule
    policy: Policy | None = None
    fixed_action: np.ndarray | None = None
    name: str = DEFAULT_SAMPLER

    @property
    def actions(self) -> ActionConfig:
        return self.config.actions

    @property
    def step_budget(self) -> int:
        return len(self.schedule) if self.config.step_budget is None else int(self.config.step_budget)

    @property
    def scale(self) -> int:
        return self.model.scale_factor

    @property
    def lr_multiple(self) -> int:
        """LR tile sides must be multiples of this (the UNet halves the latent this often)."""
        return self.model.hr_multiple // self.model.scale_factor

    @property
    def lr_shape(self) -> tuple[int, int, int]:
        side = self.config.hr_size // self.scale
        return (3, side, side)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.model.latent_channels, *self.lr_shape[1:])

    @property
    def fixed_tile(self) -> int | None:
        """The LR tile side a policy needs (its observation's size); None: any side."""
        return self.lr_shape[1] if self.policy is not None else None


def _load_model(config: EnvConfig) -> LDMSR:
    if isinstance(config.model, LDMSR):
        return config.model
    return load_ldmsr(str(config.model), device=config.device, dtype=config.dtype)


def sampler_from_name(name: str = DEFAULT_SAMPLER, *, model: str | LDMSR = "bundled", device: str = "cpu",
                      dtype: str = "float32", output_fix: str = "none") -> TileSampler:
    """A fixed sampler: ``"ddim<N>"`` = N steps of plain DDIM (stride 1, eta 0, noise scale 1, no
    guidance): the env's "No RL" action ``encode_params(ActionConfig())`` over an N-step schedule;
    ``"default"``: the same over the model's default schedule (the env's "No RL" itself)."""
    match = re.fullmatch(r"ddim(\d+)", str(name))
    if str(name) != "default" and (not match or int(match.group(1)) < 1):
        raise ValueError(f"--sampler: unknown sampler {name!r}; use 'default' (the model's default sampler) or "
                         "ddim<N> (N plain DDIM steps, e.g. ddim20), or a trained policy with --run RUN")
    if isinstance(model, LDMSR):
        device, dtype = str(model.device), str(model.dtype).removeprefix("torch.")
    if torch.device(device).type == "cpu":
        dtype = "float32"
    config = EnvConfig(model=model, num_inference_steps=int(match.group(1)) if match else None, device=device,
                       dtype=dtype, output_fix=output_fix)
    loaded = _load_model(config)
    schedule = env_module.default_schedule(loaded, config.num_inference_steps)
    label = f"{name} (plain DDIM)" if match else f"default sampler (DDIM {len(schedule)}, plain)"
    return TileSampler(config=config, model=loaded, schedule=schedule, fixed_action=encode_params(config.actions),
                       name=label)


def sampler_from_policy(policy: Policy, env_kwargs: Mapping[str, Any], *, name: str = "policy") -> TileSampler:
    """A policy's sampler: ``env_kwargs`` are those of the env it was trained on (a run's
    config.yaml holds them); ``policy.check_spaces(observation_space, action_space)``, where it
    exists, refuses a policy trained on other shapes."""
    config = EnvConfig.from_kwargs(**dict(env_kwargs))
    model = _load_model(config)
    if config.hr_size % model.hr_multiple:
        raise ValueError(f"hr_size: {config.hr_size} px does not fit this model (a multiple of {model.hr_multiple} "
                         "is needed)")
    tiles = TileSampler(config=config, model=model, schedule=env_module.default_schedule(model, config.num_inference_steps),
                        policy=policy, name=name)
    check = getattr(policy, "check_spaces", None)
    if check is not None:
        check(env_module.observation_space(tiles), env_module.action_space(tiles))
    return tiles


def sampler_from_run(run_dir: str | Path, *, device: str | None = None) -> TileSampler:
    """The policy of a run folder (``orl-gym train`` / ``train-offline``): its config.yaml's
    env_kwargs give the model, tile size and actions; ``device`` overrides where the model runs."""
    from orl_gym.configs import load_yaml_mapping
    from orl_gym.run_policies import load_run_policy

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"--run: {run_dir} has no config.yaml: not a run folder of orl-gym train")
    config = load_yaml_mapping(run_dir / "config.yaml", "a run's settings (algo, env_kwargs)")
    if not isinstance(config.get("env_kwargs"), dict) or "algo" not in config:
        raise ValueError(f"{run_dir / 'config.yaml'} lacks algo / env_kwargs: not a complete run configuration")
    env_kwargs = dict(config["env_kwargs"])
    if device is not None:
        env_kwargs["device"] = device
    if env_kwargs.get("device", "cpu") == "cpu":
        env_kwargs["dtype"] = "float32"
    policy, checkpoint = load_run_policy(run_dir, config)
    return sampler_from_policy(policy, env_kwargs, name=f"{config['algo']} policy of {run_dir.name} ({checkpoint.name})")
