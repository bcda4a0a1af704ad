"""Stage 1: the VQ autoencoder, with code-usage counting and dead-code restarts; its
validation (also the decoder stage's) and training batches."""

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
from orl_gym.models import LDMSR, LatentTarget
from orl_gym.training.checkpoints import check_vq_anchor, load_trained_anchor
from orl_gym.training.config import TrainConfig
from orl_gym.training.loop import (
    StageClock,
    StageProgress,
    StopFlag,
    augment,
    end_stage,
    lr_at,
    optimizer_step,
    plot_history,
    psnr,
    reconstructed_image,
    require_every_dataset,
)


def quantize(vqvae: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-code quantization of (B, c, h, w) latents, as diffusers' VectorQuantizer does.

    Returns (straight-through z_q, code vectors with gradient to the codebook, code indices).
    """
    codebook = vqvae.quantize.embedding.weight
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    indices = torch.cdist(flat, codebook).argmin(dim=1)
    codes = codebook[indices].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    z_q = z + (codes - z).detach()
    return z_q, codes, indices


def vq_validation_batch(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed validation images (HR, LR): center crops (128 px: AID's 150 px allows it) in [0, 1]."""
    ds = PairDataset(DataConfig(source=cfg.data, split="validation", hr_size=cfg.val_crop, scale=4,
                                crop="center", seed=cfg.seed), device="cpu")
    count = min(cfg.val_images, len(ds))
    # Spread over the dataset (both sources) rather than the first class.
    indices = torch.linspace(0, len(ds) - 1, count).round().long()
    pairs = ds.pairs(indices)
    return pairs.hr, pairs.lr


@torch.no_grad()
def vq_validate(vqvae: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: str,
                target: LatentTarget) -> float:
    """Mean PSNR (dB) of the reconstructed HR images through encode + decode (which quantizes);
    for the residual target, of bicubic(LR) + the reconstructed residual."""
    vqvae.eval()
    scores = []
    for hr, lr in zip(*(part.split(8) for part in batch), strict=True):
        hr, lr = hr.to(device), lr.to(device)
        rec = vqvae.decode(vqvae.encode(target.vq_input(hr, lr)).latents).sample
        scores.append(psnr(target.image(rec, lr), hr))
    vqvae.train()
    return float(torch.cat(scores).mean())


def training_batch(ds: PairDataset, batch_size: int, generator: torch.Generator,
                   target: LatentTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """Random augmented crops: (HR in [0, 1], the VQ's input for them). The VQ input is made from
    the crop's own LR image before the flips / rotations, which are applied to both alike."""
    pairs = ds.sample(batch_size, generator=generator)
    x = target.vq_input(pairs.hr, pairs.lr)
    both = augment(torch.cat([pairs.hr, x], dim=1), generator)
    return both[:, :3], both[:, 3:]


def train_vq(cfg: TrainConfig, model: LDMSR, writer: Any, stop: StopFlag) -> None:
    out = Path(cfg.out)
    ckpt_path = out / "vq" / "checkpoint.pt"
    vqvae = model.vqvae.to(cfg.device).train().requires_grad_(True)
    codebook = vqvae.quantize.embedding.weight
    decay, no_decay = [], []
    for name, param in vqvae.named_parameters():
        (no_decay if param.dim() < 2 or "quantize" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.vq_lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(cfg.seed)
    step, history, best_val, seconds = 0, [], None, 0.0
    last_used = torch.zeros(cfg.codebook_size, dtype=torch.long)
    anchor_ckpt = load_trained_anchor(cfg, model, "vq")
    anchor_step = anchor_ckpt["step"] if anchor_ckpt else None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        check_vq_anchor(cfg, ckpt, anchor_ckpt)
        vqvae.load_state_dict(ckpt["model"])
        # An imported checkpoint (--init-from a diffusers folder) has weights only.
        if ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        step, history, best_val = ckpt["step"], ckpt["history"], ckpt.get("best_val")
        seconds = ckpt.get("seconds", 0.0)
        if ckpt["generator"] is not None:
            generator.set_state(ckpt["generator"])
        last_used = ckpt["last_used"]
        print(f"vq: resumed at step {step} from {ckpt_path}", file=sys.stderr)
    # A checkpoint holds a codebook already: seeded before it was saved, or imported.
    has_codebook = ckpt_path.exists()
    if StageClock(cfg.vq_steps, cfg.vq_minutes, seconds).done(step):
        print(f"vq: already done (step {step}, {seconds / 60:.1f} min; --vq-steps {cfg.vq_steps}, "
              f"--vq-minutes {cfg.vq_minutes})", file=sys.stderr)
        return

    train_ds = require_every_dataset(PairDataset(DataConfig(
        source=cfg.data, split="train", hr_size=cfg.vq_crop, scale=4, crop="random", seed=cfg.seed),
        device="cpu"), "--vq-crop").preload()
    val_batch = vq_validation_batch(cfg)
    target = model.latent_target
    bicubic = float(psnr(upsample_bicubic(val_batch[1], val_batch[0].shape[-2:]), val_batch[0]).mean())
    print(f"vq: {train_ds}; validation {tuple(val_batch[0].shape)} (bicubic {bicubic:.2f} dB); target "
          f"{target}", file=sys.stderr)
    # Started after the preload: loading the data is not training time.
    clock = StageClock(cfg.vq_steps, cfg.vq_minutes, seconds)

    def save() -> None:
        atomic_save({"model": vqvae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "history": history, "best_val": best_val, "generator": generator.get_state(),
                     "last_used": last_used, "seconds": clock.seconds, "config": asdict(cfg),
                     "anchor_step": anchor_step},
                    ckpt_path)
        plot_history(history, out / "loss_vq.png", "VQ autoencoder")

    if not has_codebook:
        # Seed the codebook with encoder outputs of real crops: a random codebook is mostly dead.
        with torch.no_grad():
            x = training_batch(train_ds, cfg.vq_batch_size, generator, target)[1].to(cfg.device)
            z = vqvae.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, cfg.latent_channels)
            pick = torch.randint(0, z.shape[0], (cfg.codebook_size,), generator=generator)
            jitter = torch.randn(codebook.shape, generator=generator).to(codebook.device)
            codebook.data.copy_(z[pick.to(z.device)] + 0.01 * jitter)

    progress = StageProgress("vq", total=cfg.vq_steps, initial=step, enabled=cfg.progress)
    while not clock.done(step) and not stop:
        lr = lr_at(step, peak=cfg.vq_lr, warmup=cfg.vq_warmup, progress=clock.progress(step),
                   min_ratio=cfg.vq_min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        hr, x = training_batch(train_ds, cfg.vq_batch_size, generator, target)
        x = x.to(cfg.device)
        z = vqvae.encode(x).latents
        z_q, codes, indices = quantize(vqvae, z)
        rec = vqvae.decode(z_q, force_not_quantize=True).sample
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        codebook_loss = F.mse_loss(codes, z.detach())
        commit = F.mse_loss(z, codes.detach())
        loss = (cfg.vq_l1_weight * l1 + cfg.vq_mse_weight * mse
                + cfg.vq_codebook_weight * codebook_loss + cfg.vq_commit_beta * commit)
        optimizer_step(optimizer, loss, vqvae.parameters(), cfg.grad_clip)
        step += 1

        used = torch.bincount(indices.cpu(), minlength=cfg.codebook_size) > 0
        last_used[used] = step
        if cfg.vq_restart_every and step % cfg.vq_restart_every == 0:
            dead = (step - last_used) >= cfg.vq_restart_every
            n_dead = int(dead.sum())
            if n_dead:
                with torch.no_grad():
                    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, cfg.latent_channels)
                    pick = torch.randint(0, flat.shape[0], (n_dead,), generator=generator)
                    codebook.data[dead.to(codebook.device)] = (
                        flat[pick.to(flat.device)]
                        + 0.01 * torch.randn(n_dead, flat.shape[1], generator=generator).to(flat.device))
                    last_used[dead] = step
            writer.add_scalar("vq/restarted_codes", n_dead, step)

        with torch.no_grad():
            train_psnr = float(psnr(reconstructed_image(target, rec, hr, x), hr.to(cfg.device)).mean())
        loss, l1, mse, commit = (v.detach() for v in (loss, l1, mse, commit))
        entry = {"step": step, "loss": float(loss), "l1": float(l1), "mse": float(mse),
                 "commit": float(commit), "psnr": train_psnr, "lr": lr,
                 "codes_used": int(used.sum()), "latent_std": float(z.detach().std())}
        history.append(entry)
        for key in ("loss", "l1", "mse", "commit", "psnr", "lr", "codes_used", "latent_std"):
            writer.add_scalar(f"vq/{key}", entry[key], step)
        finished = clock.done(step)
        if step % cfg.val_every == 0 or finished:
            val = vq_validate(vqvae, val_batch, cfg.device, target)
            best_val = val if best_val is None else max(best_val, val)
            history.append({"step": step, "val": val, "val_name": "validation PSNR (dB)"})
            writer.add_scalar("vq/val_psnr", val, step)
            tqdm.write(f"vq step {step}: validation PSNR {val:.2f} dB (best {best_val:.2f}), "
                       f"lr {lr:.2e}, codes used {entry['codes_used']}, latent std "
                       f"{entry['latent_std']:.2f}", file=sys.stderr)
        if step % cfg.checkpoint_every == 0 or finished:
            save()
        progress.step(step, loss=f"{entry['loss']:.4f}", psnr=f"{train_psnr:.2f}",
                      codes=str(entry["codes_used"]))
    end_stage("vq", step, progress=progress, save=save, writer=writer, stop=stop)
