"""Super-resolve a whole image of any size: overlapping tiles, each sampled by a trained policy
or a fixed sampler, blended without seams.

The user's image *is* the LR input: it comes out ``model.scale_factor`` times larger (x4 for the
bundled model). The image is cut into overlapping LR tiles, a batch of tiles runs the reverse
diffusion at once (``orl_gym.sampler``), every tile choosing its own per-step parameters when a
policy drives it (the env's observation of that tile: ``orl_gym.env.observe``), and the decoded
HR tiles are blended with weights that ramp linearly across each overlap.

Tiles (sides in LR = input pixels):

* A policy sees the env's observation of one fixed LR size (``hr_size / scale``: 16x16 for the
  tiny-x4 preset), so its tiles have exactly that side. A fixed sampler (``ddim20``) takes any
  multiple of the UNet's downsampling (``model.hr_multiple // model.scale_factor``, 4 for the
  bundled model); default 64 (the bundled UNet was trained on 32x32 LR crops and runs on whole
  images), or ``tile="whole"``: the whole image as one tile.
* Along each axis the tiles are spread evenly from edge to edge, with at least ``overlap`` LR
  pixels shared by neighbours, so no tile hangs over the image's right or bottom edge. An image
  smaller than one tile (or, with ``tile=None``, not a multiple of the UNet's downsampling) is
  reflect-padded at its bottom / right to the tile and the output cropped back. Images under
  ``MIN_SIDE`` pixels on a side are refused.
* Blending happens in HR space: each tile's weight is 1 inside and ramps linearly to near 0 over
  the ``overlap * scale`` HR pixels next to each neighbour (never at the image border); the
  weighted sum is divided by the sum of weights. Where overlaps equal ``overlap`` the two ramps
  sum to exactly 1. A tile alone has weight 1 everywhere, so an image that fits one tile equals
  the untiled run exactly.

Noise: tile ``i`` (row-major on the grid) draws all of its noise from its own generator, seeded by
``tile_seeds(seed, n)[i]``, so an output is reproducible from ``seed`` (with the same tile,
overlap and device) and does not depend on which tiles share its batch.

Input conversions (``read_image`` / ``upscale``), each reported in ``LoadedImage.notes``:
grayscale is copied to 3 channels; an alpha channel is dropped (not composited: the colour values
are kept as stored); 16-bit integer images are scaled to [0, 1] by 1 / 65535 (the dtype's maximum:
a 12-bit sensor's data stored in 16 bits comes out dark; stretch it first); floating-point images
must already lie in [0, 1]. Unreadable files, other dtypes, more than 4 bands (or 4 without an
alpha band) and images under ``MIN_SIDE`` pixels are a one-line ``ValueError``.

GeoTIFF: with rasterio installed (``pip install 'orl_gym[geo]'``), ``.tif`` / ``.tiff`` files are
read and written with it: a georeferenced input written to a ``.tif`` keeps its CRS, and its
affine transform is scaled by ``1 / scale`` (same footprint, pixels ``scale`` times smaller); the
output keeps the input's integer dtype (uint8 / uint16). Without rasterio, TIFFs go through Pillow
and lose their georeferencing (said in a note). PNG / JPEG / Pillow-TIFF outputs are 8-bit RGB.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from orl_gym import env as env_module
from orl_gym import sampler
from orl_gym.actions import PARAMETERS, ActionConfig, decode_action, encode_params
from orl_gym.env import EnvConfig
from orl_gym.models import LDMSR, load_ldmsr
from orl_gym.precision import ieee_float32

__all__ = [
    "MIN_SIDE",
    "WHOLE",
    "FileResult",
    "LoadedImage",
    "TileGrid",
    "TileSampler",
    "UpscaleResult",
    "blend_window",
    "check_output_path",
    "read_image",
    "sampler_from_name",
    "sampler_from_policy",
    "sampler_from_run",
    "tile_seeds",
    "upscale",
    "upscale_file",
    "upscale_tiles",
    "write_image",
]

MIN_SIDE = 8
"""Smallest input side, in pixels, that ``upscale`` accepts (smaller ones are refused: there is
too little for the model to work from, and reflection padding would repeat the image)."""

DEFAULT_SAMPLER = "ddim20"
DEFAULT_SAMPLER_TILE = 64
WHOLE = "whole"
"""``tile=WHOLE``: the whole image as one tile (a fixed sampler's untiled run)."""
DEFAULT_SAMPLER_OVERLAP = 8
DEFAULT_POLICY_OVERLAP = 4
TILE_BATCH_LR_PIXELS = 64 * 16 * 16
"""Default LR pixels per batch of tiles: 64 tiles of a 16x16 policy, 4 of a 64x64 sampler tile."""

PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
TIFF_SUFFIXES = (".tif", ".tiff")
EXIF_ORIENTATION = 0x0112

Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]  # (obs, episode_start) -> actions


