"""Train the bundled LDM-SR model: (1) the VQ autoencoder, (2) the conditional UNet.

Both stages use diffusers components in the layout of CompVis/ldm-super-resolution-4x-openimages
(``orl_gym.models.LDMSRArchitecture``) and a plain torch loop, so the result loads with
``orl_gym.models.load_ldmsr`` and with ``LDMSuperResolutionPipeline.from_pretrained``.

Stage 1 (``vq``): VQModel (f = 4, 3 latent channels) on random HR crops in [-1, 1], loss
``l1 * |x - x'| + mse * (x - x')^2 + codebook + beta * commitment``. The quantizer is computed
here rather than by diffusers' ``VectorQuantizer`` so that code usage can be counted: codes unused
for ``--vq-restart-every`` steps are re-seeded from encoder outputs of the current batch (dead-code
restart), which is what keeps a small-batch CPU run from collapsing onto a few codes. The decoder
sees the straight-through quantized latents, as ``vqvae.decode`` quantizes at inference.

Stage 1b (``decoder``, optional): fine-tunes ``post_quant_conv`` + decoder on larger crops with the
encoder, ``quant_conv`` and codebook frozen. The latents stay the same, so a UNet trained on them
stays valid and can be trained on concurrently; the best-validation decoder weights are exported.

Stage 2 (``unet``): UNet2DModel on ``concat(z_t, 2 * LR - 1)`` (6 channels), predicting
``--prediction-type``: ``epsilon`` (the reference model's), ``v_prediction``
(``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0``, Salimans & Ho 2022) or ``sample`` (``z_0``);
the choice is written to the exported scheduler config, which the pipeline's and orl_gym's DDIM
steps read. ``z_t = DDPMScheduler.add_noise(z_0, eps, t)`` with the reference schedule (scaled_linear
0.0015..0.0155, 1000 steps), ``z_0 = vqvae.encode(hr).latents`` of the frozen VQ (pre-quantization
latents: the pipeline's ``vqvae.decode`` quantizes). The frozen encoder runs once over whole
training images (convolutional; an optional mid-block attention then attends over the whole
image) and training takes aligned random crops of those
latents and of the LR image: encoding each batch again would cost more than the UNet step.

Output folder (``--out``)::

    run_config.json        resolved configuration of the latest invocation (+ commands.log: all)
    vq/checkpoint.pt       model, optimizer, step, history, RNG state (atomic: temp + os.replace)
    decoder/checkpoint.pt  stage 1b: current and best-validation decoder weights, the VQ step
    unet/checkpoint.pt     the same for the UNet (+ EMA weights, the VQ step it was trained on)
    unet/latents.pt        cached latents of the training images (keyed by the VQ step)
    tb/                    TensorBoard scalars
    loss_vq.png, loss_unet.png
    export/                diffusers pipeline folder (weights fp16 by default)

A new run can start from another run's finished stages: ``--init-from RUN`` copies RUN's
checkpoints of ``--init-stages`` (default ``vq,decoder``: the autoencoder, its fine-tuned decoder
and the cached training latents) and its ``commands.log`` into ``--out``, and takes RUN's
architecture and UNet target (``--prediction-type``) for every field not given on the command
line (those of a copied stage must match).
So a wider UNet on the same autoencoder, or a fine-tuning of a UNet, is one command whose lineage
the model card lists, rather than a copied folder. ``--init-from`` also takes a diffusers LDM-SR
folder (an export, ``bundled`` for the shipped model, any model train_ldm.py can build): its VQ
(with its decoder) and, with ``--init-stages vq,unet``, its UNet become checkpoints at step 0
without optimizer state, so training them is fine-tuning with a fresh warm-up and schedule (the
UNet's EMA starts at the imported weights); its architecture and prediction type are read from
its configs and weights, and a network or noise schedule train_ldm.py cannot build is refused.

``--unet-input-perturbation GAMMA`` trains the UNet with DDPM-IP's input perturbation (Ning et al.
2023): z_t is made from ``eps + GAMMA * xi`` and the target from ``eps``, a regulariser against
the exposure bias of sampling (the UNet sees its own imperfect z_t at inference, never in
training).

Every invocation resumes from the checkpoints in ``--out`` with the run's saved settings: an
option left off the command line keeps its value from the last invocation, not the default
(``--device``, ``--threads``, ``--max-minutes``, ``--export``, ``--export-only``, ``--no-export``,
``--no-progress`` and ``--init-from`` / ``--init-stages``, which act once, are the invocation's
own), so ``train_ldm.py --out RUN`` continues RUN as it was started. Raising ``--vq-steps`` or
``--unet-steps`` continues a finished stage (the learning-rate schedule is a function of
(step, total steps), so it is recomputed for the new total). Ctrl-C, SIGTERM or a file
``<out>/STOP`` saves a checkpoint and exits cleanly, without the export (``--export-only``
writes one from those checkpoints); remove the STOP file before training again (an invocation
that finds one refuses to start). Options cannot be abbreviated.

Examples::

    ORL_GYM_DATA=../shared/data python experiments/train_ldm.py --out /tmp/ldm --vq-steps 6000 \\
        --unet-steps 20000
    python experiments/train_ldm.py --out /tmp/ldm --export-only --export orl_gym/assets/ldm-sr-tiny-x4
    # a 4x wider UNet on /tmp/ldm's autoencoder
    python experiments/train_ldm.py --out /tmp/ldm_wide --init-from /tmp/ldm --stages unet \\
        --unet-channels 64,128,128
    # fine-tune the shipped model's UNet (its autoencoder frozen) for 2,000 steps
    ORL_GYM_DATA=../shared/data python experiments/train_ldm.py --out /tmp/ft --init-from bundled \\
        --init-stages vq,unet --stages unet --unet-steps 2000 --unet-lr 2e-4 --unet-warmup 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from orl_gym.data import DATA_ENV_VAR, DataConfig, PairDataset
from orl_gym.models import (
    LATENT_TARGET_KINDS,
    LDMSR,
    LatentTarget,
    LDMSRArchitecture,
    bundled_model_path,
    checkpoint_digest,
    load_ldmsr,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _bools(text: str) -> tuple[bool, ...]:
    return tuple(v.strip().lower() in ("1", "true", "t", "yes") for v in text.split(","))


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as run_config.json next to the checkpoints."""

    out: str
    data: str | None = None
    device: str = "cpu"
    threads: int = 0
    seed: int = 0
    # architecture (fixed by the first invocation; a resume checks it matches)
    latent_channels: int = 3
    vq_channels: tuple[int, ...] = (16, 32, 64)
    vq_layers_per_block: int = 1
    codebook_size: int = 8192
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    vq_mid_attention: bool = False
    unet_mid_attention: bool = False
    norm_num_groups: int = 8
    # What the VQ autoencodes (orl_gym.models.LatentTarget): "image" (the CompVis format) or
    # "residual" (s * (HR - bicubic(LR)), decoded as bicubic(LR) + D(z) / s); fixed by the first
    # invocation like the architecture. The scale: the training crops' residual std is ~0.08, so
    # 5 gives the VQ inputs of about an image's std in [-1, 1] (0.41).
    latent_target: str = "image"
    residual_scale: float = 5.0
    # stage 1: VQ autoencoder
    vq_steps: int = 8000
    vq_minutes: float = 0.0
    vq_batch_size: int = 32
    vq_crop: int = 32
    vq_lr: float = 2e-3
    vq_min_lr_ratio: float = 0.05
    vq_warmup: int = 100
    vq_l1_weight: float = 1.0
    vq_mse_weight: float = 1.0
    vq_codebook_weight: float = 1.0
    vq_commit_beta: float = 0.25
    vq_restart_every: int = 50
    # stage 1b: decoder fine-tuning (frozen encoder and codebook)
    decoder_steps: int = 3000
    decoder_minutes: float = 0.0
    decoder_batch_size: int = 6
    decoder_crop: int = 128
    decoder_lr: float = 5e-4
    decoder_min_lr_ratio: float = 0.05
    decoder_warmup: int = 50
    # stage 2: UNet
    unet_steps: int = 8000
    unet_minutes: float = 0.0
    unet_batch_size: int = 64
    # 64 made the UNets of the bundled model until commit 7bbc94a (their cards' commands rely on
    # this default). 128 at the same batch trains better at the same size (+0.42 / +0.30 dB DDIM
    # 100 on validation, less colour cast: experiments/results/compare_unet_crop128.md); the
    # bundled UNet since then was trained with --unet-crop 128.
    unet_crop: int = 64
    unet_lr: float = 1e-3
    unet_min_lr_ratio: float = 0.05
    unet_warmup: int = 200
    ema_decay: float = 0.999
    # What the UNet predicts; fixed by the stage's first invocation (a resume checks it). With the
    # reference schedule abar_T = 7e-4, so an epsilon model's z_0 estimate at high t is its epsilon
    # error times sqrt((1 - abar) / abar) ~ 38: v / sample keep that estimate bounded.
    prediction_type: str = "epsilon"
    # Extra weight on the low-frequency part of the z_0 estimate's error: MSE between the
    # estimate and z_0 after average-pooling over unet_lowfreq_pool x unet_lowfreq_pool latent
    # cells. Plain MSE weights every frequency alike, so a per-image colour offset (a few latent
    # cells' worth of energy out of the whole crop) barely moves the loss, yet it costs PSNR over
    # the whole image. 0: plain MSE to the target. May change between invocations (recorded).
    # Tried on the bundled model (3,000 fine-tuning steps at weight 10): the colour cast did not
    # move (experiments/results/compare_lowfreq_finetune.md), nor at pool 2 weight 100 or pool 4
    # weight 300 (compare_lowfreq_strong.md, SSIM / LPIPS worse); kept as a knob for bigger models.
    unet_lowfreq_weight: float = 0.0
    unet_lowfreq_pool: int = 4
    # Input perturbation against exposure bias (DDPM-IP, Ning et al. 2023; diffusers' training
    # examples call it input_perturbation): the UNet sees z_t built from noise + gamma * xi (xi a
    # second standard normal) but learns the target of the unperturbed noise, so at sampling time
    # it has seen inputs as off the training distribution as its own earlier estimates make them.
    # 0: off. May change between invocations (recorded, like the low-frequency weight).
    # Tried on the bundled model (gamma 0.1, from scratch and as a fine-tuning): no gain; its
    # colour cast is in single predictions, not built along the trajectory
    # (experiments/results/compare_input_perturbation_*.md, diagnose_colour_offset.md).
    unet_input_perturbation: float = 0.0
    # common
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_every: int = 250
    val_images: int = 24
    val_crop: int = 128
    checkpoint_every: int = 100
    max_minutes: float = 0.0
    export: str | None = None
    export_dtype: str = "float16"
    export_only: bool = False
    no_export: bool = False
    stages: str = "vq,unet"
    init_from: str | None = None
    init_stages: str = "vq,decoder"
    progress: bool = True

    @property
    def architecture(self) -> LDMSRArchitecture:
        return LDMSRArchitecture(
            latent_channels=self.latent_channels, vq_channels=tuple(self.vq_channels),
            vq_layers_per_block=self.vq_layers_per_block, num_vq_embeddings=self.codebook_size,
            unet_channels=tuple(self.unet_channels), unet_layers_per_block=self.unet_layers_per_block,
            attention_levels=tuple(self.attention_levels), vq_mid_attention=self.vq_mid_attention,
            unet_mid_attention=self.unet_mid_attention, norm_num_groups=self.norm_num_groups,
            latent_target=self.target,
            scheduler={**LDMSRArchitecture().scheduler, "prediction_type": self.prediction_type},
        )


    @property
    def target(self) -> LatentTarget:
        return LatentTarget(kind=self.latent_target,
                            residual_scale=self.residual_scale if self.latent_target == "residual" else 1.0)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# The card's wording of each UNet objective.
