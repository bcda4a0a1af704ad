"""Stage 0 (``--latent-anchor network`` only): the anchor network, a regression CNN trained
with L1 to predict HR from LR, whose output the residual target is taken over (the VQ then
autoencodes, and the diffusion generates, what this regression leaves)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from orl_gym.data import DataConfig, PairDataset, upsample_bicubic
from orl_gym.io import atomic_save
from orl_gym.models import LDMSR
from orl_gym.training import loop
from orl_gym.training.checkpoints import cpu_state
from orl_gym.training.config import TrainConfig
from orl_gym.training.vq import vq_validation_batch


@torch.no_grad()
def anchor_validate(network: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: str) -> float:
    """Mean PSNR (dB) of the network's HR predictions of the fixed validation crops."""
    network.eval()
    scores = [loop.psnr(network(lr.to(device)).clamp(0.0, 1.0), hr.to(device))
              for hr, lr in zip(*(part.split(8) for part in batch), strict=True)]
    network.train()
    return float(torch.cat(scores).mean())


def train_anchor(cfg: TrainConfig, model: LDMSR, writer: Any, stop: loop.StopFlag) -> None:
    """Train ``model``'s anchor network with L1 on random crops; keep the best-validation weights
    (those the later stages and the export use: :func:`~orl_gym.training.checkpoints.load_trained_anchor`)."""
    if cfg.latent_anchor != "network":
        raise SystemExit(f"--stages anchor: this run's residual is taken over {cfg.latent_anchor}, which has "
                         "nothing to train; pass --latent-anchor network for a new run, or drop the stage")
    out = Path(cfg.out)
    ckpt_path = out / "anchor" / "checkpoint.pt"
    network = model.latent_target.network.to(cfg.device).train().requires_grad_(True)
    optimizer = torch.optim.Adam(network.parameters(), lr=cfg.anchor_lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(cfg.seed + 3)
    val_batch = vq_validation_batch(cfg)
    step, history, seconds = 0, [], 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        network.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history, best_val, best = ckpt["step"], ckpt["history"], ckpt["best_val"], ckpt["best"]
        seconds = ckpt.get("seconds", 0.0)
        generator.set_state(ckpt["generator"])
        print(f"anchor: resumed at step {step} from {ckpt_path}", file=sys.stderr)
    else:
        best_val, best = anchor_validate(network, val_batch, cfg.device), cpu_state(network)
        history.append({"step": 0, "val": best_val, "val_name": "validation PSNR (dB)"})
    bicubic = float(loop.psnr(upsample_bicubic(val_batch[1], val_batch[0].shape[-2:]).clamp(0, 1), val_batch[0]).mean())
    if loop.StageClock(cfg.anchor_steps, cfg.anchor_minutes, seconds).done(step):
        print(f"anchor: already done (step {step}, {seconds / 60:.1f} min)", file=sys.stderr)
        network.load_state_dict(best)
        network.eval().requires_grad_(False)
        return
    train_ds = loop.require_every_dataset(PairDataset(DataConfig(
        source=cfg.data, split="train", hr_size=cfg.anchor_crop, scale=4, crop="random", seed=cfg.seed),
        device="cpu"), "--anchor-crop").preload()
    print(f"anchor: {train_ds}; validation {tuple(val_batch[0].shape)} (bicubic {bicubic:.2f} dB)", file=sys.stderr)
    clock = loop.StageClock(cfg.anchor_steps, cfg.anchor_minutes, seconds)  # after the preload

    def save() -> None:
        atomic_save({"model": cpu_state(network), "best": best, "best_val": best_val,
                     "bicubic_val": bicubic, "optimizer": optimizer.state_dict(), "step": step,
                     "history": history, "generator": generator.get_state(), "seconds": clock.seconds,
                     "config": asdict(cfg)}, ckpt_path)
        loop.plot_history(history, out / "loss_anchor.png", "anchor network (regression CNN)")

    progress = loop.StageProgress("anchor", total=cfg.anchor_steps, initial=step, enabled=cfg.progress)
    while not clock.done(step) and not stop:
        lr_now = loop.lr_at(step, peak=cfg.anchor_lr, warmup=cfg.anchor_warmup, progress=clock.progress(step),
                            min_ratio=cfg.anchor_min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        pairs = train_ds.sample(cfg.anchor_batch_size, generator=generator)
        hr, lr = (x.to(cfg.device) for x in loop.augment_alike((pairs.hr, pairs.lr), generator))
        prediction = network(lr)
        loss = F.l1_loss(prediction, hr)
        loop.optimizer_step(optimizer, loss, network.parameters(), cfg.grad_clip)
        step += 1
        with torch.no_grad():
            train_psnr = float(loop.psnr(prediction.detach().clamp(0, 1), hr).mean())
        history.append({"step": step, "loss": float(loss.detach()), "psnr": train_psnr, "lr": lr_now})
        writer.add_scalar("anchor/loss", float(loss.detach()), step)
        writer.add_scalar("anchor/psnr", train_psnr, step)
        finished = clock.done(step)
        if step % cfg.val_every == 0 or finished:
            val = anchor_validate(network, val_batch, cfg.device)
            if val > best_val:
                best_val, best = val, cpu_state(network)
            history.append({"step": step, "val": val, "val_name": "validation PSNR (dB)"})
            writer.add_scalar("anchor/val_psnr", val, step)
            tqdm.write(f"anchor step {step}: validation PSNR {val:.2f} dB (best {best_val:.2f}, bicubic "
                       f"{bicubic:.2f}), lr {lr_now:.2e}", file=sys.stderr)
        if step % cfg.checkpoint_every == 0 or finished:
            save()
        progress.step(step, loss=f"{float(loss.detach()):.4f}")
    loop.end_stage("anchor", step, progress=progress, save=save, writer=writer, stop=stop)
    network.load_state_dict(best)  # what the later stages of this invocation build on
    network.eval().requires_grad_(False)
