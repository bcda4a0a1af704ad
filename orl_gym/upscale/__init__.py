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
  smaller than one tile (or, with ``tile="whole"``, not a multiple of the UNet's downsampling) is
  reflect-padded at its bottom / right to the tile and the output cropped back. Images under
  ``MIN_SIDE`` pixels on a side are refused.
* Blending happens in HR space: each tile's weight is 1 inside and ramps linearly to near 0 over
  the ``overlap * scale`` HR pixels next to each neighbour (never at the image border); the
  weighted sum is divided by the sum of weights. Where overlaps equal ``overlap`` the two ramps
  sum to exactly 1. A tile alone has weight 1 everywhere, so an image that fits one tile equals
  the untiled run exactly.

Noise: the tiles share one noise field over the whole image's latent (``NoiseField``, drawn from
``seed`` block by block): each tile starts from its window of one z_T and, where a step has
eta > 0, adds its window of that step's fresh noise. Overlapping tiles therefore start from the
same values, and an image that fits one tile sees exactly the untiled run's noise. The output is
reproducible from ``seed`` (with the same tile and overlap), and does not depend on which tiles
share a batch.

The modules, one job each: ``samplers`` (``TileSampler``: a policy or a fixed sampler, with its
model and env settings), ``grid`` (the tile grid, the blending weights, the noise field),
``images`` (files, PIL images and tensors in and out, GeoTIFF, the input conversions) and
``runner`` (``upscale_tiles``, ``upscale``, ``upscale_file``). Their public names are imported
here: ``from orl_gym.upscale import upscale, sampler_from_name``.
"""

from orl_gym.upscale.grid import NOISE_BLOCK, NoiseField, TileGrid, blend_window
from orl_gym.upscale.images import MIN_SIDE, LoadedImage, check_output_path, read_image, write_image
from orl_gym.upscale.runner import (
    WHOLE,
    FileResult,
    UpscaleResult,
    upscale,
    upscale_file,
    upscale_tiles,
)
from orl_gym.upscale.samplers import (
    DEFAULT_SAMPLER,
    Policy,
    TileSampler,
    sampler_from_name,
    sampler_from_policy,
    sampler_from_run,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "MIN_SIDE",
    "NOISE_BLOCK",
    "WHOLE",
    "FileResult",
    "LoadedImage",
    "NoiseField",
    "Policy",
    "TileGrid",
    "TileSampler",
    "UpscaleResult",
    "blend_window",
    "check_output_path",
    "read_image",
    "sampler_from_name",
    "sampler_from_policy",
    "sampler_from_run",
    "upscale",
    "upscale_file",
    "upscale_tiles",
    "write_image",
]