# --------------------------------------------------------------------------------------------
# How a tile is sampled


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
        schedule: the default DDIM schedule of ``config.num_inference_steps`` steps.
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
    guidance): the env's "No RL" action ``encode_params(ActionConfig())``; ``ddim20`` is the
    presets' ``num_inference_steps``."""
    match = re.fullmatch(r"ddim(\d+)", str(name))
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"--sampler: unknown sampler {name!r}; use ddim<N>, e.g. {DEFAULT_SAMPLER} (N plain DDIM "
                         "steps), or a trained policy with --run RUN")
    if isinstance(model, LDMSR):
        device, dtype = str(model.device), str(model.dtype).removeprefix("torch.")
    if torch.device(device).type == "cpu":
        dtype = "float32"
    config = EnvConfig(model=model, num_inference_steps=int(match.group(1)), device=device, dtype=dtype,
                       output_fix=output_fix)
    loaded = _load_model(config)
    return TileSampler(config=config, model=loaded, schedule=sampler.Schedule.from_model(loaded, config.num_inference_steps),
                       fixed_action=encode_params(config.actions), name=f"{name} (plain DDIM)")


def sampler_from_policy(policy: Policy, env_kwargs: Mapping[str, Any], *, name: str = "policy") -> TileSampler:
    """A policy's sampler: ``env_kwargs`` are those of the env it was trained on (a run's
    config.yaml holds them); ``policy.check_spaces(observation_space, action_space)``, where it
    exists, refuses a policy trained on other shapes."""
    config = EnvConfig.from_kwargs(**dict(env_kwargs))
    model = _load_model(config)
    if config.hr_size % model.hr_multiple:
        raise ValueError(f"hr_size: {config.hr_size} px does not fit this model (a multiple of {model.hr_multiple} "
                         "is needed)")
    tiles = TileSampler(config=config, model=model, schedule=sampler.Schedule.from_model(model, config.num_inference_steps),
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


# --------------------------------------------------------------------------------------------
# Tiles and blending


def _positions(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one axis: evenly spread from 0 to ``length - tile``, neighbours sharing
    at least ``overlap`` pixels (one tile at 0 when it covers the axis)."""
    if length <= tile:
        return (0,)
    count = math.ceil((length - overlap) / (tile - overlap))
    # Spacing (length - tile) / (count - 1) <= tile - overlap; rounding keeps every gap <= it.
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


@dataclass(frozen=True)
class TileGrid:
    """Where the LR tiles lie on an image of ``height`` x ``width`` LR pixels (row-major order).

    The image is reflect-padded to ``padded_height`` x ``padded_width`` when it is smaller than a
    tile; tiles never reach past that."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    overlap: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    @classmethod
    def build(cls, height: int, width: int, *, tile_height: int, tile_width: int, overlap: int) -> TileGrid:
        return cls(height=height, width=width, tile_height=tile_height, tile_width=tile_width, overlap=overlap,
                   tops=_positions(height, tile_height, overlap), lefts=_positions(width, tile_width, overlap))

    @property
    def padded_height(self) -> int:
        return max(self.height, self.tile_height)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.tile_width)

    @property
    def windows(self) -> list[tuple[int, int, int, int]]:
        """(row, column, top, left) of every tile, row-major."""
        return [(r, c, top, left) for r, top in enumerate(self.tops) for c, left in enumerate(self.lefts)]

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)