PREDICTION_OBJECTIVES = {
    "epsilon": "epsilon-prediction MSE",
    "v_prediction": "v-prediction MSE (v = sqrt(abar) eps - sqrt(1 - abar) z0)",
    "sample": "z0-prediction MSE",
}

ARCH_FIELDS = ("latent_channels", "vq_channels", "vq_layers_per_block", "codebook_size",
               "unet_channels", "unet_layers_per_block", "attention_levels", "vq_mid_attention",
               "unet_mid_attention", "norm_num_groups", "latent_target", "residual_scale")
# The fields a copied stage fixes (--init-from): the VQ's (norm_num_groups is shared by both
# networks) and, when the UNet is copied too, the UNet's and its target.
VQ_ARCH_FIELDS = ("latent_channels", "vq_channels", "vq_layers_per_block", "codebook_size",
                  "vq_mid_attention", "norm_num_groups", "latent_target", "residual_scale")
UNET_ARCH_FIELDS = ("unet_channels", "unet_layers_per_block", "attention_levels",
                    "unet_mid_attention", "norm_num_groups", "prediction_type")
# Settings of one invocation, not of the run: a resume that leaves them out gets the CLI default.
# ("no_progress" is how --no-progress appears among the given options.) --init-from acts once, at
# the run's start (init_from.json and the card's notes keep the lineage): carried over, a relative
# source path would be checked again against another working directory on every resume.
PER_INVOCATION_FIELDS = ("out", "device", "threads", "progress", "no_progress", "max_minutes",
                         "export", "export_only", "no_export", "init_from", "init_stages")
