"""Per-category evaluation: bicubic, the default sampler ("No RL"), the best constant action, and a
trained policy ("RL"), on the same images and crops, with paired confidence intervals.

Every method runs in the batched env with ``image_order="sequential"`` and ``crop="center"`` on
the chosen split, so each image of the split is super-resolved exactly once per method (an image
whose pixels cannot be decoded is left out, for every method alike), and the rows are paired by
image index. What the methods share, given the same ``seed`` and ``num_envs``: the images, their
center crops and LR inputs, and each image's noise generators: env row r starts from ``seed + r``,
and in sequential order the env derives each next image's generators from the row's previous ones
and the image (``orl_gym.env.reset_rows``), not from how many steps the row's earlier episodes
took. So every method starts each image from the same z_T and draws its step noise from the same
stream (common random numbers); a different ``seed`` or ``num_envs`` gives other noise.
Bicubic comes for free: the env scores it for every image (``bicubic_*``).

:func:`write_report` writes the per-category table, the per-image CSV and the comparison grid;
the figures themselves are in :mod:`orl_gym.evaluation_figures` (importable from here).
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from orl_gym.actions import PARAMETERS, ActionConfig, decode_action, encode_params
from orl_gym.data import PAPER_CATEGORIES, paper_category
from orl_gym.env import EnvConfig, action_space, build_params, observation_space
from orl_gym.evaluation_figures import comparison_grid, plot_policy_trace, plot_training_curves
from orl_gym.io import atomic_open, atomic_write_text
from orl_gym.precision import ieee_float32
from orl_gym.vector import LDMSuperResolutionVectorEnv

__all__ = [
    "BASELINE_METHODS",
    "BEST_CONSTANT",
    "BICUBIC_METHOD",
    "DEFAULT_GRID",
    "GRIDS",
    "NO_RL",
    "REALESRGAN_METHOD",
    "MethodResult",
    "PolicyTrace",
    "SB3Policy",
    "constant_policy",
    "evaluate_method",
    "evaluate_upsampler",
    "bicubic_result",
    "comparison_grid",
    "fit_grid",
    "grid_for_actions",
    "evaluate_grid",
    "grid_search_constant_action",
    "grid_settings",
    "paired_columns",
    "paired_interval",
    "paper_categories_present",
    "paper_category",
    "plot_policy_trace",
    "plot_training_curves",
    "write_report",
]

Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]  # (obs, episode_start) -> actions

BICUBIC = {"psnr": "bicubic_psnr", "ssim": "bicubic_ssim", "lpips": "bicubic_lpips",
           "lr_consistency": "bicubic_lr_consistency"}
IDENTITY = ("image_index", "category", "name", "label")  # what identifies a row's image, in every method

# The baselines' method names in every report (``orl-gym evaluate``, report_results.py,
# compare_offline.py): a script that reads a report's per-image CSV tells them from the policies by these.
NO_RL, BEST_CONSTANT, BICUBIC_METHOD, REALESRGAN_METHOD = "No RL", "best constant", "bicubic", "Real-ESRGAN x4plus"
BASELINE_METHODS = (BICUBIC_METHOD, REALESRGAN_METHOD, NO_RL, BEST_CONSTANT)

# The constant-action grid: 3 x 3 x 2 x 2 = 36 settings of (stride, eta, noise scale, guidance),
# 30 samplers (grid_settings: at eta 0 the noise scale changes nothing).
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "stride": (1, 2, 4), "eta": (0.0, 0.5, 1.0), "noise_scale": (0.8, 1.0), "guidance": (0.0, 0.3),
}
# "quick", for CPU demos: 3 x 2 = 6 settings, no guidance (its decoder passes dominate CPU time).
# "no_guidance": the full grid without guidance, which no report has found best so far.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "full": DEFAULT_GRID,
    "quick": {"stride": (1, 2, 4), "eta": (0.0, 1.0), "noise_scale": (1.0,), "guidance": (0.0,)},
    "no_guidance": {**DEFAULT_GRID, "guidance": (0.0,)},
}


def constant_policy(action: np.ndarray) -> Policy:
    """The same action for every image at every step."""
    action = np.asarray(action, dtype=np.float32)
    return lambda obs, episode_start: np.tile(action, (len(episode_start), 1))


class SB3Policy:
    """A trained SB3 model as a deterministic policy (keeps recurrent state for RecurrentPPO)."""

    def __init__(self, model: Any, *, deterministic: bool = True) -> None:
        self.model, self.deterministic, self.state = model, deterministic, None

    def __call__(self, obs: dict[str, np.ndarray], episode_start: np.ndarray) -> np.ndarray:
        obs = self._adapt(obs)
        actions, self.state = self.model.predict(obs, state=self.state, episode_start=episode_start,
                                                 deterministic=self.deterministic)
        return actions

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """ValueError when the model was trained on other observation or action shapes than the
        env's (another hr_size, model or action set): said before any image is scored."""
        model_obs, model_act = self.model.observation_space, self.model.action_space
        advice = "evaluate it with the env it was trained on (its run folder, or --env / --env-kwargs)"
        if tuple(model_act.shape) != tuple(action_space.shape):
            raise ValueError(f"the model's actions have shape {tuple(model_act.shape)}, this env's "
                             f"{tuple(action_space.shape)} (another set of action parameters); {advice}")
        if self._flat:  # a flat model (CrossQ): the flattened size is what must agree
            found, expected = tuple(model_obs.shape), (gym.spaces.flatdim(observation_space),)
        else:
            found = {key: tuple(space.shape) for key, space in model_obs.spaces.items()}
            expected = {key: tuple(space.shape) for key, space in observation_space.spaces.items()}
        if found != expected:
            raise ValueError(f"the model's observations have shapes {found}, this env's {expected} (another "
                             f"hr_size or model); {advice}")

    @property
    def _flat(self) -> bool:
        """Trained through FlattenDictObservation (CrossQ): one flat Box instead of the Dict."""
        return not hasattr(self.model.observation_space, "spaces")

    def _adapt(self, obs: dict[str, np.ndarray]) -> Any:
        # A flat model expects one flat Box, in the layout it was trained on (one helper for both
        # sides: the keys' order matters).
        if self._flat:
            from orl_gym.agents import flatten_observation

            return flatten_observation(obs)
        return obs