def blend_window(length: int, ramp: int, *, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """(length,) float32 blending weight of a tile along one axis, in HR pixels: 1, ramping
    linearly down to 0.5 / ramp over the ``ramp`` pixels at each end that has a neighbour.

    Two neighbours that overlap by exactly ``ramp`` pixels have weights summing to 1 there;
    where they overlap by more, the normalisation by the sum of weights keeps the blend a
    weighted mean. An end at the image border keeps weight 1 (nothing to blend with)."""
    weight = torch.ones(length)
    if ramp <= 0:
        return weight
    x = torch.arange(length, dtype=torch.float32) + 0.5
    if ramp_start:
        weight = torch.minimum(weight, x / ramp)
    if ramp_end:
        weight = torch.minimum(weight, (length - x) / ramp)
    return weight


def _reflect_pad(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, H, W) reflect-padded at the bottom / right to at least height x width (repeated
    reflections where the pad exceeds the image: ``F.pad`` reflects at most side - 1 pixels)."""
    batch = image[None]
    while batch.shape[-2] < height or batch.shape[-1] < width:
        pad_h = min(height - batch.shape[-2], batch.shape[-2] - 1) if batch.shape[-2] < height else 0
        pad_w = min(width - batch.shape[-1], batch.shape[-1] - 1) if batch.shape[-1] < width else 0
        batch = F.pad(batch, (0, pad_w, 0, pad_h), mode="reflect")
    return batch[0]


def tile_seeds(seed: int, count: int) -> list[int]:
    """The noise seed of each of ``count`` tiles (row-major): tile i's from (seed, i) alone."""
    return [int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint64)[0] >> np.uint64(1))
            for i in range(count)]


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class _TileState:
    """The part of ``env.EnvState`` that ``env.observe`` and ``env.final_latents`` read."""

    sampler: sampler.SamplerState
    last_action: torch.Tensor  # (B, 4) last parameters, normalized to [0, 1]


