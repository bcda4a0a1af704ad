"""Load and build latent-diffusion super-resolution (LDM-SR) checkpoints in diffusers format.

An LDM-SR checkpoint is the folder layout of ``CompVis/ldm-super-resolution-4x-openimages``::

    model_index.json          (optional: written by LDMSuperResolutionPipeline.save_pretrained)
    vqvae/config.json + weights        VQModel, downsampling factor f, latent channels c
    unet/config.json + weights         UNet2DModel on concat(z_t, LR): in_channels = c + 3
    scheduler/scheduler_config.json    DDIMScheduler (or any scheduler whose config it can read)

The UNet works at the LR resolution (latent side = LR side), the VQ decoder upsamples by f, so
the super-resolution scale is f (4 for the reference model and for our bundled one).

Two latent targets (``LatentTarget``, stored as ``latent_target.json`` at the folder's root;
absent means ``image``):

* ``image``: the CompVis format. The VQ autoencodes the HR image, ``x = D(z_0)``; the reference
  model and ``LDMSuperResolutionPipeline`` work this way.
* ``residual``: LR-anchored. The VQ autoencodes the residual over the bicubic upsampling of the LR
  input, scaled: ``z_0 = E(s * (HR - up(LR)))`` and ``x = clip(up(LR) + D(z_0) / s, 0, 1)``, where
  ``up`` is :func:`orl_gym.data.upsample_bicubic`, the reward's bicubic baseline itself. The chain,
  the UNet and the sampler are unchanged (same DDIM over z, same conditioning on LR); only what z
  means changes. Why this design (issue 24, in the spirit of residual SR3 / ResShift, Yue et al.
  2023): (1) the low frequencies that the LR image fixes are not generated, so an image can no
  longer drift in colour or brightness the way the image-format model does (its colour cast on
  Desert); (2) bicubic is built in: a zero residual decodes to exactly the baseline, and the
  x0 estimate at high noise, E[residual | LR], is already a regression estimate over it, so even a
  one-step sample lands at or above bicubic; (3) the VQ compresses a signal of about a fifth of
  the image's standard deviation, so its reconstruction ceiling is far above bicubic rather than
  at 26 dB; (4) the env's actions (stride, eta, noise scale, LR guidance) keep their meaning.
  ResShift's alternative, a chain that starts at the encoded bicubic image plus noise and shifts the
  residual in over fewer steps, would need its own noise schedule and sampler; here the anchor is
  zero in residual space, which a standard schedule's z_T already centres on. The pipeline cannot
  run such a model (it would show the residual as the image): ``to_pipeline`` refuses it.
  ``up`` may also be a trained regression CNN (``anchor="network"``, :class:`AnchorNet` in the
  folder's ``anchor/``, itself bicubic plus a learned correction), as in SRDiff (Li et al. 2022)
  and ResDiff (Shang et al. 2023): the regression predicts what it can from the LR image (a small
  CNN gains +0.5 dB over bicubic on AID in minutes, ``experiments/regression_anchor_probe.py``),
  and the diffusion only generates what it leaves, a smaller residual whose sampled texture then
  costs less PSNR. The network runs once per decode on the LR image, like bicubic.

A folder may also name its default sampler: ``sampler_defaults.json`` at its root,
``{"num_inference_steps": K}``, the length of the DDIM schedule its "No RL" sampler runs (and the
env's strides move along) when the caller gives none. A model trained for few steps from the top
of a trailing schedule samples best at 2 steps, the CompVis-format one at 20 or more; absent, the
env's own default applies (``orl_gym.env.DEFAULT_NUM_INFERENCE_STEPS``). Like ``timestep_spacing``
in the scheduler config, it is a sampler setting, not a trained one: another value is another
sampler of the same weights.

``load_ldmsr`` reads such a folder, a hub id, or the bundled default (``"bundled"``); the same
code path serves all three. ``LDMSRArchitecture`` builds a randomly initialised model of a given
size: the tests use tiny ones, ``experiments/train_ldm.py`` trains the bundled one.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, DDIMScheduler, ModelMixin, UNet2DModel, VQModel
from diffusers.configuration_utils import register_to_config

__all__ = [
    "AnchorNet",
    "BUNDLED_MODEL_NAME",
    "BUNDLED_MODEL_NAMES",
    "LDMSR",
    "LDMSRArchitecture",
    "LatentTarget",
    "ModelLoadError",
    "bundled_model_path",
    "checkpoint_digest",
    "load_ldmsr",
    "read_sampler_defaults",
    "resolve_dtype",
]

# The default ("bundled"): the network-anchored residual model (issue 24). The package also holds
# the CompVis-format model (``ldm-sr-tiny-x4``, the pipeline-equality reference) and the
# bicubic-anchored residual one (``ldm-sr-tiny-x4-residual``): ``bundled_model_path(name)``.
BUNDLED_MODEL_NAME = "ldm-sr-tiny-x4-anchored"
BUNDLED_MODEL_NAMES = ("ldm-sr-tiny-x4-anchored", "ldm-sr-tiny-x4-residual", "ldm-sr-tiny-x4")
REFERENCE_HUB_ID = "CompVis/ldm-super-resolution-4x-openimages"

_COMPONENT_FILES = {
    "vqvae": ("config.json",),
    "unet": ("config.json",),
    "scheduler": ("scheduler_config.json",),
}
# What diffusers' from_pretrained (no variant) loads: one file, or the index of a sharded checkpoint
# (diffusion_pytorch_model-0000k-of-0000N.safetensors), each in safetensors or pickle format.
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.bin.index.json")
# Variant weights (save_pretrained(variant="fp16")): diffusers reads them only when asked for the
# variant, so a folder holding nothing else fails to load; named in the error instead.
_VARIANT_WEIGHT_NAME = re.compile(
    r"diffusion_pytorch_model\.(?:[^.]+\.(?:safetensors|bin)|(?:safetensors|bin)\.index\.[^.]+\.json)"
)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class ModelLoadError(FileNotFoundError):
    """A checkpoint is missing, incomplete or not an LDM-SR model."""


def bundled_model_path(name: str = BUNDLED_MODEL_NAME) -> Path:
    """Folder of a tiny aerial LDM-SR model that ships inside the package (default: the default
    model, what ``load_ldmsr("bundled")`` loads; ``name`` one of ``BUNDLED_MODEL_NAMES``)."""
    if name not in BUNDLED_MODEL_NAMES:
        raise ValueError(f"bundled model: unknown {name!r}; the package ships {list(BUNDLED_MODEL_NAMES)}")
    return Path(__file__).resolve().parent / "assets" / name


def checkpoint_digest(folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every weight file of a local checkpoint folder, by path inside it: what an
    evaluation was of (``experiments/eval_base_model.py`` records it; an export keeps the
    evaluation only for the same weights)."""
    from orl_gym.io import sha256_file

    folder = Path(folder)
    files = sorted(p for p in folder.glob("*/*") if p.is_file() and p.suffix in (".safetensors", ".bin"))
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


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


