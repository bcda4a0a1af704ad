"""Offline policies from a collected dataset: d3rlpy's IQL, CQL, TD3+BC and BC, trained without
a single env step, saved in a run folder that ``orl-gym evaluate`` reads like an online run's::

    orl-gym train-offline --algo iql --dataset orl_gym/tiny-x4/grid-quick-v0 --run-dir runs/iql
    orl-gym evaluate runs/iql

The dataset is one ``orl-gym collect`` wrote (``orl_gym.collect``): its Dict observations are
flattened with ``orl_gym.agents.flatten_observation`` (lr / 255, latent, progress, in that key
order: the one layout the SB3 side uses too) and its episodes become a d3rlpy ``MDPDataset``
(terminals where the schedule reached t = 0, timeouts where the step budget ran out; the reward is
the env's sparse one, paid when the image finishes). Hyperparameters come from
``agents/<algo>.yml`` in rl-zoo3's layout, keyed by env preset or env id: ``n_steps`` and
``n_steps_per_epoch`` size d3rlpy's ``fit``, every other key is a field of the algorithm's d3rlpy
config (``IQLConfig``, ...), encoder factories in d3rlpy's serialized form
(``{type: vector, params: {hidden_units: [256, 256]}}``).

Run folder: ``config.yaml`` (``engine: d3rlpy``, algo, env_kwargs, the dataset, hyperparameters,
observation shapes), ``command.txt``, ``checkpoints/latest.d3`` (d3rlpy's ``save``, written
atomically after every epoch), ``losses.csv`` / ``training_curve.png`` (d3rlpy's losses per
epoch) and ``training.json`` (gradient steps, wall time, and the env steps the data cost).
d3rlpy's .d3 files are pickles: load only files you trust.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orl_gym import ENV_ID
from orl_gym.configs import CONFIG_DIR, agent_entry
from orl_gym.io import atomic_open, atomic_write_text, save_figure

__all__ = [
    "OFFLINE_ALGORITHMS",
    "D3RLPyPolicy",
    "d3rlpy_config",
    "load_offline_hyperparams",
    "load_run_policy",
    "prepare_offline_run",
    "to_mdp_dataset",
    "train_offline",
]

# algo name -> the d3rlpy config class that builds it (continuous actions)
OFFLINE_ALGORITHMS: dict[str, str] = {"iql": "IQLConfig", "cql": "CQLConfig", "td3plusbc": "TD3PlusBCConfig",
                                      "bc": "BCConfig"}
FIT_KEYS = ("n_steps", "n_steps_per_epoch")  # d3rlpy fit()'s; the other keys are the config's
CHECKPOINT = Path("checkpoints") / "latest.d3"


def _d3rlpy() -> Any:
    """d3rlpy, imported quietly: its INFO logs (every epoch, to stdout) are filtered to warnings,
    and the notice that Gym (a d3rlpy dependency) prints on import is swallowed."""
    import structlog

    # d3rlpy configures structlog's processors on import, not its level: set the level first.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import d3rlpy
    except ImportError as error:
        raise RuntimeError(f"the offline algorithms need d3rlpy ({error}); install it with pip install --no-deps "
                           "d3rlpy==2.8.1 beside the offline extra (docs/offline.md says why --no-deps)") from error
    return d3rlpy


def _config_class(algo: str) -> type:
    if algo not in OFFLINE_ALGORITHMS:
        raise ValueError(f"--algo: unknown offline algorithm {algo!r}; algorithms: {', '.join(OFFLINE_ALGORITHMS)}")
    return getattr(_d3rlpy().algos, OFFLINE_ALGORITHMS[algo])


def load_offline_hyperparams(algo: str, preset: str | None = None, *, conf_file: str | Path | None = None
                             ) -> tuple[dict[str, Any], str]:
    """(hyperparameters, the entry read) of ``agents/<algo>.yml``: the preset's entry when the
    file has one, else the env id's (as ``orl_gym.agents.load_hyperparams`` reads the online ones)."""
    if algo not in OFFLINE_ALGORITHMS:
        raise ValueError(f"--algo: unknown offline algorithm {algo!r}; algorithms: {', '.join(OFFLINE_ALGORITHMS)}")
    return agent_entry(conf_file or CONFIG_DIR / "agents" / f"{algo}.yml", (preset, ENV_ID), option="--algo")


