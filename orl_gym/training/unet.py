"""Stage 2: the conditional UNet on the frozen VQ's latents of whole training images (encoded
once, cached), with its objectives (epsilon / v / z0 prediction, the optional low-frequency
term and input perturbation), EMA and fixed validation crops."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from orl_gym.data import DataConfig, PairDataset
from orl_gym.io import atomic_save
from orl_gym.models import LDMSR
from orl_gym.training.checkpoints import load_trained_vq, unet_prediction_type
from orl_gym.training.config import (
    PREDICTION_OBJECTIVES,
    PREDICTION_TYPES,
    VAL_NAMES,
    TrainConfig,
    data_source,
)
from orl_gym.training.loop import (
    StageClock,
    StageProgress,
    StopFlag,
    end_stage,
    lr_at,
    optimizer_step,
    plot_history,
    require_every_dataset,
)


@torch.no_grad()
def encode_dataset(cfg: TrainConfig, model: LDMSR, split: str,
                   limit: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Latents (float32) and LR images (uint8) of whole images of a split, one tensor per image."""
    ds = PairDataset(DataConfig(source=cfg.data, split=split, hr_size=cfg.unet_crop, scale=4,
                                crop="full", seed=cfg.seed), device="cpu")
    if split == "train":
        require_every_dataset(ds, "--unet-crop")
    latents: list[torch.Tensor] = []
    lrs: list[torch.Tensor] = []
    groups = list(ds.indices_by_shape().values())
    if limit is not None:
        # A spread of validation images of the most common shape.
        biggest = groups[0]
        groups = [biggest[torch.linspace(0, len(biggest) - 1, min(limit, len(biggest))).round().long()]]
    total = sum(len(g) for g in groups)
    bar = tqdm(total=total, desc=f"encode {split}", disable=not cfg.progress, mininterval=10)
    vqvae = model.vqvae.eval()
    for group in groups:
        for chunk in group.split(16):
            batch = ds.pairs(chunk)
            z = vqvae.encode(model.latent_target.vq_input(batch.hr, batch.lr).to(cfg.device)).latents.float().cpu()
            latents.extend(z.unbind(0))
            lrs.extend((batch.lr * 255).round().to(torch.uint8).unbind(0))
            bar.update(len(chunk))
    bar.close()
    return latents, lrs


def latent_cache_key(cfg: TrainConfig) -> dict:
    """What the cached UNet latents were encoded from, besides the VQ step."""
    return {"data": data_source(cfg), "unet_crop": cfg.unet_crop, "val_images": cfg.val_images}