LATENT_TARGET_FILE = "latent_target.json"
SAMPLER_DEFAULTS_FILE = "sampler_defaults.json"
LATENT_TARGET_KINDS = ("image", "residual")
ANCHOR_KINDS = ("bicubic", "network")
ANCHOR_FOLDER = "anchor"


@dataclass(frozen=True)
class LatentTarget:
    """What the VQ autoencodes, so what the latent z means (see the module docstring).

    kind: ``"image"`` (CompVis: ``x = D(z)``) or ``"residual"`` (``x = up(LR) + D(z) / scale``).
    residual_scale: ``s`` of the residual format, chosen so that ``s * (HR - up(LR))`` has about
        the standard deviation of an image in [-1, 1] (the training set's residual std is ~0.08,
        ``s = 5``); 1.0 and unused for images.
    anchor: what ``up`` is for the residual format: ``"bicubic"`` (:func:`orl_gym.data.upsample_bicubic`)
        or ``"network"`` (a trained regression CNN, :class:`AnchorNet`, in ``network``; the
        checkpoint folder's ``anchor/``).
    network: the :class:`AnchorNet` of ``anchor="network"`` (None until loaded or built; not part
        of equality: two targets of one format are equal whatever their weights).
    """

    kind: str = "image"
    residual_scale: float = 1.0
    anchor: str = "bicubic"
    network: torch.nn.Module | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in LATENT_TARGET_KINDS:
            raise ValueError(f"latent target: unknown kind {self.kind!r}; use one of {', '.join(LATENT_TARGET_KINDS)}")
        scale = self.residual_scale
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"latent target: residual_scale must be a finite number > 0, got {scale!r}")
        if self.anchor not in ANCHOR_KINDS:
            raise ValueError(f"latent target: unknown anchor {self.anchor!r}; use one of {', '.join(ANCHOR_KINDS)}")
        if self.anchor == "network" and not self.is_residual:
            raise ValueError("latent target: a network anchor needs kind='residual' (the image format has no anchor)")

    @property
    def is_residual(self) -> bool:
        return self.kind == "residual"

    def vq_input(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """What the VQ encodes for HR images in [0, 1] and their LR inputs: ``2 HR - 1``, or the
        scaled residual ``s * (HR - up(LR))``."""
        if not self.is_residual:
            return hr * 2.0 - 1.0
        return (hr - self.anchor_image(lr, hr.shape[-2:])) * self.residual_scale

    def image(self, decoded: torch.Tensor, lr: torch.Tensor | None, *, clamp: bool = True) -> torch.Tensor:
        """Images in [0, 1] from the decoder's output (``vqvae.decode(z).sample``) and the LR
        inputs (needed by the residual format only). ``clamp=False`` keeps the values unclipped,
        for gradients (LR guidance)."""
        if not self.is_residual:
            return (decoded.clamp(-1.0, 1.0) + 1.0) / 2.0 if clamp else (decoded + 1.0) / 2.0
        if lr is None:
            raise ValueError("a residual-format model decodes to up(LR) + residual: pass the LR images")
        if lr.shape[0] != decoded.shape[0]:
            raise ValueError(f"lr: {lr.shape[0]} images for {decoded.shape[0]} latents; pass one LR image per latent")
        image = self.anchor_image(lr.to(decoded.dtype), decoded.shape[-2:]) + decoded / self.residual_scale
        return image.clamp(0.0, 1.0) if clamp else image

    def anchor_image(self, lr: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """``up(LR)``, the image the residual is taken over: bicubic (the reward's baseline), or
        the anchor network's prediction."""
        from orl_gym.data import upsample_bicubic

        if self.anchor == "bicubic":
            return upsample_bicubic(lr, size)
        if self.network is None:
            raise ValueError("latent target: anchor='network' but no network is loaded; load the model with "
                             "load_ldmsr (which reads its anchor/ folder) or build it with LDMSRArchitecture")
        device, dtype = _placement(self.network)
        image = self.network(lr.to(device=device, dtype=dtype))
        if tuple(image.shape[-2:]) != tuple(size):
            raise ValueError(f"anchor network: made {tuple(image.shape[-2:])} images from LR "
                             f"{tuple(lr.shape[-2:])}, but {tuple(size)} were asked for")
        return image.to(device=lr.device, dtype=lr.dtype)

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": self.kind, "residual_scale": float(self.residual_scale)}
        if self.anchor != "bicubic":  # older readers know only the bicubic anchor: written when it is not
            data["anchor"] = self.anchor
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> LatentTarget:
        """The folder's ``latent_target.json``; the image format when there is none (CompVis).
        A network anchor's weights are not read here (``load_ldmsr`` loads ``anchor/``)."""
        path = folder / LATENT_TARGET_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            unknown = set(data) - {"kind", "residual_scale", "anchor"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            return cls(**data)
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            raise ModelLoadError(f"model: {path} is not a valid latent target ({err}); expected "
                                 '{"kind": "image" | "residual", "residual_scale": 5.0, '
                                 '"anchor": "bicubic" | "network"}') from err


class AnchorNet(ModelMixin, ConfigMixin):
    """The anchor network of a residual model: an EDSR-style regression CNN (Lim et al. 2017)
    whose output is ``up_bicubic(LR) + CNN(LR)``, trained with L1 (``train_ldm.py --stages
    anchor``). The residual the diffusion then models is what a regression cannot predict, as in
    SRDiff (Li et al. 2022) and ResDiff (Shang et al. 2023); a zero CNN output is bicubic.

    A head convolution on ``2 LR - 1``, ``blocks`` residual blocks (conv-ReLU-conv) of
    ``channels`` with a global skip, then log2(scale) x2 pixel-shuffle upsamplings and an output
    convolution. Fully convolutional: whole images of any size.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, scale_factor: int = 4, channels: int = 48, blocks: int = 6) -> None:
        super().__init__()
        if scale_factor < 2 or scale_factor & (scale_factor - 1):
            raise ValueError(f"anchor network: scale_factor must be a power of 2, got {scale_factor}")
        self.head = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.body = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(blocks))
        upsampling: list[torch.nn.Module] = []
        for level in range(int(math.log2(scale_factor))):
            upsampling += [torch.nn.Conv2d(channels, channels * 4, 3, padding=1), torch.nn.PixelShuffle(2)]
            if level < int(math.log2(scale_factor)) - 1:
                upsampling.append(torch.nn.ReLU())
        self.tail = torch.nn.Sequential(*upsampling, torch.nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) LR images in [0, 1] -> (B, 3, h * scale, w * scale), not clamped."""
        from orl_gym.data import upsample_bicubic

        features = self.head(lr * 2.0 - 1.0)
        x = features
        for block in self.body:
            x = x + block(x)
        scale = self.config.scale_factor
        return upsample_bicubic(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)) + self.tail(x + features)


@dataclass(eq=False)  # identity semantics (hashable): caches key on the loaded model object
class LDMSR:
    """A frozen LDM-SR model: VQ autoencoder, conditional UNet and DDIM scheduler, on one device."""

    vqvae: VQModel
    unet: UNet2DModel
    scheduler: DDIMScheduler
    source: str = "<in memory>"
    latent_target: LatentTarget = field(default_factory=LatentTarget)
    # The folder's sampler_defaults.json: the DDIM steps of its default sampler (None: not stated).
    default_num_inference_steps: int | None = None

    def __post_init__(self) -> None:
        steps = self.default_num_inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or not 1 <= steps <= self.scheduler.config.num_train_timesteps):
            raise ModelLoadError(f"{self.source}: default_num_inference_steps must be an int in [1, "
                                 f"{self.scheduler.config.num_train_timesteps}] (the scheduler's training "
                                 f"steps) or None, got {steps!r}")
        placement = {name: _placement(module) for name, module in (("vqvae", self.vqvae), ("unet", self.unet))}
        if placement["vqvae"] != placement["unet"]:
            found = ", ".join(f"{name} on {device} in {dtype}" for name, (device, dtype) in placement.items())
            raise ModelLoadError(
                f"{self.source}: the VQ autoencoder and the UNet must share one device and dtype, got "
                f"{found}: call .to(device, dtype) on both modules before building the LDMSR"
            )
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
        network = self.latent_target.network
        if self.latent_target.anchor == "network":
            if network is None:
                raise ModelLoadError(f"{self.source}: the latent target anchors on a network, but none is given: "
                                     "build the LatentTarget with network=AnchorNet(...) (load_ldmsr reads anchor/)")
            if _placement(network) != placement["unet"]:
                raise ModelLoadError(f"{self.source}: the anchor network is on {_placement(network)[0]} in "
                                     f"{_placement(network)[1]}, the UNet on {placement['unet'][0]} in "
                                     f"{placement['unet'][1]}: call .to(device, dtype) on it too")
        for module in self.modules:
            module.eval().requires_grad_(False)

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        """The networks: VQ, UNet and, for a network-anchored residual model, the anchor network."""
        network = self.latent_target.network if self.latent_target.anchor == "network" else None
        return (self.vqvae, self.unet) if network is None else (self.vqvae, self.unet, network)

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
        device = _check_device(torch.device(device)) if device is not None else self.device
        dtype = resolve_dtype(dtype, device) if dtype is not None else self.dtype
        for module in self.modules:
            # Each module by its own dtype (one may have been cast on its own); diffusers warns on
            # any dtype cast through .to(), so only when needed.
            if _placement(module)[1] != dtype:
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

        if self.latent_target.is_residual:
            raise ValueError(f"{self.source}: a residual-format model (x = bicubic(LR) + D(z) / s) cannot run as "
                             "LDMSuperResolutionPipeline, which would show the residual as the image; use "
                             "orl_gym.sampler (or the env) instead")
        return LDMSuperResolutionPipeline(vqvae=self.vqvae, unet=self.unet, scheduler=self.scheduler)

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True) -> None:
        """Write the diffusers pipeline layout (model_index.json + vqvae/ unet/ scheduler/), and
        ``latent_target.json`` for a residual-format model (and ``anchor/`` for its anchor network),
        ``sampler_defaults.json`` when the model states its default sampler."""
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
            LDMSuperResolutionPipeline,
        )

        # The same layout for both formats (a residual model refuses to_pipeline, not saving).
        pipeline = LDMSuperResolutionPipeline(vqvae=self.vqvae, unet=self.unet, scheduler=self.scheduler)
        pipeline.save_pretrained(str(path), safe_serialization=safe_serialization)
        if self.latent_target.is_residual:
            (Path(path) / LATENT_TARGET_FILE).write_text(self.latent_target.to_json())
        if self.latent_target.anchor == "network":
            self.latent_target.network.save_pretrained(str(Path(path) / ANCHOR_FOLDER),
                                                       safe_serialization=safe_serialization)
        if self.default_num_inference_steps is not None:
            (Path(path) / SAMPLER_DEFAULTS_FILE).write_text(
                json.dumps({"num_inference_steps": self.default_num_inference_steps}, indent=2) + "\n")


