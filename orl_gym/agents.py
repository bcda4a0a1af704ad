"""Agents for ``orl_gym/LDMSR-v0``: the algorithm registry, YAML hyperparameters, the extractor.

Algorithms (``ALGORITHMS``): SB3's PPO, A2C, SAC, TD3, DDPG and sb3-contrib's TQC, TRPO,
RecurrentPPO, CrossQ. Hyperparameters live in rl-zoo3's layout (``agents/<algo>.yml``, keyed by
env id); ``load_hyperparams`` reads the key of an env preset when the file has one, else the env
id's, and ``build_agent`` turns them into a model on the batched SB3 VecEnv.

``LDMSRFeatureExtractor`` reads the env's Dict observation: it restores the flat LR image and
latent to (C, h, w), stacks them, and runs a small CNN that works from 4x4 up (SB3's NatureCNN
needs 36x36; our CPU preset has 16x16 LR images), then joins the progress features::

    PPO("MultiInputPolicy", env, policy_kwargs={"features_extractor_class": LDMSRFeatureExtractor})
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import TQC, TRPO, CrossQ, RecurrentPPO
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from torch import nn

from orl_gym import ENV_ID
from orl_gym.configs import CONFIG_DIR, agent_entry
from orl_gym.io import atomic_open, atomic_write_text, save_figure

__all__ = ["ALGORITHMS", "FlattenDictObservation", "LDMSRFeatureExtractor", "TrainingMonitor", "build_agent",
           "flatten_observation", "hyperparams_entry", "load_hyperparams", "plot_reward_curve", "save_model",
           "wrap_for"]

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "ddpg": DDPG,
    "tqc": TQC, "trpo": TRPO, "recurrent_ppo": RecurrentPPO, "crossq": CrossQ,
}


def _scaled(key: str, values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(np.float32) / 255.0 if key == "lr" else np.asarray(values).astype(np.float32)


def flatten_observation(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """A batch of Dict observations as one float32 ``(B, n)`` array: ``lr / 255``, ``latent`` and
    ``progress``, each flattened, joined in sorted key order (latent, lr, progress: the order of
    gymnasium's Dict space, whatever order the dict itself has).

    The one layout of a flattened observation: :class:`FlattenDictObservation` trains on it and
    ``orl_gym.evaluation.SB3Policy`` feeds it to a model loaded from disk.
    """
    return np.concatenate([_scaled(k, obs[k]).reshape(len(obs[k]), -1) for k in sorted(obs)], axis=1)


# Constructor arguments build_agent sets itself (not hyperparameters of a YAML entry).
OWN_ARGUMENTS = ("self", "policy", "env", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model")


class FlattenDictObservation(VecEnvWrapper):
    """One float32 Box from the Dict observation (lr / 255, latent, progress), for algorithms
    whose policies take no Dict (sb3-contrib's CrossQ): ``vec_env_wrapper`` in its YAML. The
    layout is :func:`flatten_observation`'s."""

    def __init__(self, venv: VecEnv) -> None:
        spaces = venv.observation_space.spaces
        low = flatten_observation({k: s.low[None] for k, s in spaces.items()})[0]
        high = flatten_observation({k: s.high[None] for k, s in spaces.items()})[0]
        super().__init__(venv, observation_space=gym.spaces.Box(low, high, low.shape, np.float32))

    def reset(self) -> np.ndarray:
        return flatten_observation(self.venv.reset())

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                terminal = {k: v[None] for k, v in info["terminal_observation"].items()}
                info["terminal_observation"] = flatten_observation(terminal)[0]
        return flatten_observation(obs), rewards, dones, infos


def wrap_for(hyperparams: dict[str, Any], env: VecEnv) -> VecEnv:
    """Apply the ``vec_env_wrapper`` a hyperparameter entry names (a dotted path, as rl-zoo3)."""
    name = hyperparams.get("vec_env_wrapper")
    if not name:
        return env
    module, _, attr = str(name).rpartition(".")
    return getattr(importlib.import_module(module), attr)(env)


def algorithm_class(algo: str) -> type[BaseAlgorithm]:
    if algo not in ALGORITHMS:
        raise ValueError(f"algo: unknown {algo!r}; algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[algo]


def load_hyperparams(algo: str, preset: str | None = None, *, conf_file: str | Path | None = None) -> dict[str, Any]:
    """The hyperparameters of ``algo`` for an env preset (its own key, else the env id's)."""
    return _hyperparams_entry(algo, preset, conf_file)[0]


def hyperparams_entry(algo: str, preset: str | None = None, *, conf_file: str | Path | None = None) -> str:
    """The key of the entry :func:`load_hyperparams` reads: ``preset`` when the file has it, else
    the env id (an env file passed by path has no entry of its own)."""
    return _hyperparams_entry(algo, preset, conf_file)[1]


def _hyperparams_entry(algo: str, preset: str | None, conf_file: str | Path | None) -> tuple[dict, str]:
    """(the algorithm's hyperparameters, the key of the entry used)."""
    algorithm_class(algo)
    return agent_entry(conf_file or CONFIG_DIR / "agents" / f"{algo}.yml", (preset, ENV_ID))


def build_agent(
    algo: str,
    env: VecEnv,
    hyperparams: dict[str, Any],
    *,
    seed: int | None = 42,
    device: str = "auto",
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> tuple[BaseAlgorithm, int]:
    """(model, total timesteps) for ``algo`` on ``env`` from rl-zoo3-style hyperparameters.

    ``policy_kwargs`` may be a string: a Python expression, evaluated as rl-zoo3 does (these
    files are code: load only files you trust). ``noise_type: normal`` + ``noise_std`` become
    SB3's NormalActionNoise. ``n_envs`` is the caller's business (it sizes ``env``).
    """
    params = dict(hyperparams)
    params.pop("n_envs", None)
    params.pop("vec_env_wrapper", None)  # applied to env by the caller: wrap_for()
    timesteps = int(float(params.pop("n_timesteps", 0)))
    if "policy" not in params:
        raise ValueError(f"hyperparameters: no 'policy' (e.g. MultiInputPolicy); check agents/{algo}.yml")
    policy = params.pop("policy")
    if isinstance(params.get("policy_kwargs"), str):
        params["policy_kwargs"] = eval(params["policy_kwargs"], {"__builtins__": __builtins__, "nn": nn})  # noqa: S307
    noise_type, noise_std = params.pop("noise_type", None), params.pop("noise_std", 0.1)
    if noise_type == "normal":
        size = env.action_space.shape[-1]
        params["action_noise"] = NormalActionNoise(np.zeros(size), noise_std * np.ones(size))
    elif noise_type is not None:
        raise ValueError(f"noise_type: only 'normal' is supported, got {noise_type!r}")
    cls = algorithm_class(algo)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(
                f"hyperparameters: {cls.__name__} takes no {', '.join(unknown)}; check agents/{algo}.yml / "
                f"--params (it takes: {', '.join(k for k in accepted if k not in OWN_ARGUMENTS)})"
            )
    try:
        model = cls(policy, env, seed=seed, device=device, tensorboard_log=tensorboard_log, verbose=verbose,
                    **params)
    except TypeError as error:  # a value of the wrong kind for the constructor
        raise ValueError(f"hyperparameters: {cls.__name__} rejected them ({error}); check agents/{algo}.yml / "
                         "--params") from error
    return model, timesteps


class LDMSRFeatureExtractor(BaseFeaturesExtractor):
    """CNN over concat(LR, z_t) plus an MLP over progress features.

    Args:
        observation_space: the env's Dict space (keys lr, latent, progress; flat Boxes).
        cnn_channels: widths of the three conv layers (the last two stride 2).
        features_dim: output size.
        image_side: side of the (square) LR image; inferred from the ``lr`` size when None.
    """

    def __init__(self, observation_space: gym.spaces.Dict, cnn_channels: tuple[int, int, int] = (32, 64, 64),
                 features_dim: int = 128, image_side: int | None = None) -> None:
        super().__init__(observation_space, features_dim)
        lr_size = int(observation_space["lr"].shape[0])
        latent_size = int(observation_space["latent"].shape[0])
        side = image_side or int(round(math.sqrt(lr_size / 3)))
        if 3 * side * side != lr_size or latent_size % (side * side):
            raise ValueError(
                f"observation_space: lr of {lr_size} values is not a square 3-channel image "
                f"(or latent of {latent_size} values does not match it); pass image_side"
            )
        self.side, self.latent_channels = side, latent_size // (side * side)
        c1, c2, c3 = cnn_channels
        self.cnn = nn.Sequential(
            nn.Conv2d(3 + self.latent_channels, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        progress_size = int(observation_space["progress"].shape[0])
        self.head = nn.Sequential(nn.Linear(4 * c3 + progress_size, features_dim), nn.SiLU())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = observations["lr"].shape[0]
        # SB3 hands flat uint8 Boxes over as floats without /255 (only 3-D Boxes count as images).
        lr = observations["lr"].float().view(batch, 3, self.side, self.side) / 255.0
        latent = observations["latent"].float().view(batch, self.latent_channels, self.side, self.side)
        features = self.cnn(torch.cat([lr * 2.0 - 1.0, latent], dim=1))
        return self.head(torch.cat([features, observations["progress"].float()], dim=1))


class TrainingMonitor(BaseCallback):
    """Run-folder bookkeeping during ``learn``: the reward curve, atomic checkpoints, and a
    periodic deterministic evaluation on the validation split that keeps the best model.

    Files (in ``run_dir``): ``checkpoints/latest.zip``, ``checkpoints/best_model.zip``,
    ``reward_curve.csv`` / ``.png`` (episode reward against timesteps, the paper's Figure 3),
    ``validation.csv`` (timesteps, mean validation reward), ``training.json`` (timesteps and wall
    time of every ``learn()`` call, so a run's cost is known without its large checkpoints).

    A run whose length is a multiple of ``eval_freq`` ends with two validation rows at the same
    timestep count: the periodic one, taken while the last rollout was collected (the policy
    before its last update), and the final one after ``learn()`` returns (the trained policy).
    They are different policies, so both are kept.
    """

    def __init__(self, run_dir: Path, *, evaluate: Callable[[BaseAlgorithm], float] | None = None,
                 eval_freq: int = 10_000, checkpoint_freq: int = 10_000, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.run_dir = Path(run_dir)
        self.evaluate, self.eval_freq, self.checkpoint_freq = evaluate, eval_freq, checkpoint_freq
        self.episodes: list[tuple[int, float]] = self._read_csv(self.run_dir / "reward_curve.csv")
        self.validation: list[tuple[int, float]] = self._read_csv(self.run_dir / "validation.csv")
        self.best = max((r for _, r in self.validation), default=-math.inf)
        self._last_eval = self._last_checkpoint = 0
        self._learning = False

    @staticmethod
    def _read_csv(path: Path) -> list[tuple[int, float]]:
        if not path.is_file():
            return []
        rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
        return [(int(t), float(r)) for t, r in rows]

    def _on_training_start(self) -> None:
        self._last_eval = self._last_checkpoint = self.num_timesteps
        self._learning = True  # start_time now belongs to this process's learn() call

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.episodes.append((self.num_timesteps, float(info["episode"]["r"])))
        if self.evaluate is not None and self.num_timesteps - self._last_eval >= self.eval_freq:
            self._last_eval = self.num_timesteps
            self.run_validation()
        if self.num_timesteps - self._last_checkpoint >= self.checkpoint_freq:
            self._last_checkpoint = self.num_timesteps
            self.save()
        return True

    def run_validation(self) -> float:
        score = float(self.evaluate(self.model))
        self.validation.append((self.num_timesteps, score))
        if self._learning:  # a run reloaded only to validate has no logger (learn() sets it up)
            self.logger.record("eval/validation_reward", score)
        if score > self.best:
            self.best = score
            save_model(self.model, self.run_dir / "checkpoints" / "best_model.zip")
        self._write_csv("validation.csv", self.validation)
        return score

    def _write_csv(self, name: str, rows: list[tuple[int, float]]) -> None:
        atomic_write_text(self.run_dir / name, "timesteps,reward\n" + "".join(f"{t},{r}\n" for t, r in rows))

    def save(self) -> None:
        """Checkpoint and curve, atomically: an interrupted run keeps everything saved so far."""
        save_model(self.model, self.run_dir / "checkpoints" / "latest.zip")
        self._write_csv("reward_curve.csv", self.episodes)
        plot_reward_curve(self.episodes, self.validation, self.run_dir / "reward_curve.png")
        if self._learning:  # a finished run reloaded only to validate adds no training time
            record_training_segment(self.run_dir, start=self.model.start_time / 1e9, end=time.time(),
                                    timesteps_start=int(self.model._num_timesteps_at_start),
                                    timesteps_end=int(self.model.num_timesteps))


def record_training_segment(run_dir: Path, *, start: float, end: float, timesteps_start: int,
                            timesteps_end: int) -> dict:
    """Add or update one ``learn()`` call (keyed by its start time) in ``run_dir/training.json``:
    ``segments`` (start / end as Unix times, timesteps at both ends), ``num_timesteps`` and
    ``wall_seconds`` (summed over the segments: a resumed run adds one)."""
    path = Path(run_dir) / "training.json"
    record = json.loads(path.read_text()) if path.is_file() else {"segments": []}
    segments = [s for s in record["segments"] if abs(s["start"] - start) > 1e-3]
    segments.append({"start": start, "end": end, "timesteps_start": timesteps_start, "timesteps_end": timesteps_end})
    segments.sort(key=lambda s: s["start"])
    record = {"num_timesteps": timesteps_end, "wall_seconds": sum(s["end"] - s["start"] for s in segments),
              "segments": segments}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def save_model(model: BaseAlgorithm, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        model.save(handle)


def plot_reward_curve(episodes: list[tuple[int, float]], validation: list[tuple[int, float]], path: Path) -> None:
    """Episode reward against timesteps with a running mean, and the validation reward."""
    if not episodes:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, rewards = (np.array(v, dtype=np.float64) for v in zip(*episodes, strict=True))
    window = max(1, len(rewards) // 50)
    running = np.convolve(rewards, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(steps, rewards, ".", markersize=1.5, alpha=0.25, color="tab:blue", label="episode reward")
    ax.plot(steps[window - 1:], running, color="tab:blue", label=f"running mean ({window} episodes)")
    if validation:
        v_steps, v_rewards = zip(*validation, strict=True)
        ax.plot(v_steps, v_rewards, "o-", color="tab:orange", label="validation (deterministic)")
    ax.set_xlabel("timesteps")
    ax.set_ylabel("reward")
    ax.set_title("Training reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
