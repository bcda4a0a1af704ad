"""A training run's configuration: :class:`TrainConfig` (saved as run_config.json and in every
checkpoint), the command line that makes it, and the field groups that resuming and
``--init-from`` treat alike."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from orl_gym.data import DATA_ENV_VAR
from orl_gym.models import ANCHOR_KINDS, LATENT_TARGET_KINDS, LatentTarget, LDMSRArchitecture

DESCRIPTION = "Train the bundled LDM-SR model: (1) the VQ autoencoder, (2) the conditional UNet."
"""What ``--help`` says first."""


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
    # What the residual is taken over: "bicubic", or "network" (orl_gym.models.AnchorNet, an
    # EDSR-style regression CNN trained first, by the "anchor" stage, with L1; SRDiff / ResDiff's
    # design). Fixed by the first invocation like the architecture.
    latent_anchor: str = "bicubic"
    anchor_channels: int = 48
    anchor_blocks: int = 6
    # stage 0: the anchor network (latent_anchor "network" only)
    anchor_steps: int = 20000
    anchor_minutes: float = 0.0
    anchor_batch_size: int = 16
    anchor_crop: int = 96
    anchor_lr: float = 1e-3
    anchor_min_lr_ratio: float = 0.05
    anchor_warmup: int = 100
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
    # The exported sampler settings (not trained: a resume keeps them, another value is another
    # sampler of the same weights). "trailing" starts a K-step DDIM schedule at t = T - 1 (with
    # "leading", DDIM 2 starts at t = 500, half-way down: docs/base-model.md, issue 24).
    # export_inference_steps: the model's default sampler (sampler_defaults.json), 0: not stated
    # (the env then runs its own default, 20 steps).
    timestep_spacing: str = "leading"
    export_inference_steps: int = 0
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
            latent_target=self.target, anchor_channels=self.anchor_channels, anchor_blocks=self.anchor_blocks,
            scheduler={**LDMSRArchitecture().scheduler, "prediction_type": self.prediction_type},
        )


    @property
    def target(self) -> LatentTarget:
        """What the VQ autoencodes, as a description (the anchor network's weights are the model's)."""
        residual = self.latent_target == "residual"
        return LatentTarget(kind=self.latent_target, residual_scale=self.residual_scale if residual else 1.0,
                            anchor=self.latent_anchor if residual else "bicubic")


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# diffusers' DDIMScheduler.set_timesteps spacings.
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


# The card's wording of each UNet objective.
PREDICTION_OBJECTIVES = {
    "epsilon": "epsilon-prediction MSE",
    "v_prediction": "v-prediction MSE (v = sqrt(abar) eps - sqrt(1 - abar) z0)",
    "sample": "z0-prediction MSE",
}


VAL_NAMES = {"epsilon": "eps-MSE", "v_prediction": "v-MSE", "sample": "z0-MSE"}


ARCH_FIELDS = ("latent_channels", "vq_channels", "vq_layers_per_block", "codebook_size",
               "unet_channels", "unet_layers_per_block", "attention_levels", "vq_mid_attention",
               "unet_mid_attention", "norm_num_groups", "latent_target", "residual_scale",
               "latent_anchor", "anchor_channels", "anchor_blocks")


# The fields a copied stage fixes (--init-from): the VQ's (norm_num_groups is shared by both
# networks) and, when the UNet is copied too, the UNet's and its target.
VQ_ARCH_FIELDS = ("latent_channels", "vq_channels", "vq_layers_per_block", "codebook_size",
                  "vq_mid_attention", "norm_num_groups", "latent_target", "residual_scale",
                  "latent_anchor", "anchor_channels", "anchor_blocks")


UNET_ARCH_FIELDS = ("unet_channels", "unet_layers_per_block", "attention_levels",
                    "unet_mid_attention", "norm_num_groups", "prediction_type")


# Settings of one invocation, not of the run: a resume that leaves them out gets the CLI default.
# ("no_progress" is how --no-progress appears among the given options.) --init-from acts once, at
# the run's start (init_from.json and the card's notes keep the lineage): carried over, a relative
# source path would be checked again against another working directory on every resume.
PER_INVOCATION_FIELDS = ("out", "device", "threads", "progress", "no_progress", "max_minutes",
                         "export", "export_only", "no_export", "init_from", "init_stages")


# What --init-from copies for each stage (the latents cache belongs to the VQ that encoded it, and
# so does the anchor network the VQ's residuals are taken over).
INIT_FILES = {"vq": ("vq/checkpoint.pt", "unet/latents.pt", "anchor/checkpoint.pt"), "decoder": ("decoder/checkpoint.pt",),
              "unet": ("unet/checkpoint.pt",)}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> TrainConfig (every default is the TrainConfig default, shown by --help)."""
    d = TrainConfig(out="")
    # No prefix abbreviations: resolve_config reads the given option names from argv, so an
    # abbreviated one (--unet-chan) would be taken as not given and silently reset on resume.
    p = argparse.ArgumentParser(description=DESCRIPTION, allow_abbrev=False,
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
    g.add_argument("--latent-anchor", default=d.latent_anchor, choices=ANCHOR_KINDS,
                   help="what the residual target is taken over: bicubic(LR), or a regression CNN "
                        "trained first (stage anchor; orl_gym.models.AnchorNet)")
    g.add_argument("--anchor-channels", type=int, default=d.anchor_channels)
    g.add_argument("--anchor-blocks", type=int, default=d.anchor_blocks, help="residual blocks of the anchor CNN")
    g = p.add_argument_group("stage 0: anchor network (--latent-anchor network)")
    g.add_argument("--anchor-steps", type=int, default=d.anchor_steps, help="total optimizer steps")
    g.add_argument("--anchor-minutes", type=float, default=d.anchor_minutes,
                   help="training-time budget of the stage (as --vq-minutes)")
    g.add_argument("--anchor-batch-size", type=int, default=d.anchor_batch_size)
    g.add_argument("--anchor-crop", type=int, default=d.anchor_crop, help="HR crop side (px)")
    g.add_argument("--anchor-lr", type=float, default=d.anchor_lr, help="peak Adam learning rate")
    g.add_argument("--anchor-min-lr-ratio", type=float, default=d.anchor_min_lr_ratio)
    g.add_argument("--anchor-warmup", type=int, default=d.anchor_warmup)
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
    g.add_argument("--stages", default=d.stages, help="comma list of stages to run: anchor (for --latent-anchor network), vq, decoder, unet")
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
    g.add_argument("--timestep-spacing", default=d.timestep_spacing, choices=TIMESTEP_SPACINGS,
                   help="the exported scheduler's timestep_spacing (diffusers): 'trailing' starts every "
                        "DDIM schedule at t = T - 1, which few-step samplers need")
    g.add_argument("--export-inference-steps", type=int, default=d.export_inference_steps,
                   help="the exported model's default sampler, DDIM steps (sampler_defaults.json; the env's "
                        "'No RL' and upscale's default); 0: not stated (the env's default, 20)")
    g.add_argument("--export-only", action="store_true", help="export the checkpoints, no training")
    g.add_argument("--no-export", action="store_true", help="train only, no export at the end")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    return TrainConfig(**vars(p.parse_args(argv)))


def saved_config(folder: Path) -> dict | None:
    """The configuration a run folder's last invocation recorded (run_config.json), or None."""
    path = folder / "run_config.json"
    return json.loads(path.read_text())["config"] if path.exists() else None


def data_source(cfg: TrainConfig) -> str | None:
    """The data the run reads: --data, else $ORL_GYM_DATA; a local path made absolute (a name under
    $ORL_GYM_DATA or a hub spec stays as given)."""
    data = cfg.data if cfg.data is not None else os.environ.get(DATA_ENV_VAR)
    if data is not None and not data.startswith("hub:") and Path(data).exists():
        data = str(Path(data).resolve())
    return data