@ieee_float32
@torch.no_grad()
def _sample_tiles(tiles: TileSampler, lr: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the reverse diffusion on a batch of LR tiles (B, 3, h, w) as the env runs an episode:
    each step's parameters from the policy (or the fixed action), truncation by the step budget
    (the image is then the last x0 prediction), the decode and ``output_fix`` of the env.
    Returns the HR tiles (B, 3, H, W) float32 and the UNet calls of each tile (B,)."""
    model, schedule = tiles.model, tiles.schedule
    device, batch = model.device, lr.shape[0]
    state = sampler.init_state(model, schedule, lr.to(device), sampler.make_generators(seeds, device))
    last_action = torch.zeros(batch, len(PARAMETERS), device=device)
    episode_start = np.ones(batch, dtype=bool)
    fixed = None
    if tiles.policy is None:
        fixed = decode_action(np.tile(tiles.fixed_action, (batch, 1)), tiles.actions, device=device)
    elif hasattr(tiles.policy, "state"):
        # SB3Policy keeps a recurrent policy's hidden state for the batch it last saw; this is a
        # new batch (perhaps of another size), whose episodes all start now.
        tiles.policy.state = None
    # All tiles start together and each env step moves every unfinished tile once, so the step
    # budget truncates the unfinished ones at the same step.
    for _ in range(tiles.step_budget):
        if bool(state.done(schedule).all()):
            break
        if fixed is None:
            obs = env_module.observe(tiles, _TileState(state, last_action))
            decoded = decode_action(tiles.policy(obs, episode_start), tiles.actions, device=device)
            if decoded.clipped.shape[0] != batch:
                raise ValueError(f"policy: {decoded.clipped.shape[0]} actions for {batch} tiles")
        else:
            decoded = fixed
        state = sampler.step(model, schedule, state, decoded.params).state
        last_action = decoded.normalized
        episode_start = np.zeros(batch, dtype=bool)
    latents = env_module.final_latents(_TileState(state, last_action), state.done(schedule))
    return env_module.output_images(tiles, latents, state.lr), state.nfe


@dataclass(frozen=True)
class UpscaleResult:
    """An upscaled image and how it was made.

    Attributes:
        image: (3, H * scale, W * scale) float32 in [0, 1], on the CPU.
        grid: the LR tiles.
        unet_calls: UNet evaluations of every tile, summed.
        seconds: wall time of the sampling and blending.
    """

    image: torch.Tensor
    grid: TileGrid
    unet_calls: int
    seconds: float


def _tile_size(tiles: TileSampler, tile: int | str | None, height: int, width: int) -> tuple[int, int]:
    multiple = tiles.lr_multiple
    if tiles.fixed_tile is not None:
        if tile is not None and tile != tiles.fixed_tile:
            raise ValueError(f"--tile {tile}: this policy observes {tiles.fixed_tile}x{tiles.fixed_tile} LR images "
                             f"(its env's hr_size {tiles.config.hr_size} / x{tiles.scale}), so its tiles have that "
                             "side; leave --tile out")
        return tiles.fixed_tile, tiles.fixed_tile
    if tile == WHOLE:  # the whole image as one tile (padded to the UNet's multiple)
        return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    tile = DEFAULT_SAMPLER_TILE if tile is None else tile
    if not isinstance(tile, int) or isinstance(tile, bool):
        raise ValueError(f"--tile {tile!r}: expected a side in LR pixels or {WHOLE!r}")
    if tile < multiple or tile % multiple:
        fit = max(multiple, round(tile / multiple) * multiple)
        raise ValueError(f"--tile {tile}: LR tile sides must be multiples of {multiple} (this UNet's downsampling); "
                         f"try --tile {fit}")
    return tile, tile


def upscale_tiles(lr: torch.Tensor, tiles: TileSampler, *, tile: int | str | None = None,
                  overlap: int | None = None, seed: int = 0, batch_size: int | None = None,
                  progress: bool = False) -> UpscaleResult:
    """Super-resolve one image (3, H, W) float in [0, 1] (the LR input) tile by tile.

    Args:
        tiles: how each tile is sampled (``sampler_from_name`` / ``sampler_from_run`` /
            ``sampler_from_policy``).
        tile: LR tile side (None: the default, ``DEFAULT_SAMPLER_TILE`` for a fixed sampler, the
            observation's side for a policy, which takes no other); ``"whole"``: the whole image
            as one tile (fixed samplers only).
        overlap: LR pixels neighbours share (default 8 for a sampler, 4 for a policy's 16 px tiles;
            unused for one tile).
        seed: noise seed (``tile_seeds``).
        batch_size: tiles per batch (default: ``TILE_BATCH_LR_PIXELS`` LR pixels' worth).
        progress: a tqdm bar over tiles.
    """
    if not isinstance(lr, torch.Tensor) or lr.dim() != 3 or lr.shape[0] != 3 or not lr.is_floating_point():
        shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
        raise ValueError(f"lr: expected a float tensor (3, H, W) in [0, 1], got {shape} (upscale() converts PIL "
                         "images and other layouts)")
    if not bool(torch.isfinite(lr).all()) or float(lr.min()) < 0.0 or float(lr.max()) > 1.0:
        raise ValueError("lr: values must be finite and in [0, 1]")
    _, height, width = lr.shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image: {width}x{height} px is too small; upscale needs at least {MIN_SIDE} px on each side")
    tile_height, tile_width = _tile_size(tiles, tile, height, width)
    if overlap is None:
        overlap = DEFAULT_POLICY_OVERLAP if tiles.fixed_tile is not None else DEFAULT_SAMPLER_OVERLAP
    overlap = 0 if tile == WHOLE else int(overlap)
    if not 0 <= overlap < min(tile_height, tile_width):
        raise ValueError(f"--overlap {overlap}: expected 0 <= overlap < the tile side {min(tile_height, tile_width)}")
    if batch_size is None:
        batch_size = max(1, TILE_BATCH_LR_PIXELS // (tile_height * tile_width))
    if int(batch_size) < 1:
        raise ValueError(f"--batch-size {batch_size}: expected at least 1 tile per batch")
    start = time.perf_counter()
    grid = TileGrid.build(height, width, tile_height=tile_height, tile_width=tile_width, overlap=overlap)
    padded = _reflect_pad(lr.float().cpu(), grid.padded_height, grid.padded_width)
    scale, ramp = tiles.scale, overlap * tiles.scale
    out = torch.zeros(3, grid.padded_height * scale, grid.padded_width * scale)
    weight_sum = torch.zeros(1, *out.shape[1:])
    rows = [blend_window(tile_height * scale, ramp, ramp_start=r > 0, ramp_end=r < len(grid.tops) - 1)
            for r in range(len(grid.tops))]
    columns = [blend_window(tile_width * scale, ramp, ramp_start=c > 0, ramp_end=c < len(grid.lefts) - 1)
               for c in range(len(grid.lefts))]
    seeds, windows, unet_calls = tile_seeds(seed, len(grid)), grid.windows, 0
    with tqdm(total=len(grid), desc="upscale", unit="tile", disable=not progress, leave=False) as bar:
        for first in range(0, len(windows), int(batch_size)):
            part = windows[first:first + int(batch_size)]
            batch = torch.stack([padded[:, top:top + tile_height, left:left + tile_width] for _, _, top, left in part])
            hr, nfe = _sample_tiles(tiles, batch, seeds[first:first + len(part)])
            hr = hr.float().cpu()
            unet_calls += int(nfe.sum())
            for (r, c, top, left), image in zip(part, hr, strict=True):
                weight = rows[r][:, None] * columns[c][None, :]
                y, x = top * scale, left * scale
                out[:, y:y + image.shape[-2], x:x + image.shape[-1]] += image * weight
                weight_sum[:, y:y + image.shape[-2], x:x + image.shape[-1]] += weight
            bar.update(len(part))
    image = out.div_(weight_sum)[:, :height * scale, :width * scale].clamp_(0.0, 1.0)  # in place: large scenes
    return UpscaleResult(image=image, grid=grid, unet_calls=unet_calls, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Pixels in: conversions


def _unit_rgb(pixels: np.ndarray, *, what: str, layout: str = "HWC") -> tuple[torch.Tensor, list[str]]:
    """(3, H, W) float32 in [0, 1] from integer or float pixels with 1-4 channels, and the
    conversions applied (see the module docstring)."""
    notes: list[str] = []
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[None] if layout == "CHW" else array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{what}: expected an image of 1-4 channels, got an array of shape {array.shape}")
    chw = array if layout == "CHW" else np.moveaxis(array, -1, 0)
    channels = chw.shape[0]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"{what}: {channels} channels; upscale needs RGB (3), grayscale (1) or either with "
                         "alpha; pick 3 bands first (e.g. gdal_translate -b 1 -b 2 -b 3)")
    if channels in (2, 4):
        chw = chw[:-1]
        notes.append("alpha channel dropped (colours kept as stored, not composited)")
    if chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
        notes.append("grayscale copied to 3 channels")
    dtype = chw.dtype
    if dtype == np.uint8:
        values = chw.astype(np.float32) / 255.0
    elif dtype == np.uint16:
        values = chw.astype(np.float32) / 65535.0
        notes.append("16-bit: scaled to [0, 1] by 1/65535")
    elif np.issubdtype(dtype, np.floating):
        values = chw.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            raise ValueError(f"{what}: floating-point pixels {low:g}..{high:g} (or NaN) have no defined scale; "
                             "scale them to [0, 1] or convert to 8- or 16-bit integers")
    else:
        raise ValueError(f"{what}: pixels of dtype {dtype} are not supported; convert to 8- or 16-bit unsigned "
                         "integers (or floats in [0, 1])")
    height, width = values.shape[1:]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"{what}: {width}x{height} px is too small; upscale needs at least {MIN_SIDE} px on each side")
    return torch.from_numpy(np.ascontiguousarray(values)), notes


def _pil_pixels(image: Any, what: str) -> tuple[np.ndarray, list[str]]:
    """An opened PIL image's pixels (H, W, C) in their own bit depth, and what was converted."""
    notes: list[str] = []
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16), notes
    if mode == "I":  # 32-bit integers: 16-bit data in older Pillows, else no defined scale
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{what}: 32-bit integer pixels {values.min()}..{values.max()} have no defined scale; "
                             "convert to 8- or 16-bit")
        return values.astype(np.uint16), notes
    if mode == "F":
        return np.asarray(image, dtype=np.float32), notes
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image), notes
    if mode in ("1", "P", "PA", "La", "RGBa", "RGBX"):
        has_alpha = mode in ("PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB")), notes
    notes.append(f"converted from {mode} to RGB")  # CMYK, YCbCr, LAB, HSV
    return np.asarray(image.convert("RGB")), notes