@dataclass
class MethodResult:
    """Per-image results of one method: ``rows[i]`` is image ``image_index[i]`` of the split."""

    name: str
    rows: list[dict[str, float]]
    images: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # image_index -> sr/hr/lr

    def column(self, key: str) -> np.ndarray:
        """One metric over the images; NaN where a metric was not computed (e.g. LPIPS disabled)."""
        return np.array([row.get(key, math.nan) for row in self.rows], dtype=np.float64)


def env_spaces(env_kwargs: Mapping[str, Any], *, split: str, categories: Sequence[str] | None = None,
               max_images: int | None = None) -> tuple[Any, Any]:
    """The single-env (observation, action) spaces :func:`evaluate_method` will run with (the
    params are cached, so the evaluation that follows loads nothing twice)."""
    params = build_params(EnvConfig.from_kwargs(**_evaluation_kwargs(env_kwargs, split, categories, max_images)))
    return observation_space(params), action_space(params)


def paper_categories_present(env_kwargs: Mapping[str, Any], split: str = "test") -> tuple[list[str], list[str]]:
    """The paper's categories (``PAPER_CATEGORIES``) that have ``split`` images in the env's data,
    and one note for each that has none here (its name and why), so that an experiment reports
    a missing category instead of failing on it."""
    present, missing = [], []
    for name in PAPER_CATEGORIES:
        try:
            build_params(EnvConfig.from_kwargs(**_evaluation_kwargs(env_kwargs, split, (name,), None)))
            present.append(name)
        except ValueError as err:
            missing.append(f"{name} ({str(err).splitlines()[0][:120]})")
    return present, missing


def _evaluation_kwargs(env_kwargs: Mapping[str, Any], split: str, categories: Sequence[str] | None,
                       max_images: int | None) -> dict[str, Any]:
    """Env kwargs that visit each image of the split once, center-cropped, in a fixed order."""
    kwargs = {**env_kwargs, "split": split, "crop": "center", "image_order": "sequential", "max_images": max_images}
    if categories:
        kwargs["categories"] = tuple(categories)
    return kwargs


def _kept_images(pool: Sequence[int], count: int) -> set[int]:
    """The images at ``count`` positions spread over the pool (so over the classes), for figures."""
    if not count:
        return set()
    return {int(pool[i]) for i in np.linspace(0, len(pool) - 1, count).round().astype(int)}


