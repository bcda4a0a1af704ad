"""LDMSuperResolutionEnv: one super-resolution of one LR image as a Gymnasium episode.

The environment logic is written once, batched, gymnax-style: ``EnvParams`` (what stays fixed:
model, schedule, data, reward, action mapping) and ``EnvState`` (per-image tensors, batch first)
with the pure functions ``reset_rows`` and ``step_batch``. ``LDMSuperResolutionEnv`` runs them
with a batch of one; ``orl_gym.vector`` runs them with N, so both share every line of logic.
The observation and action spaces and ``observe`` live in ``orl_gym.spaces`` (importable from here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from orl_gym import ENV_ID, postprocess, sampler
from orl_gym.actions import PARAMETERS, ActionConfig, decode_action
from orl_gym.data import DataConfig, PairDataset, upsample_bicubic
from orl_gym.models import LDMSR, load_ldmsr, resolve_dtype
from orl_gym.precision import ieee_float32
from orl_gym.rewards import RewardConfig, RewardModel, RewardOutput
from orl_gym.spaces import action_space, observation_space, observe

__all__ = [
    "DEFAULT_NUM_INFERENCE_STEPS",
    "ENV_ID",
    "EnvConfig",
    "EnvParams",
    "EnvState",
    "LDMSuperResolutionEnv",
    "StepResult",
    "action_space",
    "build_params",
    "default_schedule",
    "observation_space",
    "observe",
    "reset_rows",
    "resolve_num_inference_steps",
    "step_batch",
]


# DDIM steps of the "No RL" schedule for a model that states no default sampler (the CompVis-format
# bundled model's, and the CPU presets' before models could state their own).
DEFAULT_NUM_INFERENCE_STEPS = 20


def resolve_num_inference_steps(num_inference_steps: int | None, model: LDMSR) -> int:
    """K of the env's schedule: the one asked for, else the model's default sampler's, else 20."""
    if num_inference_steps is not None:
        return int(num_inference_steps)
    if model.default_num_inference_steps is not None:
        return int(model.default_num_inference_steps)
    return DEFAULT_NUM_INFERENCE_STEPS


def default_schedule(model: LDMSR, num_inference_steps: int | None) -> sampler.Schedule:
    """The env's default DDIM schedule (the "No RL" sampler's), of ``resolve_num_inference_steps`` steps."""
    return sampler.Schedule.from_model(model, resolve_num_inference_steps(num_inference_steps, model))


