"""Corrections of a decoded super-resolved image that use only its own LR input.

Diffusion super-resolvers get an image's lowest frequencies - its overall colour above all -
slightly wrong: the UNet predicts latents, and a small error in a latent channel's mean decodes
into a colour cast over the whole image (a few 8-bit levels for the bundled model, which costs
about 1 dB of PSNR). The LR input pins those frequencies down: the degradation (antialiased
bicubic downsampling) keeps a region's mean colour. The corrections below move the output's low
frequencies to the LR's and leave its high-frequency detail alone. None of them needs the ground
truth, so they are legitimate parts of a sampler, and the env and the evaluation scripts offer
them as options (off by default: the paper's sampler has none).

=================  ==========================================================================
name               what it does to ``sr`` (``down`` = the degradation's antialiased bicubic
                   downsampling, ``up`` = bicubic upsampling to the output size)
=================  ==========================================================================
``none``           nothing
``mean_colour``    shifts each channel by ``mean(lr) - mean(down(sr))``: the mean colour of
                   the output's LR version becomes the LR's (a constant per image and channel)
``wavelet``        StableSR's wavelet colour fix (Wang et al., "Exploiting Diffusion Prior for
                   Real-World Image Super-Resolution", IJCV 2024): the output's high-frequency
                   bands plus the lowest band of ``up(lr)``, from a 5-level decomposition by
                   dilated 3x3 binomial blurs (dilations 1, 2, 4, 8, 16)
``back_projection`` one step of iterative back-projection (Irani & Peleg, 1991):
                   ``sr + up(lr - down(sr))``, which removes most of the output's
                   disagreement with its LR input
=================  ==========================================================================

Every correction works on a batch ``(B, 3, H, W)`` with LR ``(B, 3, H / s, W / s)``, both floats
in [0, 1] on one device, with no loop over images; it is differentiable, and its output is
clamped to [0, 1].
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from orl_gym.data import downsample_bicubic
from orl_gym.rewards import check_image_batch, check_lr

__all__ = ["OUTPUT_FIXES", "OUTPUT_FIX_NAMES", "apply_output_fix", "back_project", "match_mean_colour", "wavelet_colour_fix"]

OUTPUT_FIXES = ("none", "mean_colour", "wavelet", "back_projection")
# How tables name them.
OUTPUT_FIX_NAMES = {"none": "no fix", "mean_colour": "mean colour matched to the LR",
                    "wavelet": "wavelet colour fix", "back_projection": "LR back-projection"}

# StableSR's decomposition depth: the lowest band keeps structures above ~2^5 pixels (on images
# smaller than that it is close to the mean colour).
WAVELET_LEVELS = 5


def _check(sr: Tensor, lr: Tensor) -> None:
    """The package's image-batch checks (``orl_gym.rewards``): shapes, dtype, scale, device."""
    check_image_batch("sr", sr)
    check_lr(sr, lr)


def _upsample(images: Tensor, size: tuple[int, int]) -> Tensor:
    # Not rewards.bicubic_upsample: that one clamps to [0, 1], and back-projection upsamples a
    # signed residual.
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


_HALF = (torch.float16, torch.bfloat16)


def _in_float32(fix):
    """Run ``fix`` on float16 / bfloat16 inputs in float32, returning ``sr``'s dtype: PyTorch's
    antialiased bicubic (the LR downsampling) has no half kernel on CPU, and the fixes add small
    corrections that half precision would round away. Other dtypes run as they are."""

    @functools.wraps(fix)
    def wrapper(sr: Tensor, lr: Tensor, *args, **kwargs) -> Tensor:
        if getattr(sr, "dtype", None) not in _HALF and getattr(lr, "dtype", None) not in _HALF:
            return fix(sr, lr, *args, **kwargs)  # checks its inputs itself (non-tensors too)
        _check(sr, lr)  # before the casts, which would turn a uint8 LR into float values of 0-255
        return fix(sr.float(), lr.float(), *args, **kwargs).to(sr.dtype)

    return wrapper


@_in_float32
def match_mean_colour(sr: Tensor, lr: Tensor) -> Tensor:
    """``sr`` shifted per image and channel so that ``down(sr)`` has the mean colour of ``lr``."""
    _check(sr, lr)
    shift = lr.mean(dim=(2, 3), keepdim=True) - downsample_bicubic(sr, lr.shape[-2:]).mean(dim=(2, 3), keepdim=True)
    return (sr + shift).clamp(0.0, 1.0)


def _binomial_blur(images: Tensor, dilation: int) -> Tensor:
    """3x3 binomial blur [1 2 1]^T [1 2 1] / 16 with holes (a-trous), replicate-padded."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device)
    kernel = (taps[:, None] * taps[None, :] / 16.0).expand(images.shape[1], 1, 3, 3)
    padded = F.pad(images, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1], dilation=dilation)


def _wavelet_split(images: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """(sum of the high-frequency bands, the lowest band); they add up to ``images``."""
    low = images
    for level in range(levels):
        low = _binomial_blur(low, 2**level)
    return images - low, low


@_in_float32
def wavelet_colour_fix(sr: Tensor, lr: Tensor) -> Tensor:
    """StableSR's wavelet colour fix: high bands of ``sr`` + the lowest band of ``up(lr)``."""
    _check(sr, lr)
    high, _ = _wavelet_split(sr)
    _, low = _wavelet_split(_upsample(lr, tuple(sr.shape[-2:])))
    return (high + low).clamp(0.0, 1.0)


@_in_float32
def back_project(sr: Tensor, lr: Tensor, *, iterations: int = 1) -> Tensor:
    """Iterative back-projection: ``sr <- sr + up(lr - down(sr))``, ``iterations`` times."""
    _check(sr, lr)
    if iterations < 1:
        raise ValueError(f"iterations: expected >= 1, got {iterations}")
    size = tuple(sr.shape[-2:])
    for _ in range(iterations):
        sr = (sr + _upsample(lr - downsample_bicubic(sr, lr.shape[-2:]), size)).clamp(0.0, 1.0)
    return sr


def apply_output_fix(name: str, sr: Tensor, lr: Tensor) -> Tensor:
    """The correction ``name`` (one of ``OUTPUT_FIXES``, see the module docstring) of ``sr``."""
    if name not in OUTPUT_FIXES:
        raise ValueError(f"output_fix: unknown {name!r}; choose one of {OUTPUT_FIXES}")
    if name == "none":
        _check(sr, lr)  # the same input contract with or without a fix
        return sr
    fix = {"mean_colour": match_mean_colour, "wavelet": wavelet_colour_fix, "back_projection": back_project}[name]
    return fix(sr, lr)