# What --init-from copies for each stage (the latents cache belongs to the VQ that encoded it).
INIT_FILES = {"vq": ("vq/checkpoint.pt", "unet/latents.pt"), "decoder": ("decoder/checkpoint.pt",),
              "unet": ("unet/checkpoint.pt",)}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> TrainConfig (every default is the TrainConfig default, shown by --help)."""
    d = TrainConfig(out="")
    # No prefix abbreviations: resolve_config reads the given option names from argv, so an
    # abbreviated one (--unet-chan) would be taken as not given and silently reset on resume.
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, export")
    p.add_argument("--data", default=d.data, help="data source for orl_gym.data (None: $ORL_GYM_DATA)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: all cores)")
    p.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("architecture (first invocation only)")
    g.add_argument("--latent-channels", type=int, default=d.latent_channels)
    g.add_argument("--vq-channels", type=_ints, default=d.vq_channels, help="comma list; 3 levels = x4")
    g.add_argument("--vq-layers-per-block", type=int, default=d.vq_layers_per_block)
    g.add_argument("--codebook-size", type=int, default=d.codebook_size)
    g.add_argument("--unet-channels", type=_ints, default=d.unet_channels)
    g.add_argument("--unet-layers-per-block", type=int, default=d.unet_layers_per_block)
    g.add_argument("--attention-levels", type=_bools, default=d.attention_levels,
                   help="comma list of booleans, one per UNet level")
    g.add_argument("--vq-mid-attention", action="store_true",
                   help="keep the VQ's mid-block self-attention (off: fully convolutional)")
    g.add_argument("--unet-mid-attention", action="store_true",
                   help="keep the UNet's mid-block self-attention")
    g.add_argument("--norm-num-groups", type=int, default=d.norm_num_groups)
    g.add_argument("--latent-target", default=d.latent_target, choices=LATENT_TARGET_KINDS,
                   help="what the VQ autoencodes: the HR image (CompVis format) or the residual over "
                        "bicubic(LR), s * (HR - up(LR)) (LR-anchored; orl_gym.models.LatentTarget)")
    g.add_argument("--residual-scale", type=float, default=d.residual_scale,
                   help="s of the residual target (unused for images)")
    g = p.add_argument_group("stage 1: VQ autoencoder")
    g.add_argument("--vq-steps", type=int, default=d.vq_steps, help="total optimizer steps")
    g.add_argument("--vq-minutes", type=float, default=d.vq_minutes,
                   help="training-time budget of the stage, over all resumes (0: steps only); "
                   "the stage ends at whichever limit comes first, the LR decays with it")
    g.add_argument("--vq-batch-size", type=int, default=d.vq_batch_size)
    g.add_argument("--vq-crop", type=int, default=d.vq_crop, help="HR crop side (px)")
    g.add_argument("--vq-lr", type=float, default=d.vq_lr, help="peak AdamW learning rate")
    g.add_argument("--vq-min-lr-ratio", type=float, default=d.vq_min_lr_ratio,
                   help="cosine decay ends at lr * ratio")
    g.add_argument("--vq-warmup", type=int, default=d.vq_warmup, help="linear warm-up steps")
    g.add_argument("--vq-l1-weight", type=float, default=d.vq_l1_weight)
    g.add_argument("--vq-mse-weight", type=float, default=d.vq_mse_weight)
    g.add_argument("--vq-codebook-weight", type=float, default=d.vq_codebook_weight)
    g.add_argument("--vq-commit-beta", type=float, default=d.vq_commit_beta)
    g.add_argument("--vq-restart-every", type=int, default=d.vq_restart_every,
                   help="re-seed codes unused for this many steps (0: never)")
    g = p.add_argument_group("stage 1b: decoder fine-tuning (encoder and codebook frozen)")
    g.add_argument("--decoder-steps", type=int, default=d.decoder_steps, help="total optimizer steps")
    g.add_argument("--decoder-minutes", type=float, default=d.decoder_minutes,
                   help="training-time budget in minutes (0: steps only)")
    g.add_argument("--decoder-batch-size", type=int, default=d.decoder_batch_size)
    g.add_argument("--decoder-crop", type=int, default=d.decoder_crop,
                   help="HR crop side (px); larger than --vq-crop so GroupNorm sees image-sized context")
    g.add_argument("--decoder-lr", type=float, default=d.decoder_lr)
    g.add_argument("--decoder-min-lr-ratio", type=float, default=d.decoder_min_lr_ratio)
    g.add_argument("--decoder-warmup", type=int, default=d.decoder_warmup)
    g = p.add_argument_group("stage 2: conditional UNet")
    g.add_argument("--unet-steps", type=int, default=d.unet_steps, help="total optimizer steps")
    g.add_argument("--unet-minutes", type=float, default=d.unet_minutes,
                   help="training-time budget of the stage (as --vq-minutes)")
    g.add_argument("--unet-batch-size", type=int, default=d.unet_batch_size)
    g.add_argument("--unet-crop", type=int, default=d.unet_crop, help="HR crop side (px); latent = /4")
    g.add_argument("--unet-lr", type=float, default=d.unet_lr)
    g.add_argument("--unet-min-lr-ratio", type=float, default=d.unet_min_lr_ratio)
    g.add_argument("--unet-warmup", type=int, default=d.unet_warmup)
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="UNet weight EMA (0: off)")
    g.add_argument("--prediction-type", default=d.prediction_type, choices=PREDICTION_TYPES,
                   help="UNet target (written to the scheduler config); fixed per UNet run")
    g.add_argument("--unet-lowfreq-weight", type=float, default=d.unet_lowfreq_weight,
                   help="extra loss weight on the MSE of the average-pooled z0 estimate (0: off); "
                   "may change on resume, the card records from which step")
    g.add_argument("--unet-lowfreq-pool", type=int, default=d.unet_lowfreq_pool,
                   help="pooling window of that term, in latent cells (x4 HR pixels)")
    g.add_argument("--unet-input-perturbation", type=float, default=d.unet_input_perturbation,
                   help="gamma of DDPM-IP input perturbation (z_t from noise + gamma * N(0, I), target "
                        "from noise; 0.1 in the paper; 0: off)")
    g = p.add_argument_group("common")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max grad norm (0: off)")
    g.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations")
    g.add_argument("--val-images", type=int, default=d.val_images, help="validation-split images")
    g.add_argument("--val-crop", type=int, default=d.val_crop,
                   help="side of the VQ validation center crops (px)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--max-minutes", type=float, default=d.max_minutes,
                   help="stop (checkpointed) after this much wall time in this invocation (0: no limit)")
    g.add_argument("--stages", default=d.stages, help="comma list of stages to run: vq, decoder, unet")
    g.add_argument("--init-from", default=d.init_from,
                   help="start a new run from this run folder's checkpoints of --init-stages "
                        "(copied; its architecture is the default), or from the weights of a "
                        "diffusers LDM-SR folder ('bundled' for the shipped model): fine-tuning "
                        "then starts at step 0 with a fresh optimizer and schedule")
    g.add_argument("--init-stages", default=d.init_stages,
                   help="with --init-from: comma list of stages to copy (vq, decoder, unet); "
                        "decoder / unet are skipped where the source has none (a diffusers "
                        "folder's VQ includes its decoder)")
    g.add_argument("--export", default=d.export,
                   help="also write the diffusers folder here (default: <out>/export)")
    g.add_argument("--export-dtype", default=d.export_dtype, choices=("float16", "float32"))
    g.add_argument("--export-only", action="store_true", help="export the checkpoints, no training")
    g.add_argument("--no-export", action="store_true", help="train only, no export at the end")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    return TrainConfig(**vars(p.parse_args(argv)))


# --------------------------------------------------------------------------- utilities


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, then os.replace: a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def lr_at(step: int, *, peak: float, warmup: int, progress: float, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps times a cosine decay from ``peak`` (progress 0) to
    ``peak * min_ratio`` (progress 1); ``progress`` is the stage's fraction done (StageClock)."""
    progress = min(1.0, max(0.0, progress))
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return peak * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class StageClock:
    """How far a stage is: steps and training wall time summed over all resumes.

    A stage ends at ``max_steps`` or, when ``minutes`` > 0, after that much training time,
    whichever comes first; the learning-rate decay follows the same fraction. A time budget
    suits shared CPUs, whose speed changes with the load: the schedule still ends decayed.
    """

    def __init__(self, max_steps: int, minutes: float, seconds_before: float = 0.0) -> None:
        self.max_steps, self.minutes, self.seconds_before = max_steps, minutes, seconds_before
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def progress(self, step: int) -> float:
        by_steps = step / max(1, self.max_steps)
        by_time = self.seconds / (self.minutes * 60) if self.minutes > 0 else 0.0
        return max(by_steps, by_time)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of images in [0, 1]."""
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def reconstructed_image(target: LatentTarget, rec: torch.Tensor, hr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The HR image a reconstruction ``rec`` of the VQ input ``x`` stands for, in [0, 1]. For the
    residual target the anchor is recovered from the batch itself (``hr - x / s``: the
    augmented crops' own bicubic upsampling), so no LR image has to travel with the batch."""
    if not target.is_residual:
        return target.image(rec, None)
    anchor = hr.to(rec.device) - x.to(rec.device) / target.residual_scale
    return (anchor + rec / target.residual_scale).clamp(0.0, 1.0)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (the 8 symmetries; aerial scenes have no up)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    images = torch.rot90(images, k, dims=(-2, -1))
    return images.flip(-1) if flip % 2 else images


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Loss (and validation) curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h) for h in history if "val" in h]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        steps, losses = zip(*train, strict=True)
        axes[0].plot(steps, losses, lw=0.5, alpha=0.4, label="train loss")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        axes[0].plot(steps, smooth, lw=1.2, label=f"mean of {window}")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].legend()
    if val:
        steps, entries = zip(*val, strict=True)
        axes[1].plot(steps, [e["val"] for e in entries], marker="o")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel(val[0][1].get("val_name", "validation"))
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


