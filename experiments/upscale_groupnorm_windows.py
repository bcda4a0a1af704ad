"""What tiled ``orl-gym upscale`` would need to equal the untiled run: the whole image's GroupNorm
statistics (docs/upscale.md, "Tiled against untiled").

    ORL_GYM_DATA=../shared/data python experiments/upscale_groupnorm_windows.py --threads 1
    ORL_GYM_DATA=../shared/data python experiments/upscale_groupnorm_windows.py --threads 1 \\
        --model orl_gym/assets/ldm-sr-tiny-x4-residual

upscale_example.py's images (the first 256 px test-split UC Merced image of each class, x4 from
its 64 px bicubic downsampling in 8 bits), a fixed sampler (``--sampler``, default ``ddim20``), seed 0; PSNR against the
original; "gap" is tiled minus untiled, "apart" the PSNR of one result against the other. Three
ways of tiling, all on 32 px windows placed as upscale's tiles with ``--overlap``:

1. **tiles** (what upscale does): each tile its own reverse diffusion from its window of the
   shared noise field, the HR tiles blended;
2. **windows, own statistics**: one latent for the whole image, stepped together; at every step
   the UNet runs on its windows and each window's centre (the pixels nearer to it than to a
   neighbour) is kept; the final latent is decoded the same way. Every window's GroupNorms use
   the window's own statistics, as a tile's do;
3. **windows, whole-image statistics**: the same, with every GroupNorm of the UNet and of the
   decoder normalising by the mean and variance over all windows' centres, i.e. the whole
   image's. All windows of the image are then one batch: the memory of the untiled run, which
   tiling exists to avoid, so this is a diagnostic, not an option.

What is left in (3) is the convolutions' reach beyond a window and any self-attention (the
bundled model has a mid-block attention in its UNet and VQ; the residual model has none).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from upscale_example import first_test_image, load_pair, parse_with_data, psnr

from orl_gym import sampler
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.upscale import NoiseField, sampler_from_name, upscale_tiles
from orl_gym.upscale.grid import tile_starts

TILE = 32
RESULTS = Path(__file__).resolve().parent / "results"


def centres(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(window start, centre start, centre end) along one axis: upscale's tile positions, each
    window keeping the pixels up to the middle of its overlaps with its neighbours."""
    starts = tile_starts(length, tile, overlap)
    cuts = [0] + [(starts[i] + tile + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


class WholeImageGroupNorm:
    """Patches every GroupNorm of a module: while ``weights`` (windows, 1, tile, tile) is set, a
    batch of windows is normalised by the statistics over all windows' weighted pixels (at each
    layer's resolution), instead of each window's own."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.weights: torch.Tensor | None = None
        for norm in module.modules():
            if isinstance(norm, torch.nn.GroupNorm):
                norm.forward = self._forward(norm)

    def _forward(self, norm: torch.nn.GroupNorm):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.weights is None:
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            shape = x.shape
            if x.dim() == 3:  # an attention block's (B, C, H * W) of a square window
                side = round(shape[-1] ** 0.5)
                x = x.reshape(*shape[:2], side, side)
            groups = x.reshape(x.shape[0], norm.num_groups, -1, *x.shape[-2:])
            weight = F.adaptive_avg_pool2d(self.weights, x.shape[-2:])[:, None]  # (n, 1, 1, h, w)
            total = weight.sum() * groups.shape[2]
            mean = (groups * weight).sum(dim=(0, 2, 3, 4), keepdim=True) / total
            var = ((groups - mean).square() * weight).sum(dim=(0, 2, 3, 4), keepdim=True) / total
            y = ((groups - mean) / (var + norm.eps).sqrt()).reshape(x.shape)
            return (y * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)).reshape(shape)

        return forward


def _windows(height: int, width: int, overlap: int) -> tuple[list, torch.Tensor]:
    windows = [(r, c) for r in centres(height, TILE, overlap) for c in centres(width, TILE, overlap)]
    weights = torch.zeros(len(windows), 1, TILE, TILE)
    for k, ((top, r0, r1), (left, c0, c1)) in enumerate(windows):
        weights[k, :, r0 - top:r1 - top, c0 - left:c1 - left] = 1.0
    return windows, weights


def _stitch(outputs: torch.Tensor, windows: list, height: int, width: int, scale: int) -> torch.Tensor:
    out = torch.empty(1, outputs.shape[1], height * scale, width * scale)
    for part, ((top, r0, r1), (left, c0, c1)) in zip(outputs, windows, strict=True):
        out[0, :, r0 * scale:r1 * scale, c0 * scale:c1 * scale] = part[:, (r0 - top) * scale:(r1 - top) * scale,
                                                                      (c0 - left) * scale:(c1 - left) * scale]
    return out


@dataclasses.dataclass(frozen=True)
class UNetOutput:
    """What ``sampler.step`` reads of a UNet's output (diffusers' ``UNet2DOutput.sample``)."""

    sample: torch.Tensor


class WindowedUNet(torch.nn.Module):
    """The UNet on the windows of a (1, C, H, W) input, each window's centre kept."""

    def __init__(self, unet: torch.nn.Module, overlap: int, norms: WholeImageGroupNorm | None) -> None:
        super().__init__()
        self.unet, self.overlap, self.norms, self.config = unet, overlap, norms, unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        windows, weights = _windows(x.shape[-2], x.shape[-1], self.overlap)
        batch = torch.cat([x[:, :, top:top + TILE, left:left + TILE] for (top, _, _), (left, _, _) in windows])
        if self.norms is not None:
            self.norms.weights = weights
        try:
            outputs = self.unet(batch, t.expand(len(windows))).sample
        finally:
            if self.norms is not None:
                self.norms.weights = None
        return UNetOutput(_stitch(outputs, windows, *x.shape[-2:], 1))


@torch.no_grad()
def windowed_sample(tiles, lr: torch.Tensor, overlap: int, *, shared: bool, seed: int = 0) -> torch.Tensor:
    """Plain DDIM on the whole image's latent with the UNet and the decoder run on windows."""
    model, schedule = tiles.model, tiles.schedule
    unet, vqvae = copy.deepcopy(model.unet), copy.deepcopy(model.vqvae)
    unet_norms = WholeImageGroupNorm(unet) if shared else None
    vq_norms = WholeImageGroupNorm(vqvae) if shared else None
    windowed = dataclasses.replace(model, unet=WindowedUNet(unet, overlap, unet_norms))
    _, height, width = lr.shape
    z = NoiseField(seed, model.latent_channels).windows(0, [(0, 0)], height, width) * model.scheduler.init_noise_sigma
    state = sampler.init_state(windowed, schedule, lr[None], sampler.make_generators([seed]), latents=z)
    while not bool(state.done(schedule).all()):
        state = sampler.step(windowed, schedule, state, sampler.StepParams(),
                             noise=torch.zeros_like(state.latents)).state
    windows, weights = _windows(height, width, overlap)
    latents = torch.cat([state.latents[:, :, top:top + TILE, left:left + TILE] for (top, _, _), (left, _, _) in windows])
    if vq_norms is not None:
        vq_norms.weights = weights
    decoded = sampler.vq_decode(dataclasses.replace(model, vqvae=vqvae), latents)
    residual_or_image = _stitch(decoded, windows, height, width, model.scale_factor)
    return model.latent_target.image(residual_or_image, lr[None])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--sampler", default="ddim20",
                        help="the fixed sampler: ddim<N>, or 'default' (the model's default sampler)")
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--out", default=None, help="Markdown report (default: experiments/results/"
                        "upscale_groupnorm_windows_<model folder>[_<sampler>].md; ddim20 unnamed)")
    args, ucmerced = parse_with_data(parser)
    tiles = sampler_from_name(args.sampler, model=args.model)
    name = Path(tiles.model.source).name  # the folder's name, also for "bundled"
    suffix = "" if args.sampler == "ddim20" else f"_{args.sampler}"
    out = args.out or RESULTS / f"upscale_groupnorm_windows_{name}{suffix}.md"
    ways = ("tiles", "windows, own statistics", "windows, whole-image statistics")
    gaps: dict[str, list[float]] = {way: [] for way in ways}
    apart: dict[str, list[float]] = {way: [] for way in ways}
    rows = []
    for category in sorted(p.name for p in ucmerced.iterdir() if p.is_dir()):
        path = first_test_image(ucmerced, category)
        hr, lr = load_pair(path)
        untiled = upscale_tiles(lr, tiles, tile="whole", seed=0).image
        results = {"tiles": upscale_tiles(lr, tiles, tile=TILE, overlap=args.overlap, seed=0).image,
                   ways[1]: windowed_sample(tiles, lr, args.overlap, shared=False),
                   ways[2]: windowed_sample(tiles, lr, args.overlap, shared=True)}
        cells = []
        for way, image in results.items():
            gaps[way].append(psnr(image, hr) - psnr(untiled, hr))
            apart[way].append(psnr(image, untiled))
            cells.append(f"{gaps[way][-1]:+.3f} / {apart[way][-1]:.1f}")
        rows.append(f"| {path.parent.name}/{path.name} | {psnr(untiled, hr):.2f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    lines = ["# Tiled against untiled: the whole image's GroupNorm statistics", "",
             f"Command: `{rerun_command(__file__)}`  ", f"Machine: {machine_description()}  ",
             f"Model: `{args.model}`, {tiles.name}, seed 0; {TILE} px windows, overlap {args.overlap}; cells: gap (dB, tiled "
             "minus untiled PSNR against the original) / dB apart from the untiled result.", "",
             "| image | untiled PSNR | " + " | ".join(ways) + " |", "|---|---:|" + "---:|" * len(ways), *rows, "",
             "| way | mean gap | min | max | within 0.1 dB | mean dB apart |", "|---|---:|---:|---:|---:|---:|"]
    for way in ways:
        g = np.array(gaps[way])
        lines.append(f"| {way} | {g.mean():+.3f} | {g.min():+.3f} | {g.max():+.3f} | "
                     f"{int((np.abs(g) <= 0.1).sum())} of {len(g)} | {np.mean(apart[way]):.1f} |")
    write_report(out, lines + [""])


if __name__ == "__main__":
    main()