@dataclass(frozen=True)
class EnvConfig:
    """Everything ``gym.make("orl_gym/LDMSR-v0", **kwargs)`` accepts (CPU-sized defaults).

    Attributes:
        model: checkpoint: ``"bundled"``, a folder, a hub id, or an ``LDMSR`` object.
        data: image source (``DataConfig.source``: None = ``$ORL_GYM_DATA`` or RESISC45 on the hub),
            or a ready ``PairDataset``.
        split, categories, hr_size, crop: which images and how they are cut (see ``DataConfig``);
            the scale is the model's.
        image_order: ``"random"`` (a seeded draw per episode) or ``"sequential"`` (env i of N takes
            images i, i + N, ... : an evaluation pass over the split; each image's noise is then
            derived from the seed and the image, the same whatever policy runs).
        max_images: use only this many images of the split, evenly spaced over its (class-sorted)
            order so every class keeps its share (None: all).
        num_inference_steps: length K of the default DDIM schedule the strides move along (the
            "No RL" sampler is its K plain steps); the efficiency term counts UNet calls against K.
            None: the model's default sampler (its folder's ``sampler_defaults.json``: 2 for
            ``ldm-sr-tiny-x4-anchored``), else ``DEFAULT_NUM_INFERENCE_STEPS`` (20). Read the
            resolved K from ``len(env.params.schedule)``.
        step_budget: env steps allowed per episode (None = K: never binding, since every step
            advances). Not ``max_episode_steps``: gym.make takes that one for its TimeLimit
            wrapper, which would cut episodes off without scoring the image.
        guidance_cost: compute of one guided step's decoder forward + backward, in UNet calls
            (what the efficiency term charges for guidance); None: counted from the model's FLOPs
            (``sampler.guidance_cost_in_unet_calls``, about 8 for the bundled architecture).
        actions, reward: ``ActionConfig`` / ``RewardConfig`` or dicts of their fields.
        output_fix: a correction of every decoded image from its own LR input, before it is
            scored or rendered: ``"none"`` (the paper's sampler), ``"mean_colour"``,
            ``"wavelet"`` (StableSR's colour fix) or ``"back_projection"`` (see
            ``orl_gym.postprocess``).
        device, dtype: where the model runs and in what precision. ``"float32"`` is IEEE float32
            on CUDA too (TF32 off while the env computes, ``orl_gym.precision``), so a batch
            of N equals N single envs; ``"float16"`` / ``"bfloat16"`` (CUDA only) trade that for
            speed on large models (the bundled tiny one gains little: experiments/results/gpu/).
            The reward's metrics are computed in float32 either way.
    """

    model: Any = "bundled"
    data: Any = None
    split: str = "train"
    categories: tuple[str, ...] | None = None
    hr_size: int = 64
    crop: str = "random"
    image_order: str = "random"
    max_images: int | None = None
    num_inference_steps: int | None = None
    step_budget: int | None = None
    guidance_cost: float | None = None
    actions: ActionConfig | Mapping = field(default_factory=ActionConfig)
    reward: RewardConfig | Mapping = field(default_factory=RewardConfig)
    output_fix: str = "none"
    device: str = "cpu"
    dtype: str = "float32"
    gamma: float = 0.99  # discount used by the potential-based shaping term only

    def __post_init__(self) -> None:
        if isinstance(self.actions, Mapping):
            object.__setattr__(self, "actions", ActionConfig(**self.actions))
        if isinstance(self.reward, Mapping):
            object.__setattr__(self, "reward", RewardConfig(**self.reward))
        if self.categories is not None:
            cats = (self.categories,) if isinstance(self.categories, str) else tuple(self.categories)
            object.__setattr__(self, "categories", cats)
        if self.output_fix not in postprocess.OUTPUT_FIXES:
            raise ValueError(f"output_fix: expected one of {postprocess.OUTPUT_FIXES}, got {self.output_fix!r}")
        if self.image_order not in ("random", "sequential"):
            raise ValueError(f"image_order: expected 'random' or 'sequential', got {self.image_order!r}")
        if self.max_images is not None and int(self.max_images) < 1:
            raise ValueError(f"max_images: expected >= 1 or None, got {self.max_images}")
        steps = self.num_inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
            raise ValueError(f"num_inference_steps: expected an int >= 1 or None (the model's default), got {steps!r}")
        if self.step_budget is not None and int(self.step_budget) < 1:
            raise ValueError(f"step_budget: expected >= 1 or None, got {self.step_budget}")
        if self.guidance_cost is not None and not (math.isfinite(self.guidance_cost) and self.guidance_cost >= 0):
            raise ValueError(f"guidance_cost: expected a finite value >= 0 or None, got {self.guidance_cost}")
        if not 0.0 <= self.gamma <= 1.0:  # also False for NaN
            raise ValueError(f"gamma: expected a discount in [0, 1], got {self.gamma}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EnvConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown env arguments {unknown}; accepted: {sorted(known)}")
        return cls(**kwargs)


@lru_cache(maxsize=4)
def _cached_model(model: str, device: str, dtype: str) -> LDMSR:
    # Many envs in one process (a DummyVecEnv, N single envs in a test) share one frozen model.
    return load_ldmsr(model, device=device, dtype=dtype)


@lru_cache(maxsize=4)
def _cached_reward_model(config: RewardConfig, device: str) -> RewardModel:
    return RewardModel(config, device=device)


@lru_cache(maxsize=8)
def _cached_guidance_cost(model: LDMSR, latent_side: int) -> float:
    return sampler.guidance_cost_in_unet_calls(model, (latent_side, latent_side))


@lru_cache(maxsize=8)
def _cached_dataset(config: DataConfig, device: str) -> PairDataset:
    return PairDataset(config, device=device)


@dataclass(frozen=True)
class EnvParams:
    """What stays fixed while the env runs (resolved from an ``EnvConfig``)."""

    config: EnvConfig
    model: LDMSR
    schedule: sampler.Schedule
    dataset: PairDataset
    reward_model: RewardModel
    actions: ActionConfig
    step_budget: int
    image_pool: np.ndarray  # dataset indices episodes draw from
    guidance_cost: float  # UNet calls charged per guided step

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def lr_shape(self) -> tuple[int, int, int]:
        side = self.config.hr_size // self.model.scale_factor
        return (3, side, side)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.model.latent_channels, *self.lr_shape[1:])