def read_sampler_defaults(folder: Path) -> int | None:
    """The default DDIM steps a checkpoint folder states in ``sampler_defaults.json`` (None: no file)."""
    path = Path(folder) / SAMPLER_DEFAULTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or set(data) != {"num_inference_steps"}:
            raise ValueError(f"expected exactly the key 'num_inference_steps', got {data!r}")
        steps = data["num_inference_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {steps!r}")
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise ModelLoadError(f"model: {path} is not a valid sampler default ({err}); expected "
                             '{"num_inference_steps": 2}, or delete the file to use the env\'s default') from err
    return steps


def _placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a module, read from its first parameter like LDMSR.device / .dtype."""
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def _check_device(device: torch.device) -> torch.device:
    """``device``, or a ValueError when it names a CUDA device this machine does not have (torch
    would fail later, deep inside the first .to(), with a driver message)."""
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine (no GPU, "
                         "driver or CUDA build of torch); use device='cpu'")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device={str(device)!r}: this machine has {count} CUDA device(s), "
                         f"cuda:0..cuda:{count - 1}")
    return device


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
                variants = sorted(f.name for f in (folder / component).iterdir()
                                  if _VARIANT_WEIGHT_NAME.fullmatch(f.name))
                found = (f"; only variant weights are there ({', '.join(variants)}), which diffusers "
                         "loads only when asked for that variant: save the model again without "
                         "variant=, or rename the file(s) without the variant (e.g. .fp16)"
                         if variants else "")
                missing.append(f"{component}/diffusion_pytorch_model.safetensors (weights{found})")
    if LatentTarget.read(folder).anchor == "network" and not (folder / ANCHOR_FOLDER / "config.json").is_file():
        missing.append(f"{ANCHOR_FOLDER}/config.json and weights ({LATENT_TARGET_FILE} names a network anchor)")
    if missing:
        raise ModelLoadError(
            f"model: {folder} is not a complete LDM-SR checkpoint; missing: {', '.join(missing)}. "
            "Expected the diffusers layout of LDMSuperResolutionPipeline.save_pretrained "
            "(vqvae/, unet/, scheduler/)."
        )


def _check_all_weights_loaded(location: str, component: str, loading_info: dict) -> None:
    """ModelLoadError when the config builds layers the weights do not have: diffusers only logs
    a warning and leaves them randomly initialised, a silently broken model."""
    missing = loading_info.get("missing_keys") or []
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise ModelLoadError(f"model: {location}: {component}/config.json does not match its weights "
                             f"(a config edited, or from another checkpoint): the weights lack {shown}")


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

    Raises:
        ModelLoadError: a missing or incomplete checkpoint (named piece by piece), weights that
            do not match their config.json, an unreachable hub id.
        ValueError: an unknown dtype, half precision off CUDA, a CUDA device this machine lacks.
    """
    device = _check_device(torch.device(device))
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
    component = "vqvae"  # the one being loaded, for the error message
    try:
        # low_cpu_mem_usage=False: the default path needs `accelerate` and warns without it.
        kwargs.update(torch_dtype=torch_dtype, low_cpu_mem_usage=False, output_loading_info=True)
        vqvae, loading_info = VQModel.from_pretrained(location, subfolder="vqvae", **kwargs)
        _check_all_weights_loaded(location, component, loading_info)
        component = "unet"
        unet, loading_info = UNet2DModel.from_pretrained(location, subfolder="unet", **kwargs)
        _check_all_weights_loaded(location, component, loading_info)
        component = "scheduler"
        scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler", revision=kwargs.get("revision"))
        # A hub id is a CompVis-format model unless its folder says otherwise (read where it is local).
        latent_target = LatentTarget.read(local) if local.exists() else LatentTarget()
        if latent_target.anchor == "network":
            component = ANCHOR_FOLDER
            network, loading_info = AnchorNet.from_pretrained(location, subfolder=ANCHOR_FOLDER, **kwargs)
            _check_all_weights_loaded(location, component, loading_info)
            latent_target = replace(latent_target, network=network)
    except ModelLoadError:  # an OSError too: already says what is wrong
        raise
    except (OSError, ValueError) as err:
        where = "local folder" if local.exists() else "hub id (is the hub reachable? set HF_HUB_OFFLINE=1 to use the cache only)"
        raise ModelLoadError(f"model: could not load {location} as a {where}: {err}") from err
    except RuntimeError as err:
        # torch's load_state_dict: the shapes or names the config builds differ from the weights.
        detail = " ".join(line.strip() for line in str(err).splitlines()[:3])  # one line: the first mismatches
        if "state_dict" in str(err):
            raise ModelLoadError(f"model: {location}: {component}/config.json does not match its weights "
                                 f"(a config edited, or from another checkpoint): {detail}") from err
        raise ModelLoadError(f"model: could not load {component} of {location}: {detail}") from err
    default_steps = read_sampler_defaults(local) if local.exists() else None
    return LDMSR(vqvae=vqvae, unet=unet, scheduler=scheduler, source=location,
                 latent_target=latent_target, default_num_inference_steps=default_steps).to(device, torch_dtype)


