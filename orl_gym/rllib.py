"""PPO on Ray RLlib (new API stack) with the batched env: training that scales past one machine.

    orl-gym train --engine rllib --env tiny-x4 [--params num_env_runners=2 ...]
    orl-gym evaluate RUN

Each RLlib EnvRunner holds ONE batched env of ``num_envs_per_env_runner`` images, registered with
``tune.register_env`` (:mod:`orl_gym.rllib_env`: the batched env through its own vector entry point,
one UNet call per step for all of a runner's images, in RLlib's next-step autoreset mode, with
flattened observations); ``num_env_runners`` runners sample in parallel (Ray actors, on this
machine or on a cluster's hosts, each with ``num_gpus_per_env_runner`` GPUs), and RLlib's PPO
learner(s) (``num_learners``, ``num_gpus_per_learner``) train the policy. docs/rllib.md has the
cluster recipe.

Run folder (as ``orl-gym train``'s SB3 runs): ``config.yaml`` (``engine: rllib``, algo, env,
env_kwargs, hyperparams, seed, timesteps, n_envs = images per runner, ...), ``command.txt``,
``checkpoints/latest`` and ``checkpoints/best`` (RLlib ``Algorithm.save_to_path`` folders, written
to a temporary folder and renamed), ``reward_curve.csv`` / ``.png`` (mean episode reward of each
training iteration against env steps), ``validation.csv`` (deterministic mean reward on the
validation split, every ``eval_freq`` env steps), ``training.json`` and TensorBoard scalars in
``tb/``. ``orl-gym evaluate RUN`` restores the policy's RLModule from the checkpoint
(:func:`load_run_policy`), with no Ray cluster.

Ray is an optional dependency (``pip install 'orl_gym[rllib]'``; setup.cfg says why it lists Ray's
RLlib dependencies instead of ``ray[rllib]``); this module imports it only when it trains.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from orl_gym.configs import CONFIG_DIR

__all__ = [
    "RLLIB_ENV",
    "RLlibPolicy",
    "build_ppo_config",
    "load_run_policy",
    "train_rllib",
]

RLLIB_ENV = "orl_gym/LDMSR-rllib-v0"  # the tune.register_env name of make_rllib_env
HYPERPARAMS_FILE = CONFIG_DIR / "agents" / "rllib_ppo.yml"
ALGORITHMS = ("ppo",)  # RLlib algorithms orl-gym trains (--algo)
OWN_KEYS = ("n_timesteps",)  # hyperparameters orl-gym reads itself (not RLlib's)
CHECKPOINTS = ("best", "latest")  # checkpoint folders, in the order evaluation prefers them
MODULE_PATH = Path("learner_group") / "learner" / "rl_module" / "default_policy"  # inside a checkpoint
# The final metrics of an image (info of the step that ends it) averaged per training iteration.
EPISODE_METRICS = ("psnr", "ssim", "lpips", "unet_calls")


def _ray() -> Any:
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.rllib  # noqa: F401  (the RLlib dependencies: dm_tree, lz4, ...)
    except ImportError as error:
        raise RuntimeError(f"--engine rllib needs Ray RLlib ({error}); install it with pip install "
                           "'orl_gym[rllib]' (docs/rllib.md)") from error
    return ray


def _on_episode_end(*, episode: Any, metrics_logger: Any = None, **_: Any) -> None:
    """Log the finished image's metrics (averaged per iteration in the results' env_runners)."""
    info = episode.get_infos(-1)
    for key in EPISODE_METRICS:
        if key in info and metrics_logger is not None:
            metrics_logger.log_value(f"image_{key}", float(info[key]), reduce="mean")


# ---------------------------------------------------------------------------------------------
# Hyperparameters and the PPO config


def _routes(config: Any) -> dict[str, str]:
    """hyperparameter name -> the PPOConfig method that takes it, or "model" (DefaultModelConfig)."""
    import dataclasses

    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    routes = {f.name: "model" for f in dataclasses.fields(DefaultModelConfig)}
    for method in ("learners", "env_runners", "training"):  # training last: its names win
        # PPOConfig.training names PPO's own arguments and passes **kwargs on to AlgorithmConfig's
        # (lr, gamma, minibatch_size, ...): every class's signature counts.
        for cls in type(config).__mro__:
            if method in vars(cls):
                routes.update({name: method for name, param in inspect.signature(vars(cls)[method]).parameters.items()
                               if name != "self" and param.kind == param.KEYWORD_ONLY})
    return routes


def build_ppo_config(run: Mapping[str, Any]) -> Any:
    """RLlib's PPOConfig of a run configuration (``config.yaml``'s env_kwargs, hyperparams, seed,
    n_envs, agent_device): the batched env per runner, the YAML's hyperparameters routed to the
    method that takes each; ValueError naming a key RLlib does not know."""
    _ray()
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    config = PPOConfig()
    hyperparams = {k: v for k, v in run["hyperparams"].items() if k not in OWN_KEYS}
    routes = _routes(config)
    unknown = sorted(k for k in hyperparams if k not in routes)
    if unknown:
        raise ValueError(f"hyperparameters: RLlib's PPO takes no {', '.join(unknown)}; check agents/rllib_ppo.yml / "
                         "--params (keys are PPOConfig.training / env_runners / learners arguments or "
                         "DefaultModelConfig fields)")
    groups: dict[str, dict[str, Any]] = {"training": {}, "env_runners": {}, "learners": {}, "model": {}}
    for key, value in hyperparams.items():
        groups[routes[key]][key] = value
    runners = groups["env_runners"]
    runners["num_envs_per_env_runner"] = int(run["n_envs"])
    runners.setdefault("num_env_runners", 1)
    runners.setdefault("rollout_fragment_length", 16)
    runners["gym_env_vectorize_mode"] = gym.VectorizeMode.VECTOR_ENTRY_POINT  # one batched env per runner
    # One on-policy rollout per iteration, as SB3's n_envs * n_steps.
    groups["training"].setdefault("train_batch_size_per_learner", max(1, int(runners["num_env_runners"])) * int(
        runners["num_envs_per_env_runner"]) * int(runners["rollout_fragment_length"]))
    if str(run["env_kwargs"].get("device", "cpu")).startswith("cuda"):
        # Ray hides GPUs from an actor that asks for none: each runner's batched env needs its own
        # (fractions share one: num_gpus_per_env_runner=0.5 puts two runners on a GPU).
        runners.setdefault("num_gpus_per_env_runner", 1)
    device = str(run.get("agent_device", "cpu"))
    if device.startswith("cuda"):
        groups["learners"].setdefault("num_gpus_per_learner", 1)
    elif device != "cpu":
        raise ValueError(f"--agent-device {device}: RLlib's learners take cpu or cuda (GPUs per learner: "
                         "--params num_gpus_per_learner=N)")
    try:
        model = DefaultModelConfig(**groups["model"])
    except TypeError as error:
        raise ValueError(f"hyperparameters: DefaultModelConfig could not take {groups['model']} ({error})") from None
    return (config.environment(RLLIB_ENV, env_config=dict(run["env_kwargs"]))
            .env_runners(**runners)
            .learners(**groups["learners"])
            .training(**groups["training"])
            .rl_module(model_config=model)
            .callbacks(on_episode_end=_on_episode_end)
            .debugging(seed=int(run["seed"]), log_level="ERROR"))


# ---------------------------------------------------------------------------------------------
# Training


def _new_run(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    from orl_gym.agents import hyperparams_entry, load_hyperparams
    from orl_gym.cli import DEFAULT_RUNS, TRAIN_DEFAULTS, _env_kwargs, _with_params

    for key, default in TRAIN_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)
    if args.algo not in ALGORITHMS:
        raise ValueError(f"--algo {args.algo}: --engine rllib trains {', '.join(ALGORITHMS)}")
    # agents/rllib_ppo.yml, read as the SB3 algorithms' files: the preset's entry, else the env id's.
    hyperparams = _with_params(load_hyperparams("ppo", args.env, conf_file=HYPERPARAMS_FILE), args.params)
    n_envs = int(args.n_envs or hyperparams.pop("num_envs_per_env_runner", 8))
    hyperparams.pop("num_envs_per_env_runner", None)  # recorded once, as n_envs
    timesteps = int(args.timesteps or float(hyperparams.get("n_timesteps", 1e6)))
    run_dir = Path(args.run_dir or DEFAULT_RUNS / f"rllib-{args.algo}-{args.env}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"--run-dir: {run_dir} exists and is not empty; use --resume {run_dir} to continue it, or "
                         "pick another --run-dir")
    entry = hyperparams_entry("ppo", args.env, conf_file=HYPERPARAMS_FILE)
    if entry != args.env:
        print(f"orl-gym: rllib {args.algo} hyperparameters from agents/rllib_ppo.yml entry {entry!r} (none for "
              f"{args.env!r}); --n-envs / --params override them", file=sys.stderr)
    config = {"engine": "rllib", "algo": args.algo, "env": args.env, "env_kwargs": _env_kwargs(args),
              "hyperparams": hyperparams, "seed": args.seed, "timesteps": timesteps, "n_envs": n_envs,
              "eval_freq": args.eval_freq, "eval_images": args.eval_images, "agent_device": args.agent_device}
    return run_dir, config


def _save_checkpoint(algo: Any, path: Path) -> Path:
    """``algo.save_to_path`` into a temporary sibling folder, then renamed to ``path``: an
    interrupted save never leaves a half-written checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        algo.save_to_path(str(tmp))
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replace_dir(source: Path, target: Path) -> None:
    """Move folder ``source`` to ``target``, replacing it (two renames; the old one is removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _RunRecord:
    """The run folder's curves, validation and training time (the files an SB3 run has)."""

    def __init__(self, run_dir: Path) -> None:
        from orl_gym.agents import TrainingMonitor

        self.run_dir = run_dir
        self.curve = TrainingMonitor._read_csv(run_dir / "reward_curve.csv")
        self.validation = TrainingMonitor._read_csv(run_dir / "validation.csv")
        self.best = max((r for _, r in self.validation), default=-math.inf)

    def write(self) -> None:
        from orl_gym.agents import plot_reward_curve
        from orl_gym.io import atomic_write_text

        for name, rows in (("reward_curve.csv", self.curve), ("validation.csv", self.validation)):
            atomic_write_text(self.run_dir / name, "timesteps,reward\n" + "".join(f"{t},{r}\n" for t, r in rows))
        plot_reward_curve(self.curve, self.validation, self.run_dir / "reward_curve.png")