def _check_model_placement(model: LDMSR, config: EnvConfig) -> None:
    """An ``LDMSR`` object runs where it is: ``device`` and ``dtype`` must say the same, since the
    dataset and the reward networks are placed by them (a mismatch would fail deep in torch)."""
    want = torch.device(config.device)
    if want.type == "cuda" and want.index is None and torch.cuda.is_available():
        want = torch.device("cuda", torch.cuda.current_device())  # where "cuda" puts the dataset and reward
    if model.device.type != want.type or (want.index is not None and model.device.index != want.index):
        raise ValueError(f"model: the LDMSR object is on {model.device}, but device={config.device!r}; pass "
                         f"device={str(model.device)!r} or move the model with model.to({config.device!r})")
    if model.dtype != resolve_dtype(config.dtype, model.device):
        raise ValueError(f"model: the LDMSR object is {model.dtype}, but dtype={config.dtype!r}; pass "
                         f"dtype={str(model.dtype).removeprefix('torch.')!r} or convert it with model.to(dtype=...)")


def build_params(config: EnvConfig) -> EnvParams:
    """Load (or reuse) the model, dataset and reward networks an ``EnvConfig`` names."""
    device = str(torch.device(config.device))
    if isinstance(config.model, LDMSR):
        model = config.model
        _check_model_placement(model, config)
    else:
        model = _cached_model(str(config.model), device, config.dtype)
    scale = model.scale_factor
    if config.hr_size % model.hr_multiple:
        # At construction, before the dataset loads (sampler.init_state would say it at the first reset).
        fit = max(model.hr_multiple, round(config.hr_size / model.hr_multiple) * model.hr_multiple)
        raise ValueError(
            f"hr_size: {config.hr_size} px does not fit this model: HR sides must be multiples of "
            f"{model.hr_multiple} (its x{scale} autoencoder times the UNet's downsampling); try hr_size={fit}"
        )
    if config.crop == "full":
        raise ValueError("crop: 'full' gives images of different sizes; the env needs one size: use 'center' or 'random'")
    if isinstance(config.data, PairDataset):
        dataset = config.data
        if dataset.config.scale != scale or dataset.config.hr_size != config.hr_size:
            raise ValueError(
                f"data: the dataset makes x{dataset.config.scale} pairs of {dataset.config.hr_size} px, "
                f"the env needs x{scale} (the model's scale) of hr_size={config.hr_size}"
            )
    else:
        data_config = DataConfig(source=config.data, split=config.split, categories=config.categories,
                                 hr_size=config.hr_size, scale=scale, crop=config.crop)
        dataset = _cached_dataset(data_config, device)
    schedule = default_schedule(model, config.num_inference_steps)
    budget = len(schedule) if config.step_budget is None else int(config.step_budget)
    pool = np.arange(len(dataset))
    if config.max_images is not None and config.max_images < len(dataset):
        pool = np.unique(np.linspace(0, len(dataset) - 1, int(config.max_images)).round().astype(np.int64))
    guidance_cost = config.guidance_cost
    if guidance_cost is None:
        side = config.hr_size // scale
        guidance_cost = _cached_guidance_cost(model, side) if "guidance" in config.actions.parameters else 0.0
    return EnvParams(config=config, model=model, schedule=schedule, dataset=dataset,
                     reward_model=_cached_reward_model(config.reward, device), actions=config.actions,
                     step_budget=budget, image_pool=pool, guidance_cost=float(guidance_cost))


@dataclass(frozen=True)
class EnvState:
    """Batched per-image state (batch first, on the model's device unless noted)."""

    sampler: sampler.SamplerState
    hr: torch.Tensor  # (B, 3, H, W) in [0, 1]
    labels: torch.Tensor  # (B,) class index (CPU)
    image_index: torch.Tensor  # (B,) index into the dataset (CPU)
    steps: torch.Tensor  # (B,) env steps taken this episode
    last_action: torch.Tensor  # (B, 4) last parameters, normalized to [0, 1]
    baseline: dict[str, torch.Tensor]  # bicubic metrics of each image (RewardModel.baseline)
    potential: torch.Tensor  # (B,) shaping potential of the current state
    episode_seconds: np.ndarray  # (B,) float64 this image's share of the episode's wall time (host)
    data_generators: tuple[torch.Generator, ...]  # per-image CPU generators: image choice and crop
    episode_count: np.ndarray  # (B,) episodes started by each env (host; sequential order)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size