def _has_geotiff_tags(image: Any) -> bool:
    tags = getattr(image, "tag_v2", None)
    return tags is not None and any(tag in tags for tag in (33550, 33922, 34264))  # scale, tiepoint, matrix


@dataclass(frozen=True)
class LoadedImage:
    """An input image as upscale reads it.

    Attributes:
        pixels: (3, H, W) float32 in [0, 1].
        path: where it was read from.
        dtype: the stored sample type (``"uint8"``, ``"uint16"``, ``"float32"``), which a GeoTIFF
            output keeps.
        notes: the conversions applied (grayscale, alpha, 16-bit, ...).
        geo: for a georeferenced TIFF read with rasterio, ``{"crs": ..., "transform": Affine, "tags": {...}}``.
    """

    pixels: torch.Tensor
    path: Path
    dtype: str = "uint8"
    notes: tuple[str, ...] = ()
    geo: dict[str, Any] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[-1]), int(self.pixels.shape[-2])


def _rasterio():
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def read_image(path: str | Path) -> LoadedImage:
    """Read a PNG / JPEG / TIFF (GeoTIFF with rasterio) as (3, H, W) float in [0, 1], with the
    module's documented conversions; ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    rasterio = _rasterio()
    if path.suffix.lower() in TIFF_SUFFIXES and rasterio is not None:
        return _read_with_rasterio(path, rasterio)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image, notes = opened, []
            # Pillow applies a TIFF's orientation itself; other formats carry it as EXIF.
            if opened.format != "TIFF" and opened.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image, notes = ImageOps.exif_transpose(opened), ["EXIF orientation applied"]
            pixels, more = _pil_pixels(image, str(path))
            notes += more
            if path.suffix.lower() in TIFF_SUFFIXES and _has_geotiff_tags(opened):
                notes.append("GeoTIFF georeferencing not read (rasterio is not installed: pip install "
                             "'orl_gym[geo]')")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not an image Pillow can read ({type(err).__name__}: {err})") from None
    tensor, more = _unit_rgb(pixels, what=str(path))
    return LoadedImage(pixels=tensor, path=path, dtype=str(pixels.dtype), notes=tuple(notes + more))


def _read_with_rasterio(path: Path, rasterio: Any) -> LoadedImage:
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as source:
                bands = source.read()
                interp = source.colorinterp
                palette = source.colormap(1) if interp[0] == ColorInterp.palette else None
                georeferenced = source.crs is not None or not source.transform.is_identity
                geo = {"crs": source.crs, "transform": source.transform, "tags": source.tags()} \
                    if georeferenced else None
    except RasterioIOError as err:
        raise ValueError(f"{path}: not a raster rasterio can read ({err})") from None
    notes = []
    if palette is not None and bands.shape[0] == 1 and bands.dtype == np.uint8:
        lookup = np.zeros((256, 3), dtype=np.uint8)
        for index, rgba in palette.items():
            lookup[index] = rgba[:3]
        bands = np.moveaxis(lookup[bands[0]], -1, 0)
        notes.append("palette expanded to RGB")
    if bands.shape[0] == 4 and interp[3] != ColorInterp.alpha:
        raise ValueError(f"{path}: 4 bands and the 4th is {interp[3].name}, not alpha (e.g. RGB + NIR); upscale "
                         "needs RGB: pick 3 bands first (e.g. gdal_translate -b 1 -b 2 -b 3)")
    tensor, more = _unit_rgb(bands, what=str(path), layout="CHW")
    return LoadedImage(pixels=tensor, path=path, dtype=str(bands.dtype), notes=tuple(notes + more), geo=geo)


def _to_unit_rgb(image: Any) -> tuple[torch.Tensor, list[str]]:
    """A PIL image or a tensor ((H, W), (C, H, W) or (1, C, H, W); uint8, uint16 or float in
    [0, 1]) as (3, H, W) float32 in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        pixels, notes = _pil_pixels(image, "image")
        tensor, more = _unit_rgb(pixels, what="image")
        return tensor, notes + more
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.dtype == torch.uint16:  # numpy() has no uint16 path in older torch
            return _unit_rgb(tensor.to(torch.int32).numpy().astype(np.uint16), what="image", layout="CHW")
        return _unit_rgb(tensor.numpy(), what="image", layout="CHW")
    raise ValueError(f"image: expected a PIL image or a torch tensor (C, H, W), got {type(image).__name__} (a numpy "
                     "HWC array: torch.from_numpy(array).permute(2, 0, 1))")