def _iteration_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one training iteration worth a curve (TensorBoard)."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get("default_policy", {})
    scalars = {"rollout/ep_rew_mean": runners.get("episode_return_mean"),
               "rollout/ep_len_mean": runners.get("episode_len_mean"),
               **{f"rollout/image_{k}": runners.get(f"image_{k}") for k in EPISODE_METRICS},
               **{f"train/{k}": learner.get(k) for k in ("policy_loss", "vf_loss", "entropy", "mean_kl_loss",
                                                        "vf_explained_var")}}
    return {k: float(v) for k, v in scalars.items() if isinstance(v, int | float | np.number) and math.isfinite(v)}


def _check_resources(cluster: Mapping[str, float], config: Any) -> None:
    """ValueError when a cluster (``ray.cluster_resources()``) lacks the CPUs or GPUs that the
    env runners and learners ask for: Ray would otherwise wait for them forever."""
    learner_cpus = config.num_cpus_per_learner
    if not isinstance(learner_cpus, int | float):  # "auto": 1 CPU for a CPU learner, none beside a GPU
        learner_cpus = 0 if config.num_gpus_per_learner else 1
    need = {"CPU": config.num_env_runners * config.num_cpus_per_env_runner + config.num_learners * learner_cpus,
            "GPU": config.num_env_runners * config.num_gpus_per_env_runner
            + config.num_learners * config.num_gpus_per_learner}
    short = [f"{need[k]:g} {k}s (the cluster has {cluster.get(k, 0):g})" for k in need if need[k] > cluster.get(k, 0)]
    if short:
        raise ValueError(f"{config.num_env_runners} env runner(s) and {config.num_learners} remote learner(s) need "
                         f"{' and '.join(short)}; lower num_env_runners / num_learners or the per-runner and "
                         "per-learner CPUs / GPUs with --params (fractions share a GPU), or join a larger cluster "
                         "(RAY_ADDRESS, docs/rllib.md)")


