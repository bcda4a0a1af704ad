"""Networks in and out of a run's checkpoints: the model of a configuration, checked weight
loading (an error that names the architecture flag that disagrees), the decoder stage's
weights over the VQ's, and what a UNet checkpoint predicts. Checkpoints are written with
:func:`orl_gym.io.atomic_save`."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from orl_gym.models import LDMSR
from orl_gym.training.config import TrainConfig


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


def load_trained_vq(cfg: TrainConfig, model: LDMSR, stage: str) -> dict:
    """The run's VQ checkpoint (what the decoder and UNet stages build on), its weights loaded
    into ``model`` together with the anchor network its residuals are taken over (if any);
    FileNotFoundError naming ``stage`` when the VQ stage has not run."""
    vq_path = Path(cfg.out) / "vq" / "checkpoint.pt"
    if not vq_path.exists():
        raise FileNotFoundError(f"{stage}: needs a trained VQ at {vq_path}; run the vq stage first")
    vq_ckpt = torch.load(vq_path, map_location="cpu", weights_only=False)
    check_vq_anchor(cfg, vq_ckpt, load_trained_anchor(cfg, model, stage))
    load_vq_weights(model, vq_ckpt)
    return vq_ckpt


def check_vq_anchor(cfg: TrainConfig, vq_ckpt: dict, anchor_ckpt: dict | None) -> None:
    """The VQ autoencodes residuals over the anchor network it was trained with: refuse a VQ
    whose anchor (``anchor_ckpt``, as :func:`load_trained_anchor` returns it) has been trained
    further since (its latents would mean another residual)."""
    if cfg.latent_anchor != "network":
        return
    now, then = (anchor_ckpt["step"] if anchor_ckpt else None), vq_ckpt.get("anchor_step")
    if now != then:
        raise RuntimeError(f"vq: trained over the anchor network at step {then}, but the anchor is now at step "
                           f"{now}; move {Path(cfg.out) / 'vq'} (and decoder/, unet/) away and train them again")


def load_trained_anchor(cfg: TrainConfig, model: LDMSR, stage: str) -> dict | None:
    """Load the run's anchor network (its best-validation weights) into ``model`` for the stages
    that encode residuals over it; returns its checkpoint (None for a bicubic anchor).
    FileNotFoundError naming ``stage`` when the anchor stage has not run."""
    if cfg.latent_anchor != "network":
        return None
    path = Path(cfg.out) / "anchor" / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{stage}: this run's residual is taken over an anchor network, and none is "
                                f"trained at {path}; run the anchor stage first (--stages anchor,{stage})")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    network = model.latent_target.network
    load_checked(network, ckpt["best"], "anchor checkpoint")
    network.eval().requires_grad_(False)
    return ckpt


def load_vq_weights(model: LDMSR, vq_ckpt: dict) -> None:
    load_checked(model.vqvae, vq_ckpt["model"], "VQ checkpoint")


def load_unet_weights(model: LDMSR, unet_ckpt: dict, *, ema: bool = True) -> None:
    load_checked(model.unet, unet_ckpt["model"], "UNet checkpoint")
    if ema and unet_ckpt.get("ema") is not None:
        shadow = EMAModel(model.unet.parameters())
        shadow.load_state_dict(unet_ckpt["ema"])
        shadow.copy_to(model.unet.parameters())


DECODER_PREFIXES = ("post_quant_conv.", "decoder.")


def cpu_state(module: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of the module's weights whose names start with one of ``prefixes``
    (all of them by default): the best-validation weights a stage keeps while it trains on."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k.startswith(prefixes)}


def decoder_state(vqvae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights the decoder stage trains (a copy, on the CPU)."""
    return cpu_state(vqvae, DECODER_PREFIXES)


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


def unet_prediction_type(unet_ckpt: dict) -> str:
    """What a UNet checkpoint was trained to predict (runs from before the option: epsilon)."""
    return unet_ckpt.get("config", {}).get("prediction_type", "epsilon")
