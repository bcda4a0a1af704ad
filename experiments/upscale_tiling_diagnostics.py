"""Why tiled ``orl-gym upscale`` differs from the untiled run (docs/upscale.md, "Tiled against untiled").

    ORL_GYM_DATA=../shared/data python experiments/upscale_tiling_diagnostics.py --threads 1

The images and their LR inputs are upscale_example.py's (the first 256 px test-split UC Merced
image of a class, its 64 px bicubic downsampling in 8 bits); ``ddim20`` on ``ldm-sr-tiny-x4``, the
CompVis-format model (the default before issue 24), whose mid-block attention it switches off.
PSNR is against the original; "gap" is tiled minus untiled; "apart" is the PSNR of one result
against the other. Printed as Markdown:

1. seeds: the gap of 32 px tiles / overlap 8 for seeds 0-5 (does it have one sign per image?);
2. noise: how far apart the untiled runs of seeds 0 and 1 are, the tiles with the shared noise
   field and the untiled run, and tiles that each draw their own noise and the untiled run;
3. where: the gap on HR pixels within 8 px of a tile edge, and on the rest;
4. variants (diagnostics, not options): latents averaged over the overlaps after every step
   (MultiDiffusion), the UNet without its mid-block attention, every tile normalised with the
   whole image's GroupNorm statistics (recorded from the untiled run), and both;
5. tile sizes: the gap of 48 px / overlap 16 and 56 px / overlap 24 tiles (4 tiles each) over
   the first test image of each of the 21 classes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from upscale_example import first_test_image, load_pair, parse_with_data, psnr

from orl_gym import env as env_module
from orl_gym import sampler
from orl_gym.io import machine_description, rerun_command
from orl_gym.models import bundled_model_path
from orl_gym.upscale import (
    NoiseField,
    TileGrid,
    blend_window,
    runner,
    sampler_from_name,
    upscale_tiles,
)

IMAGES = ("tenniscourt", "harbor", "denseresidential")  # the table's largest and smallest 32 px gap, the figure's


def _mean_gap(tiled: torch.Tensor, untiled: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> float:
    def masked(image: torch.Tensor) -> float:
        return float(-10 * torch.log10((image - hr).pow(2).mean(0)[mask].mean()))

    return masked(tiled) - masked(untiled)


def _independent_noise(sample_tiles):
    """``runner._sample_tiles`` with every tile drawing its own noise (a field seeded by its place)."""
    def sample(tiles, lr, noise, corners):
        outputs = []
        for row, (top, left) in zip(lr, corners, strict=True):
            own = int(np.random.SeedSequence([noise.seed, top, left]).generate_state(1, np.uint64)[0] >> np.uint64(1))
            outputs.append(sample_tiles(tiles, row[None], NoiseField(own, noise.channels), [(top, left)]))
        return torch.cat([image for image, _ in outputs]), torch.cat([nfe for _, nfe in outputs])

    return sample


@torch.no_grad()
def _multidiffusion(tiles, lr: torch.Tensor, tile: int, overlap: int, seed: int) -> torch.Tensor:
    """Plain DDIM on all tiles at once, the overlapping latents averaged after every step, the HR
    tiles decoded and blended as upscale_tiles blends them."""
    model, schedule, scale = tiles.model, tiles.schedule, tiles.scale
    _, height, width = lr.shape
    grid = TileGrid.build(height, width, tile_height=tile, tile_width=tile, overlap=overlap)
    corners = [(top, left) for _, _, top, left in grid.windows]
    latent = NoiseField(seed, model.latent_channels).windows(0, [(0, 0)], height, width)[0]

    def crops(image: torch.Tensor) -> torch.Tensor:
        return torch.stack([image[:, top:top + tile, left:left + tile] for top, left in corners])

    state = sampler.init_state(model, schedule, crops(lr), sampler.make_generators([seed] * len(corners)),
                               latents=crops(latent))
    for _ in range(len(schedule)):
        state = sampler.step(model, schedule, state, sampler.StepParams(), noise=torch.zeros_like(state.latents)).state
        total, count = torch.zeros_like(latent), torch.zeros(1, height, width)
        for (top, left), part in zip(corners, state.latents, strict=True):
            total[:, top:top + tile, left:left + tile] += part
            count[:, top:top + tile, left:left + tile] += 1
        state = dataclasses.replace(state, latents=crops(total / count))
    images = env_module.output_images(tiles, state.latents, state.lr).float()
    out, weights = torch.zeros(3, height * scale, width * scale), torch.zeros(1, height * scale, width * scale)
    for (r, c, top, left), image in zip(grid.windows, images, strict=True):
        weight = (blend_window(tile * scale, overlap * scale, ramp_start=r > 0, ramp_end=r < len(grid.tops) - 1)[:, None]
                  * blend_window(tile * scale, overlap * scale, ramp_start=c > 0, ramp_end=c < len(grid.lefts) - 1))
        out[:, top * scale:(top + tile) * scale, left * scale:(left + tile) * scale] += image * weight
        weights[:, top * scale:(top + tile) * scale, left * scale:(left + tile) * scale] += weight
    return (out / weights).clamp(0, 1)


class _GroupNormReplay:
    """Patches a model's GroupNorms to record their statistics (the untiled run) and replay them
    in the same call order (the tiles of one batch, which then share the whole image's)."""

    def __init__(self, model) -> None:
        self.mode, self.log, self.index = "off", [], 0
        for module in model.unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.forward = self._forward(module)

    def _forward(self, module):
        def forward(x):
            if self.mode == "off":
                return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
            groups = x.reshape(x.shape[0], module.num_groups, -1)
            if self.mode == "record":
                self.log.append((groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)))
            mean, var = self.log[self.index] if self.mode == "replay" else self.log[-1]
            self.index += self.mode == "replay"
            view = (1, -1) + (1,) * (x.dim() - 2)
            y = ((groups - mean) / (var + module.eps).sqrt()).reshape(x.shape)
            return y * module.weight.view(view) + module.bias.view(view)

        return forward