def evaluate_method(
    name: str,
    policy: Policy,
    env_kwargs: Mapping[str, Any],
    *,
    split: str = "test",
    categories: Sequence[str] | None = None,
    num_envs: int = 64,
    max_images: int | None = None,
    seed: int = 0,
    keep_images: int = 0,
    progress: bool = True,
) -> MethodResult:
    """Run ``policy`` until every image of the split (or ``max_images`` of them) finished once.

    ``keep_images`` images, spread over the split, keep their SR / HR / LR tensors for figures.
    An image whose pixels cannot be decoded (the dataset warns and lists it in
    ``PairDataset.unreadable``) is left out. Which noise the methods share: see the module docstring.
    """
    kwargs = _evaluation_kwargs(env_kwargs, split, categories, max_images)
    wanted = len(build_params(EnvConfig.from_kwargs(**kwargs)).image_pool)  # cached: no second load
    env = LDMSuperResolutionVectorEnv(num_envs=min(num_envs, wanted), **kwargs)
    try:
        return _run_episodes(env, name, policy, wanted=wanted, split=split, seed=seed, keep_images=keep_images,
                             progress=progress)
    finally:
        env.close()


def _run_episodes(env: LDMSuperResolutionVectorEnv, name: str, policy: Policy, *, wanted: int, split: str,
                  seed: int, keep_images: int, progress: bool) -> MethodResult:
    pool = env.params.image_pool
    dataset = env.params.dataset
    pool_position = {int(index): i for i, index in enumerate(pool)}
    keep = _kept_images(pool, keep_images)
    # In sequential order row r takes pool positions r, r + N, ...: every position comes up within
    # ceil(wanted / N) episodes of each row, and an episode ends within step_budget steps. Twice
    # that (plus one round) is a bound no correct run reaches: past it, stop rather than spin.
    rounds = math.ceil(wanted / env.num_envs)
    max_steps = (2 * rounds + 1) * max(int(env.params.step_budget), 1)
    obs, _ = env.reset(seed=seed)
    episode_start = np.ones(env.num_envs, dtype=bool)
    results: dict[int, dict[str, float]] = {}
    images: dict[int, dict[str, torch.Tensor]] = {}
    skipped: set[int] = set()  # pool indices the dataset could not decode: never scored
    unreadable_seen = -1
    bar = tqdm(total=wanted, desc=name, unit="img", disable=not progress, leave=False)
    steps = 0
    while len(results) + len(skipped) < wanted:
        if steps >= max_steps:
            missing = sorted(set(pool_position) - set(results) - skipped)
            raise RuntimeError(
                f"{name}: {len(missing)} of the {wanted} {split} images (indices {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}) never finished an episode in {steps} steps, though every "
                f"image should within {rounds} episodes per row; stopped instead of running on (please report "
                "this with the env settings)"
            )
        obs, _, terminated, truncated, info = env.step(policy(obs, episode_start))
        steps += 1
        episode_start = terminated | truncated
        if len(dataset.unreadable) != unreadable_seen:
            # dataset.pairs() serves the next readable image in place of one it cannot decode, so
            # an unreadable image never finishes an episode of its own: count it as done.
            unreadable_seen = len(dataset.unreadable)
            newly = {i for i in pool_position if dataset.names[i] in dataset.unreadable} - skipped - set(results)
            skipped |= newly
            bar.update(len(newly))
        if not episode_start.any():
            continue
        final, last = info["final_info"], env.last_step
        rows_host = last.final_rows.cpu().numpy()
        for position, row in enumerate(rows_host):
            index = int(final["image_index"][row])
            if index in results or index in skipped or index not in pool_position:
                continue  # the sequential order wrapped around: already scored
            results[index] = {key: float(value[row]) for key, value in final.items() if not key.startswith("_")}
            results[index]["category"] = dataset.classes[int(final["label"][row])]
            results[index]["name"] = dataset.names[index]
            if index in keep:
                images[index] = {"sr": last.final_images[position].cpu(), "hr": last.final_hr[position].cpu(),
                                 "lr": last.final_lr[position].cpu()}
            bar.update(1)
    bar.close()
    rows = [{"image_index": i, **results[i]} for i in sorted(results)]
    return MethodResult(name=name, rows=rows, images=images)


