"""PSNR against UNet calls for an LR-anchored (residual) model: where does sampling beat bicubic?

A residual model (``orl_gym.models.LatentTarget``, kind "residual") samples the detail over
bicubic(LR); its zero residual *is* bicubic. A diffusion sampler draws a sample of that detail from
the model's posterior, and a sample is further from the ground truth than the posterior mean
(for a well-calibrated model, twice the mean's squared error where the detail is unpredictable):
the perception-distortion trade-off (Blau & Michaeli 2018). So the number of steps and where the
chain starts decide whether PSNR lands above or below bicubic. This script measures it on whole
test images (the crops of ``eval_base_model.py``), with the same per-image noise for every row:

* ``DDIM N``: the diffusers DDIM schedule of N steps, eta 0, from pure noise (N UNet calls; N = 20
  is the env's No RL);
* ``anchored start k``: the 20-step schedule entered at its k-th timestep t_k from the encoded
  zero residual (bicubic) noised to t_k, z = sqrt(abar_t) E(0) + sqrt(1 - abar_t) eps, as SDEdit
  / img2img ``strength`` do (20 - k UNet calls): ResShift's "start near the LR image";
* the same start from pure noise scaled to t_k (no anchor), to separate the two effects;
* with ``--residual-weights``, ``DDIM N, residual x w``: the same samples with their residual
  over the anchor shrunk, anchor + w (x - anchor), between the sample (w = 1) and the anchor
  (w = 0) for the price of no UNet call: a sample is the posterior mean plus an unpredictable
  part, and shrinking both trades LPIPS for PSNR;
* with ``--anchor-row``, the anchor alone (the zero residual: bicubic, or the anchor network of
  a ``--latent-anchor network`` model).

Rows give PSNR minus bicubic's (paired 95% t interval over images) and LPIPS (alex). Results go
to a Markdown file.

    ORL_GYM_DATA=../shared/data python experiments/residual_sampling_tradeoff.py \
        --model orl_gym/assets/ldm-sr-tiny-x4-residual
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from orl_gym import sampler
from orl_gym.configs import parse_key_values
from orl_gym.data import DataConfig, PairDataset, upsample_bicubic
from orl_gym.evaluation import paired_interval
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.models import load_ldmsr
from orl_gym.rewards import LPIPS, psnr

REPO = Path(__file__).resolve().parents[1]
DDIM_STEPS = (2, 5, 10, 20)
START_INDICES = (4, 8, 12, 16)  # entries of the 20-step schedule to enter at


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="orl_gym/assets/ldm-sr-tiny-x4-residual",
                   help="a residual model folder (latent_target.json kind 'residual')")
    p.add_argument("--datasets", default="ucmerced,aid150", help="comma list of datasets under $ORL_GYM_DATA")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--max-images", type=int, default=32, help="images per dataset, evenly spread (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddim-steps", default=",".join(map(str, DDIM_STEPS)),
                   help="comma list of DDIM step counts (from pure noise, eta 0)")
    p.add_argument("--start-indices", default=",".join(map(str, START_INDICES)),
                   help="comma list of 20-step schedule entries to enter at ('' for none)")
    p.add_argument("--residual-weights", default="",
                   help="comma list of weights w < 1: rows anchor + w (DDIM N - anchor) for every DDIM N")
    p.add_argument("--scheduler-config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="sampler settings over the model's scheduler config (LDMSR.with_scheduler_config), "
                        "e.g. timestep_spacing=trailing: DDIM N then starts at t = 999, not 1000 - 1000 / N")
    p.add_argument("--anchor-row", action="store_true", help="a row for the anchor alone (0 UNet calls)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "residual_sampling_tradeoff.md")
    return p.parse_args(argv)


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def run_chain(model, schedule: sampler.Schedule, lr: torch.Tensor, seeds: list[int], *, start_index: int = 0,
              anchored: bool = False) -> torch.Tensor:
    """Images from the chain entered at ``schedule.timesteps[start_index]``: from pure noise at the
    top (``start_index`` 0), else from eps (or the encoded zero residual plus eps, ``anchored``)
    at that timestep's noise level."""
    generators = sampler.make_generators(seeds)
    kwargs = {}
    if start_index:
        t = int(schedule.timesteps[start_index])
        alpha = schedule.alphas_cumprod[t]
        shape = (len(seeds), model.latent_channels, *lr.shape[-2:])
        eps = torch.stack([torch.randn(shape[1:], generator=g, device=model.device) for g in generators])
        latents = (1 - alpha).sqrt() * eps
        if anchored:
            zero_residual = torch.zeros(len(seeds), 3, lr.shape[-2] * model.scale_factor,
                                        lr.shape[-1] * model.scale_factor, device=model.device)
            latents = latents + alpha.sqrt() * model.vqvae.encode(zero_residual).latents
        kwargs = {"start_timesteps": torch.full((len(seeds),), t), "latents": latents}
    state = sampler.init_state(model, schedule, lr, generators, **kwargs)
    while not bool(state.done(schedule).all()):
        state = sampler.step(model, schedule, state, sampler.StepParams()).state
    return sampler.decode(model, state, lr=lr).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ddim_steps, start_indices = _int_list(args.ddim_steps), _int_list(args.start_indices)
    weights = [float(w) for w in args.residual_weights.split(",") if w.strip()]
    if any(not 0 <= w < 1 for w in weights):
        raise SystemExit(f"--residual-weights: expected weights in [0, 1), got {weights}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_ldmsr(args.model)
    try:
        overrides = parse_key_values(args.scheduler_config, "--scheduler-config", "timestep_spacing=trailing")
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if overrides:
        model = model.with_scheduler_config(**overrides)
    if not model.latent_target.is_residual:
        raise SystemExit(f"--model: {args.model} is an image-format model; this study is about residual "
                         "models (train one with experiments/train_ldm.py --latent-target residual)")
    lpips = LPIPS(net="alex", device="cpu")
    schedules = {n: sampler.Schedule.from_model(model, n) for n in {*ddim_steps, 20}}
    rows = {f"DDIM {n}": (n, 0, False) for n in ddim_steps}
    for k in start_indices:
        rows[f"anchored start k={k} (t={int(schedules[20].timesteps[k])})"] = (20, k, True)
        rows[f"noise start k={k}, no anchor"] = (20, k, False)
    # Rows computed from another row's images (no UNet call of their own): name -> (source, w, calls).
    derived = {f"DDIM {n}, residual x {w:g}": (f"DDIM {n}", w, n) for n in ddim_steps for w in weights}
    anchor_name = f"{model.latent_target.anchor} anchor alone (zero residual)"
    lines = ["# Residual model: PSNR against UNet calls (the perception-distortion trade-off)", "",
             f"Command: `{rerun_command(__file__, argv)}`  ",
             f"Machine: {machine_description()}  ",
             f"Model: `{args.model}`"
             + (f" (scheduler {', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else "")
             + f"; {args.split} split, whole images, seed {args.seed}; "
             "PSNR over RGB; LPIPS alex. Every row sees the same images and each image the same noise.", ""]
    with torch.no_grad():
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            ds = PairDataset(DataConfig(source=name, split=args.split, hr_size=64, scale=4, crop="full",
                                        full_multiple=model.hr_multiple))
            indices = ds.spread_indices(args.max_images)
            scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for group in ds.indices_by_shape(indices).values():
                for chunk in group.split(args.batch_size):
                    batch = ds.pairs(chunk)
                    seeds = [args.seed * 1_000_003 + int(i) for i in chunk]
                    outputs = {"bicubic": upsample_bicubic(batch.lr, batch.hr.shape[-2:]).clamp(0, 1)}
                    anchor = model.latent_target.anchor_image(batch.lr, batch.hr.shape[-2:]).clamp(0, 1)
                    if args.anchor_row:
                        outputs[anchor_name] = anchor
                    for row, (steps, start, anchored) in rows.items():
                        outputs[row] = run_chain(model, schedules[steps], batch.lr, seeds,
                                                 start_index=start, anchored=anchored)
                    for row, (source, w, _) in derived.items():
                        outputs[row] = (anchor + w * (outputs[source] - anchor)).clamp(0, 1)
                    for row, image in outputs.items():
                        scores[row]["psnr"] += psnr(image, batch.hr).tolist()
                        scores[row]["lpips"] += lpips(image, batch.hr).tolist()
                    print(f"{name}: {len(scores['bicubic']['psnr'])}/{len(indices)} images", file=sys.stderr)
            bicubic = np.array(scores["bicubic"]["psnr"])
            lines += [f"## {name} ({len(bicubic)} images; bicubic {bicubic.mean():.2f} dB, "
                      f"LPIPS {np.mean(scores['bicubic']['lpips']):.4f})", "",
                      "| sampler | UNet calls | PSNR - bicubic (dB) [95% CI] | LPIPS |", "|---|---|---|---|"]
            calls = {row: steps - start for row, (steps, start, _) in rows.items()}
            calls |= {row: n for row, (_, _, n) in derived.items()}
            if args.anchor_row:
                calls = {anchor_name: 0} | calls
            for row, n_calls in calls.items():
                mean, low, high = paired_interval(np.array(scores[row]["psnr"]), bicubic)
                lines.append(f"| {row} | {n_calls} | {mean:+.2f} [{low:+.2f}, {high:+.2f}] | "
                             f"{np.mean(scores[row]['lpips']):.4f} |")
            lines.append("")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
