"""The agent's action: a normalized Box(-1, 1, (k,)) <-> the sampler's per-step parameters.

Each coordinate controls one sampler parameter, mapped linearly from [-1, 1] onto its range:

| parameter     | range (default)  | meaning                                                     |
|---------------|------------------|-------------------------------------------------------------|
| stride        | 1 .. max_stride  | schedule entries to advance (equal-width bins of [-1, 1]) |
| eta           | 0 .. 1           | DDIM stochasticity                                          |
| noise_scale   | 0 .. 2           | multiplier of the fresh noise (1 = DDIM's own)              |
| guidance      | off, or 0 .. 1   | LR-consistency guidance step (first-order fraction of the LR error removed; see ``sampler.guide_x0``) |

Guidance costs a decoder forward and backward per guided step, so "off" is a choice of its own:
the lower ``guidance_off_fraction`` (default half) of its coordinate turns guidance off, and the
rest maps linearly onto (low, high] of ``guidance_range``. (Without the off zone, exact zero
would have probability zero under a Gaussian policy.)

The active set and the ranges are configurable (``ActionConfig``); inactive parameters take their
``defaults`` (stride 1, eta 0, noise scale 1, guidance 0: plain DDIM). NaN or inf in an action
is an error; finite values outside [-1, 1] are clipped to it and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from orl_gym.sampler import StepParams

__all__ = ["PARAMETERS", "PLAIN_DDIM", "ActionConfig", "DecodedAction", "decode_action", "encode_params"]

PARAMETERS = ("stride", "eta", "noise_scale", "guidance")
PLAIN_DDIM = {"stride": 1, "eta": 0.0, "noise_scale": 1.0, "guidance": 0.0}
"""The parameters of the default sampler step; ``ActionConfig.defaults`` starts from these."""


@dataclass(frozen=True)
class ActionConfig:
    """Which sampler parameters the agent controls, and over what range."""

    parameters: tuple[str, ...] = PARAMETERS
    max_stride: int = 4
    eta_range: tuple[float, float] = (0.0, 1.0)
    noise_scale_range: tuple[float, float] = (0.0, 2.0)
    guidance_range: tuple[float, float] = (0.0, 1.0)
    guidance_off_fraction: float = 0.5
    defaults: Mapping[str, float] = field(default_factory=lambda: dict(PLAIN_DDIM))

    def __post_init__(self) -> None:
        parameters = tuple(self.parameters)
        object.__setattr__(self, "parameters", parameters)
        unknown = [p for p in parameters if p not in PARAMETERS]
        if unknown or not parameters or len(set(parameters)) != len(parameters):
            raise ValueError(
                f"parameters: expected a non-empty subset of {PARAMETERS} without repeats, got {parameters}"
            )
        if int(self.max_stride) < 1:
            raise ValueError(f"max_stride: expected an integer >= 1, got {self.max_stride}")
        for name in ("eta_range", "noise_scale_range", "guidance_range"):
            low, high = (float(v) for v in getattr(self, name))
            object.__setattr__(self, name, (low, high))
            if not 0.0 <= low <= high:
                raise ValueError(f"{name}: expected 0 <= low <= high, got {(low, high)}")
        if not 0.0 <= float(self.guidance_off_fraction) < 1.0:
            raise ValueError(f"guidance_off_fraction: expected a value in [0, 1), got {self.guidance_off_fraction}")
        if self.eta_range[1] > 1.0:
            raise ValueError(f"eta_range: eta must stay in [0, 1], got {self.eta_range}")
        # A partial mapping changes only what it names. The defaults of inactive parameters are
        # what every step uses, so each must be a value the parameter can take (guidance: 0 = off,
        # or inside its range); an active parameter's default is only encode_params' (checked there).
        unknown = sorted(set(self.defaults) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"defaults: unknown parameters {unknown}; parameters: {PARAMETERS}")
        defaults = {**PLAIN_DDIM, **{k: float(v) for k, v in self.defaults.items()}}
        object.__setattr__(self, "defaults", defaults)
        for name, value in defaults.items():
            if name in parameters:
                continue
            low, high = self.range_of(name)
            if name == "stride" and value != int(value):
                raise ValueError(f"defaults: stride must be an integer, got {value}")
            if not (low <= value <= high or (name == "guidance" and value == 0.0)):
                raise ValueError(f"defaults: {name} = {value} is outside its range [{low}, {high}]")

    @property
    def size(self) -> int:
        return len(self.parameters)

    def range_of(self, name: str) -> tuple[float, float]:
        return (1.0, float(self.max_stride)) if name == "stride" else getattr(self, f"{name}_range")


@dataclass(frozen=True)
class DecodedAction:
    """StepParams for the sampler, plus what the env reports about the raw action."""

    params: StepParams
    clipped: torch.Tensor  # (B,) number of coordinates that were outside [-1, 1]
    normalized: torch.Tensor  # (B, 4) every parameter rescaled to [0, 1] over its range (for observations)


def decode_action(action: np.ndarray | torch.Tensor, config: ActionConfig, *, device: torch.device | str = "cpu") -> DecodedAction:
    """Map a batch of actions (B, k) in [-1, 1] onto per-sample StepParams."""
    action = torch.as_tensor(np.asarray(action) if not isinstance(action, torch.Tensor) else action,
                             dtype=torch.float32, device=device)
    if action.dim() == 1:
        action = action.unsqueeze(0)
    if action.dim() != 2 or action.shape[1] != config.size:
        raise ValueError(
            f"action: expected shape (B, {config.size}) for parameters {config.parameters}, got {tuple(action.shape)}"
        )
    if not bool(torch.isfinite(action).all()):
        raise ValueError(f"action: NaN or inf in {action.tolist()}; actions must be finite values in [-1, 1]")
    clipped = ((action < -1.0) | (action > 1.0)).sum(dim=1)
    unit = (action.clamp(-1.0, 1.0) + 1.0) / 2.0  # [0, 1]
    batch = action.shape[0]
    values, normalized = {}, []
    for name in PARAMETERS:
        low, high = config.range_of(name)
        if name not in config.parameters:
            value = torch.full((batch,), float(config.defaults[name]), device=device)
        elif name == "stride":
            # Equal-width bins of [-1, 1], one per stride 1 .. max_stride.
            value = unit[:, config.parameters.index(name)] * config.max_stride + 1.0
        elif name == "guidance":
            off = config.guidance_off_fraction
            on = ((unit[:, config.parameters.index(name)] - off) / (1.0 - off)).clamp(min=0.0)
            value = torch.where(on > 0, low + on * (high - low), torch.zeros_like(on))
        else:
            value = low + unit[:, config.parameters.index(name)] * (high - low)
        if name == "stride":
            value = value.floor().long().clamp(1, config.max_stride)
        values[name] = value
        normalized.append(((value.float() - low) / (high - low)).clamp(0.0, 1.0) if high > low
                          else torch.zeros(batch, device=device))
    return DecodedAction(params=StepParams(**values), clipped=clipped, normalized=torch.stack(normalized, dim=1))


def encode_params(config: ActionConfig, **values: float) -> np.ndarray:
    """The action (k,) that decodes to the given parameter values; unnamed ones take their defaults.

    ``encode_params(config)`` is the plain-DDIM action (stride 1, eta 0, noise 1, no guidance).
    """
    action = np.zeros(config.size, dtype=np.float32)
    for name in values:
        if name not in config.parameters:
            raise ValueError(f"{name}: not an active parameter of {config.parameters}")
    for name in config.parameters:
        value = float(values.get(name, config.defaults[name]))
        low, high = config.range_of(name)
        if name == "guidance":  # 0 (off) is a value of its own, whatever the "on" range
            off = config.guidance_off_fraction
            if value == 0.0:
                unit = off / 2.0  # the middle of the off zone
            elif low == high == value:
                unit = off + (1.0 - off) / 2.0  # a one-point "on" range: the middle of the on zone
            elif low < value <= high:
                unit = off + (value - low) / (high - low) * (1.0 - off)
            else:
                raise ValueError(f"guidance: {value} must be 0 (off) or in ({low}, {high}]")
        elif not low <= value <= high:
            raise ValueError(f"{name}: {value} is outside its range [{low}, {high}]")
        elif name == "stride":
            if value != int(value):
                raise ValueError(f"stride: expected an integer, got {value}")
            unit = (value - 0.5) / config.max_stride  # the middle of its bin
        else:
            unit = 0.5 if high == low else (value - low) / (high - low)
        action[config.parameters.index(name)] = 2.0 * unit - 1.0
    return action
