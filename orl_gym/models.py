"""Load and build latent-diffusion super-resolution (LDM-SR) checkpoints in diffusers format.

An LDM-SR checkpoint is the folder layout of ``CompVis/ldm-super-resolution-4x-openimages``::

    model_index.json          (optional: written by LDMSuperResolutionPipeline.save_pretrained)
    vqvae/config.json + weights        VQModel, downsampling factor f, latent channels c
    unet/config.json + weights         UNet2DModel on concat(z_t, LR): in_channels = c + 3
    scheduler/scheduler_config.json    DDIMScheduler (or any scheduler whose config it can read)

The UNet works at the LR resolution (latent side = LR side), the VQ decoder upsamples by f, so
the super-resolution scale is f (4 for the reference model and for our bundled one).

``load_ldmsr`` reads such a folder, a hub id, or the bundled default (``"bundled"``); the same
code path serves all three. ``LDMSRArchitecture`` builds a randomly initialised model of a given
size: the tests use tiny ones, ``experiments/train_ldm.py`` trains the bundled one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel

__all__ = [
    "BUNDLED_MODEL_NAME",
    "LDMSR",
    "LDMSRArchitecture",
    "ModelLoadError",
    "bundled_model_path",
    "load_ldmsr",
    "resolve_dtype",
]

BUNDLED_MODEL_NAME = "ldm-sr-tiny-x4"
REFERENCE_HUB_ID = "CompVis/ldm-super-resolution-4x-openimages"

_COMPONENT_FILES = {
    "vqvae": ("config.json",),
    "unet": ("config.json",),
    "scheduler": ("scheduler_config.json",),
}
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.fp16.safetensors")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class ModelLoadError(FileNotFoundError):
    """A checkpoint is missing, incomplete or not an LDM-SR model."""


def bundled_model_path() -> Path:
    """Folder of the tiny aerial LDM-SR model that ships inside the package."""
    return Path(__file__).resolve().parent / "assets" / BUNDLED_MODEL_NAME


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Map a dtype name to a torch dtype; half precision is for CUDA only (CPU convs lack it)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: unknown {dtype!r}; use one of float32, float16, bfloat16")
        dtype = _DTYPES[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: {dtype} is not supported; use float32, float16 or bfloat16")
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"dtype: {dtype} needs a CUDA device (got {device}); use float32 on CPU")
    return dtype


# Scheduler config keys fixed by the UNet's training: its noise levels and what it predicts.
TRAINING_SCHEDULER_KEYS = frozenset({
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "rescale_betas_zero_snr", "prediction_type",
})


@dataclass(eq=False)  # identity semantics (hashable): caches key on the loaded model object
class LDMSR:
    """A frozen LDM-SR model: VQ autoencoder, conditional UNet and DDIM scheduler, on one device."""

    vqvae: VQModel
    unet: UNet2DModel
    scheduler: DDIMScheduler
    source: str = "<in memory>"

    def __post_init__(self) -> None:
        latent_channels = self.vqvae.config.latent_channels
        if self.unet.config.in_channels != latent_channels + 3:
            raise ModelLoadError(
                f"{self.source}: unet.in_channels = {self.unet.config.in_channels}, but an LDM-SR "
                f"UNet takes concat(latent ({latent_channels} channels), LR (3)) = "
                f"{latent_channels + 3} channels"
            )
        if self.unet.config.out_channels != latent_channels:
            raise ModelLoadError(
                f"{self.source}: unet.out_channels = {self.unet.config.out_channels}, expected the "
                f"latent channel count {latent_channels} (a prediction of epsilon, v or the latent)"
            )
        for module in (self.vqvae, self.unet):
            module.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return int(self.vqvae.config.latent_channels)

    @property
    def scale_factor(self) -> int:
        """Super-resolution scale: the VQ decoder's upsampling factor, 2 ** (levels - 1)."""
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def hr_multiple(self) -> int:
        """HR sides must be multiples of this: the VQ's factor times the UNet's downsampling
        (the latent, LR-sized, is halved once per UNet level after the first)."""
        return self.scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> LDMSR:
        device = torch.device(device) if device is not None else self.device
        dtype = resolve_dtype(dtype, device) if dtype is not None else self.dtype
        cast = dtype != self.dtype  # diffusers warns on any dtype cast through .to(): only when needed
        for module in (self.vqvae, self.unet):
            if cast:
                module.to(device=device, dtype=dtype)
            else:
                module.to(device)
        return self

    def with_scheduler_config(self, **overrides: Any) -> LDMSR:
        """The same networks (shared, not copied) with a scheduler built from this one's config
        updated by ``overrides``, e.g. ``timestep_spacing="trailing"``: how a sampler setting of
        the checkpoint is compared without writing a new checkpoint. Keys the scheduler's config
        does not have raise ValueError (diffusers would ignore them silently), and so do the keys
        that say what the UNet was trained on (the noise schedule, the prediction type): changing
        those gives a different, untrained model, not another sampler of this one."""
        # Without the private keys: diffusers' from_config resets every key listed in
        # ``_use_default_values`` (those left at their defaults when the scheduler was built) to
        # the class default, which would drop an override of such a key.
        config = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise ValueError(f"scheduler config: unknown keys {unknown}; {type(self.scheduler).__name__} "
                             f"has {sorted(config)}")
        trained = sorted(set(overrides) & TRAINING_SCHEDULER_KEYS)
        if trained:
            raise ValueError(f"scheduler config: {trained} define what the UNet was trained on; "
                             "change only sampler settings (e.g. timestep_spacing, steps_offset)")
        scheduler = type(self.scheduler).from_config({**config, **overrides})
        return replace(self, scheduler=scheduler)

    def to_pipeline(self):
        """The equivalent ``LDMSuperResolutionPipeline`` (sharing these modules)."""
        # Imported from its module: the package-level name needs `transformers` in diffusers 0.42.
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
            LDMSuperResolutionPipeline,
        )

        return LDMSuperResolutionPipeline(vqvae=self.vqvae, unet=self.unet, scheduler=self.scheduler)

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True) -> None:
        """Write the diffusers pipeline layout (model_index.json + vqvae/ unet/ scheduler/)."""
        self.to_pipeline().save_pretrained(str(path), safe_serialization=safe_serialization)