def d3rlpy_config(algo: str, hyperparams: Mapping[str, Any]) -> Any:
    """The d3rlpy config of ``algo`` with the hyperparameters' config fields (not ``n_steps`` /
    ``n_steps_per_epoch``); ValueError naming an unknown field or a value d3rlpy cannot read."""
    cls = _config_class(algo)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in hyperparams.items() if k not in FIT_KEYS}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"hyperparameters: {cls.__name__} takes no {', '.join(unknown)}; check agents/{algo}.yml / "
                         f"--params (it takes: {', '.join(sorted(fields))})")
    # d3rlpy reads a full serialized config (factories as {type, params}); start from its defaults.
    serialized = {**cls().serialize_to_dict(), **values}
    try:
        return cls.deserialize_from_dict(serialized)
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        raise ValueError(f"hyperparameters: {cls.__name__} could not read them ({type(error).__name__}: {error}); "
                         f"factories take d3rlpy's form, e.g. {{type: vector, params: {{hidden_units: [256, 256]}}}}"
                         ) from error


def to_mdp_dataset(dataset: Any) -> Any:
    """A collected Minari dataset as a d3rlpy ``MDPDataset`` of flattened observations.

    Each episode's T + 1 observations lose the last one (d3rlpy keeps no final observation: an
    episode ends in a terminal, where nothing is bootstrapped, or a timeout)."""
    from orl_gym.agents import flatten_observation

    d3rlpy = _d3rlpy()
    observations, actions, rewards, terminals, timeouts = [], [], [], [], []
    for episode in dataset.iterate_episodes():
        steps = len(episode.rewards)
        observations.append(flatten_observation({k: v[:steps] for k, v in episode.observations.items()}))
        actions.append(np.asarray(episode.actions, dtype=np.float32))
        rewards.append(np.asarray(episode.rewards, dtype=np.float32))
        terminals.append(np.asarray(episode.terminations, dtype=np.float32))
        # An episode that neither terminated nor was truncated (none in an orl-gym dataset) still ends here.
        timeout = np.asarray(episode.truncations, dtype=np.float32)
        timeout[-1] = max(timeout[-1], 1.0 - terminals[-1][-1])
        timeouts.append(timeout)
    return d3rlpy.dataset.MDPDataset(np.concatenate(observations), np.concatenate(actions), np.concatenate(rewards),
                                     np.concatenate(terminals), np.concatenate(timeouts),
                                     action_space=d3rlpy.ActionSpace.CONTINUOUS)


def _observation_shapes(space: Any) -> dict[str, list[int]]:
    return {key: list(sub.shape) for key, sub in space.spaces.items()}