def _sampled_steps(result: Mapping[str, Any]) -> int:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    return int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))


def _validate(run_dir: Path, config: Mapping[str, Any], checkpoint: Path) -> float:
    """Mean deterministic reward of a checkpoint on the validation split (as SB3 runs validate),
    restored through the loader ``orl-gym evaluate`` uses."""
    from orl_gym.evaluation import evaluate_method

    policy = RLlibPolicy.from_checkpoint(checkpoint)
    result = evaluate_method("validation", policy, config["env_kwargs"], split="validation",
                             num_envs=min(int(config["n_envs"]), int(config["eval_images"])),
                             max_images=int(config["eval_images"]), progress=False)
    return float(result.column("reward").mean())


def train_rllib(args: argparse.Namespace) -> Path:
    """``orl-gym train --engine rllib``: train RLlib's PPO in a new run folder, or continue one
    (``--resume``); returns the run folder."""
    from tqdm.auto import tqdm

    from orl_gym.agents import record_training_segment
    from orl_gym.cli import _resume_config, _write_run_files
    from orl_gym.rllib_env import make_rllib_env

    ray = _ray()
    from ray import tune

    run_dir, config = _resume_config(args, checkpoint="latest") if args.resume else _new_run(args)
    ppo_config = build_ppo_config(config)  # bad hyperparameters fail before Ray starts
    started_ray = not ray.is_initialized()
    if started_ray:
        # RAY_ADDRESS (e.g. auto, or head:6379) joins a running cluster; unset, a local one starts.
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    tune.register_env(RLLIB_ENV, make_rllib_env)
    writer = None
    try:
        if started_ray and not os.environ.get("RAY_ADDRESS"):  # this machine alone: its resources are all
            _check_resources(ray.cluster_resources(), ppo_config)
        algo = ppo_config.build_algo()
        if args.resume:
            algo.restore_from_path(str(run_dir / "checkpoints" / "latest"))
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, config)
        record = _RunRecord(run_dir)
        steps = _previous_steps(run_dir)
        remaining = max(0, int(config["timesteps"]) - steps)
        runners = int(config["hyperparams"].get("num_env_runners", 1))
        print(f"orl-gym: training rllib {config['algo']} on {config['env']} for {remaining} more timesteps "
              f"({runners} env runner(s) x {config['n_envs']} images in one batch each); run folder {run_dir}",
              file=sys.stderr)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb" / "run"))
        start, start_steps, last_eval = time.time(), steps, steps
        bar = tqdm(total=int(config["timesteps"]), initial=steps, unit="step", disable=args.no_progress,
                   desc="rllib ppo")
        try:
            while steps < int(config["timesteps"]):
                result = algo.train()
                sampled = _sampled_steps(result)  # lifetime count: a restored checkpoint carries its own
                bar.update(max(0, sampled - steps))
                steps = sampled
                scalars = _iteration_scalars(result)
                for key, value in scalars.items():
                    writer.add_scalar(key, value, steps)
                if "rollout/ep_rew_mean" in scalars:
                    record.curve.append((steps, scalars["rollout/ep_rew_mean"]))
                if steps - last_eval >= int(config["eval_freq"]) or steps >= int(config["timesteps"]):
                    last_eval = steps
                    _checkpoint_and_validate(algo, run_dir, config, record, steps, writer)
                    record_training_segment(run_dir, start=start, end=time.time(), timesteps_start=start_steps,
                                            timesteps_end=steps)
        except KeyboardInterrupt:
            print(f"\norl-gym: interrupted; saving the checkpoint (resume with --resume {run_dir})", file=sys.stderr)
            _save_checkpoint(algo, run_dir / "checkpoints" / "latest")
            record.write()
            record_training_segment(run_dir, start=start, end=time.time(), timesteps_start=start_steps,
                                    timesteps_end=steps)
            raise
        finally:
            bar.close()
        if not (run_dir / "checkpoints" / "latest").is_dir():  # nothing left to train: still a checkpoint
            _checkpoint_and_validate(algo, run_dir, config, record, steps, writer)
        algo.stop()
    finally:
        if writer is not None:
            writer.close()
        if started_ray:
            ray.shutdown()
    print(f"orl-gym: done at {steps} timesteps; best validation reward {record.best:.4f}", file=sys.stderr)
    return run_dir