def upscale(image: Any, tiles: TileSampler | None = None, *, tile: int | str | None = None,
            overlap: int | None = None, seed: int = 0, batch_size: int | None = None, progress: bool = False) -> Any:
    """Super-resolve a PIL image or a tensor; returns the same kind: an 8-bit RGB PIL image, or a
    (3, H * scale, W * scale) float32 tensor in [0, 1].

    ``tiles`` defaults to ``sampler_from_name("ddim20")`` on the bundled model; the other
    arguments are ``upscale_tiles``'s. Inputs are converted as the module docstring says
    (grayscale, alpha, 16-bit)."""
    from PIL import Image

    pixels, _ = _to_unit_rgb(image)
    tiles = tiles or sampler_from_name(DEFAULT_SAMPLER)
    result = upscale_tiles(pixels, tiles, tile=tile, overlap=overlap, seed=seed, batch_size=batch_size,
                           progress=progress)
    if isinstance(image, Image.Image):
        return Image.fromarray(_quantize(result.image, np.uint8).transpose(1, 2, 0))
    return result.image


# --------------------------------------------------------------------------------------------
# Pixels out


def _quantize(image: torch.Tensor, dtype: Any) -> np.ndarray:
    """(3, H, W) in [0, 1] -> integers of ``dtype`` over their full range (float dtypes kept)."""
    dtype = np.dtype(dtype)
    values = image.clamp(0.0, 1.0).numpy()
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    return np.round(values * np.iinfo(dtype).max).astype(dtype)


