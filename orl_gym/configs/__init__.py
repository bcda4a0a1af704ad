"""Named presets shipped with the package: env kwargs (``envs/*.yml``) and, in rl-zoo3's
layout, algorithm hyperparameters (``agents/*.yml``). The checkout's top-level ``envs/`` and
``agents/`` are links to these folders, so a checkout and an installed wheel read the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONFIG_DIR", "env_preset", "env_presets"]

CONFIG_DIR = Path(__file__).resolve().parent


def env_presets() -> list[str]:
    """Names of the shipped env presets."""
    return sorted(p.stem for p in (CONFIG_DIR / "envs").glob("*.yml"))


def env_preset(name_or_path: str | Path) -> dict[str, Any]:
    """The env kwargs of a preset name (``tiny-x4``) or of a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / "envs" / f"{name_or_path}.yml"
    if not path.is_file():
        raise ValueError(f"env preset: no preset {str(name_or_path)!r}; presets: {', '.join(env_presets())} "
                         "(or a path to a .yml file)")
    with path.open() as f:
        kwargs = yaml.safe_load(f) or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"env preset: {path} must hold a mapping of env arguments")
    return kwargs