class _Identity(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _variant(base, *, attention: bool, whole_groupnorm: bool):
    model = copy.deepcopy(base.model)
    if not attention:
        model.unet.mid_block.attentions = torch.nn.ModuleList(_Identity() for _ in model.unet.mid_block.attentions)
    replay = _GroupNormReplay(model) if whole_groupnorm else None
    return sampler_from_name("ddim20", model=model), replay


def main() -> None:
    _, ucmerced = parse_with_data(argparse.ArgumentParser(description=__doc__,
                                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    # Pinned: docs/upscale.md's diagnostics are of this model (its mid-block attention among them).
    tiles = sampler_from_name("ddim20", model=str(bundled_model_path("ldm-sr-tiny-x4")))
    pairs = {category: load_pair(first_test_image(ucmerced, category)) for category in IMAGES}
    print(f"{machine_description()}; `{rerun_command(__file__)}`\n")

    print("1. gap (dB) of 32 px tiles / overlap 8 by seed\n\n| image | seeds 0-5 |\n|---|---|")
    for category, (hr, lr) in pairs.items():
        gaps = [psnr(upscale_tiles(lr, tiles, tile=32, overlap=8, seed=s).image, hr)
                - psnr(upscale_tiles(lr, tiles, tile="whole", seed=s).image, hr) for s in range(6)]
        print(f"| {category} | " + ", ".join(f"{g:+.2f}" for g in gaps) + " |", flush=True)

    print("\n2. dB apart (seed 0)\n\n| image | untiled seed 0 vs 1 | shared-noise tiles vs untiled | "
          "own-noise tiles vs untiled |\n|---|---:|---:|---:|")
    shared = runner._sample_tiles
    for category, (_, lr) in pairs.items():
        untiled = upscale_tiles(lr, tiles, tile="whole", seed=0).image
        other = upscale_tiles(lr, tiles, tile="whole", seed=1).image
        tiled = upscale_tiles(lr, tiles, tile=32, overlap=8, seed=0).image
        runner._sample_tiles = _independent_noise(shared)
        try:
            own = upscale_tiles(lr, tiles, tile=32, overlap=8, seed=0).image
        finally:
            runner._sample_tiles = shared
        print(f"| {category} | {psnr(other, untiled):.1f} | {psnr(tiled, untiled):.1f} | {psnr(own, untiled):.1f} |",
              flush=True)

    print("\n3. gap (dB) of 32 px tiles / overlap 8 by place (seed 0)\n\n| image | within 8 px of a tile edge | "
          "rest | all |\n|---|---:|---:|---:|")
    for category, (hr, lr) in pairs.items():
        untiled = upscale_tiles(lr, tiles, tile="whole", seed=0).image
        result = upscale_tiles(lr, tiles, tile=32, overlap=8, seed=0)
        edge = torch.zeros(hr.shape[-2:], dtype=torch.bool)
        for start in result.grid.tops:  # a square grid: the same lines along both axes
            for line in (start * 4, (start + 32) * 4):
                if 0 < line < hr.shape[-1]:
                    edge[max(0, line - 8):line + 8, :] = True
                    edge[:, max(0, line - 8):line + 8] = True
        cells = [_mean_gap(result.image, untiled, hr, mask) for mask in (edge, ~edge, torch.ones_like(edge))]
        print(f"| {category} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |", flush=True)

    print("\n4. gap (dB) of 32 px tiles / overlap 8 (seed 0) by variant\n\n| image | as shipped | MultiDiffusion | "
          "no mid-block attention | whole-image GroupNorm | both |\n|---|---:|---:|---:|---:|---:|")
    variants = [_variant(tiles, attention=a, whole_groupnorm=g) for a, g in ((False, False), (True, True), (False, True))]
    for category, (hr, lr) in pairs.items():
        untiled = psnr(upscale_tiles(lr, tiles, tile="whole", seed=0).image, hr)
        cells = [psnr(upscale_tiles(lr, tiles, tile=32, overlap=8, seed=0).image, hr) - untiled,
                 psnr(_multidiffusion(tiles, lr, 32, 8, 0), hr) - untiled]
        for variant, replay in variants:
            if replay is not None:
                replay.mode, replay.log = "record", []
            reference = psnr(upscale_tiles(lr, variant, tile="whole", seed=0).image, hr)
            if replay is not None:
                replay.mode, replay.index = "replay", 0
            cells.append(psnr(upscale_tiles(lr, variant, tile=32, overlap=8, seed=0, batch_size=9).image, hr) - reference)
            if replay is not None:
                replay.mode = "off"
        print(f"| {category} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |", flush=True)

    print("\n5. gap (dB) by tile size over the 21 classes (seed 0)")
    sizes = ((32, 8), (48, 16), (56, 24))
    gaps = {size: [] for size in sizes}
    for category in sorted(p.name for p in ucmerced.iterdir() if p.is_dir()):
        hr, lr = load_pair(first_test_image(ucmerced, category))
        untiled = psnr(upscale_tiles(lr, tiles, tile="whole", seed=0).image, hr)
        for size in sizes:
            gaps[size].append(psnr(upscale_tiles(lr, tiles, tile=size[0], overlap=size[1], seed=0).image, hr) - untiled)
    print("\n| tiles / overlap | mean | min | max | within 0.1 dB |\n|---|---:|---:|---:|---:|")
    for (tile, overlap), values in gaps.items():
        values = np.array(values)
        print(f"| {tile} / {overlap} | {values.mean():+.2f} | {values.min():+.2f} | {values.max():+.2f} | "
              f"{int((np.abs(values) <= 0.1).sum())} of {len(values)} |")


if __name__ == "__main__":
    main()