def _writes_geotiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES and _rasterio() is not None


def check_output_path(path: str | Path) -> Path:
    """The output path, checked before any work: a known image suffix (ValueError otherwise)."""
    path = Path(path)
    if path.suffix.lower() not in PIL_FORMATS:
        raise ValueError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; use one of "
                         f"{', '.join(PIL_FORMATS)}")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the output image's file name")
    return path


def write_image(path: str | Path, image: torch.Tensor, *, like: LoadedImage | None = None, scale: int = 1,
                tags: Mapping[str, str] | None = None) -> list[str]:
    """Write (3, H, W) in [0, 1] atomically; returns notes on what was (not) kept.

    A ``.tif`` with rasterio installed is written by rasterio in ``like``'s dtype (uint8 when
    there is no ``like``), and, when ``like`` is georeferenced, with its CRS and its transform
    scaled by ``1 / scale``. Otherwise Pillow writes 8-bit RGB."""
    from orl_gym.io import atomic_open

    path = check_output_path(path)
    notes = []
    if _writes_geotiff(path):
        from affine import Affine
        from rasterio.io import MemoryFile

        dtype = like.dtype if like is not None else "uint8"
        pixels = _quantize(image, dtype)
        profile = {"driver": "GTiff", "width": pixels.shape[2], "height": pixels.shape[1], "count": 3,
                   "dtype": dtype, "compress": "deflate", "photometric": "RGB"}
        if like is not None and like.geo is not None:
            # The same footprint in pixels ``scale`` times smaller: transform * Affine.scale(1 / scale),
            # spelt out (affine 3 deprecates ``*`` for ``@``, which affine 2 lacks).
            t = like.geo["transform"]
            profile.update(crs=like.geo["crs"], transform=Affine(t.a / scale, t.b / scale, t.c,
                                                                 t.d / scale, t.e / scale, t.f))
        with MemoryFile() as memory:
            with memory.open(**profile) as target:
                target.write(pixels)
                target.update_tags(**{**(like.geo["tags"] if like is not None and like.geo else {}),
                                      **dict(tags or {})})
            with atomic_open(path, "wb") as handle:
                handle.write(memory.read())
        return notes
    from PIL import Image

    if like is not None and like.geo is not None:
        notes.append(f"georeferencing not written: {path.suffix} has none; use a .tif output to keep it")
    if like is not None and like.dtype != "uint8":
        notes.append(f"written as 8-bit RGB ({like.dtype} input)")
    picture = Image.fromarray(_quantize(image, np.uint8).transpose(1, 2, 0))
    with atomic_open(path, "wb") as handle:
        picture.save(handle, format=PIL_FORMATS[path.suffix.lower()],
                     **({"quality": 95} if PIL_FORMATS[path.suffix.lower()] == "JPEG" else {}))
    return notes