class StopFlag:
    """Set by SIGTERM / SIGINT / an ``<out>/STOP`` file / the wall-time limit: save and exit."""

    def __init__(self, out: Path, max_minutes: float) -> None:
        self.out, self.reason = out, ""
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes > 0 else math.inf
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def close(self) -> None:
        """Put the previous signal handlers back (main() may run inside another program)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name

    def __bool__(self) -> bool:
        if not self.reason and (self.out / "STOP").exists():
            self.reason = "STOP file"
        if not self.reason and time.monotonic() > self.deadline:
            self.reason = "--max-minutes"
        return bool(self.reason)


# --------------------------------------------------------------------------- model I/O


def build_model(cfg: TrainConfig) -> LDMSR:
    """A random model of the configured size.

    Mid-block self-attention is optional (off by default) in both networks: a model trained on
    small crops attends over 64 tokens but over 4,096 on a whole 256x256 image, so attention is a
    train/test mismatch for full-image inference, and on the CPU it is quadratic in image area.
    Dropping it keeps both networks fully convolutional (the diffusers configs record it, so the
    pipeline and load_ldmsr rebuild the same modules).

    The flags go to the constructors. (Until 2026-11-26 this function rebuilt the networks with
    ``from_config({**config, "mid_block_add_attention": False})``, which diffusers ignores for
    keys that were defaults at construction (``_use_default_values``): runs trained before then,
    the bundled model's included, have both attention layers whatever their config says.)
    """
    return cfg.architecture.build(seed=cfg.seed, device=cfg.device)


def load_checked(module: torch.nn.Module, state: dict, what: str) -> None:
    """``load_state_dict`` with an error that says which architecture flag disagrees."""
    expected, found = set(module.state_dict()), set(state)
    if expected != found:
        def attention(keys: set[str]) -> str:
            return "with" if any(".mid_block.attentions." in k for k in keys) else "without"

        extra, missing = sorted(found - expected), sorted(expected - found)
        raise RuntimeError(
            f"{what}: the checkpoint does not fit the configured network (checkpoint "
            f"{attention(found)} mid-block attention, network {attention(expected)}; unexpected "
            f"{extra[:3]}, missing {missing[:3]}). If only the attention differs, the run was trained "
            f"{attention(found)} it: set vq_mid_attention / unet_mid_attention to match in the run's "
            "run_config.json (runs trained before 2026-11-26 have it, whatever their config says)"
        )
    module.load_state_dict(state)


def load_vq_weights(model: LDMSR, vq_ckpt: dict) -> None:
    load_checked(model.vqvae, vq_ckpt["model"], "VQ checkpoint")


def load_unet_weights(model: LDMSR, unet_ckpt: dict, *, ema: bool = True) -> None:
    load_checked(model.unet, unet_ckpt["model"], "UNet checkpoint")
    if ema and unet_ckpt.get("ema") is not None:
        shadow = EMAModel(model.unet.parameters())
        shadow.load_state_dict(unet_ckpt["ema"])
        shadow.copy_to(model.unet.parameters())


TRAIN_BEGIN, TRAIN_END = "<!-- train:begin -->", "<!-- train:end -->"
EVAL_BEGIN, EVAL_END = "<!-- eval:begin -->", "<!-- eval:end -->"


def _last_val(history: list[dict]) -> float | None:
    vals = [h["val"] for h in history if "val" in h]
    return vals[-1] if vals else None


def attention_description(state: dict) -> str:
    """Where a network has self-attention, read from its weights (not from the config)."""
    blocks = list(dict.fromkeys(k.split(".attentions.")[0] for k in state if ".attentions." in k))
    if not blocks:
        return "no self-attention (fully convolutional)"
    return "self-attention in the " + ", ".join(b.replace(".", " ").replace("_", "-") for b in blocks)


def architecture_sentence(vq_state: dict, unet_state: dict | None) -> str:
    """The card's statement about whole-image inference, true to the weights."""
    states = [vq_state] + ([unet_state] if unet_state else [])
    if not any(".attentions." in k for state in states for k in state):
        return ("Both networks are fully convolutional (no self-attention), so a model trained on small "
                "crops runs on whole images; ")
    return ("Both networks are convolutional apart from their self-attention layers (VQ: "
            f"{attention_description(vq_state)}; UNet: "
            f"{attention_description(unet_state) if unet_state else 'not trained'}), which take any "
            "number of tokens, so a model trained on small crops runs on whole images (attending over "
            "more tokens than in training: the evaluation below is on whole images); ")


def decoder_facts(decoder_ckpt: dict) -> list[str]:
    """The card's paragraph on stage 1b (decoder fine-tuning)."""
    c = decoder_ckpt["config"]
    vals = [h for h in decoder_ckpt["history"] if "val" in h]
    best_step = max(vals, key=lambda h: h["val"])["step"]
    return [
        "",
        f"Stage 1b, decoder fine-tuning: `post_quant_conv` + decoder trained further with the "
        f"encoder, `quant_conv` and codebook frozen (the latents the UNet learned are unchanged), "
        f"L1 x {c['vq_l1_weight']} + MSE x {c['vq_mse_weight']} through the quantizing "
        f"`vqvae.decode`, random {c['decoder_crop']}x{c['decoder_crop']} HR crops (GroupNorm then "
        f"sees image-sized statistics, unlike stage 1's {c['vq_crop']} px crops), batch "
        f"{c['decoder_batch_size']}, AdamW lr {c['decoder_lr']:g} cosine to x{c['decoder_min_lr_ratio']:g}; "
        f"{decoder_ckpt['step']} steps, {decoder_ckpt.get('seconds', 0) / 60:.0f} min. Validation PSNR "
        f"{vals[0]['val']:.2f} dB (stage-1 decoder) -> {decoder_ckpt['best_val']:.2f} dB; the "
        f"best-validation weights (step {best_step}) are the ones exported.",
    ]


def training_facts(cfg: TrainConfig, vq_ckpt: dict, unet_ckpt: dict | None,
                   decoder_ckpt: dict | None = None) -> str:
    """The card's training section, from the checkpoints and the saved run record."""
    record_path = Path(cfg.out) / "run_config.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    vq_cfg = vq_ckpt.get("config", asdict(cfg))
    lines = [
        "| | VQ autoencoder (stage 1) | conditional UNet (stage 2) |",
        "|---|---|---|",
    ]
    unet_cfg = unet_ckpt.get("config", asdict(cfg)) if unet_ckpt else None

    # Checkpoints imported by --init-from from a diffusers folder and not trained since.
    vq_imported = vq_ckpt.get("imported_from") is not None
    unet_imported = unet_ckpt is not None and unet_ckpt.get("imported_from") is not None
    imported = "imported (--init-from), not trained in this run"

    def row(name: str, vq_value: str, unet_value: str) -> None:
        if name != "architecture":
            vq_value = imported if vq_imported else vq_value
            unet_value = imported if unet_imported else unet_value
        lines.append(f"| {name} | {vq_value} | {unet_value if unet_ckpt else 'not trained'} |")

    arch = cfg.architecture
    vq_params = sum(p.numel() for p in vq_ckpt["model"].values()) / 1e6
    unet_params = (sum(p.numel() for p in unet_ckpt["model"].values()) / 1e6) if unet_ckpt else 0
    row("architecture", f"diffusers VQModel, block_out_channels {arch.vq_channels}, "
        f"{arch.vq_layers_per_block} layer/block, {arch.latent_channels} latent channels, "
        f"{arch.num_vq_embeddings} codes, {attention_description(vq_ckpt['model'])} "
        f"({vq_params:.2f} M params)",
        f"diffusers UNet2DModel, in 6 (latent + LR) / out 3, block_out_channels "
        f"{arch.unet_channels}, {arch.unet_layers_per_block} layer/block, "
        f"{attention_description(unet_ckpt['model']) if unet_ckpt else ''} ({unet_params:.2f} M params)")
    row("objective", f"L1 x {vq_cfg['vq_l1_weight']} + MSE x {vq_cfg['vq_mse_weight']} + codebook + "
        f"{vq_cfg['vq_commit_beta']} x commitment; dead codes re-seeded every "
        f"{vq_cfg['vq_restart_every']} steps",
        f"{objective_description(unet_ckpt) if unet_ckpt else ''}, "
        "t uniform in [0, 1000), DDPMScheduler.add_noise, scaled_linear "
        "0.0015..0.0155 (the reference schedule), on pre-quantization latents of the frozen VQ")
    vq_target = vq_cfg.get("latent_target", "image")
    vq_input = ("the residuals HR - bicubic(LR) of random "
                f"{vq_cfg['vq_crop']}x{vq_cfg['vq_crop']} crops, x {vq_cfg.get('residual_scale', 5.0):g}"
                if vq_target == "residual" else
                f"random {vq_cfg['vq_crop']}x{vq_cfg['vq_crop']} HR crops")
    row("input", f"{vq_input}, flips / 90-degree rotations, batch " + str(vq_cfg["vq_batch_size"]),
        (f"aligned random crops of whole-image latents + LR: {unet_cfg['unet_crop'] // 4}x"
         f"{unet_cfg['unet_crop'] // 4} latent ({unet_cfg['unet_crop']}x{unet_cfg['unet_crop']} HR), batch "
         f"{unet_cfg['unet_batch_size']}") if unet_cfg else "")
    row("optimizer", f"AdamW lr {vq_cfg['vq_lr']:g}, warm-up {vq_cfg['vq_warmup']}, cosine to "
        f"x{vq_cfg['vq_min_lr_ratio']:g}, weight decay {vq_cfg['weight_decay']:g}, grad clip "
        f"{vq_cfg['grad_clip']:g}",
        (f"AdamW lr {unet_cfg['unet_lr']:g}, warm-up {unet_cfg['unet_warmup']}, cosine to "
         f"x{unet_cfg['unet_min_lr_ratio']:g}; weights exported: EMA decay {unet_cfg['ema_decay']:g}")
        if unet_cfg else "")
    row("steps", str(vq_ckpt["step"]), str(unet_ckpt["step"]) if unet_ckpt else "")
    row("training wall time", f"{vq_ckpt.get('seconds', 0) / 60:.0f} min",
        f"{unet_ckpt.get('seconds', 0) / 60:.0f} min (+ encoding the training set once)"
        if unet_ckpt else "")
    vq_val = _last_val(vq_ckpt["history"])
    unet_val = _last_val(unet_ckpt["history"]) if unet_ckpt else None
    val_crop = vq_cfg.get("val_crop", cfg.val_crop)
    unet_weights = "EMA weights" if unet_ckpt and unet_ckpt.get("ema") is not None else "raw weights, no EMA"
    row("validation at the end",
        f"{vq_val:.2f} dB PSNR ({vq_cfg.get('val_images', cfg.val_images)} center {val_crop}x{val_crop} crops"
        f"{', bicubic + reconstructed residual' if vq_target == 'residual' else ''})"
        if vq_val else "n/a",
        f"{VAL_NAMES[unet_prediction_type(unet_ckpt)]} {unet_val:.4f} ({unet_weights}, fixed crops / t / "
        "noise)" if unet_val else "n/a")
    machine = (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, "
               f"{record.get('threads', '?')} torch thread(s), nice {record.get('niceness', 10)}, "
               "shared with other jobs")
    # The training invocation's device (the record's), not an --export-only's.
    device = record.get("config", {}).get("device", cfg.device)
    if device != "cpu":
        machine = device
    log_path = Path(cfg.out) / "commands.log"
    commands = [line.strip() for line in (log_path.read_text().splitlines() if log_path.exists() else [])
                if line.strip() and "--export-only" not in line]
    # Free-text remarks about the run (e.g. an interruption) that belong in the card.
    notes_path = Path(cfg.out) / "card_notes.md"
    notes = ["", notes_path.read_text().strip()] if notes_path.exists() else []
    source = cfg.data or os.environ.get(DATA_ENV_VAR)
    folders = {p.name for p in Path(source).iterdir() if p.is_dir()} if source and Path(source).is_dir() else set()
    if folders == {"ucmerced", "aid150"}:
        data = "`$ORL_GYM_DATA` = UC Merced Land Use (256x256, ~0.3 m/px) + AID (150x150 copy, ~2 m/px)"
    else:
        data = f"`{source}`" if source else "RESISC45 from the hub"
    return "\n".join([
        f"Data: the `train` split of {data}, split per image by orl_gym.data's seeded identity hash "
        "(train 0.7 / validation 0.1 / test 0.2, split_seed 0); validation images for model "
        "selection, test images only for the evaluation below. LR = antialiased bicubic x4 "
        "downsampling of HR, 8-bit.",
        "",
        *lines,
        *(decoder_facts(decoder_ckpt) if decoder_ckpt else []),
        "",
        f"Machine: {machine}; torch {torch.__version__}. The resolved configuration is stored in "
        "every checkpoint. Training invocations of the run (each resumes the previous one):",
        "",
        "```",
        *commands,
        "```",
        *notes,
    ])


def card_format_section(target: LatentTarget) -> list[str]:
    """The card's paragraph on the checkpoint's format and how to load it."""
    if not target.is_residual:
        return [
            "The default model of orl_gym's CPU presets, trained by `experiments/train_ldm.py` on real "
            "aerial imagery. Same format as `CompVis/ldm-super-resolution-4x-openimages` "
            "(diffusers `LDMSuperResolutionPipeline`: VQModel f = 4 with 3 latent channels, "
            "UNet2DModel on concat(latent, LR) with 6 input channels, DDIM scheduler), so the same "
            "code runs both. Weights are stored in float16 to keep the package small; both loaders "
            "give float32 modules on the CPU:",
            "",
            "```python",
            "from orl_gym.models import bundled_model_path, load_ldmsr",
            "model = load_ldmsr(\"bundled\")  # float32",
            "from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (",
            "    LDMSuperResolutionPipeline)",
            "pipe = LDMSuperResolutionPipeline.from_pretrained(bundled_model_path(), dtype=torch.float32)",
            "# lr: (B, 3, h, w) in [0, 1]; the pipeline takes tensors in [-1, 1]",
            "sr = pipe(lr * 2 - 1, num_inference_steps=100, eta=0.0, output_type=\"pt\").images",
            "```",
            "",
        ]
    return [
        "The default model of orl_gym's CPU presets, trained by `experiments/train_ldm.py` on real "
        "aerial imagery. An LR-anchored (residual) latent-diffusion model: the components are "
        "diffusers' (VQModel f = 4 with 3 latent channels, UNet2DModel on concat(latent, LR) with 6 "
        "input channels, DDIM scheduler) in the folder layout of "
        "`CompVis/ldm-super-resolution-4x-openimages`, but the VQ autoencodes the residual over "
        f"the bicubic upsampling of the LR input, scaled by s = {target.residual_scale:g}: "
        "z_0 = E(s (HR - bicubic(LR))), and an image is bicubic(LR) + D(z_0) / s "
        "(`latent_target.json`; `orl_gym.models.LatentTarget`). A zero residual is exactly bicubic. "
        "`LDMSuperResolutionPipeline` would show the residual as the image, so it cannot run this "
        "model; orl_gym's sampler and env do. Weights are stored in float16 to keep the package "
        "small; the loader gives float32 modules on the CPU:",
        "",
        "```python",
        "import torch",
        "from orl_gym import sampler",
        "from orl_gym.models import load_ldmsr",
        "model = load_ldmsr(\"bundled\")  # float32",
        "schedule = sampler.Schedule.from_model(model, 20)",
        "# lr: (B, 3, h, w) in [0, 1]",
        "state = sampler.init_state(model, schedule, lr, sampler.make_generators(range(len(lr))))",
        "while not bool(state.done(schedule).all()):",
        "    state = sampler.step(model, schedule, state, sampler.StepParams()).state",
        "sr = sampler.decode(model, state)  # bicubic(LR) + residual, (B, 3, 4h, 4w)",
        "```",
        "",
    ]


def training_hours(*ckpts: dict | None) -> str:
    """The stages' summed training wall time (checkpoint ``seconds``), in words for the card."""
    hours = sum(c.get("seconds", 0.0) for c in ckpts if c) / 3600
    return f"about {hours:.1f} hours (the stages' wall time summed)"


def model_card(cfg: TrainConfig, vq_ckpt: dict, unet_ckpt: dict | None, old_card: str | None,
               decoder_ckpt: dict | None = None) -> str:
    """The model card: fixed text, the training section (regenerated) and the evaluation
    section of ``old_card`` (kept until eval_base_model.py rewrites it; the caller passes an old
    card only when its evaluation is of the same weights)."""
    evaluation = (f"{EVAL_BEGIN}\nNot measured for these weights yet: run `experiments/eval_base_model.py`.\n"
                  f"{EVAL_END}")
    if old_card and EVAL_BEGIN in old_card and EVAL_END in old_card:
        evaluation = EVAL_BEGIN + old_card.split(EVAL_BEGIN, 1)[1].split(EVAL_END, 1)[0] + EVAL_END
    return "\n".join([
        "# ldm-sr-tiny-x4: a tiny latent-diffusion x4 super-resolution model for aerial images",
        "",
        *card_format_section(cfg.target),
        architecture_sentence(vq_ckpt["model"], unet_ckpt["model"] if unet_ckpt else None)
        + "the LR side must be a multiple of 4 (the UNet's three levels), i.e. HR a multiple of 16.",
        "",
        "## Training",
        "",
        TRAIN_BEGIN,
        training_facts(cfg, vq_ckpt, unet_ckpt, decoder_ckpt),
        TRAIN_END,
        "",
        "## Evaluation",
        "",
        evaluation,
        "",
        "## Limitations",
        "",
        f"A small model trained for {training_hours(vq_ckpt, unet_ckpt, decoder_ckpt)} on a 2-core CPU"
        + (" (this run; the imported autoencoder's own training is in the source card quoted above)"
           if vq_ckpt.get("imported_from") else "") + ": "
        "it is a stand-in that "
        "makes the environment run anywhere, not a state-of-the-art super-resolver. Trained on "
        "two aerial datasets at two ground resolutions with plain bicubic degradation; other "
        "imagery or degradations are out of distribution. Data licences: UC Merced (USGS "
        "National Map, public domain), AID (Google Earth imagery, research use); cite the "
        "dataset papers (Yang & Newsam 2010; Xia et al. 2017).",
        "",
    ])


def export(cfg: TrainConfig, folder: Path) -> Path:
    """Write the diffusers pipeline folder from the checkpoints (UNet EMA weights when kept).

    Written to a temp folder first and swapped in, then loaded back in float32 as a check.
    """
    out = Path(cfg.out)
    vq_path, unet_path = out / "vq" / "checkpoint.pt", out / "unet" / "checkpoint.pt"
    if not vq_path.exists():
        raise FileNotFoundError(f"export: no VQ checkpoint at {vq_path}")
    unet_ckpt = torch.load(unet_path, map_location="cpu", weights_only=False) if unet_path.exists() else None
    # The scheduler config says what the exported UNet predicts: the checkpoint's, not the command line's.
    prediction_type = unet_prediction_type(unet_ckpt) if unet_ckpt else cfg.prediction_type
    model = build_model(TrainConfig(**{**asdict(cfg), "device": "cpu", "prediction_type": prediction_type}))
    vq_ckpt = torch.load(vq_path, map_location="cpu", weights_only=False)
    load_vq_weights(model, vq_ckpt)
    decoder_path = out / "decoder" / "checkpoint.pt"
    decoder_ckpt = (torch.load(decoder_path, map_location="cpu", weights_only=False)
                    if decoder_path.exists() else None)
    if decoder_ckpt is not None:
        load_decoder_weights(model.vqvae, vq_ckpt, decoder_ckpt)
    unet_step = 0
    if unet_ckpt is not None and unet_ckpt["vq_step"] != vq_ckpt["step"]:
        # Training refuses this UNet too: it was trained on the latents of another VQ.
        raise SystemExit(
            f"export: the UNet in {unet_path} was trained on the VQ at step {unet_ckpt['vq_step']}, "
            f"but the VQ in {vq_path} is at step {vq_ckpt['step']}: its latents changed. Move "
            f"{unet_path} away and train the UNet again on this VQ (--stages unet), then export")
    if unet_ckpt is not None:
        load_unet_weights(model, unet_ckpt)
        unet_step = unet_ckpt["step"]
    else:
        print("export: no UNet checkpoint yet: the UNet in the export is untrained", file=sys.stderr)
    if cfg.export_dtype == "float16":
        # Stored in fp16 to keep the package small; loaders cast back to float32 on the CPU.
        model.vqvae.half()
        model.unet.half()
    folder = folder.resolve()
    tmp = folder.with_name(folder.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    info = {"vq_step": vq_ckpt["step"], "unet_step": unet_step, "dtype": cfg.export_dtype,
            "vq_val_psnr": vq_ckpt.get("best_val"),
            "decoder_step": decoder_ckpt["step"] if decoder_ckpt else None,
            "decoder_val_psnr": decoder_ckpt["best_val"] if decoder_ckpt else None}
    (tmp / "training_state.json").write_text(json.dumps(info, indent=2) + "\n")
    old_card = (folder / "README.md").read_text() if (folder / "README.md").exists() else None
    # The previous card's evaluation (and eval_results.json, the numbers behind its table) stays
    # only if it was measured on exactly these weights; new weights start "not measured".
    results_path = folder / "eval_results.json"
    measured = json.loads(results_path.read_text()).get("setup", {}).get("weights_sha256") if results_path.exists() else None
    same_weights = measured is not None and measured == checkpoint_digest(tmp)
    if results_path.exists() and not same_weights:
        print("export: the previous evaluation was of other weights: dropped from the card (run "
              "experiments/eval_base_model.py on the export)", file=sys.stderr)
    trained_unet = unet_ckpt if unet_step or (unet_ckpt or {}).get("imported_from") else None
    (tmp / "README.md").write_text(model_card(cfg, vq_ckpt, trained_unet, old_card if same_weights else None,
                                              decoder_ckpt))
    if same_weights:
        shutil.copy2(results_path, tmp / "eval_results.json")
    old = folder.with_name(folder.name + ".old-export")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    check = load_ldmsr(folder, dtype=torch.float32)
    assert check.dtype == torch.float32 and check.vqvae.dtype == torch.float32
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"export: {folder} ({size / 1e6:.1f} MB, {cfg.export_dtype}; VQ step {info['vq_step']}, "
          f"UNet step {unet_step}); loads back in float32", file=sys.stderr)
    return folder


# --------------------------------------------------------------------------- stage 1: VQ


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


def require_every_dataset(ds: PairDataset, option: str) -> PairDataset:
    """Refuse to train on a data root when one of its datasets lost every image to the crop size
    (PairDataset drops images smaller than ``hr_size`` with a warning, which a long run buries):
    the run would go on without that dataset while its card names it as training data."""
    if not all("/" in name for name in ds.classes):  # one dataset, not a root of several
        return ds
    datasets = {name.split("/", 1)[0] for name in ds.classes}
    kept = {ds.classes[label].split("/", 1)[0] for label in ds.labels.unique().tolist()}
    if datasets - kept:
        crop = ds.config.hr_size
        raise SystemExit(f"{option} {crop}: no training image of {', '.join(sorted(datasets - kept))} "
                         f"has both sides >= {crop} px, so this stage would train without it; lower "
                         f"{option} or point --data at the datasets to train on")
    return ds


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
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
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
    target = cfg.target
    bicubic = float(psnr(LatentTarget.anchor(val_batch[1], val_batch[0].shape[-2:]), val_batch[0]).mean())
    print(f"vq: {train_ds}; validation {tuple(val_batch[0].shape)} (bicubic {bicubic:.2f} dB); target "
          f"{target}", file=sys.stderr)
    # Started after the preload: loading the data is not training time.
    clock = StageClock(cfg.vq_steps, cfg.vq_minutes, seconds)

    def save() -> None:
        atomic_save({"model": vqvae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "history": history, "best_val": best_val, "generator": generator.get_state(),
                     "last_used": last_used, "seconds": clock.seconds, "config": asdict(cfg)},
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

    bar = tqdm(total=cfg.vq_steps, initial=step, desc="vq", disable=not cfg.progress,
               dynamic_ncols=True, mininterval=5)
    t_last = time.monotonic()
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(vqvae.parameters(), cfg.grad_clip)
        optimizer.step()
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
        bar.update(1)
        if step % 10 == 0:
            now = time.monotonic()
            bar.set_postfix(loss=f"{entry['loss']:.4f}", psnr=f"{train_psnr:.2f}",
                            codes=entry["codes_used"], s_per_step=f"{(now - t_last) / 10:.2f}")
            t_last = now
    bar.close()
    save()
    writer.flush()
    if stop:
        print(f"vq: stopped at step {step} ({stop.reason}); checkpoint saved", file=sys.stderr)


# --------------------------------------------------------------------------- stage 1b: decoder


DECODER_PREFIXES = ("post_quant_conv.", "decoder.")


def decoder_state(vqvae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights the decoder stage trains (a copy, on the CPU)."""
    return {k: v.detach().cpu().clone() for k, v in vqvae.state_dict().items()
            if k.startswith(DECODER_PREFIXES)}


def load_decoder_weights(vqvae: torch.nn.Module, vq_ckpt: dict, decoder_ckpt: dict, key: str = "best") -> None:
    """Put decoder-stage weights (``"best"``: best validation, ``"model"``: latest) over the VQ's
    decoder; the rest of the VQ keeps its weights (a full, strict ``load_state_dict``).

    Only valid for the VQ step they were fine-tuned on: the encoder and codebook must be the ones
    the decoder learned to invert.
    """
    if decoder_ckpt["vq_step"] != vq_ckpt["step"]:
        raise RuntimeError(
            f"decoder: fine-tuned on the VQ at step {decoder_ckpt['vq_step']}, but the VQ is now at "
            f"step {vq_ckpt['step']}; move the decoder checkpoint away and fine-tune again")
    state = vqvae.state_dict()
    state.update(decoder_ckpt[key])
    load_checked(vqvae, state, "decoder checkpoint")


def train_decoder(cfg: TrainConfig, model: LDMSR, writer: Any, stop: StopFlag) -> None:
    """Fine-tune post_quant_conv + decoder with the encoder, quant_conv and codebook frozen.

    The latents do not change, so a UNet trained on them stays valid; what improves is every
    decode: reconstructions and sampler outputs alike. Larger crops than stage 1 (GroupNorm
    statistics are per image, so a decoder trained on 32 px crops meets different statistics on a
    256 px image). The best-validation weights are kept and exported, not the last ones.
    """
    out = Path(cfg.out)
    vq_path, ckpt_path = out / "vq" / "checkpoint.pt", out / "decoder" / "checkpoint.pt"
    if not vq_path.exists():
        raise FileNotFoundError(f"decoder: needs a trained VQ at {vq_path}; run the vq stage first")
    vq_ckpt = torch.load(vq_path, map_location="cpu", weights_only=False)
    load_vq_weights(model, vq_ckpt)
    vqvae = model.vqvae.to(cfg.device).train().requires_grad_(False)
    params = [p for name, p in vqvae.named_parameters() if name.startswith(DECODER_PREFIXES)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    step, history, seconds = 0, [], 0.0
    val_batch, target = vq_validation_batch(cfg), cfg.target
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
    if StageClock(cfg.decoder_steps, cfg.decoder_minutes, seconds).done(step):
        print(f"decoder: already done (step {step}, {seconds / 60:.1f} min)", file=sys.stderr)
        return
    train_ds = require_every_dataset(PairDataset(DataConfig(
        source=cfg.data, split="train", hr_size=cfg.decoder_crop, scale=4, crop="random", seed=cfg.seed),
        device="cpu"), "--decoder-crop").preload()
    # Started after the preload: loading the data is not training time.
    clock = StageClock(cfg.decoder_steps, cfg.decoder_minutes, seconds)

    def save() -> None:
        atomic_save({"model": decoder_state(vqvae), "best": best, "best_val": best_val,
                     "optimizer": optimizer.state_dict(), "step": step, "history": history,
                     "generator": generator.get_state(), "vq_step": vq_ckpt["step"],
                     "seconds": clock.seconds, "config": asdict(cfg)}, ckpt_path)
        plot_history(history, out / "loss_decoder.png", "VQ decoder fine-tuning")

    bar = tqdm(total=cfg.decoder_steps, initial=step, desc="decoder", disable=not cfg.progress,
               dynamic_ncols=True, mininterval=5)
    while not clock.done(step) and not stop:
        lr = lr_at(step, peak=cfg.decoder_lr, warmup=cfg.decoder_warmup,
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        with torch.no_grad():
            train_psnr = float(psnr(reconstructed_image(target, rec, hr, x), hr.to(cfg.device)).mean())
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
        bar.update(1)
    bar.close()
    save()
    writer.flush()
    if stop:
        print(f"decoder: stopped at step {step} ({stop.reason}); checkpoint saved", file=sys.stderr)


# --------------------------------------------------------------------------- stage 2: UNet


@torch.no_grad()
def encode_dataset(cfg: TrainConfig, vqvae: torch.nn.Module, split: str,
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
    vqvae.eval()
    for group in groups:
        for chunk in group.split(16):
            batch = ds.pairs(chunk)
            z = vqvae.encode(cfg.target.vq_input(batch.hr, batch.lr).to(cfg.device)).latents.float().cpu()
            latents.extend(z.unbind(0))
            lrs.extend((batch.lr * 255).round().to(torch.uint8).unbind(0))
            bar.update(len(chunk))
    bar.close()
    return latents, lrs


def data_source(cfg: TrainConfig) -> str | None:
    """The data the run reads: --data, else $ORL_GYM_DATA; a local path made absolute (a name under
    $ORL_GYM_DATA or a hub spec stays as given)."""
    data = cfg.data if cfg.data is not None else os.environ.get(DATA_ENV_VAR)
    if data is not None and not data.startswith("hub:") and Path(data).exists():
        data = str(Path(data).resolve())
    return data


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


VAL_NAMES = {"epsilon": "eps-MSE", "v_prediction": "v-MSE", "sample": "z0-MSE"}


def unet_prediction_type(unet_ckpt: dict) -> str:
    """What a UNet checkpoint was trained to predict (runs from before the option: epsilon)."""
    return unet_ckpt.get("config", {}).get("prediction_type", "epsilon")


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


def objective_description(unet_ckpt: dict) -> str:
    """The card's wording of the UNet objective, with every change of it during the run."""
    text = PREDICTION_OBJECTIVES[unet_prediction_type(unet_ckpt)]
    changes = unet_ckpt.get("objective_changes") or []
    if not any(c["lowfreq_weight"] > 0 or c.get("input_perturbation", 0.0) > 0 for c in changes):
        return text  # plain MSE throughout: nothing to add

    def terms(c: dict) -> str:
        parts = []
        if c["lowfreq_weight"] > 0:
            parts.append(f"+ {c['lowfreq_weight']:g} x MSE of the {c['lowfreq_pool']}x"
                         f"{c['lowfreq_pool']}-latent-cell average-pooled z0 estimate")
        if c.get("input_perturbation", 0.0) > 0:
            parts.append(f"input perturbation gamma {c['input_perturbation']:g} (z_t from noise + "
                         "gamma x N(0, I), DDPM-IP)")
        return ", ".join(parts) or "plain"

    parts = [f"from step {c['step']}: {terms(c)}" for c in changes]
    return f"{text} ({'; '.join(parts)})"


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
    vq_path, ckpt_path = out / "vq" / "checkpoint.pt", out / "unet" / "checkpoint.pt"
    if not vq_path.exists():
        raise FileNotFoundError(f"unet: needs a trained VQ at {vq_path}; run the vq stage first")
    vq_ckpt = torch.load(vq_path, map_location="cpu", weights_only=False)
    load_vq_weights(model, vq_ckpt)
    vqvae = model.vqvae.to(cfg.device).eval().requires_grad_(False)
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
        train = encode_dataset(cfg, vqvae, "train")
        val = encode_dataset(cfg, vqvae, "validation", limit=cfg.val_images)
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

    bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet", disable=not cfg.progress,
               dynamic_ncols=True, mininterval=5)
    t_last = time.monotonic()
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        optimizer.step()
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
        bar.update(1)
        if step % 10 == 0:
            now = time.monotonic()
            bar.set_postfix(loss=f"{float(loss):.4f}", s_per_step=f"{(now - t_last) / 10:.2f}")
            t_last = now
    bar.close()
    save()
    writer.flush()
    if stop:
        print(f"unet: stopped at step {step} ({stop.reason}); checkpoint saved", file=sys.stderr)


# --------------------------------------------------------------------------- main


def _explicit(argv: list[str]) -> set[str]:
    """Config fields given on the command line."""
    return {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}


def _saved_config(folder: Path) -> dict | None:
    path = folder / "run_config.json"
    return json.loads(path.read_text())["config"] if path.exists() else None


def diffusers_source(init_from: str) -> Path | None:
    """The diffusers LDM-SR folder that ``--init-from`` names ("bundled": the shipped model), or
    None when it names a train_ldm.py run folder."""
    if init_from == "bundled":
        return bundled_model_path()
    path = Path(init_from)
    return path if (path / "model_index.json").exists() else None


def _plain_text(value: Any) -> str:
    """A config value as it would be typed on the command line."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def diffusers_architecture(model: LDMSR, source: Path) -> dict:
    """The architecture fields (and ``prediction_type``) with which train_ldm.py rebuilds
    ``model``'s networks, checked: the rebuilt networks must have the same configs and weight
    shapes, and the noise schedule must be the one train_ldm.py trains with. Anything else
    (another block layout, another beta schedule) is refused with a SystemExit that names it.
    """
    vq, unet = model.vqvae.config, model.unet.config
    vq_state, unet_state = model.vqvae.state_dict(), model.unet.state_dict()
    fields = {
        "latent_channels": vq.latent_channels, "vq_channels": tuple(vq.block_out_channels),
        "vq_layers_per_block": vq.layers_per_block, "codebook_size": vq.num_vq_embeddings,
        "unet_channels": tuple(unet.block_out_channels), "unet_layers_per_block": unet.layers_per_block,
        "attention_levels": tuple(t.startswith("Attn") for t in unet.down_block_types),
        # From the weights: configs written before 2026-11-26 say "no attention" for networks
        # that have it (see build_model).
        "vq_mid_attention": any(".mid_block.attentions." in k for k in vq_state),
        "unet_mid_attention": any(k.startswith("mid_block.attentions.") for k in unet_state),
        "norm_num_groups": vq.norm_num_groups,
        "prediction_type": model.scheduler.config.prediction_type,
        "latent_target": model.latent_target.kind,
        "residual_scale": (model.latent_target.residual_scale if model.latent_target.is_residual
                           else TrainConfig.residual_scale),
    }
    if fields["prediction_type"] not in PREDICTION_TYPES:
        raise SystemExit(f"--init-from: {source} predicts {fields['prediction_type']!r}; train_ldm.py "
                         f"trains {PREDICTION_TYPES}")
    rebuilt = TrainConfig(out="", **fields).architecture.build()
    problems = []
    for what, theirs, ours in (("vqvae", model.vqvae, rebuilt.vqvae), ("unet", model.unet, rebuilt.unet)):
        ignore = {"mid_block_add_attention", "add_attention"}  # checked from the weights above
        for key, value in ours.config.items():
            if not key.startswith("_") and key not in ignore and _plain(theirs.config.get(key)) != _plain(value):
                problems.append(f"{what} {key} = {theirs.config.get(key)!r} (train_ldm.py: {value!r})")
        shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        if not problems and shapes != {k: tuple(v.shape) for k, v in ours.state_dict().items()}:
            problems.append(f"{what} weights of other names or shapes")
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
        if model.scheduler.config[key] != rebuilt.scheduler.config[key]:
            problems.append(f"scheduler {key} = {model.scheduler.config[key]!r} "
                            f"(train_ldm.py: {rebuilt.scheduler.config[key]!r})")
    if problems:
        raise SystemExit(f"--init-from: {source} is not a network train_ldm.py can build: "
                         + "; ".join(problems[:5]))
    return fields


def _card_training_section(folder: Path) -> str | None:
    card = folder / "README.md"
    text = card.read_text() if card.exists() else ""
    if TRAIN_BEGIN not in text or TRAIN_END not in text:
        return None
    return text.split(TRAIN_BEGIN, 1)[1].split(TRAIN_END, 1)[0].strip()


def import_diffusers_folder(cfg: TrainConfig, source: Path, stages: list[str]) -> None:
    """Start a run from a diffusers folder's weights: checkpoints at step 0 that hold the
    weights and no optimizer state, so each stage trained here starts its warm-up and schedule
    afresh (fine-tuning), with its EMA starting at the imported weights. The VQ checkpoint
    carries the folder's decoder (stage 1b is already in it). card_notes.md records the origin
    and the source card's training section."""
    out = Path(cfg.out)
    model = load_ldmsr(source, dtype=torch.float32)
    fields = diffusers_architecture(model, source)
    config = {**asdict(cfg), **{k: _plain(v) for k, v in fields.items()}}
    common = {"optimizer": None, "step": 0, "history": [], "best_val": None, "generator": None,
              "seconds": 0.0, "config": config, "imported_from": str(source.resolve())}
    atomic_save({"model": model.vqvae.state_dict(), **common,
                 "last_used": torch.zeros(fields["codebook_size"], dtype=torch.long)},
                out / "vq" / "checkpoint.pt")
    if "unet" in stages:
        atomic_save({"model": model.unet.state_dict(), **common, "ema": None, "vq_step": 0,
                     "objective_changes": None}, out / "unet" / "checkpoint.pt")
    imported = "the VQ autoencoder (with its decoder)" + (" and the UNet" if "unet" in stages else "")
    notes = [f"This run started from the weights of {imported} of `{source.resolve()}` "
             "(`--init-from`); step counts and wall times above count from there."]
    section = _card_training_section(source)
    if section:
        notes += ["", "The source's card said of its training:", "",
                  *(f"> {line}".rstrip() for line in section.splitlines())]
    atomic_write_text("\n".join(notes) + "\n", out / "card_notes.md")
    print(f"init: imported {imported} from {source}", file=sys.stderr)


def _init_stages(cfg: TrainConfig) -> list[str]:
    stages = [s.strip() for s in cfg.init_stages.split(",") if s.strip()]
    unknown = set(stages) - set(INIT_FILES)
    if unknown or not stages:
        raise SystemExit(f"--init-stages: expected a comma list of {', '.join(INIT_FILES)}, got "
                         f"{cfg.init_stages!r}")
    if "vq" not in stages:
        raise SystemExit("--init-stages: a copied decoder or UNet belongs to its VQ; include vq")
    return stages


def resolve_config(cfg: TrainConfig, argv: list[str]) -> TrainConfig:
    """On resume the saved architecture wins; a conflicting one on the command line is an error.
    Every other setting left off the command line keeps the run's saved value (the last
    invocation's), not the CLI default, except those of ``PER_INVOCATION_FIELDS``.

    A new run with ``--init-from`` takes the source run's architecture for the fields not given;
    a given field that a copied stage fixes must equal the source's.
    """
    explicit = _explicit(argv)
    saved = _saved_config(Path(cfg.out))
    if saved is not None:
        # Without this, `train_ldm.py --out RUN` after a run with --unet-steps 30000 would stop
        # the stage at the default 8000 and restart its learning rate at the default. (The card
        # reads each stage's settings from its checkpoint, so it was right either way.)
        restored = []
        for f in fields(TrainConfig):
            name = f.name
            if (name in ARCH_FIELDS or name == "prediction_type" or name in PER_INVOCATION_FIELDS
                    or name in explicit or name not in saved):
                continue
            value = saved[name]
            value = tuple(value) if isinstance(value, list) else value
            if value != getattr(cfg, name):
                restored.append(f"--{name.replace('_', '-')} {_plain_text(value)}")
                setattr(cfg, name, value)
        if restored:
            print(f"resume: settings of the run in {cfg.out} kept (not the defaults): "
                  f"{', '.join(restored)}", file=sys.stderr)
        for name in ARCH_FIELDS:
            # Runs from before a field existed were built with its default (latent_target: image).
            value = saved.get(name, getattr(TrainConfig, name))
            value = tuple(value) if isinstance(value, list) else value
            if name in explicit and getattr(cfg, name) != value:
                raise SystemExit(f"--{name.replace('_', '-')}: the run in {cfg.out} was built with "
                                 f"{value}, not {getattr(cfg, name)}; use a new --out")
            setattr(cfg, name, value)
        # The prediction type is fixed per UNet: restored like the architecture (a run that
        # inherited v_prediction from --init-from must not resume as the CLI default). A
        # different one given explicitly is refused while a UNet checkpoint exists; without
        # one it starts a new UNet of that type.
        saved_type = saved.get("prediction_type")
        if saved_type is not None:
            unet_path = Path(cfg.out) / "unet" / "checkpoint.pt"
            if "prediction_type" not in explicit:
                cfg.prediction_type = saved_type
            elif cfg.prediction_type != saved_type and unet_path.exists():
                raise SystemExit(
                    f"--prediction-type: the UNet in {unet_path} was trained for {saved_type!r}, not "
                    f"{cfg.prediction_type!r}; pass --prediction-type {saved_type} (or leave it out) "
                    "to resume it, or move the checkpoint away to train a new UNet")
        return cfg
    if cfg.init_from is None:
        return cfg
    source = Path(cfg.init_from)
    folder = diffusers_source(cfg.init_from)
    if folder is not None:
        source_config = diffusers_architecture(load_ldmsr(folder, dtype=torch.float32), folder)
    else:
        source_config = _saved_config(source)
    if source_config is None:
        raise SystemExit(f"--init-from: {source} has neither run_config.json nor model_index.json; "
                         "name a train_ldm.py run folder, a diffusers LDM-SR folder or 'bundled'")
    stages = _init_stages(cfg)
    fixed = set(VQ_ARCH_FIELDS) | (set(UNET_ARCH_FIELDS) if "unet" in stages else set())
    for name in (*ARCH_FIELDS, "prediction_type"):
        value = source_config.get(name, getattr(TrainConfig, name, None))
        value = tuple(value) if isinstance(value, list) else value
        if name not in explicit:
            setattr(cfg, name, value)
        elif name in fixed and getattr(cfg, name) != value:
            raise SystemExit(f"--{name.replace('_', '-')}: the copied stages of {source} were built "
                             f"with {value}, not {getattr(cfg, name)}; leave it out or train that "
                             "stage anew (--init-stages)")
    return cfg


def init_run_from(cfg: TrainConfig) -> None:
    """Copy the source run's checkpoints of --init-stages, its commands.log and card_notes.md
    into a new run.

    Repeating the command (to resume) copies nothing again; a run folder that already holds
    checkpoints from elsewhere is refused rather than overwritten.
    """
    out, source = Path(cfg.out), Path(cfg.init_from)
    stages = _init_stages(cfg)
    folder = diffusers_source(cfg.init_from)
    if folder is not None:
        source = folder
    record_path = out / "init_from.json"
    record = {"source": str(source.resolve()), "stages": stages}
    if record_path.exists():
        previous = json.loads(record_path.read_text())
        if {key: previous.get(key) for key in record} != record:
            raise SystemExit(f"--init-from: {out} was initialised from {previous['source']} "
                             f"(stages {previous['stages']}), not {record['source']} ({stages})")
        if previous.get("complete", True):  # (records from before this key were written complete)
            return
        print(f"init: the copy from {source} was interrupted; copying again", file=sys.stderr)
    else:
        existing = [p for p in INIT_FILES["vq"] + INIT_FILES["decoder"] + INIT_FILES["unet"] if (out / p).exists()]
        if existing:
            raise SystemExit(f"--init-from: {out} already holds {existing}; use a new --out")
    # Recorded before anything is copied, so that an interrupted copy is redone, not refused.
    atomic_write_text(json.dumps({**record, "complete": False}, indent=2) + "\n", record_path)
    if folder is not None:
        import_diffusers_folder(cfg, folder, stages)
        atomic_write_text(json.dumps({**record, "complete": True}, indent=2) + "\n", record_path)
        return
    names = [name for stage in stages for name in INIT_FILES[stage]]
    # The decoder checkpoint and the latents cache are optional (the UNet stage re-encodes).
    missing = [n for n in names if n in ("vq/checkpoint.pt", "unet/checkpoint.pt") and not (source / n).exists()]
    if missing:
        raise SystemExit(f"--init-from: {source} has no {missing}; train those stages there first "
                         "or leave them out of --init-stages")
    for name in names:
        if (source / name).exists():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            tmp = out / (name + ".tmp")
            shutil.copy2(source / name, tmp)
            os.replace(tmp, out / name)
            print(f"init: copied {source / name}", file=sys.stderr)
    # The lineage goes with the weights: the source's invocations and its remarks for the card.
    for name in ("commands.log", "card_notes.md"):
        if (source / name).exists():
            atomic_write_text((source / name).read_text(), out / name)
    atomic_write_text(json.dumps({**record, "complete": True}, indent=2) + "\n", record_path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = resolve_config(parse_args(argv), argv)
    if cfg.data is not None:
        # Recorded as an absolute path: a resume keeps --data (resolve_config) and may run from
        # another working directory.
        cfg.data = data_source(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.init_from is not None:
        init_run_from(cfg)
    command = [sys.executable, str(Path(__file__).resolve()), *argv]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out / "commands.log", "a") as log:
        log.write(f"{started} {' '.join(command)}\n")
    export_folder = Path(cfg.export) if cfg.export else out / "export"
    if cfg.export_only:
        # The record of the training invocation stays: an export changes no training setting.
        export(cfg, export_folder)
        return 0
    if (out / "STOP").exists():
        # Refused, not removed: it may be meant for another invocation still training in --out.
        raise SystemExit(f"{out / 'STOP'} exists (left by an earlier stop, or meant for a run still "
                         "training in this folder): remove it to train; nothing was done")
    record = {"config": asdict(cfg), "command": command, "started": started,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "niceness": os.nice(0), "host": os.uname().nodename}
    atomic_write_text(json.dumps(record, indent=2) + "\n", out / "run_config.json")
    torch.manual_seed(cfg.seed)
    stop = StopFlag(out, cfg.max_minutes)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = set(stages) - {"vq", "decoder", "unet"}
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; use vq, decoder, unet")
    with contextlib.closing(writer), contextlib.closing(stop):
        model = build_model(cfg)
        if "vq" in stages:
            train_vq(cfg, model, writer, stop)
        if "decoder" in stages and not stop:
            train_decoder(cfg, model, writer, stop)
        if "unet" in stages and not stop:
            train_unet(cfg, model, writer, stop)
    if stop.reason:
        # A stopped run is partly trained: do not overwrite the export (perhaps the bundled model).
        if not cfg.no_export:
            print(f"export: skipped, training stopped ({stop.reason}); run the same command again "
                  "to continue, or --export-only to export these checkpoints", file=sys.stderr)
    elif not cfg.no_export:
        export(cfg, export_folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