def _scatter(full: Any, rows: torch.Tensor, part: Any) -> Any:
    """``full`` with ``full[rows] = part`` for tensors, arrays, dicts and tuples (non-destructive)."""
    if isinstance(full, torch.Tensor):
        out = full.clone()
        out[rows.to(full.device)] = part.to(full.device, full.dtype)
        return out
    if isinstance(full, np.ndarray):
        out = full.copy()
        out[rows.cpu().numpy()] = part
        return out
    if isinstance(full, dict):
        return {k: _scatter(full[k], rows, part[k]) for k in full}
    if isinstance(full, tuple):
        out = list(full)
        for r, p in zip(rows.tolist(), part, strict=True):
            out[r] = p
        return tuple(out)
    raise TypeError(f"cannot scatter {type(full)}")


def _scatter_state(full: Any, rows: torch.Tensor, part: Any) -> Any:
    """Field-wise ``_scatter`` over (nested) state dataclasses."""
    if hasattr(full, "__dataclass_fields__"):
        return replace(full, **{f.name: _scatter_state(getattr(full, f.name), rows, getattr(part, f.name))
                                for f in fields(full)})
    return _scatter(full, rows, part)


def make_seeded_generators(np_random: np.random.Generator, device: torch.device):
    """(data generator on CPU, noise generator on device) from one env's numpy RNG."""
    data_seed, noise_seed = (int(s) for s in np_random.integers(0, 2**62, size=2))
    return (torch.Generator().manual_seed(data_seed),
            torch.Generator(device=device).manual_seed(noise_seed))


def _generators_for_image(generator: torch.Generator, image_index: int) -> torch.Generator:
    """A new generator for a row's next image in sequential order, seeded from the row's previous
    seed and the image. The stream a row continued would depend on how many steps its previous
    episode took, i.e. on the policy; derived this way, two policies evaluated with the same seed
    and batch size see the same z_T and step noise for every image (common random numbers), since
    sequential order gives each row the same images in the same order whatever the policy."""
    seed = np.random.SeedSequence([generator.initial_seed(), image_index]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=generator.device).manual_seed(int(seed) >> 1)


@ieee_float32
def reset_rows(
    params: EnvParams,
    state: EnvState | None,
    rows: Sequence[int],
    *,
    data_generators: Sequence[torch.Generator] | None = None,
    noise_generators: Sequence[torch.Generator] | None = None,
    episode_count: Sequence[int] | None = None,
) -> EnvState:
    """Start a new episode (new image, new z_T) in the given rows; the other rows are untouched.

    With ``state=None`` every row is new and the generators must be given. Given generators
    replace the rows' own (a reseed); otherwise the rows' generators continue, except in
    sequential order, where each new image's generators are derived from the row's last ones and
    the image index (see :func:`_generators_for_image`).
    """
    rows_t = torch.as_tensor(list(rows), dtype=torch.long)
    derive = state is not None and noise_generators is None and params.config.image_order == "sequential"
    if state is not None:
        data_generators = data_generators or tuple(state.data_generators[r] for r in rows)
        noise_generators = noise_generators or tuple(state.sampler.generators[r] for r in rows)
        counts = state.episode_count[rows_t.numpy()] if episode_count is None else np.asarray(episode_count)
    else:
        counts = np.zeros(len(rows), dtype=np.int64) if episode_count is None else np.asarray(episode_count)
    pool = params.image_pool
    if params.config.image_order == "sequential":
        batch = state.batch_size if state is not None else len(rows)
        indices = [int(pool[(r + c * batch) % len(pool)]) for r, c in zip(rows, counts, strict=True)]
        if derive:
            data_generators, noise_generators = (
                tuple(_generators_for_image(g, index) for g, index in zip(gens, indices, strict=True))
                for gens in (data_generators, noise_generators))
    else:
        indices = [int(pool[int(torch.randint(len(pool), (1,), generator=g))]) for g in data_generators]
    # One generator per new image: a reset's crop must not depend on which other envs reset at
    # the same step (batched == sequential).
    pairs = params.dataset.pairs(indices, generator=list(data_generators))
    hr, lr = pairs.hr.to(params.device), pairs.lr.to(params.device)
    sampler_state = sampler.init_state(params.model, params.schedule, lr, tuple(noise_generators))
    n = len(rows)
    new = EnvState(
        sampler=sampler_state, hr=hr,
        labels=pairs.labels, image_index=pairs.indices,
        steps=torch.zeros(n, dtype=torch.long, device=params.device),
        last_action=torch.zeros(n, len(PARAMETERS), device=params.device),
        baseline=params.reward_model.baseline(hr, lr),
        potential=torch.zeros(n, device=params.device),
        episode_seconds=np.zeros(n), data_generators=tuple(data_generators),
        episode_count=counts + 1,
    )
    if state is None:
        return new
    return _scatter_state(state, rows_t, new)


