"""The diffusers export of a run: the checkpoints' weights (the UNet's EMA, the decoder stage's
best) in the pipeline's folder layout, with its model card, swapped in atomically and loaded
back as a check."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from orl_gym.models import checkpoint_digest, load_ldmsr
from orl_gym.training.card import model_card
from orl_gym.training.checkpoints import (
    build_model,
    check_vq_anchor,
    load_decoder_weights,
    load_trained_anchor,
    load_unet_weights,
    load_vq_weights,
    unet_prediction_type,
)
from orl_gym.training.config import TrainConfig


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
    # The sampler settings of the export: how its default sampler runs, not what was trained.
    model = replace(model.with_scheduler_config(timestep_spacing=cfg.timestep_spacing),
                    default_num_inference_steps=cfg.export_inference_steps or None)
    vq_ckpt = torch.load(vq_path, map_location="cpu", weights_only=False)
    anchor_ckpt = load_trained_anchor(cfg, model, "export")
    check_vq_anchor(cfg, vq_ckpt, anchor_ckpt)
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
        for module in model.modules:
            module.half()
    folder = folder.resolve()
    tmp = folder.with_name(folder.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    info = {"vq_step": vq_ckpt["step"], "unet_step": unet_step, "dtype": cfg.export_dtype,
            "vq_val_psnr": vq_ckpt.get("best_val"),
            "decoder_step": decoder_ckpt["step"] if decoder_ckpt else None,
            "decoder_val_psnr": decoder_ckpt["best_val"] if decoder_ckpt else None,
            "anchor_step": anchor_ckpt["step"] if anchor_ckpt else None}
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
                                              decoder_ckpt, anchor_ckpt,
                                              # <out>/export is named after its run
                                              name=Path(cfg.out).name if folder.name == "export" else folder.name))
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
