"""Where the LDM's colour cast comes from: the sampled latent's coarse content, its fine content, or the decode.

    ORL_GYM_DATA=../shared/data python experiments/diagnose_colour_offset.py --max-images 32 --threads 2

The bundled model's samples are off in mean colour by 4-5 levels (8-bit) where its VQ
reconstructions are not (the model card's "colour offset" column). This script takes the
pipeline's own DDIM sample (``LDMSuperResolutionPipeline``, its latents captured as it decodes
them) and decodes variants of it, each swapping one part of the sample for the ground truth's
latent (the VQ encoder's output for the HR image):

- the sample with the true latent's per-image mean, or its 2x2 / 4x4 block means (the latent's
  low frequencies) in place of the sample's;
- the true latent with the sample's 4x4 block means (the reverse swap);
- the sample decoded without quantization.

If a swap of the low frequencies removes the cast, the UNet's coarse prediction is what is off
(a loss on it could fix it); if not, the cast comes from how the decoder renders the sample's fine
structure.

Then, whether the cast builds up along the sampling trajectory (exposure bias: the UNet fed its
own imperfect latents) or is already in single predictions: the true latent is noised to each
``--from-t`` (on the sampler's grid, seeded noise, as in training) and

- the UNet's one-step z_0 estimate there (the scheduler's ``pred_original_sample``) is decoded;
- the same DDIM sampler continues from there to t = 0, and its result is decoded.

If the one-step estimates already carry the cast, it is in the UNet's predictions on
training-like inputs, not in the trajectory. Writes a Markdown table per dataset (PSNR, colour
offset, signed offset per channel).
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from tqdm import tqdm

from orl_gym.data import DataConfig, PairDataset
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.models import load_ldmsr
from orl_gym.rewards import psnr
from orl_gym.sampler import vq_decode

REPO = Path(__file__).resolve().parents[1]


ROWS = {
    "bicubic": "bicubic x4 (reference)",
    "vq": "true latent (VQ reconstruction)",
    "sample": "sample, as the pipeline decodes it",
    "sample_continuous": "sample, decoded without quantization",
    "sample_true_mean": "sample with the true latent's per-image mean",
    "sample_true_low2": "sample with the true latent's 2x2 block means",
    "sample_true_low4": "sample with the true latent's 4x4 block means",
    "true_sample_low4": "true latent with the sample's 4x4 block means",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="bundled", help="'bundled', a checkpoint folder or a hub id")
    p.add_argument("--datasets", default="ucmerced,aid150", help="comma list of datasets under $ORL_GYM_DATA")
    p.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    p.add_argument("--max-images", type=int, default=32, help="images per dataset, evenly spread (0: all)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps of the pipeline's sample")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta of the pipeline's sample")
    p.add_argument("--from-t", default="20,100,300",
                   help="comma list of timesteps to noise the true latent to (one-step estimate and "
                        "DDIM from there); each is moved down to the sampler's grid ('': none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "diagnose_colour_offset.md")
    return p.parse_args(argv)


@contextlib.contextmanager
def captured_decode_input(vqvae: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the latents the pipeline hands to ``vqvae.decode`` (it does not return them)."""
    seen: list[torch.Tensor] = []
    original = vqvae.decode

    def recording(latents, *args, **kwargs):
        seen.append(latents.detach().clone())
        return original(latents, *args, **kwargs)

    vqvae.decode = recording
    try:
        yield seen
    finally:
        del vqvae.decode  # the instance attribute; the class's method shows again


def block_means(latents: torch.Tensor, size: int) -> torch.Tensor:
    """Each ``size`` x ``size`` block replaced by its mean (the latent's low frequencies)."""
    return F.interpolate(F.avg_pool2d(latents, size), scale_factor=size, mode="nearest")