def _check_local_checkpoint(folder: Path) -> None:
    """Name every missing piece of a local checkpoint folder at once."""
    if not folder.is_dir():
        raise ModelLoadError(f"model: {folder} is not a folder")
    missing = []
    for component, files in _COMPONENT_FILES.items():
        for name in files:
            if not (folder / component / name).is_file():
                missing.append(f"{component}/{name}")
        if component != "scheduler" and (folder / component).is_dir():
            if not any((folder / component / w).is_file() for w in _WEIGHT_NAMES):
                missing.append(f"{component}/diffusion_pytorch_model.safetensors (weights)")
    if missing:
        raise ModelLoadError(
            f"model: {folder} is not a complete LDM-SR checkpoint; missing: {', '.join(missing)}. "
            "Expected the diffusers layout of LDMSuperResolutionPipeline.save_pretrained "
            "(vqvae/, unet/, scheduler/)."
        )


def load_ldmsr(
    model: str | os.PathLike = "bundled",
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    revision: str | None = None,
) -> LDMSR:
    """Load an LDM-SR checkpoint.

    Args:
        model: ``"bundled"`` (the tiny aerial model in ``orl_gym/assets``), a local folder in
            the diffusers layout, or a hub id such as ``CompVis/ldm-super-resolution-4x-openimages``.
        device: where the modules live (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        dtype: float32 everywhere; float16 / bfloat16 on CUDA.
        revision: hub revision (branch, tag or commit) for hub ids.
    """
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if str(model) == "bundled":
        folder = bundled_model_path()
        if not folder.is_dir():
            raise ModelLoadError(
                f"model: the bundled checkpoint {folder} is not in this installation; "
                "train it with experiments/train_ldm.py or pass a checkpoint folder / hub id"
            )
        model = folder
    local = Path(model).expanduser()
    if local.exists():
        _check_local_checkpoint(local)
        location, kwargs = str(local), {}
    else:
        name = str(model)
        if name.startswith(("/", ".", "~")) or name.count("/") != 1 or "\\" in name:
            raise ModelLoadError(f"model: no such folder {name} (and not a hub id 'owner/name')")
        location, kwargs = str(model), {"revision": revision}
    try:
        # low_cpu_mem_usage=False: the default path needs `accelerate` and warns without it.
        kwargs.update(torch_dtype=torch_dtype, low_cpu_mem_usage=False)
        vqvae = VQModel.from_pretrained(location, subfolder="vqvae", **kwargs)
        unet = UNet2DModel.from_pretrained(location, subfolder="unet", **kwargs)
        scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler", revision=kwargs.get("revision"))
    except (OSError, ValueError) as err:
        where = "local folder" if local.exists() else "hub id (is the hub reachable? set HF_HUB_OFFLINE=1 to use the cache only)"
        raise ModelLoadError(f"model: could not load {location} as a {where}: {err}") from err
    return LDMSR(vqvae=vqvae, unet=unet, scheduler=scheduler, source=location).to(device, torch_dtype)


