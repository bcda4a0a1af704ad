"""A trained run folder's policy, whichever engine trained it.

``orl-gym evaluate RUN`` reads the run's ``config.yaml``; its ``engine`` key (absent in runs of
``orl-gym train`` before engines existed: SB3) names the module that knows the run's checkpoint
format. Each engine module has ``load_run_policy(run_dir, config) -> (policy, checkpoint_path)``,
where the policy is called as ``policy(obs, episode_start) -> actions`` on the batched env's
observations and has ``check_spaces(observation_space, action_space)``, which raises ValueError
for a run trained on other shapes than the env it is evaluated on (as ``SB3Policy`` does).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["ENGINES", "load_run_policy"]

# engine -> module with load_run_policy; imported only when a run of that engine is evaluated, so
# an engine's optional dependency (d3rlpy, ray) is needed only for its own runs.
ENGINES: dict[str, str] = {
    "sb3": "orl_gym.run_policies",
    "d3rlpy": "orl_gym.offline",
    "rllib": "orl_gym.rllib",
}


def load_run_policy(run_dir: str | Path, config: dict[str, Any]) -> tuple[Any, Path]:
    """The policy of a run folder and the checkpoint it was loaded from (ValueError naming what
    is missing or unknown)."""
    run_dir = Path(run_dir)
    engine = config.get("engine", "sb3")
    if engine not in ENGINES:
        raise ValueError(f"{run_dir / 'config.yaml'}: unknown engine {engine!r}; orl-gym knows {', '.join(ENGINES)}")
    if engine == "sb3":
        return _load_sb3_run(run_dir, config)
    return importlib.import_module(ENGINES[engine]).load_run_policy(run_dir, config)


def _load_sb3_run(run_dir: Path, config: dict[str, Any]) -> tuple[Any, Path]:
    from orl_gym.agents import algorithm_class
    from orl_gym.evaluation import SB3Policy

    model_path = run_dir / "checkpoints" / "best_model.zip"
    if not model_path.is_file():
        model_path = run_dir / "checkpoints" / "latest.zip"
    if not model_path.is_file():
        raise ValueError(f"{model_path}: missing; train first (orl-gym train) or pass a model .zip")
    return SB3Policy(algorithm_class(config["algo"]).load(model_path, device="cpu")), model_path
