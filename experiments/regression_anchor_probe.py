"""How far above bicubic does a small pixel-space regression CNN get, in minutes of CPU training?

Issue 24 asks the base model's default sampler for +0.5 dB over bicubic on AID; the residual
model (residual over bicubic) reaches -0.35 dB there, and even its one-step posterior mean only
about +0.4 dB. ResDiff (Shang et al. 2023) and SRDiff (Li et al. 2022) take the residual over a
CNN's prediction instead of over bicubic: the diffusion then only has to add what a regression
cannot predict. Whether that anchor is worth building depends on how much a small CNN gains over
bicubic at this budget, which this script measures:

* the network: ``orl_gym.models.AnchorNet``, an EDSR-style CNN (Lim et al. 2017) on the LR
  image (a head conv, ``--blocks`` residual blocks of ``--channels``, two x2 pixel-shuffle
  upsamplings) whose output is added to the bicubic upsampling (so it starts as bicubic and
  learns a residual); ``train_ldm.py --stages anchor`` trains the same network for a model;
* training: L1 on random ``--crop`` px HR crops of the train split of every dataset under
  ``$ORL_GYM_DATA`` (their LR: the env's degradation), flips / 90-degree rotations, batch
  ``--batch-size``, Adam with a cosine decay over ``--minutes`` of training (time-budgeted, so the
  step count depends on the machine; the report states it);
* evaluation: whole validation images (``--max-images`` per dataset, evenly spread), PSNR against
  the original with a paired 95% interval over bicubic, and LPIPS (alex).

    ORL_GYM_DATA=../shared/data python experiments/regression_anchor_probe.py --minutes 15 --threads 1

Results: ``experiments/results/regression_anchor_probe.md`` (its first lines: command, machine).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from orl_gym.data import DATA_ENV_VAR, DataConfig, PairDataset, upsample_bicubic
from orl_gym.evaluation import paired_interval
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.models import AnchorNet
from orl_gym.rewards import LPIPS, psnr
from orl_gym.training.loop import augment_alike

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help=f"data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--datasets", default="ucmerced,aid150", help="validation datasets under the data root")
    p.add_argument("--minutes", type=float, default=15.0, help="training wall time")
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--crop", type=int, default=96, help="HR training crop side")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-images", type=int, default=64, help="validation images per dataset (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "regression_anchor_probe.md")
    return p.parse_args(argv)


def train(args: argparse.Namespace, root: Path) -> tuple[AnchorNet, int, float]:
    torch.manual_seed(args.seed)
    net = AnchorNet(scale_factor=4, channels=args.channels, blocks=args.blocks)
    ds = PairDataset(DataConfig(source=str(root), split="train", hr_size=args.crop, scale=4, crop="random",
                                seed=args.seed), device="cpu").preload()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    start, step, budget = time.monotonic(), 0, args.minutes * 60
    while (elapsed := time.monotonic() - start) < budget:
        for group in optimizer.param_groups:  # cosine from lr to 0.05 lr over the time budget
            group["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        batch = ds.sample(args.batch_size, generator=generator)
        hr, lr = augment_alike((batch.hr, batch.lr), generator)
        loss = F.l1_loss(net(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step}: L1 {float(loss.detach()):.4f}, {elapsed / 60:.1f} of {args.minutes:g} min", file=sys.stderr)
    return net.eval(), step, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data or os.environ.get(DATA_ENV_VAR, ""))
    if not root.is_dir():
        raise SystemExit(f"--data: give the data root (or set ${DATA_ENV_VAR}); {str(root)!r} is not a folder")
    net, steps, seconds = train(args, root)
    parameters = sum(p.numel() for p in net.parameters())
    lpips = LPIPS(net="alex", device="cpu")
    lines = ["# A small regression CNN against bicubic (how much an anchor better than bicubic gains)", "",
             f"Command: `{rerun_command(__file__, argv)}`  ",
             f"Machine: {machine_description()}  ",
             f"Network: EDSR-style, {args.blocks} residual blocks of {args.channels} channels, output = bicubic + "
             f"CNN(LR), {parameters:,} parameters; trained {steps:,} steps in {seconds / 60:.1f} min (L1, "
             f"{args.crop} px HR crops of the train split, batch {args.batch_size}). Evaluated on whole "
             "validation images; PSNR over RGB against the original, paired 95% interval over bicubic; "
             "LPIPS alex.", "",
             "| dataset | images | bicubic PSNR (dB) | CNN - bicubic (dB) [95% CI] | LPIPS bicubic | LPIPS CNN |",
             "|---|---|---|---|---|---|"]
    with torch.no_grad():
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            ds = PairDataset(DataConfig(source=str(root / name), split="validation", hr_size=64, scale=4,
                                        crop="full", full_multiple=16))
            indices = ds.spread_indices(args.max_images)
            scores: dict[str, dict[str, list[float]]] = {k: {"psnr": [], "lpips": []} for k in ("bicubic", "cnn")}
            for group in ds.indices_by_shape(indices).values():
                for chunk in group.split(8):
                    batch = ds.pairs(chunk)
                    outputs = {"bicubic": upsample_bicubic(batch.lr, batch.hr.shape[-2:]).clamp(0, 1),
                               "cnn": net(batch.lr).clamp(0, 1)}
                    for key, image in outputs.items():
                        scores[key]["psnr"] += psnr(image, batch.hr).tolist()
                        scores[key]["lpips"] += lpips(image, batch.hr).tolist()
            bicubic, cnn = (np.array(scores[k]["psnr"]) for k in ("bicubic", "cnn"))
            mean, low, high = paired_interval(cnn, bicubic)
            lines.append(f"| {name} | {len(bicubic)} | {bicubic.mean():.2f} | {mean:+.2f} [{low:+.2f}, {high:+.2f}] | "
                         f"{np.mean(scores['bicubic']['lpips']):.4f} | {np.mean(scores['cnn']['lpips']):.4f} |")
    write_report(args.out, lines + [""])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