def compute_used(params: EnvParams, state: EnvState) -> torch.Tensor:
    """(B,) compute spent, in UNet-call units: UNet calls + guidance_cost * guided steps."""
    return state.sampler.nfe.float() + params.guidance_cost * state.sampler.guidance_evals.float()


# Final metrics that are counts (int64 columns, -1 where a row did not finish), in this order
# after the reward's own metrics.
COUNT_METRICS = ("unet_calls", "guidance_evals")


@dataclass(frozen=True)
class StepResult:
    """One batched step: the new state and, for the rows that finished, their metrics."""

    state: EnvState
    reward: np.ndarray  # (B,) float32
    terminated: np.ndarray  # (B,) bool: reached t = 0
    truncated: np.ndarray  # (B,) bool: step budget spent before t = 0
    action_clipped: np.ndarray  # (B,) int: action coordinates clipped to [-1, 1]
    final_metrics: dict[str, np.ndarray]  # raw metrics of finished rows: float64 (NaN elsewhere), counts and indices int64 (-1)
    final_rows: torch.Tensor | None = None  # (F,) rows that finished this step (device)
    final_images: torch.Tensor | None = None  # (F, 3, H, W) their images in [0, 1] (device)
    final_hr: torch.Tensor | None = None  # (F, 3, H, W) their ground truth
    final_lr: torch.Tensor | None = None  # (F, 3, h, w) their LR inputs
    final_reward: RewardOutput | None = None  # their RewardModel.final output (device tensors)


def final_latents(state: EnvState, terminated: torch.Tensor) -> torch.Tensor:
    """What an episode's image is: z_0 where the schedule ended, else the last x0 prediction."""
    s = state.sampler
    return torch.where(terminated.view(-1, 1, 1, 1), s.latents, s.pred_original)


