"""Super-resolve an image tile by tile: each batch of tiles runs the reverse diffusion as env
episodes, and the HR tiles are blended into the output (``upscale_tiles``); ``upscale`` takes a
PIL image or a tensor, ``upscale_file`` a file."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from orl_gym import env as env_module
from orl_gym import sampler
from orl_gym.actions import PARAMETERS, decode_action
from orl_gym.precision import ieee_float32
from orl_gym.upscale.grid import NoiseField, TileGrid, _reflect_pad, blend_window
from orl_gym.upscale.images import (
    MIN_SIDE,
    LoadedImage,
    _quantize,
    _to_unit_rgb,
    _writes_geotiff,
    check_output_path,
    read_image,
    write_image,
)
from orl_gym.upscale.samplers import DEFAULT_SAMPLER, TileSampler, sampler_from_name

__all__ = ["WHOLE", "FileResult", "UpscaleResult", "upscale", "upscale_file", "upscale_tiles"]

DEFAULT_SAMPLER_TILE = 64
WHOLE = "whole"
"""``tile=WHOLE``: the whole image as one tile (a fixed sampler's untiled run)."""
DEFAULT_SAMPLER_OVERLAP = 8
DEFAULT_POLICY_OVERLAP = 4
TILE_BATCH_LR_PIXELS = 64 * 16 * 16
"""Default LR pixels per batch of tiles: 64 tiles of a 16x16 policy, 4 of a 64x64 sampler tile."""



@dataclass(frozen=True)
class _TileState:
    """The part of ``env.EnvState`` that ``env.observe`` and ``env.final_latents`` read."""

    sampler: sampler.SamplerState
    last_action: torch.Tensor  # (B, 4) last parameters, normalized to [0, 1]


@ieee_float32
@torch.no_grad()
def _sample_tiles(tiles: TileSampler, lr: torch.Tensor, noise: NoiseField,
                  corners: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the reverse diffusion on a batch of LR tiles (B, 3, h, w) as the env runs an episode:
    each step's parameters from the policy (or the fixed action), truncation by the step budget
    (the image is then the last x0 prediction), the decode and ``output_fix`` of the env.
    ``corners`` are the tiles' (top, left) on the image: all their noise is their windows of
    ``noise``. Returns the HR tiles (B, 3, H, W) float32 and the UNet calls of each tile (B,)."""
    model, schedule = tiles.model, tiles.schedule
    (batch, _, height, width), device = lr.shape, model.device
    z_t = noise.windows(0, corners, height, width) * model.scheduler.init_noise_sigma
    # Every draw comes from the field (z_T here, fresh noise per step below): the generators that
    # init_state asks for are never drawn from.
    generators = sampler.make_generators([noise.seed] * batch, device)
    state = sampler.init_state(model, schedule, lr.to(device), generators, latents=z_t)
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
    for step in range(1, tiles.step_budget + 1):
        if bool(state.done(schedule).all()):
            break
        if fixed is None:
            obs = env_module.observe(tiles, _TileState(state, last_action))
            decoded = decode_action(tiles.policy(obs, episode_start), tiles.actions, device=device)
            if decoded.clipped.shape[0] != batch:
                raise ValueError(f"policy: {decoded.clipped.shape[0]} actions for {batch} tiles")
        else:
            decoded = fixed
        if bool((decoded.params.eta > 0).any()):
            fresh = noise.windows(step, corners, height, width)
        else:  # eta 0 (plain DDIM) multiplies the fresh noise by 0: none is drawn
            fresh = torch.zeros(batch, noise.channels, height, width)
        state = sampler.step(model, schedule, state, decoded.params, noise=fresh).state
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
        seed: the image's noise seed: the ``NoiseField`` all tiles take their windows of.
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
    noise, windows, unet_calls = NoiseField(int(seed), tiles.model.latent_channels), grid.windows, 0
    with tqdm(total=len(grid), desc="upscale", unit="tile", disable=not progress, leave=False) as bar:
        for first in range(0, len(windows), int(batch_size)):
            part = windows[first:first + int(batch_size)]
            batch = torch.stack([padded[:, top:top + tile_height, left:left + tile_width] for _, _, top, left in part])
            hr, nfe = _sample_tiles(tiles, batch, noise, [(top, left) for _, _, top, left in part])
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
