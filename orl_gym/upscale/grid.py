"""Where the tiles of an image lie, how their outputs blend, and the noise they share.

Along each axis the LR tiles are spread evenly from edge to edge (``TileGrid``), with at least
``overlap`` pixels shared by neighbours. Their HR outputs blend with weights that ramp linearly
across each overlap (``blend_window``). All tiles take their noise from one field over the whole
image's latent (``NoiseField``): where tiles overlap they start from the same z_T and draw the same
fresh noise, so they agree there as far as their different contexts let them, and a tile's
window is exactly what the untiled run sees at those pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["NOISE_BLOCK", "NoiseField", "TileGrid", "blend_window", "tile_starts"]

NOISE_BLOCK = 16
"""Side, in latent pixels, of the blocks a ``NoiseField`` is drawn in."""



def tile_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
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
                   tops=tile_starts(height, tile_height, overlap), lefts=tile_starts(width, tile_width, overlap))

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


@dataclass(frozen=True)
class NoiseField:
    """Standard normal noise over a whole image's latent, of which each tile takes its window.

    Field 0 is the initial latent z_T; field k >= 1 is the fresh noise of the k-th reverse step
    (the eta > 0 term of DDIM; every tile takes its k-th step at the same env step, whatever its
    stride). The field is drawn in ``block`` x ``block`` blocks, block (row, column) of field k
    from a generator seeded by (seed, k, row, column) alone, so a window costs only the blocks it
    touches, any batch of tiles draws the same values, and an untiled run (one window over the
    whole image) sees exactly what the tiles see. Coordinates are latent pixels, which for LDM-SR
    are the LR image's pixels. Values are drawn on the CPU in float32, so they do not depend on
    the device the model runs on.

    Attributes:
        seed: the image's noise seed.
        channels: the latent's channels.
        block: the side of the blocks the field is drawn in.
    """

    seed: int
    channels: int
    block: int = NOISE_BLOCK

    def _block(self, field: int, row: int, column: int) -> torch.Tensor:
        entropy = [int(self.seed), int(field), int(row), int(column)]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(self.channels, self.block, self.block, generator=generator)

    def windows(self, field: int, corners: Sequence[tuple[int, int]], height: int, width: int) -> torch.Tensor:
        """(len(corners), channels, height, width) float32: the windows of ``field`` whose
        top-left latent pixels are ``corners`` ((top, left) pairs, each >= 0)."""
        size, blocks = self.block, {}
        out = torch.empty(len(corners), self.channels, height, width)
        for i, (top, left) in enumerate(corners):
            for row in range(top // size, (top + height - 1) // size + 1):
                for column in range(left // size, (left + width - 1) // size + 1):
                    if (row, column) not in blocks:  # neighbouring tiles share blocks
                        blocks[row, column] = self._block(field, row, column)
                    y0, y1 = max(top, row * size), min(top + height, (row + 1) * size)
                    x0, x1 = max(left, column * size), min(left + width, (column + 1) * size)
                    out[i, :, y0 - top:y1 - top, x0 - left:x1 - left] = \
                        blocks[row, column][:, y0 - row * size:y1 - row * size, x0 - column * size:x1 - column * size]
        return out
