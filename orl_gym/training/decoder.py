"""Stage 1b: fine-tuning the VQ's decoder (post_quant_conv + decoder) on larger crops with the
encoder, quant_conv and codebook frozen, so the latents a UNet learned stay valid."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from orl_gym.data import DataConfig, PairDataset
from orl_gym.io import atomic_save
from orl_gym.models import LDMSR
from orl_gym.training import loop
from orl_gym.training.checkpoints import (
    DECODER_PREFIXES,
    decoder_state,
    load_decoder_weights,
    load_trained_vq,
)
from orl_gym.training.config import TrainConfig
from orl_gym.training.vq import training_batch, vq_validate, vq_validation_batch


def train_decoder(cfg: TrainConfig, model: LDMSR, writer: Any, stop: loop.StopFlag) -> None:
    """Fine-tune post_quant_conv + decoder with the encoder, quant_conv and codebook frozen.

    The latents do not change, so a UNet trained on them stays valid; what improves is every
    decode: reconstructions and sampler outputs alike. Larger crops than stage 1 (GroupNorm
    statistics are per image, so a decoder trained on 32 px crops meets different statistics on a
    256 px image). The best-validation weights are kept and exported, not the last ones.
    """
    out = Path(cfg.out)
    ckpt_path = out / "decoder" / "checkpoint.pt"
    vq_ckpt = load_trained_vq(cfg, model, "decoder")
    vqvae = model.vqvae.to(cfg.device).train().requires_grad_(False)
    params = [p for name, p in vqvae.named_parameters() if name.startswith(DECODER_PREFIXES)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    step, history, seconds = 0, [], 0.0
    val_batch, target = vq_validation_batch(cfg), model.latent_target
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        load_decoder_weights(vqvae, vq_ckpt, ckpt, key="model")
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history, best_val, best = ckpt["step"], ckpt["history"], ckpt["best_val"], ckpt["best"]
        seconds = ckpt.get("seconds", 0.0)
        generator.set_state(ckpt["generator"])
        print(f"decoder: resumed at step {step} from {ckpt_path}", file=sys.stderr)
    else:  # the stage-1 decoder is the first candidate for the best weights
        best_val, best = vq_validate(vqvae, val_batch, cfg.device, target), decoder_state(vqvae)
        history.append({"step": 0, "val": best_val, "val_name": "validation PSNR (dB)"})
        print(f"decoder: stage-1 decoder validation PSNR {best_val:.2f} dB", file=sys.stderr)
    if loop.StageClock(cfg.decoder_steps, cfg.decoder_minutes, seconds).done(step):
        print(f"decoder: already done (step {step}, {seconds / 60:.1f} min)", file=sys.stderr)
        return
    train_ds = loop.require_every_dataset(PairDataset(DataConfig(
        source=cfg.data, split="train", hr_size=cfg.decoder_crop, scale=4, crop="random", seed=cfg.seed),
        device="cpu"), "--decoder-crop").preload()
    # Started after the preload: loading the data is not training time.
    clock = loop.StageClock(cfg.decoder_steps, cfg.decoder_minutes, seconds)

    def save() -> None:
        atomic_save({"model": decoder_state(vqvae), "best": best, "best_val": best_val,
                     "optimizer": optimizer.state_dict(), "step": step, "history": history,
                     "generator": generator.get_state(), "vq_step": vq_ckpt["step"],
                     "seconds": clock.seconds, "config": asdict(cfg)}, ckpt_path)
        loop.plot_history(history, out / "loss_decoder.png", "VQ decoder fine-tuning")

    progress = loop.StageProgress("decoder", total=cfg.decoder_steps, initial=step, enabled=cfg.progress)
    while not clock.done(step) and not stop:
        lr = loop.lr_at(step, peak=cfg.decoder_lr, warmup=cfg.decoder_warmup,
                   progress=clock.progress(step), min_ratio=cfg.decoder_min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        hr, x = training_batch(train_ds, cfg.decoder_batch_size, generator, target)
        x = x.to(cfg.device)
        with torch.no_grad():
            z = vqvae.encode(x).latents
        rec = vqvae.decode(z).sample  # quantizes, as at inference
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        loss = cfg.vq_l1_weight * l1 + cfg.vq_mse_weight * mse
        loop.optimizer_step(optimizer, loss, params, cfg.grad_clip)
        step += 1
        with torch.no_grad():
            train_psnr = float(loop.psnr(loop.reconstructed_image(target, rec, hr, x), hr.to(cfg.device)).mean())
        history.append({"step": step, "loss": float(loss.detach()), "psnr": train_psnr, "lr": lr})
        writer.add_scalar("decoder/loss", float(loss.detach()), step)
        writer.add_scalar("decoder/psnr", train_psnr, step)
        finished = clock.done(step)
        if step % cfg.val_every == 0 or finished:
            val = vq_validate(vqvae, val_batch, cfg.device, target)
            if val > best_val:
                best_val, best = val, decoder_state(vqvae)
            history.append({"step": step, "val": val, "val_name": "validation PSNR (dB)"})
            writer.add_scalar("decoder/val_psnr", val, step)
            tqdm.write(f"decoder step {step}: validation PSNR {val:.2f} dB (best {best_val:.2f}), "
                       f"lr {lr:.2e}", file=sys.stderr)
        if step % cfg.checkpoint_every == 0 or finished:
            save()
        progress.step(step)
    loop.end_stage("decoder", step, progress=progress, save=save, writer=writer, stop=stop)
