"""Named presets shipped with the package: env kwargs (``envs/*.yml``) and, in rl-zoo3's
layout, algorithm hyperparameters (``agents/*.yml``). The checkout's top-level ``envs/`` and
``agents/`` are links to these folders, so a checkout and an installed wheel read the same files.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONFIG_DIR", "agent_entry", "apply_env_overrides", "env_preset", "env_presets", "load_yaml_mapping",
           "parse_key_values", "parse_yaml_value", "yaml_error_summary"]

CONFIG_DIR = Path(__file__).resolve().parent


def yaml_error_summary(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line: the problem and where (PyYAML's own text spans lines)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty file: {}); ValueError naming the file when it does not
    parse or holds something else (``what`` says what the mapping should be of)."""
    path = Path(path)
    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({yaml_error_summary(error)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what}, got {type(data).__name__}")
    return data


def agent_entry(path: str | Path, keys: Iterable[str | None], option: str = "algo") -> tuple[dict[str, Any], str]:
    """(the entry, its key) of a hyperparameter file in rl-zoo3's layout (env preset or env id ->
    hyperparameters): the first of ``keys`` the file has (None keys are skipped); ValueError naming
    the file, or ``option`` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option}: no hyperparameter file {path}")
    table = load_yaml_mapping(path, "env ids to hyperparameters")
    keys = [key for key in keys if key]
    for key in keys:
        if key in table:
            return dict(table[key]), key
    raise ValueError(f"{path}: no entry for {' or '.join(map(repr, keys))}; entries: {', '.join(table)}")


def parse_yaml_value(item: str, option: str, example: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of a command-line option as (key, YAML-parsed value); ValueError naming the
    option, with ``example`` showing how to quote a value for the shell."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{option} {item}: the value is not valid YAML ({yaml_error_summary(error)}); quote "
                         f"it for the shell, e.g. {example!r}") from None


def parse_key_values(items: Iterable[str], option: str, example: str) -> dict[str, Any]:
    """``["timestep_spacing=trailing", "steps_offset=1"]`` -> {"timestep_spacing": "trailing",
    "steps_offset": 1}: every item by :func:`parse_yaml_value` (ValueError naming ``option``)."""
    return dict(parse_yaml_value(item, option, example) for item in items)


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
    return load_yaml_mapping(path, "env arguments")


def apply_env_overrides(kwargs: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of env ``kwargs`` with ``KEY=VALUE`` overrides applied, as ``orl-gym --env-kwargs``.

    Values are parsed as YAML (``0.4``, ``null``, ``[stride, eta]``). A dotted key reaches into the
    ``reward`` or ``actions`` mapping and changes that one field (``reward.lpips_weight=0.4``,
    ``actions.max_stride=2``); a plain key replaces the whole argument (``hr_size=128``). Keys are
    checked against ``EnvConfig``, ``RewardConfig`` and ``ActionConfig``, and the result is
    validated the way ``gym.make`` would (no model or data is loaded), so a typo or a bad value is
    a ``ValueError`` that names it, not a failure minutes into a run.
    """
    from orl_gym.actions import ActionConfig
    from orl_gym.env import EnvConfig
    from orl_gym.rewards import RewardConfig

    def names(cls: type) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def check_number(cls: type, field: str, key: str, value: Any, text: str) -> None:
        # A field whose default is a number takes a number: "0.4" parses to one, "high" does not.
        default = next(f.default for f in dataclasses.fields(cls) if f.name == field)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not is_number:
            raise ValueError(f"--env-kwargs: {key} takes a number, got {text!r}")

    nested = {"reward": RewardConfig, "actions": ActionConfig}
    overrides = list(overrides)
    result = copy.deepcopy(dict(kwargs))
    for item in overrides:
        key, value = parse_yaml_value(item, "--env-kwargs", "actions.parameters=[stride, eta]")
        text = item.partition("=")[2]
        head, dot, field = key.partition(".")
        if head not in names(EnvConfig):
            raise ValueError(f"--env-kwargs: unknown env argument {head!r}; accepted: {', '.join(names(EnvConfig))}")
        if not dot:
            check_number(EnvConfig, head, key, value, text)
            result[head] = value
            continue
        if head not in nested:
            raise ValueError(f"--env-kwargs: {key!r}: only reward.* and actions.* take dotted keys")
        if field not in names(nested[head]):
            raise ValueError(f"--env-kwargs: unknown {head} field {field!r}; accepted: {', '.join(names(nested[head]))}")
        check_number(nested[head], field, key, value, text)
        current = result.get(head) or {}
        if dataclasses.is_dataclass(current):
            current = dataclasses.asdict(current)
        result[head] = {**current, field: value}
    try:
        EnvConfig.from_kwargs(**result)
    except TypeError as err:  # a value of the wrong type that the number check above cannot see
        raise ValueError(f"--env-kwargs {' '.join(overrides)}: {err}") from err
    return result