def prepare_offline_run(
    *,
    algo: str,
    dataset: str | os.PathLike,
    datasets_root: str | os.PathLike | None = None,
    env: str | None = None,
    env_overrides: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
    n_steps: int | None = None,
    seed: int = 42,
    agent_device: str = "cpu",
    run_dir: str | os.PathLike | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The run folder and resolved ``config.yaml`` of a new offline run, every input checked
    first (nothing is written): the dataset (an orl-gym collection, not empty), the env it must
    match (``env`` + ``env_overrides`` when given, else the dataset's own), the spaces the env
    makes now against the dataset's (a model or hr_size changed since), the hyperparameters."""
    from orl_gym.collect import env_differences, load_collected_dataset
    from orl_gym.configs import apply_env_overrides, env_preset
    from orl_gym.evaluation import env_spaces

    data, record = load_collected_dataset(dataset, root=datasets_root)
    data_path = Path(data.storage.data_path).resolve()
    env_kwargs = dict(record["env_kwargs"])
    if env is not None or env_overrides:
        wanted = apply_env_overrides(env_preset(env) if env is not None else env_kwargs, env_overrides)
        differences = env_differences(env_kwargs, wanted)
        if differences:
            raise ValueError(f"--dataset: {data_path.parent} was collected with another env config than "
                             f"{env or 'the one asked for'}: {'; '.join(differences)}; collect a dataset with that env "
                             "or leave --env / --env-kwargs out")
    observation_space, action_space = env_spaces(env_kwargs, split=env_kwargs.get("split", "train"))
    found = {k: (tuple(s.shape), str(s.dtype)) for k, s in data.observation_space.spaces.items()}
    expected = {k: (tuple(s.shape), str(s.dtype)) for k, s in observation_space.spaces.items()}
    if found != expected or tuple(data.action_space.shape) != tuple(action_space.shape):
        raise ValueError(f"--dataset: {data_path.parent} holds observations {found} and actions "
                         f"{tuple(data.action_space.shape)}, but its env makes {expected} and {tuple(action_space.shape)} "
                         "now (its model or hr_size changed since collection?); collect the data again")
    preset = env or record.get("env")
    hyperparams, entry = load_offline_hyperparams(algo, preset)
    hyperparams.update(params or {})
    if n_steps is not None:
        hyperparams["n_steps"] = int(n_steps)
    for key in FIT_KEYS:
        if int(hyperparams.get(key, 0)) < 1:
            raise ValueError(f"hyperparameters: {key} must be >= 1 (agents/{algo}.yml entry {entry!r} / --params)")
    d3rlpy_config(algo, hyperparams)  # checked now, not after the folder is made
    run_dir = Path(run_dir or Path("runs") / f"{algo}-{Path(str(record['dataset_id'])).name}-"
                   f"{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"--run-dir: {run_dir} exists and is not empty; pick another --run-dir or delete it "
                         "(an offline run does not resume)")
    config = {
        "engine": "d3rlpy", "algo": algo, "env": preset, "env_kwargs": env_kwargs,
        "dataset": {"path": str(data_path.parent), "id": record["dataset_id"], "episodes": int(data.total_episodes),
                    "transitions": int(data.total_steps), "env_steps": int(record.get("env_steps", data.total_steps)),
                    "behaviour_policy": record.get("policy")},
        "hyperparams_entry": entry, "hyperparams": hyperparams, "seed": int(seed), "agent_device": agent_device,
        "observation_shapes": _observation_shapes(observation_space), "action_size": int(action_space.shape[0]),
    }
    return run_dir, json.loads(json.dumps(config))


def _device(agent_device: str) -> str:
    """d3rlpy's device string: "cpu:0", "cuda:0", ..."""
    device = str(agent_device)
    return device if ":" in device else f"{device}:0"


def train_offline(run_dir: str | os.PathLike, config: Mapping[str, Any], *, progress: bool = True) -> Path:
    """Train the run ``config`` describes (see :func:`prepare_offline_run`) on its dataset: d3rlpy
    gradient steps only, no env step. The checkpoint, losses and curve are rewritten after each
    epoch (an interrupted run keeps its last finished epoch)."""
    from orl_gym.collect import load_collected_dataset

    d3rlpy = _d3rlpy()
    run_dir = Path(run_dir)
    data, _ = load_collected_dataset(config["dataset"]["path"])
    hyperparams = config["hyperparams"]
    n_steps = int(hyperparams["n_steps"])
    per_epoch = min(int(hyperparams["n_steps_per_epoch"]), n_steps)
    d3rlpy.seed(int(config["seed"]))
    algo = d3rlpy_config(config["algo"], hyperparams).create(device=_device(config.get("agent_device", "cpu")))
    mdp = to_mdp_dataset(data)
    rows: list[dict[str, float]] = []
    started = time.time()
    fitter = algo.fitter(mdp, n_steps=per_epoch * max(1, n_steps // per_epoch), n_steps_per_epoch=per_epoch,
                         experiment_name=config["algo"], with_timestamp=False, show_progress=progress,
                         logger_adapter=d3rlpy.logging.NoopAdapterFactory(), save_interval=10**9)
    for epoch, metrics in fitter:
        rows.append({"epoch": epoch, "gradient_steps": epoch * per_epoch,
                     **{k: float(v) for k, v in metrics.items() if not k.startswith("time_")}})
        _save_checkpoint(algo, run_dir / CHECKPOINT)
        _write_losses(run_dir, rows)
        _record_training(run_dir, config, gradient_steps=epoch * per_epoch, seconds=time.time() - started)
    plot_losses(rows, run_dir / "training_curve.png", title=f"{config['algo']} on {config['dataset']['id']}")
    return run_dir


def _save_checkpoint(algo: Any, path: Path) -> None:
    """d3rlpy's ``save`` (it takes a file name) to a temporary sibling, then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    algo.save(str(temp))
    os.replace(temp, path)


def _write_losses(run_dir: Path, rows: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_open(run_dir / "losses.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _record_training(run_dir: Path, config: Mapping[str, Any], *, gradient_steps: int, seconds: float) -> None:
    record = {"gradient_steps": gradient_steps, "wall_seconds": seconds, "env_steps_training": 0,
              "dataset_env_steps": config["dataset"]["env_steps"], "dataset_transitions": config["dataset"]["transitions"]}
    atomic_write_text(run_dir / "training.json", json.dumps(record, indent=2) + "\n")


def plot_losses(rows: Sequence[Mapping[str, float]], path: Path, *, title: str) -> Path | None:
    """PNG: each loss d3rlpy reported, per epoch, against gradient steps (one panel each)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0] if k not in ("epoch", "gradient_steps")]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 3.0), squeeze=False)
    steps = [row["gradient_steps"] for row in rows]
    for ax, key in zip(axes[0], keys, strict=False):
        ax.plot(steps, [row.get(key, math.nan) for row in rows], "o-", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("gradient steps")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


class D3RLPyPolicy:
    """A trained d3rlpy algorithm as a deterministic policy on the batched env's Dict observations
    (flattened as in training), actions clipped to [-1, 1]."""

    def __init__(self, algo: Any, *, observation_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        self.algo = algo
        self.observation_shapes = {k: tuple(v) for k, v in (observation_shapes or {}).items()}

    def __call__(self, obs: Mapping[str, np.ndarray], episode_start: np.ndarray) -> np.ndarray:
        from orl_gym.agents import flatten_observation

        actions = self.algo.predict(flatten_observation(obs))
        return np.clip(np.asarray(actions, dtype=np.float32), -1.0, 1.0)

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """ValueError when the policy was trained on other observation or action shapes than the
        env's (another hr_size, model or action set), before any image is scored."""
        import gymnasium as gym

        advice = "evaluate it with the env its dataset was collected with (its run folder, or --env-kwargs)"
        if int(self.algo.impl.action_size) != int(action_space.shape[0]):
            raise ValueError(f"the policy's actions have size {self.algo.impl.action_size}, this env's "
                             f"{tuple(action_space.shape)} (another set of action parameters); {advice}")
        expected = {k: tuple(s.shape) for k, s in observation_space.spaces.items()}
        flat = tuple(self.algo.impl.observation_shape)
        if (self.observation_shapes and self.observation_shapes != expected) or flat != (
                gym.spaces.flatdim(observation_space),):
            found = self.observation_shapes or {"flat": flat}
            raise ValueError(f"the policy's observations have shapes {found}, this env's {expected} (another hr_size "
                             f"or model); {advice}")


def load_run_policy(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> tuple[D3RLPyPolicy, Path]:
    """The policy of an offline run folder (``orl_gym.run_policies``' hook for ``engine: d3rlpy``)
    and its checkpoint. The .d3 file is a pickle: load only run folders you trust."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"{path}: missing; train first (orl-gym train-offline) or check the run folder")
    d3rlpy = _d3rlpy()
    algo = d3rlpy.load_learnable(str(path), device="cpu:0")
    return D3RLPyPolicy(algo, observation_shapes=config.get("observation_shapes")), path