def _previous_steps(run_dir: Path) -> int:
    path = run_dir / "training.json"
    return int(json.loads(path.read_text()).get("num_timesteps", 0)) if path.is_file() else 0


def _checkpoint_and_validate(algo: Any, run_dir: Path, config: Mapping[str, Any], record: _RunRecord, steps: int,
                             writer: Any) -> None:
    latest = _save_checkpoint(algo, run_dir / "checkpoints" / "latest")
    score = _validate(run_dir, config, latest)
    record.validation.append((steps, score))
    writer.add_scalar("eval/validation_reward", score, steps)
    if score > record.best:
        record.best = score
        tmp = Path(tempfile.mkdtemp(prefix=".best-", dir=latest.parent))
        try:
            shutil.copytree(latest, tmp, dirs_exist_ok=True)
            _replace_dir(tmp, run_dir / "checkpoints" / "best")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    record.write()


# ---------------------------------------------------------------------------------------------
# Evaluation


class RLlibPolicy:
    """A trained RLlib RLModule as a deterministic policy on the batched env's Dict observations:
    the observation flattened as in training, the mean of the Gaussian, clipped to [-1, 1]."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.module.eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike) -> RLlibPolicy:
        """The policy of an ``Algorithm.save_to_path`` folder (or of its RLModule folder), on the
        CPU, without a Ray cluster."""
        from ray.rllib.core.rl_module.rl_module import RLModule

        checkpoint = Path(checkpoint)
        path = checkpoint / MODULE_PATH if (checkpoint / MODULE_PATH).is_dir() else checkpoint
        if not (path / "module_state.pkl").is_file() and not any(path.glob("module_state*")):
            raise ValueError(f"{checkpoint}: no RLModule (expected {MODULE_PATH}/module_state* of an RLlib "
                             "checkpoint); pass the run folder or its checkpoints/latest")
        # RLlib's own modules construct a deprecated RLModuleConfig: not this package's to fix.
        deprecation = logging.getLogger("ray._common.deprecation")
        level = deprecation.level
        deprecation.setLevel(logging.ERROR)
        try:
            return cls(RLModule.from_checkpoint(str(path)))
        finally:
            deprecation.setLevel(level)

    def __call__(self, obs: Mapping[str, np.ndarray], episode_start: np.ndarray) -> np.ndarray:
        import torch
        from ray.rllib.core.columns import Columns

        from orl_gym.agents import flatten_observation

        with torch.no_grad():
            out = self.module.forward_inference({Columns.OBS: torch.from_numpy(flatten_observation(obs))})
            dist = self.module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
            actions = dist.to_deterministic().sample()
        return np.clip(actions.cpu().numpy().astype(np.float32), -1.0, 1.0)

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """ValueError when the module was trained on other observation or action shapes than the
        env's (another hr_size, model or action set), before any image is scored."""
        advice = "evaluate it with the env it was trained on (its run folder, or --env-kwargs)"
        trained_act = tuple(self.module.action_space.shape)
        if trained_act != tuple(action_space.shape):
            raise ValueError(f"the policy's actions have shape {trained_act}, this env's {tuple(action_space.shape)} "
                             f"(another set of action parameters); {advice}")
        trained_obs = tuple(self.module.observation_space.shape)
        expected = (gym.spaces.flatdim(observation_space),)
        if trained_obs != expected:
            raise ValueError(f"the policy's flattened observations have shape {trained_obs}, this env's {expected} "
                             f"(another hr_size or model); {advice}")


def load_run_policy(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> tuple[RLlibPolicy, Path]:
    """The policy of an RLlib run folder (``orl_gym.run_policies``' hook for ``engine: rllib``)
    and its checkpoint: ``checkpoints/best``, else ``checkpoints/latest``. RLlib checkpoints hold
    pickles: load only run folders you trust."""
    _ray()
    for name in CHECKPOINTS:
        path = Path(run_dir) / "checkpoints" / name
        if path.is_dir():
            return RLlibPolicy.from_checkpoint(path), path
    raise ValueError(f"{Path(run_dir) / 'checkpoints'}: no best or latest RLlib checkpoint; train first "
                     "(orl-gym train --engine rllib)")