@dataclass(frozen=True)
class FileResult:
    """What ``upscale_file`` did: the result, the input as read, and notes on conversions."""

    result: UpscaleResult
    source: LoadedImage
    path: Path
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self, tiles: TileSampler) -> str:
        """One line for the console."""
        (width, height), grid = self.source.size, self.result.grid
        out_h, out_w = self.result.image.shape[-2:]
        layout = f"{len(grid)} tile(s) of {grid.tile_width}x{grid.tile_height} LR px, overlap {grid.overlap}"
        geo = ", georeferencing scaled" if self.source.geo is not None and _writes_geotiff(self.path) else ""
        return (f"{self.source.path} ({width}x{height}) -> {self.path} ({out_w}x{out_h}), x{tiles.scale} by "
                f"{tiles.name} on {tiles.model.source}: {layout}, {self.result.unet_calls} UNet calls, "
                f"{self.result.seconds:.1f} s{geo}")


def upscale_file(source: str | Path | LoadedImage, target: str | Path, tiles: TileSampler, *,
                 tile: int | str | None = None, overlap: int | None = None, seed: int = 0,
                 batch_size: int | None = None, progress: bool = False) -> FileResult:
    """Read ``source``, super-resolve it (``upscale_tiles``), write ``target`` (``write_image``:
    a georeferenced GeoTIFF stays one, its transform scaled)."""
    target = check_output_path(target)
    loaded = source if isinstance(source, LoadedImage) else read_image(source)
    result = upscale_tiles(loaded.pixels, tiles, tile=tile, overlap=overlap, seed=seed, batch_size=batch_size,
                           progress=progress)
    tags = {"ORL_GYM_UPSCALE": f"x{tiles.scale} by orl-gym upscale, {tiles.name}, model {tiles.model.source}, "
                               f"seed {seed}"}
    notes = write_image(target, result.image, like=loaded, scale=tiles.scale, tags=tags)
    return FileResult(result=result, source=loaded, path=target, notes=tuple([*loaded.notes, *notes]))
