"""The exported model's card (README.md): its format, the architecture true to the weights, the
training section built from the checkpoints and the run's record, the evaluation section kept
from the previous card when it is of the same weights, and the limitations."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from orl_gym.data import DATA_ENV_VAR
from orl_gym.env import DEFAULT_NUM_INFERENCE_STEPS
from orl_gym.models import BUNDLED_MODEL_NAMES, LatentTarget
from orl_gym.training.checkpoints import unet_prediction_type
from orl_gym.training.config import PREDICTION_OBJECTIVES, VAL_NAMES, TrainConfig

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


def anchor_facts(anchor_ckpt: dict) -> list[str]:
    """The card's paragraph on stage 0 (the anchor network)."""
    c = anchor_ckpt["config"]
    vals = [h for h in anchor_ckpt["history"] if "val" in h]
    best_step = max(vals, key=lambda h: h["val"])["step"]
    parameters = sum(v.numel() for v in anchor_ckpt["best"].values())
    return [
        "",
        f"Stage 0, anchor network: `orl_gym.models.AnchorNet` (EDSR-style: {c['anchor_blocks']} residual "
        f"blocks of {c['anchor_channels']} channels, x2 pixel-shuffle twice, output bicubic(LR) + CNN(LR); "
        f"{parameters / 1e6:.2f} M params), L1 to HR on random {c['anchor_crop']}x{c['anchor_crop']} crops "
        f"with flips / 90-degree rotations, batch {c['anchor_batch_size']}, Adam lr {c['anchor_lr']:g} "
        f"cosine to x{c['anchor_min_lr_ratio']:g}; {anchor_ckpt['step']} steps, "
        f"{anchor_ckpt.get('seconds', 0) / 60:.0f} min. Validation PSNR {anchor_ckpt['best_val']:.2f} dB "
        f"against bicubic's {anchor_ckpt['bicubic_val']:.2f} dB (the VQ's validation crops); the "
        f"best-validation weights (step {best_step}) are the anchor the VQ's residuals are taken over, "
        "and the ones exported.",
    ]