def output_images(params: EnvParams, latents: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """Decoded latents in [0, 1] after the configured ``output_fix``: the images the env scores.

    Always float32: under a float16 / bfloat16 model the decode runs in the model's precision, but
    the fix and the reward's metrics (bicubic downsampling, sums of squares) do not."""
    decoded = sampler.decode(params.model, latents, lr).float()
    return postprocess.apply_output_fix(params.config.output_fix, decoded, lr)


@ieee_float32
def step_batch(params: EnvParams, state: EnvState, action: np.ndarray | torch.Tensor) -> StepResult:
    """One reverse step for every row; pays the reward of the rows that finish."""
    start = time.perf_counter()
    decoded = decode_action(action, params.actions, device=params.device)
    if decoded.clipped.shape[0] != state.batch_size:
        raise ValueError(f"action: expected {state.batch_size} rows, got {decoded.clipped.shape[0]}")
    out = sampler.step(params.model, params.schedule, state.sampler, decoded.params)
    new = replace(state, sampler=out.state, steps=state.steps + 1, last_action=decoded.normalized)
    terminated = out.state.done(params.schedule)
    truncated = ~terminated & (new.steps >= params.step_budget)
    finished = terminated | truncated
    reward = torch.zeros(state.batch_size, device=params.device)

    reward_model, config = params.reward_model, params.config
    if reward_model.config.shaping_weight != 0:
        # Dense potential-based shaping: Phi of the decoded x0 prediction (one decode per step).
        next_potential = reward_model.potential(output_images(params, out.state.pred_original, state.sampler.lr),
                                                state.hr, baseline=state.baseline)
        reward = reward + reward_model.shaping(state.potential, next_potential, gamma=config.gamma,
                                               terminated=finished)
        new = replace(new, potential=next_potential)

    # The host must know whether any row finished (to score those rows); the step's outputs are
    # copied to the host at the end (four small copies, after the reward is computed).
    finished_host = finished.cpu().numpy()
    final_metrics: dict[str, np.ndarray] = {}
    rows = images = paid = None
    if finished_host.any():
        rows = torch.as_tensor(np.flatnonzero(finished_host), device=params.device)
        images = output_images(params, final_latents(new, terminated)[rows], state.sampler.lr[rows])
        paid = reward_model.final(
            images, state.hr[rows], state.sampler.lr[rows], nfe=compute_used(params, new)[rows],
            reference_nfe=len(params.schedule), baseline={k: v[rows] for k, v in state.baseline.items()},
        )
        reward = reward.index_add(0, rows, paid.reward.to(reward.dtype))
        # Every metric of the finished rows in one host copy (not one per metric); the counts
        # are exact in float64 and go back to int64 columns (-1 where a row did not finish).
        stacked = torch.stack([*(v.detach().double() for v in paid.metrics.values()),
                               new.sampler.nfe[rows].double(), new.sampler.guidance_evals[rows].double()])
        stacked = stacked.cpu().numpy()
        for key, values in zip([*paid.metrics, *COUNT_METRICS], stacked, strict=True):
            column = np.full(state.batch_size, np.nan)
            column[finished_host] = values
            final_metrics[key] = column
        for key in COUNT_METRICS:
            final_metrics[key] = np.where(finished_host, final_metrics[key], -1).astype(np.int64)
        # Which image each finished row was (CPU tensors: no sync), for per-image evaluation.
        final_metrics["image_index"] = np.where(finished_host, state.image_index.numpy(), -1).astype(np.int64)
        final_metrics["label"] = np.where(finished_host, state.labels.numpy(), -1).astype(np.int64)
    # Each row is charged its share of the step's wall time (the batch shares one UNet call), so
    # "seconds" is wall time per image, comparable across batch sizes.
    seconds = new.episode_seconds + (time.perf_counter() - start) / state.batch_size
    new = replace(new, episode_seconds=seconds)
    if finished_host.any():
        final_metrics["seconds"] = np.where(finished_host, seconds, np.nan)
    return StepResult(state=new, reward=reward.float().cpu().numpy(), terminated=terminated.cpu().numpy(),
                      truncated=truncated.cpu().numpy(), action_clipped=decoded.clipped.cpu().numpy(),
                      final_metrics=final_metrics, final_rows=rows, final_images=images,
                      final_hr=None if rows is None else state.hr[rows],
                      final_lr=None if rows is None else state.sampler.lr[rows], final_reward=paid)


@ieee_float32
def render_frame(params: EnvParams, state: EnvState, row: int = 0) -> np.ndarray:
    """(H, 3W, 3) uint8: LR upsampled (bicubic) | decoded x0 prediction (after the output fix) | HR."""
    s = state.sampler
    hr = state.hr[row:row + 1]
    lr_up = upsample_bicubic(s.lr[row:row + 1].float(), hr.shape[-2:])
    x0 = output_images(params, s.pred_original[row:row + 1], s.lr[row:row + 1]).float()
    frame = torch.cat([lr_up, x0, hr.float()], dim=3)[0]
    return (frame.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


class LDMSuperResolutionEnv(gym.Env):
    """Super-resolve one LR image by steering an LDM-SR model's reverse diffusion, step by step.

    An episode starts from z_T ~ N(0, I) next to a new LR image of the split. Each step runs one
    DDIM step with the parameters the action chooses; the episode ends when the schedule reaches
    t = 0, and the finished image is scored against its HR ground truth.

    ## Action Space

    ``Box(-1, 1, (k,), float32)``, one coordinate per active parameter of ``ActionConfig``
    (default all four, in this order; ``orl_gym.actions`` has the exact maps):

    | Num | Parameter   | Range (default) | Map from a in [-1, 1]                  | Effect                                                 |
    |-----|-------------|-----------------|----------------------------------------|--------------------------------------------------------|
    | 0   | stride      | 1 .. 4          | equal-width bins, one per stride       | schedule entries to advance (k skips k - 1 UNet calls) |
    | 1   | eta         | 0 .. 1          | linear                                 | DDIM stochasticity                                     |
    | 2   | noise_scale | 0 .. 2          | linear                                 | multiplier of the fresh noise                          |
    | 3   | guidance    | off, or 0 .. 1  | off on the lower half, then linear     | LR-consistency guidance step (``sampler.guide_x0``)     |

    Inactive parameters take ``ActionConfig.defaults`` (stride 1, eta 0, noise scale 1, guidance
    off: plain DDIM), and so does ``orl_gym.actions.encode_params(config)`` as an action.

    NaN or inf raise ValueError; finite values outside [-1, 1] are clipped, and
    ``info["action_clipped"]`` counts the clipped coordinates.

    ## Observation Space

    ``Dict`` of flat Boxes (flat so SB3's checker and MultiInputPolicy accept 16x16 images;
    ``orl_gym.agents.LDMSRFeatureExtractor`` reshapes them):

    | Key      | Space                                   | Content                                 |
    |----------|-----------------------------------------|-----------------------------------------|
    | lr       | Box(0, 255, (3*h*w,), uint8)            | the LR image, CHW                       |
    | latent   | Box(-1e4, 1e4, (c*h*w,), float32)       | the current latent z_t, CHW (clipped)   |
    | progress | Box(0, 1, (8,), float32)                | t/T, schedule position, UNet calls / K, guidance evals / K, last stride, eta, noise scale, guidance (each normalized) |

    ## Rewards

    0 on intermediate steps (plus potential-based shaping if ``reward.shaping_weight`` > 0).
    When the image finishes: ``RewardModel.final`` (``orl_gym.rewards``): PSNR 0.4, SSIM 0.3,
    LPIPS 0.2 as gains over bicubic upsampling, efficiency 0.1 as the share of the default
    schedule's K UNet calls saved (guided steps cost ``guidance_cost`` more). ``info`` then holds
    every raw metric (psnr, ssim, lpips, lr_consistency, nfe, unet_calls, seconds, bicubic_*, ...).
    The scored image is the decoded latent after ``output_fix`` (default ``"none"``; a colour fix
    or LR back-projection from ``orl_gym.postprocess`` is the cheap non-RL way to the same end as
    the guidance parameter).

    ## Episode End

    Terminated when the schedule reaches t = 0 (at most K steps, fewer with strides > 1).
    Truncated when ``step_budget`` steps are spent first; the image is then the decoded
    last x0 prediction, and it is scored the same way. ``step()`` after either raises until
    ``reset()`` (the image is paid once).

    ## Arguments

    ``gym.make("orl_gym/LDMSR-v0", **kwargs)`` with the fields of ``EnvConfig`` (model, data,
    split, categories, hr_size, crop, image_order, max_images, num_inference_steps, step_budget,
    guidance_cost, actions, reward, output_fix, device, dtype, gamma) and ``render_mode="rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.config = EnvConfig.from_kwargs(**kwargs)
        self.params = build_params(self.config)
        self.observation_space = observation_space(self.params)
        self.action_space = action_space(self.params)
        self.state: EnvState | None = None
        self.last_step: StepResult | None = None  # device tensors of the last step, for wrappers
        self._episode_over = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._episode_over = False
        if seed is not None or self.state is None:
            data_gen, noise_gen = make_seeded_generators(self.np_random, self.params.device)
            self.state = reset_rows(self.params, None, [0], data_generators=[data_gen], noise_generators=[noise_gen])
        else:
            self.state = reset_rows(self.params, self.state, [0])
        return {k: v[0] for k, v in observe(self.params, self.state).items()}, self._reset_info()

    def _reset_info(self) -> dict[str, Any]:
        s = self.state
        return {"image_index": int(s.image_index[0]), "label": int(s.labels[0]),
                "category": self.params.dataset.classes[int(s.labels[0])]}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("step() before reset(): call env.reset() first")
        if self._episode_over:
            # Stepping on would score (and pay) the finished image again, or run a truncated one on.
            raise RuntimeError("step() after the episode ended (terminated or truncated): call env.reset()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action: expected shape {self.action_space.shape}, got {action.shape}")
        result = step_batch(self.params, self.state, action[None])
        self.state, self.last_step = result.state, result
        obs = {k: v[0] for k, v in observe(self.params, self.state).items()}
        info: dict[str, Any] = {"action_clipped": int(result.action_clipped[0]),
                                "unet_calls": int(self.state.sampler.nfe[0]),
                                "timestep": int(self.state.sampler.timestep(self.params.schedule)[0])}
        info.update({k: v[0].item() for k, v in result.final_metrics.items()})  # int or float
        self._episode_over = bool(result.terminated[0] or result.truncated[0])
        return (obs, float(result.reward[0]), bool(result.terminated[0]), bool(result.truncated[0]), info)

    def render(self):
        if self.render_mode != "rgb_array" or self.state is None:
            return None
        return render_frame(self.params, self.state)