def crop_batch(latents: list[torch.Tensor], lrs: list[torch.Tensor], batch_size: int, side: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random (latent, LR) crops of ``side`` latent pixels from random images."""
    picks = torch.randint(0, len(latents), (batch_size,), generator=generator).tolist()
    zs, xs = [], []
    for i in picks:
        z, lr = latents[i], lrs[i]
        h, w = z.shape[-2:]
        if min(h, w) < side:
            raise SystemExit(f"--unet-crop {4 * side}: an image of {4 * h}x{4 * w} px (latent {h}x{w}) "
                             "is smaller than the crop; use a smaller --unet-crop")
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        zs.append(z[:, top: top + side, left: left + side])
        xs.append(lr[:, top: top + side, left: left + side])
    return torch.stack(zs), torch.stack(xs).float() / 255


def unet_target(noise_scheduler: DDPMScheduler, z0: torch.Tensor, noise: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to output, per the scheduler's ``prediction_type``."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(z0, noise, t)
    if kind == "sample":
        return z0
    raise ValueError(f"unet: unsupported prediction_type {kind!r}; use one of {PREDICTION_TYPES}")


def predicted_z0(noise_scheduler: DDPMScheduler, z_t: torch.Tensor, pred: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """The UNet output turned into its z_0 estimate (DDIM's "predicted x_0", eq. 12 of Song et
    al.), per the scheduler's ``prediction_type``."""
    abar = noise_scheduler.alphas_cumprod.to(device=z_t.device, dtype=z_t.dtype)[t].view(-1, 1, 1, 1)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return (z_t - (1 - abar).sqrt() * pred) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * z_t - (1 - abar).sqrt() * pred
    if kind == "sample":
        return pred
    raise ValueError(f"unet: unsupported prediction_type {kind!r}; use one of {PREDICTION_TYPES}")


def unet_loss_terms(unet: torch.nn.Module, noise_scheduler: DDPMScheduler, z0: torch.Tensor,
                    lr: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                    lowfreq_pool: int = 4, input_noise: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE to ``unet_target``, MSE of the ``lowfreq_pool``-average-pooled z_0 estimate), with
    the UNet fed concat(z_t, 2 * LR - 1) as the pipeline feeds it.

    ``input_noise`` (input perturbation): z_t is built from it instead of ``noise``, while the
    target stays that of ``noise``."""
    z_t = noise_scheduler.add_noise(z0, noise if input_noise is None else input_noise, t)
    pred = unet(torch.cat([z_t, lr * 2 - 1], dim=1), t).sample
    target_mse = F.mse_loss(pred, unet_target(noise_scheduler, z0, noise, t))
    z0_hat = predicted_z0(noise_scheduler, z_t, pred, t)
    lowfreq_mse = F.mse_loss(F.avg_pool2d(z0_hat, lowfreq_pool), F.avg_pool2d(z0, lowfreq_pool))
    return target_mse, lowfreq_mse


def check_lowfreq(cfg: TrainConfig) -> None:
    side = cfg.unet_crop // 4
    if cfg.unet_lowfreq_weight < 0 or cfg.unet_lowfreq_pool < 1 or side % cfg.unet_lowfreq_pool:
        raise SystemExit(
            f"--unet-lowfreq-weight {cfg.unet_lowfreq_weight} / --unet-lowfreq-pool "
            f"{cfg.unet_lowfreq_pool}: the weight must be >= 0 and the pool a divisor of the "
            f"latent crop side {side} (--unet-crop {cfg.unet_crop} / 4)")
    if not 0 <= cfg.unet_input_perturbation < 1:
        raise SystemExit(f"--unet-input-perturbation {cfg.unet_input_perturbation}: expected gamma in "
                         "[0, 1) (0.1 in the DDPM-IP paper; 0: off)")


def objective_changes(ckpt: dict | None, cfg: TrainConfig, step: int) -> list[dict]:
    """The UNet objective's history: from which step which low-frequency weight and input
    perturbation applied. A resume with other values appends an entry (the card states each)."""
    current = {"lowfreq_weight": cfg.unet_lowfreq_weight, "lowfreq_pool": cfg.unet_lowfreq_pool,
               "input_perturbation": cfg.unet_input_perturbation}
    if ckpt is None:
        return [{"step": 0, **current}]
    saved = ckpt.get("config", {})
    changes = list(ckpt.get("objective_changes") or [
        {"step": 0, "lowfreq_weight": saved.get("unet_lowfreq_weight", 0.0),
         "lowfreq_pool": saved.get("unet_lowfreq_pool", 4),
         "input_perturbation": saved.get("unet_input_perturbation", 0.0)}])
    # Entries written before input perturbation existed had none (i.e. 0).
    previous = {"input_perturbation": 0.0, **changes[-1]}
    last = {k: previous[k] for k in current}
    if last != current:
        print(f"unet: objective changes at step {step}: low-frequency weight "
              f"{last['lowfreq_weight']:g} -> {current['lowfreq_weight']:g} (pool "
              f"{current['lowfreq_pool']}), input perturbation {last['input_perturbation']:g} -> "
              f"{current['input_perturbation']:g}", file=sys.stderr)
        changes.append({"step": step, **current})
    return changes


def load_ema(ema: EMAModel, state: dict, cfg: TrainConfig) -> EMAModel:
    """Resume an EMA from its checkpoint state (loaded to the CPU) on ``cfg.device``, with
    ``--ema-decay`` as given now: EMAModel.load_state_dict would keep the CPU shadow weights
    (the next step on CUDA then mixes devices) and the checkpoint's decay."""
    ema.load_state_dict(state)
    ema.to(device=cfg.device)
    if ema.decay != cfg.ema_decay:
        print(f"unet: EMA decay {ema.decay} in the checkpoint, {cfg.ema_decay} from now on "
              "(--ema-decay)", file=sys.stderr)
        ema.decay = cfg.ema_decay
    return ema


def train_unet(cfg: TrainConfig, model: LDMSR, writer: Any, stop: StopFlag) -> None:
    out = Path(cfg.out)
    ckpt_path = out / "unet" / "checkpoint.pt"
    vq_ckpt = load_trained_vq(cfg, model, "unet")
    model.vqvae.to(cfg.device).eval().requires_grad_(False)
    unet = model.unet.to(cfg.device).train().requires_grad_(True)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=cfg.weight_decay)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    step, history, best_val, seconds, ckpt = 0, [], None, 0.0, None
    check_lowfreq(cfg)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        trained_for = unet_prediction_type(ckpt)
        if trained_for != cfg.prediction_type:
            raise SystemExit(
                f"--prediction-type: the UNet in {ckpt_path} was trained for {trained_for!r}, not "
                f"{cfg.prediction_type!r}; pass --prediction-type {trained_for} to resume it, or move "
                "the checkpoint away to train a new UNet")
        if ckpt["vq_step"] != vq_ckpt["step"]:
            raise RuntimeError(
                f"unet: its checkpoint was trained on the VQ at step {ckpt['vq_step']}, but the VQ "
                f"is now at step {vq_ckpt['step']}: its latents changed. Move {ckpt_path} away to "
                "retrain the UNet on the new VQ."
            )
        unet.load_state_dict(ckpt["model"])
        # An imported checkpoint (--init-from a diffusers folder) has weights only: a fresh
        # optimizer, and the EMA starts at the imported weights.
        if ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema") is not None:
            ema = load_ema(ema, ckpt["ema"], cfg)
        elif ema is not None:
            ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
        step, history, best_val = ckpt["step"], ckpt["history"], ckpt.get("best_val")
        seconds = ckpt.get("seconds", 0.0)
        if ckpt["generator"] is not None:
            generator.set_state(ckpt["generator"])
        print(f"unet: resumed at step {step} from {ckpt_path}", file=sys.stderr)
    changes = objective_changes(ckpt, cfg, step)
    if StageClock(cfg.unet_steps, cfg.unet_minutes, seconds).done(step):
        print(f"unet: already done (step {step}, {seconds / 60:.1f} min; --unet-steps "
              f"{cfg.unet_steps}, --unet-minutes {cfg.unet_minutes})", file=sys.stderr)
        return

    cache_path = out / "unet" / "latents.pt"
    cache = torch.load(cache_path, weights_only=False) if cache_path.exists() else None
    key = latent_cache_key(cfg)
    if cache is not None and cache["vq_step"] == vq_ckpt["step"] and cache.get("key") != key:
        print(f"unet: the cached latents in {cache_path} were encoded from "
              f"{cache.get('key') or 'an unrecorded data source / crop'}, not {key}: encoding again",
              file=sys.stderr)
    if cache is None or cache["vq_step"] != vq_ckpt["step"] or cache.get("key") != key:
        t0 = time.monotonic()
        train = encode_dataset(cfg, model, "train")
        val = encode_dataset(cfg, model, "validation", limit=cfg.val_images)
        cache = {"vq_step": vq_ckpt["step"], "key": key, "train": train, "val": val}
        atomic_save(cache, cache_path)
        print(f"unet: encoded {len(train[0])} training images in {time.monotonic() - t0:.0f} s",
              file=sys.stderr)
    train_latents, train_lrs = cache["train"]
    all_z = torch.cat([z.flatten() for z in train_latents[:200]])
    print(f"unet: latent mean {all_z.mean():.3f} std {all_z.std():.3f}", file=sys.stderr)
    side = cfg.unet_crop // 4
    val_gen = torch.Generator().manual_seed(1234)
    val_z, val_lr = crop_batch(*cache["val"], 64, side, val_gen)
    val_noise = torch.randn(val_z.shape, generator=val_gen)
    val_t = torch.linspace(0, noise_scheduler.config.num_train_timesteps - 1, 64).long()
    val_z, val_lr, val_noise, val_t = (v.to(cfg.device) for v in (val_z, val_lr, val_noise, val_t))

    def save() -> None:
        atomic_save({"model": unet.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "ema": ema.state_dict() if ema is not None else None, "history": history,
                     "best_val": best_val, "generator": generator.get_state(),
                     "vq_step": vq_ckpt["step"], "seconds": clock.seconds, "config": asdict(cfg),
                     "objective_changes": changes},
                    ckpt_path)
        plot_history(history, out / "loss_unet.png",
                     f"conditional UNet ({PREDICTION_OBJECTIVES[cfg.prediction_type]})")

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        """MSE to the target and low-frequency z_0 MSE of the EMA weights on fixed validation
        crops, t and noise (the first is the model-selection number whatever the objective)."""
        unet.eval()
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        losses = unet_loss_terms(unet, noise_scheduler, val_z, val_lr, val_noise, val_t,
                                 cfg.unet_lowfreq_pool)
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train()
        return float(losses[0]), float(losses[1])

    progress = StageProgress("unet", total=cfg.unet_steps, initial=step, enabled=cfg.progress)
    num_t = noise_scheduler.config.num_train_timesteps
    val_name = VAL_NAMES[cfg.prediction_type]
    # Started after the latent cache: encoding is not training time.
    clock = StageClock(cfg.unet_steps, cfg.unet_minutes, seconds)
    while not clock.done(step) and not stop:
        lr = lr_at(step, peak=cfg.unet_lr, warmup=cfg.unet_warmup, progress=clock.progress(step),
                   min_ratio=cfg.unet_min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        z0, lr_img = crop_batch(train_latents, train_lrs, cfg.unet_batch_size, side, generator)
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, num_t, (z0.shape[0],), generator=generator)
        # Drawn only when on, so runs without it keep their random stream.
        input_noise = (noise + cfg.unet_input_perturbation * torch.randn(z0.shape, generator=generator)
                       if cfg.unet_input_perturbation > 0 else None)
        z0, lr_img, noise, t = (v.to(cfg.device) for v in (z0, lr_img, noise, t))
        target_mse, lowfreq_mse = unet_loss_terms(
            unet, noise_scheduler, z0, lr_img, noise, t, cfg.unet_lowfreq_pool,
            input_noise=None if input_noise is None else input_noise.to(cfg.device))
        loss = target_mse + cfg.unet_lowfreq_weight * lowfreq_mse if cfg.unet_lowfreq_weight > 0 else target_mse
        optimizer_step(optimizer, loss, unet.parameters(), cfg.grad_clip)
        loss = loss.detach()
        if ema is not None:
            ema.step(unet.parameters())
        step += 1
        history.append({"step": step, "loss": float(loss), "lr": lr})
        writer.add_scalar("unet/loss", float(loss), step)
        writer.add_scalar("unet/lr", lr, step)
        writer.add_scalar("unet/lowfreq_z0_mse", float(lowfreq_mse.detach()), step)
        finished = clock.done(step)
        if step % cfg.val_every == 0 or finished:
            val, val_lowfreq = validate()
            best_val = val if best_val is None else min(best_val, val)
            history.append({"step": step, "val": val, "val_name": f"validation {val_name} (EMA)",
                            "val_lowfreq": val_lowfreq})
            writer.add_scalar("unet/val_loss", val, step)
            writer.add_scalar("unet/val_lowfreq_z0_mse", val_lowfreq, step)
            tqdm.write(f"unet step {step}: validation {val_name} {val:.4f} (best {best_val:.4f}), "
                       f"low-frequency z0-MSE {val_lowfreq:.5f}, lr {lr:.2e}", file=sys.stderr)
        if step % cfg.checkpoint_every == 0 or finished:
            save()
        progress.step(step, loss=f"{float(loss):.4f}")
    end_stage("unet", step, progress=progress, save=save, writer=writer, stop=stop)