@dataclass(frozen=True)
class LDMSRArchitecture:
    """Size of a randomly initialised LDM-SR model (diffusers components, CompVis layout).

    The VQ decoder upsamples by 2 ** (len(vq_channels) - 1); with three levels that is x4.
    ``vq_mid_attention`` / ``unet_mid_attention``: the self-attention layer of each network's
    mid-block (diffusers' ``mid_block_add_attention`` / ``add_attention``, on by default as in
    diffusers); off makes the network fully convolutional. ``latent_target``: what the VQ
    autoencodes (the CompVis image, or the LR-anchored residual); ``anchor_channels`` /
    ``anchor_blocks``: the size of its :class:`AnchorNet` when it anchors on a network.
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
    latent_target: LatentTarget = field(default_factory=LatentTarget)
    anchor_channels: int = 48
    anchor_blocks: int = 6
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
            latent_target = replace(self.latent_target, network=None)
            if latent_target.anchor == "network":  # a fresh network for every build, never shared
                latent_target = replace(latent_target, network=AnchorNet(
                    scale_factor=2 ** (levels - 1), channels=self.anchor_channels, blocks=self.anchor_blocks))
        scheduler = DDIMScheduler(num_train_timesteps=self.num_train_timesteps, **self.scheduler)
        return LDMSR(vqvae=vqvae, unet=unet, scheduler=scheduler, source="<random init>",
                     latent_target=latent_target).to(device)

    @classmethod
    def tiny(cls) -> LDMSRArchitecture:
        """The smallest sensible model: for tests, seconds on a CPU."""
        return cls(vq_channels=(8, 16, 16), num_vq_embeddings=64, unet_channels=(16, 16, 32),
                   attention_levels=(False, False, True), norm_num_groups=8)