def grid_settings(grid: Mapping[str, Sequence[float]], actions: ActionConfig) -> list[dict[str, float]]:
    """The grid's settings of the parameters ``actions`` controls (their product, in the actions'
    parameter order), each sampler once.

    At eta 0 DDIM adds no fresh noise, so the noise scale changes nothing: of the eta-0 settings
    that differ only in it, the one with noise scale 1 (else the first) is kept, and a search does
    not spend evaluations on copies. Values are not checked here (:func:`fit_grid` does).
    """
    names = [p for p in actions.parameters if p in grid]
    settings = [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]
    if "eta" not in names or "noise_scale" not in names:
        return settings
    kept, seen = [], {}
    for setting in settings:
        if setting["eta"] != 0:
            kept.append(setting)
            continue
        key = tuple((n, v) for n, v in setting.items() if n != "noise_scale")
        if key not in seen:
            seen[key] = len(kept)
            kept.append(setting)
        elif setting["noise_scale"] == 1.0:
            kept[seen[key]] = setting
    return kept


def evaluate_grid(
    env_kwargs: Mapping[str, Any],
    actions: ActionConfig,
    *,
    grid: Mapping[str, Sequence[float]] = DEFAULT_GRID,
    split: str = "validation",
    categories: Sequence[str] | None = None,
    num_envs: int = 64,
    max_images: int | None = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[tuple[dict[str, float], MethodResult]]:
    """Every setting of the grid (:func:`grid_settings`) as a constant action on the same images
    and noise: (setting, its per-image results), in grid order.

    Every grid value must be one the actions can take (checked before anything runs; see
    :func:`fit_grid` to leave the others out). Parameters the actions do not control are not
    searched. RuntimeError if two settings were scored on different images.
    """
    _, dropped = fit_grid(grid, actions)
    if dropped:
        raise ValueError(f"grid: {'; '.join(dropped)}; leave those values out of the grid (fit_grid() does)")
    evaluated: list[tuple[dict[str, float], MethodResult]] = []
    for setting in tqdm(grid_settings(grid, actions), desc=f"grid on {split}", unit="setting", disable=not progress):
        result = evaluate_method("constant", constant_policy(encode_params(actions, **setting)), env_kwargs,
                                 split=split, categories=categories, num_envs=num_envs, max_images=max_images,
                                 seed=seed, progress=False)
        if evaluated and [r["image_index"] for r in result.rows] != [r["image_index"] for r in evaluated[0][1].rows]:
            raise RuntimeError(f"grid on {split}: the settings {evaluated[0][0]} and {setting} were scored on "
                               "different images (a file became unreadable during the search?)")
        evaluated.append((setting, result))
    return evaluated


def grid_search_constant_action(
    env_kwargs: Mapping[str, Any], actions: ActionConfig, **grid_kwargs: Any
) -> tuple[np.ndarray, dict[str, float], list[dict[str, float]]]:
    """The constant action with the highest mean reward: (action, its parameters, table).

    ``grid_kwargs`` are :func:`evaluate_grid`'s (grid, split (default validation), categories,
    num_envs, max_images, seed, progress). The table has one row per setting, its per-image
    results kept only as means: the setting, its mean reward, PSNR and UNet calls.
    """
    evaluated = evaluate_grid(env_kwargs, actions, **grid_kwargs)
    table = [{**setting, "reward": float(result.column("reward").mean()),
              "psnr": float(result.column("psnr").mean()), "unet_calls": float(result.column("unet_calls").mean())}
             for setting, result in evaluated]
    best = max(range(len(table)), key=lambda i: table[i]["reward"])
    setting = evaluated[best][0]
    return encode_params(actions, **setting), setting, table


def fit_grid(grid: Mapping[str, Sequence[float]], actions: ActionConfig) -> tuple[dict[str, tuple[float, ...]], list[str]]:
    """``grid`` without the values ``actions`` cannot take: (the grid left, one note per value left out).

    Only the parameters ``actions`` controls are checked (the others are not searched). ValueError
    when a parameter has no value left.
    """
    fitted: dict[str, tuple[float, ...]] = {}
    dropped: list[str] = []
    for name, values in grid.items():
        if name not in actions.parameters:
            fitted[name] = tuple(values)
            continue
        kept = []
        for value in values:
            try:
                encode_params(actions, **{name: value})
            except ValueError as error:
                dropped.append(str(error))
            else:
                kept.append(value)
        if not kept:
            raise ValueError(f"grid: none of the {name} values {tuple(values)} fits the actions ({dropped[-1]})")
        fitted[name] = tuple(kept)
    return fitted, dropped


def grid_for_actions(name: str, actions: ActionConfig) -> tuple[dict[str, tuple[float, ...]], list[str]]:
    """The named grid (``GRIDS``) fitted to ``actions``: (the grid, one note per change).

    The grids' strides (1, 2, 4) are those of the default ``max_stride`` 4. Where the actions allow
    longer strides, the stride axis is extended by doubling up to ``max_stride`` and ends at it
    (max_stride 10: 1, 2, 4, 8, 10), so the best constant action can take any stride a policy can
    and a policy that uses the longer strides is not compared with a baseline that could not.
    Values the actions cannot take are then left out (:func:`fit_grid`).
    """
    if name not in GRIDS:
        raise ValueError(f"grid: unknown grid {name!r}; grids: {', '.join(GRIDS)}")
    grid = {key: tuple(values) for key, values in GRIDS[name].items()}
    notes = []
    strides = list(grid.get("stride", ()))
    if "stride" in actions.parameters and strides and max(strides) < actions.max_stride:
        added = []
        while 2 * max(strides) < actions.max_stride:
            strides.append(2 * max(strides))
            added.append(strides[-1])
        strides.append(actions.max_stride)
        added.append(actions.max_stride)
        grid["stride"] = tuple(type(strides[0])(v) for v in strides)
        notes.append(f"stride: added {', '.join(str(int(v)) for v in added)} to reach the actions' max_stride "
                     f"{actions.max_stride}")
    fitted, dropped = fit_grid(grid, actions)
    return fitted, notes + dropped


class PolicyTrace:
    """Wraps a policy and records, for every row at every step, the timestep it acted at and the
    sampler parameters its action decoded to (what the policy learned, as data).

    ``rows`` holds one dict per (step, row): ``t`` (the training timestep of the current latent,
    from the observation's progress features), ``step`` (its position on the schedule), and
    ``stride`` / ``eta`` / ``noise_scale`` / ``guidance`` as the sampler received them.
    """

    def __init__(self, policy: Policy, actions: ActionConfig, *, num_train_timesteps: int) -> None:
        self.policy, self.actions, self.num_train_timesteps = policy, actions, num_train_timesteps
        self.rows: list[dict[str, float]] = []

    def __call__(self, obs: dict[str, np.ndarray], episode_start: np.ndarray) -> np.ndarray:
        action = self.policy(obs, episode_start)
        params = decode_action(action, self.actions).params
        t = np.rint(obs["progress"][:, 0] * self.num_train_timesteps)
        # progress[:, 1] is step_index / K; recorded so plots can use either axis.
        step = obs["progress"][:, 1]
        columns = {name: torch.as_tensor(getattr(params, name)).float().expand(len(t)).numpy() for name in PARAMETERS}
        for i in range(len(t)):
            self.rows.append({"t": float(t[i]), "step": float(step[i]),
                              **{name: float(columns[name][i]) for name in PARAMETERS}})
        return action


def evaluate_upsampler(
    name: str,
    upsample: Callable[[torch.Tensor], torch.Tensor],
    env_kwargs: Mapping[str, Any],
    *,
    split: str = "test",
    categories: Sequence[str] | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    keep_images: int = 0,
    progress: bool = True,
) -> MethodResult:
    """A one-shot super-resolver (bicubic-like: LR in, SR out) scored on the images and crops
    :func:`evaluate_method` uses, with the env's own metrics.

    The LR inputs are the env's too when the degradation adds no noise. With a noisy degradation
    they are not the same draws: here image ``i``'s LR noise comes from a generator seeded with
    ``i``, in the env from the generators it derives for each row and image from ``seed``, so the
    two see the same distribution of LR inputs, not the same LR images. An image whose pixels cannot be decoded is left out, as
    :func:`evaluate_method` leaves it out.

    ``upsample`` maps ``(B, 3, h, w)`` in [0, 1] to ``(B, 3, scale*h, scale*w)`` in [0, 1]. The
    rows carry ``unet_calls = 0`` and ``reward = NaN``: the env's reward prices UNet calls, which
    a non-diffusion model does not make, so its reward would not be comparable. On CUDA it runs in
    IEEE float32 like the env (:mod:`orl_gym.precision`), so its scores, too, do not depend on
    which images share a batch.
    """
    params = build_params(EnvConfig.from_kwargs(**_evaluation_kwargs(env_kwargs, split, categories, max_images)))
    pool = [int(i) for i in params.image_pool]
    keep = _kept_images(pool, keep_images)
    dataset, reward_model = params.dataset, params.reward_model
    rows, images = [], {}
    for start in tqdm(range(0, len(pool), batch_size), desc=name, unit="batch", disable=not progress, leave=False):
        indices = pool[start:start + batch_size]
        # Center crops use no randomness; fixed generators keep the LR noise (if any) reproducible.
        generators = [torch.Generator().manual_seed(int(i)) for i in indices]
        pairs = dataset.pairs(indices, generator=generators)
        hr, lr = pairs.hr.to(params.device), pairs.lr.to(params.device)
        began = time.perf_counter()
        with torch.no_grad():
            sr = ieee_float32(upsample)(lr)
        seconds = (time.perf_counter() - began) / len(indices)
        if sr.shape != hr.shape:
            raise ValueError(f"{name}: the upsampler returned {tuple(sr.shape)} for LR {tuple(lr.shape)}; "
                             f"expected the HR shape {tuple(hr.shape)}")
        out = reward_model.final(sr.to(hr.dtype), hr, lr, nfe=torch.zeros(len(indices), device=params.device),
                                 reference_nfe=1)
        metrics = {k: v.detach().double().cpu().numpy() for k, v in out.metrics.items()}
        # pairs.indices: an unreadable image is replaced by the next readable one (data.py); the
        # stand-in is left out here (it is scored in its own turn), as evaluate_method does.
        for j, index in enumerate(int(i) for i in pairs.indices):
            if index != indices[j]:
                continue
            row = {"image_index": index, **{k: float(v[j]) for k, v in metrics.items()},
                   "unet_calls": 0.0, "nfe": 0.0, "seconds": seconds, "reward": math.nan,
                   "category": dataset.classes[int(pairs.labels[j])], "name": dataset.names[index]}
            rows.append(row)
            if index in keep:
                images[index] = {"sr": sr[j].cpu(), "hr": hr[j].cpu(), "lr": lr[j].cpu()}
    rows.sort(key=lambda row: row["image_index"])
    return MethodResult(name=name, rows=rows, images=images)


def paired_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences a - b and its two-sided t confidence interval."""
    from scipy import stats

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff)))
    return mean, mean - half, mean + half


def bicubic_result(reference: MethodResult) -> MethodResult:
    """Bicubic x4 on the same images as ``reference`` (the env scores it for every image as the
    reward's baseline; reward 0 by definition).

    A row keeps the reference row's identity (``image_index``, ``category``, ``name``, ``label``)
    and baseline columns (``bicubic_*``); its metrics are the bicubic ones (``psnr`` from
    ``bicubic_psnr``, ... , ``lr_consistency`` from ``bicubic_lr_consistency``), with no UNet calls
    or guidance evaluations. As the reward's baseline it has reward 0 by definition, so its
    ``term_*`` and ``weighted_*`` are 0 too (the quality terms measure against bicubic; the
    efficiency term prices a diffusion run's UNet calls). Nothing else of the reference row (its
    ``efficiency``, ``action_clipped``, ...) is copied.
    """
    rows = []
    for row in reference.rows:
        terms = {key: 0.0 for key in row if key.startswith(("term_", "weighted_")) or key == "guidance_evals"}
        rows.append({**{k: row[k] for k in IDENTITY if k in row},
                     **{k: v for k, v in row.items() if k.startswith("bicubic_")},
                     **{m: row[b] for m, b in BICUBIC.items() if b in row},
                     **terms, "unet_calls": 0.0, "nfe": 0.0, "seconds": math.nan, "reward": 0.0})
    return MethodResult(name=BICUBIC_METHOD, rows=rows)


def paired_columns(a: MethodResult, b: MethodResult, key: str, *, category: str | None = None,
                   category_key: str = "category") -> tuple[np.ndarray, np.ndarray]:
    """``key`` of ``a`` and of ``b`` on the same images, paired by ``image_index`` (sorted), for
    :func:`paired_interval`; only the images whose ``category_key`` is ``category`` when given.

    ValueError when the two results do not cover the same images (or one repeats an image):
    a paired difference needs both methods on every image.
    """
    rows = []
    for result in (a, b):
        by_index = {int(row["image_index"]): row for row in result.rows}
        if len(by_index) != len(result.rows):
            raise ValueError(f"{result.name}: some image_index appears in more than one row; pairing needs "
                             "one row per image")
        rows.append(by_index)
    if rows[0].keys() != rows[1].keys():
        only_a, only_b = sorted(rows[0].keys() - rows[1].keys()), sorted(rows[1].keys() - rows[0].keys())
        raise ValueError(
            f"{a.name} and {b.name} cover different images ({len(only_a)} only in {a.name}, e.g. {only_a[:5]}; "
            f"{len(only_b)} only in {b.name}, e.g. {only_b[:5]}); evaluate both on the same split, "
            "categories and max_images"
        )
    indices = sorted(i for i in rows[0] if category in (None, "all", rows[0][i].get(category_key)))
    first, second = (np.array([by_index[i].get(key, math.nan) for i in indices], dtype=np.float64)
                     for by_index in rows)
    return first, second


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_report(
    results: Sequence[MethodResult],
    out_dir: str | Path,
    *,
    rl_name: str = "RL",
    baselines: Sequence[str] = (NO_RL, BEST_CONSTANT),
    grid_images: int = 4,
    header: str = "",
) -> dict[str, Path]:
    """Markdown table per category, per-image CSV, paired intervals, comparison grid PNG."""
    out_dir = Path(out_dir)
    by_name = {r.name: r for r in results}
    methods = [bicubic_result(results[0]), *results]
    metrics = [m for m in ("psnr", "ssim", "lpips") if all(m in row for row in results[0].rows)]
    categories = sorted({row["category"] for row in results[0].rows})
    lines = [header, "", "| Method | Category | n | " + " | ".join(m.upper() for m in metrics)
             + " | UNet calls | s / image |", "|---" * (5 + len(metrics)) + "|"]
    for method in methods:
        for category in [*categories, "all"]:
            rows = [r for r in method.rows if category in ("all", r["category"])]
            cells = [_fmt(float(np.mean([r[m] for r in rows])), 4) for m in metrics]
            lines.append(f"| {method.name} | {category} | {len(rows)} | " + " | ".join(cells)
                         + f" | {_fmt(float(np.mean([r['unet_calls'] for r in rows])), 1)}"
                         + f" | {_fmt(float(np.mean([r['seconds'] for r in rows])), 3)} |")
    if rl_name in by_name:
        lines += ["", f"Paired per-image differences, {rl_name} minus baseline, mean [95% t interval]:", "",
                  "| Baseline | Category | n | " + " | ".join(f"d{m.upper()}" for m in [*metrics, "reward"]) + " |",
                  "|---" * (4 + len(metrics)) + "|"]
        rl = by_name[rl_name]
        for base_name in baselines:
            if base_name not in by_name:
                continue
            base = by_name[base_name]
            for category in [*categories, "all"]:
                cells, n = [], 0
                for m in [*metrics, "reward"]:
                    rl_values, base_values = paired_columns(rl, base, m, category=category)
                    n = len(rl_values)
                    mean, low, high = paired_interval(rl_values, base_values)
                    cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]")
                lines.append(f"| {base_name} | {category} | {n} | " + " | ".join(cells) + " |")
    paths = {"table": out_dir / "table.md", "csv": out_dir / "per_image.csv"}
    atomic_write_text(paths["table"], "\n".join(lines) + "\n")
    keys = sorted({k for method in methods for row in method.rows for k in row})
    with atomic_open(paths["csv"], "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", *keys])
        writer.writeheader()
        for method in methods:
            for row in method.rows:
                writer.writerow({"method": method.name, **row})
    grid = comparison_grid(results, out_dir / "comparison.png", count=grid_images)
    if grid is not None:
        paths["grid"] = grid
    return paths