def variants(sample: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """The latents to decode: the sample with one part of it taken from the true latent."""
    return {
        "vq": true,
        "sample": sample,
        "sample_true_mean": sample - sample.mean(dim=(2, 3), keepdim=True) + true.mean(dim=(2, 3), keepdim=True),
        "sample_true_low2": sample - block_means(sample, 2) + block_means(true, 2),
        "sample_true_low4": sample - block_means(sample, 4) + block_means(true, 4),
        "true_sample_low4": true - block_means(true, 4) + block_means(sample, 4),
    }


def grid_steps_from(scheduler: DDIMScheduler, t_start: int) -> list[int]:
    """The sampler's timesteps from the largest one <= ``t_start`` down to its last."""
    grid = [int(t) for t in scheduler.timesteps if int(t) <= t_start]
    if not grid:
        raise SystemExit(f"--from-t {t_start}: below the sampler's lowest timestep {int(scheduler.timesteps[-1])}")
    return grid


def from_noised_truth(model, scheduler: DDIMScheduler, true: torch.Tensor, lr: torch.Tensor,
                      t_start: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-step z_0 estimate, DDIM result) from ``true`` noised to the largest grid timestep
    <= ``t_start``; the UNet is fed as the pipeline feeds it, the scheduler's DDIM steps (eta 0)."""
    grid = grid_steps_from(scheduler, t_start)
    noise = torch.randn(true.shape, generator=generator)
    latents = scheduler.add_noise(true, noise, torch.tensor([grid[0]]))
    one_step = None
    for t in grid:
        output = model.unet(torch.cat([latents, lr * 2 - 1], dim=1), t).sample
        out = scheduler.step(output, t, latents, eta=0.0)
        one_step = out.pred_original_sample if one_step is None else one_step
        latents = out.prev_sample
    return one_step, latents


def from_t_values(args: argparse.Namespace) -> list[int]:
    return [int(t) for t in args.from_t.split(",") if t.strip()]


def row_labels(args: argparse.Namespace) -> dict[str, str]:
    labels = dict(ROWS)
    for t in from_t_values(args):
        labels[f"one_step_{t}"] = f"one-step z0 estimate from the true latent noised to t = {t}"
        labels[f"ddim_from_{t}"] = f"DDIM (eta 0) from the true latent noised to t = {t}"
    return labels


def measure(model, pipe, name: str, args: argparse.Namespace) -> dict:
    ds = PairDataset(DataConfig(source=name, split=args.split, hr_size=64, scale=4, crop="full",
                                full_multiple=model.hr_multiple))
    indices = ds.spread_indices(args.max_images)
    groups = ds.indices_by_shape(indices)
    scores: dict[str, dict[str, list]] = {row: defaultdict(list) for row in row_labels(args)}
    scheduler = sampler_grid(pipe, args.steps)
    largest_pipeline_difference = 0.0
    with torch.no_grad():
        for group in tqdm(groups.values(), desc=name, unit="shape"):
            for chunk in group.split(args.batch_size):
                batch = ds.pairs(chunk)
                hr, lr = batch.hr, batch.lr
                generator = torch.Generator().manual_seed(args.seed)
                torch.manual_seed(args.seed)  # the pipeline draws eta > 0 noise from the global RNG
                with captured_decode_input(model.vqvae) as seen:
                    images = pipe(lr * 2 - 1, num_inference_steps=args.steps, eta=args.eta,
                                  generator=generator, output_type="pt").images
                sample = seen[-1]
                true = model.vqvae.encode(hr * 2 - 1).latents
                outputs = {"bicubic": F.interpolate(lr, size=hr.shape[-2:], mode="bicubic",
                                                    align_corners=False).clamp(0, 1)}
                for row, latents in variants(sample, true).items():
                    outputs[row] = (vq_decode(model, latents).clamp(-1, 1) + 1) / 2
                outputs["sample_continuous"] = (
                    model.vqvae.decode(sample, force_not_quantize=True).sample.clamp(-1, 1) + 1) / 2
                for t in from_t_values(args):
                    one_step, ddim = from_noised_truth(model, scheduler, true, lr, t,
                                                       torch.Generator().manual_seed(args.seed + t))
                    outputs[f"one_step_{t}"] = (vq_decode(model, one_step).clamp(-1, 1) + 1) / 2
                    outputs[f"ddim_from_{t}"] = (vq_decode(model, ddim).clamp(-1, 1) + 1) / 2
                # The captured latents decode to exactly what the pipeline returned.
                largest_pipeline_difference = max(
                    largest_pipeline_difference, float((outputs["sample"] - images.float()).abs().max()))
                for row, image in outputs.items():
                    signed = ((image - hr).mean(dim=(2, 3)) * 255)
                    scores[row]["psnr"] += psnr(image, hr, check_values=False).tolist()
                    scores[row]["signed"] += signed.tolist()
    if largest_pipeline_difference > 1e-4:
        raise RuntimeError(f"{name}: the captured latents decode to images {largest_pipeline_difference:.2e} "
                           "away from the pipeline's output; the capture does not see what the pipeline decodes")
    return {"images": len(indices), "shapes": sorted(groups), "scores": scores,
            "pipeline_difference": largest_pipeline_difference}


def report(results: dict[str, dict], args: argparse.Namespace, argv: list[str] | None = None) -> list[str]:
    lines = [
        "# Where the LDM's colour cast comes from",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description()}",
        "",
        f"Model `{args.model}`; `{args.split}` split, whole images; the pipeline's sampler, DDIM "
        f"{args.steps} steps, eta {args.eta:g}, seed {args.seed}. True latent: the VQ encoder's output "
        "for the HR image; noised to t with seeded noise as in training (the last rows: one-step "
        "estimate = the scheduler's pred_original_sample at t; DDIM from t = the same sampler "
        "continued over its grid from t to 0). "
        "Block means: each latent block replaced by its mean (nearest-upsampled), "
        "i.e. the latent's low frequencies. Every latent is decoded as the pipeline decodes "
        "(quantized) unless the row says otherwise. Colour offset: |mean(SR - HR)| per channel, "
        "averaged over RGB, in 8-bit levels; signed: mean(SR - HR) per channel, averaged over images.",
        "",
    ]
    for name, result in results.items():
        lines += [f"**{name}** ({result['images']} images, HR {', '.join(f'{h}x{w}' for h, w in result['shapes'])}; "
                  f"captured sample vs pipeline output: max difference {result['pipeline_difference']:.1e})", "",
                  "| decoded | PSNR (dB) | colour offset | signed offset R / G / B |", "|---|---:|---:|---|"]
        for row, label in row_labels(args).items():
            s = result["scores"][row]
            per_image = torch.tensor(s["signed"])  # (images, RGB) mean(SR - HR) in levels
            lines.append(f"| {label} | {sum(s['psnr']) / len(s['psnr']):.2f} | "
                         f"{per_image.abs().mean():.2f} | "
                         f"{' / '.join(f'{v:+.2f}' for v in per_image.mean(0).tolist())} |")
        lines.append("")
    return lines


def sampler_grid(pipe, steps: int) -> DDIMScheduler:
    """A copy of the pipeline's scheduler set to ``steps`` (the pipeline's own is left alone)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_ldmsr(args.model)
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # Each --from-t moved down to the sampler's grid here, so rows are labelled with the
    # timestep they start from, not the one asked for.
    grid = sampler_grid(pipe, args.steps)
    args.from_t = ",".join(dict.fromkeys(str(grid_steps_from(grid, t)[0]) for t in from_t_values(args)))
    results = {name.strip(): measure(model, pipe, name.strip(), args)
               for name in args.datasets.split(",") if name.strip()}
    write_report(args.out, report(results, args, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