def training_facts(cfg: TrainConfig, vq_ckpt: dict, unet_ckpt: dict | None,
                   decoder_ckpt: dict | None = None, anchor_ckpt: dict | None = None) -> str:
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
    anchor = "A(LR)" if vq_cfg.get("latent_anchor", "bicubic") == "network" else "bicubic(LR)"
    vq_input = (f"the residuals HR - {anchor} of random "
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
        f"{f', {anchor} + reconstructed residual' if vq_target == 'residual' else ''})"
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
        *(anchor_facts(anchor_ckpt) if anchor_ckpt else []),
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


def card_format_section(target: LatentTarget, name: str = "ldm-sr-tiny-x4", steps: int = 20) -> list[str]:
    """The card's paragraph on the checkpoint's format and how to load it: ``name`` is the folder's
    (a bundled model is loaded by its name, any other by its path), ``steps`` the DDIM steps of
    the snippet (the model's default sampler where it states one). Whether a model is the package's
    default is not the export's to say: the card does not claim it."""
    bundled = name in BUNDLED_MODEL_NAMES
    where = f"bundled_model_path({name!r})" if bundled else '"path/to/this/folder"'
    imports = "bundled_model_path, load_ldmsr" if bundled else "load_ldmsr"
    intro = ("A tiny LDM-SR model for orl_gym's CPU presets, trained by `experiments/train_ldm.py` on real "
             "aerial imagery. ")
    if not target.is_residual:
        return [
            intro + "Same format as `CompVis/ldm-super-resolution-4x-openimages` "
            "(diffusers `LDMSuperResolutionPipeline`: VQModel f = 4 with 3 latent channels, "
            "UNet2DModel on concat(latent, LR) with 6 input channels, DDIM scheduler), so the same "
            "code runs both. Weights are stored in float16 to keep the package small; both loaders "
            "give float32 modules on the CPU:",
            "",
            "```python",
            f"from orl_gym.models import {imports}",
            f"model = load_ldmsr({where})  # float32",
            "from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (",
            "    LDMSuperResolutionPipeline)",
            f"pipe = LDMSuperResolutionPipeline.from_pretrained({where}, dtype=torch.float32)",
            "# lr: (B, 3, h, w) in [0, 1]; the pipeline takes tensors in [-1, 1]",
            "sr = pipe(lr * 2 - 1, num_inference_steps=100, eta=0.0, output_type=\"pt\").images",
            "```",
            "",
        ]
    if target.anchor == "network":
        over = ("a trained regression CNN's prediction from the LR input (`anchor/`, "
                "`orl_gym.models.AnchorNet`; itself bicubic(LR) plus a learned correction)")
        anchor, zero = "A(LR)", "A zero residual is exactly the CNN's prediction."
    else:
        over, anchor, zero = "the bicubic upsampling of the LR input", "bicubic(LR)", "A zero residual is exactly bicubic."
    return [
        intro + "An LR-anchored (residual) latent-diffusion model: the components are "
        "diffusers' (VQModel f = 4 with 3 latent channels, UNet2DModel on concat(latent, LR) with 6 "
        "input channels, DDIM scheduler) in the folder layout of "
        "`CompVis/ldm-super-resolution-4x-openimages`, but the VQ autoencodes the residual over "
        f"{over}, scaled by s = {target.residual_scale:g}: "
        f"z_0 = E(s (HR - {anchor})), and an image is {anchor} + D(z_0) / s "
        f"(`latent_target.json`; `orl_gym.models.LatentTarget`). {zero} "
        "`LDMSuperResolutionPipeline` would show the residual as the image, so it cannot run this "
        "model; orl_gym's sampler and env do. Weights are stored in float16 to keep the package "
        "small; the loader gives float32 modules on the CPU:",
        "",
        "```python",
        "import torch",
        "from orl_gym import sampler",
        f"from orl_gym.models import {imports}",
        f"model = load_ldmsr({where})  # float32",
        f"schedule = sampler.Schedule.from_model(model, {steps})",
        "# lr: (B, 3, h, w) in [0, 1]",
        "state = sampler.init_state(model, schedule, lr, sampler.make_generators(range(len(lr))))",
        "while not bool(state.done(schedule).all()):",
        "    state = sampler.step(model, schedule, state, sampler.StepParams()).state",
        f"sr = sampler.decode(model, state)  # {anchor} + residual, (B, 3, 4h, 4w)",
        "```",
        "",
    ]


def training_hours(*ckpts: dict | None) -> str:
    """The stages' summed training wall time (checkpoint ``seconds``), in words for the card."""
    hours = sum(c.get("seconds", 0.0) for c in ckpts if c) / 3600
    return f"about {hours:.1f} hours (the stages' wall time summed)"


def model_card(cfg: TrainConfig, vq_ckpt: dict, unet_ckpt: dict | None, old_card: str | None,
               decoder_ckpt: dict | None = None, anchor_ckpt: dict | None = None,
               name: str = "ldm-sr-tiny-x4") -> str:
    """The model card: fixed text, the training section (regenerated) and the evaluation
    section of ``old_card`` (kept until eval_base_model.py rewrites it; the caller passes an old
    card only when its evaluation is of the same weights)."""
    evaluation = (f"{EVAL_BEGIN}\nNot measured for these weights yet: run `experiments/eval_base_model.py`.\n"
                  f"{EVAL_END}")
    if old_card and EVAL_BEGIN in old_card and EVAL_END in old_card:
        evaluation = EVAL_BEGIN + old_card.split(EVAL_BEGIN, 1)[1].split(EVAL_END, 1)[0] + EVAL_END
    return "\n".join([
        f"# {name}: a tiny latent-diffusion x4 super-resolution model for aerial images",
        "",
        *card_format_section(cfg.target, name, cfg.export_inference_steps or DEFAULT_NUM_INFERENCE_STEPS),
        architecture_sentence(vq_ckpt["model"], unet_ckpt["model"] if unet_ckpt else None)
        + "the LR side must be a multiple of 4 (the UNet's three levels), i.e. HR a multiple of 16.",
        "",
        "## Training",
        "",
        TRAIN_BEGIN,
        training_facts(cfg, vq_ckpt, unet_ckpt, decoder_ckpt, anchor_ckpt),
        TRAIN_END,
        "",
        "## Evaluation",
        "",
        evaluation,
        "",
        "## Limitations",
        "",
        f"A small model trained for {training_hours(vq_ckpt, unet_ckpt, decoder_ckpt, anchor_ckpt)} on a 2-core CPU"
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
