"""Assemble what experiments/gpu/run_vq_probe.sh brought back into an LDM-SR model folder.

    python experiments/gpu/assemble_vq_probe.py PROBE_OUT MODEL_DIR

The VQ is the probe's (stage-1 encoder, codebook and decoder, then the stage-1b decoder weights of
best validation, as train_ldm's export takes them); the UNet and scheduler are the bundled
model's, so the folder loads like any checkpoint (``vq_rate_distortion.py --model MODEL_DIR``).
Only the VQ is meant to be measured: the bundled UNet was trained on another VQ's latents.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from orl_gym.models import LDMSRArchitecture, bundled_model_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe_out", type=Path, help="the folder run_vq_probe.sh wrote ($OUT)")
    parser.add_argument("model_dir", type=Path, help="model folder to write (replaced)")
    args = parser.parse_args(argv)
    config = json.loads((args.probe_out / "run_config.json").read_text())["config"]
    # These files were written by our own probe run; weights_only=False is needed for the
    # history lists and generator state saved beside the weights.
    encoder_side = torch.load(args.probe_out / "vq_encoder.pt", map_location="cpu", weights_only=False)
    decoder_side = torch.load(args.probe_out / "vq_decoder.pt", map_location="cpu", weights_only=False)
    decoder_best = torch.load(args.probe_out / "decoder_best.pt", map_location="cpu", weights_only=False)
    architecture = LDMSRArchitecture(
        latent_channels=config["latent_channels"], vq_channels=tuple(config["vq_channels"]),
        vq_layers_per_block=config["vq_layers_per_block"], num_vq_embeddings=config["codebook_size"],
        vq_mid_attention=config["vq_mid_attention"], norm_num_groups=config["norm_num_groups"],
    )
    vqvae = architecture.build().vqvae
    vqvae.load_state_dict({**encoder_side["model"], **decoder_side["model"], **decoder_best["best"]}, strict=True)
    if args.model_dir.exists():
        shutil.rmtree(args.model_dir)
    shutil.copytree(bundled_model_path(), args.model_dir)
    shutil.rmtree(args.model_dir / "vqvae")
    vqvae.save_pretrained(args.model_dir / "vqvae")
    print(f"{args.model_dir}: VQ {sum(p.numel() for p in vqvae.parameters()) / 1e6:.2f} M parameters, "
          f"stage 1 {encoder_side['step']} steps, stage 1b best of {decoder_best['step']} steps "
          f"(validation {decoder_best['best_val']:.2f} dB)")


if __name__ == "__main__":
    main()