@dataclass(frozen=True)
class LDMSRArchitecture:
    """Size of a randomly initialised LDM-SR model (diffusers components, CompVis layout).

    The VQ decoder upsamples by 2 ** (len(vq_channels) - 1); with three levels that is x4.
    ``vq_mid_attention`` / ``unet_mid_attention``: the self-attention layer of each network's
    mid-block (diffusers' ``mid_block_add_attention`` / ``add_attention``, on by default as in
    diffusers); off makes the network fully convolutional.
    """

    latent_channels: int = 3
    vq_channels: tuple[int, ...] = (32, 64, 64)
    vq_layers_per_block: int = 1
    num_vq_embeddings: int = 2048
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, True, False)
    vq_mid_attention: bool = True
    unet_mid_attention: bool = True
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    scheduler: dict = field(default_factory=lambda: {
        # The reference model's schedule (CompVis/ldm-super-resolution-4x-openimages).
        "beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0155,
        "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0,
    })

    def build(self, *, seed: int = 0, device: str | torch.device = "cpu") -> LDMSR:
        """A freshly initialised model; the same seed gives the same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            levels = len(self.vq_channels)
            vqvae = VQModel(
                in_channels=3, out_channels=3, latent_channels=self.latent_channels,
                down_block_types=("DownEncoderBlock2D",) * levels,
                up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=self.vq_channels, layers_per_block=self.vq_layers_per_block,
                num_vq_embeddings=self.num_vq_embeddings, norm_num_groups=self.norm_num_groups,
                vq_embed_dim=self.latent_channels, mid_block_add_attention=self.vq_mid_attention,
            )
            # Spread the codebook like the N(0, I) latents the diffusion produces: diffusers'
            # uniform(+-1/n) init snaps every latent to nearly the same code, so a random model's
            # decoder output would not depend on its input at all.
            torch.nn.init.normal_(vqvae.quantize.embedding.weight)
            down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels)
            up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels))
            unet = UNet2DModel(
                in_channels=self.latent_channels + 3, out_channels=self.latent_channels,
                down_block_types=down, up_block_types=up,
                block_out_channels=self.unet_channels, layers_per_block=self.unet_layers_per_block,
                norm_num_groups=self.norm_num_groups, add_attention=self.unet_mid_attention,
            )
        scheduler = DDIMScheduler(num_train_timesteps=self.num_train_timesteps, **self.scheduler)
        return LDMSR(vqvae=vqvae, unet=unet, scheduler=scheduler, source="<random init>").to(device)

    @classmethod
    def tiny(cls) -> LDMSRArchitecture:
        """The smallest sensible model: for tests, seconds on a CPU."""
        return cls(vq_channels=(8, 16, 16), num_vq_embeddings=64, unet_channels=(16, 16, 32),
                   attention_levels=(False, False, True), norm_num_groups=8)
