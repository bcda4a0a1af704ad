"""The full-reference and LR-consistency metrics: PSNR, SSIM, and the PSNR of the downsampled output.

Batched, one value per image, on the input's device; what each computes and which reference
implementation it reproduces: :mod:`orl_gym.rewards`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from orl_gym.data import downsample_bicubic, upsample_bicubic
from orl_gym.precision import ieee_float32
from orl_gym.rewards.checks import check_image_batch, check_image_values, check_lr, check_pair

__all__ = ["bicubic_downsample", "bicubic_upsample", "lr_consistency", "psnr", "rgb_to_y", "ssim"]

# ITU-R BT.601 luma for RGB in [0, 1] (MATLAB rgb2ycbcr): Y = 16/255 + (coeffs . RGB) / 255.
_BT601_Y_COEFFS = (65.481, 128.553, 24.966)
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_CPU_CHUNK_BYTES = 8 * 2**20
"""On CPU, SSIM runs over chunks of images whose moment maps (5 x C padded maps, twice) fit
about this many bytes, i.e. in the last-level cache: one pass over a whole large batch streams
every map through memory several times and was even slower per image than single images. On
the 2-core dev machine (32 MiB L3), 8 MiB chunks (12 images of 64x64) made B = 64 2x and
B = 256 2.7-2.8x faster than one pass; 4-16 MiB were close, 32 MiB as slow as one pass.
One pass on other devices."""


def rgb_to_y(images: Tensor, *, data_range: float = 1.0) -> Tensor:
    """ITU-R BT.601 luma ``(B, 1, H, W)`` of RGB ``images`` ``(B, 3, H, W)`` (MATLAB ``rgb2ycbcr``)."""
    if images.shape[1] != 3:
        raise ValueError(f"y_channel=True needs RGB images (3 channels), got {images.shape[1]}")
    coeffs = images.new_tensor(_BT601_Y_COEFFS) / 255.0
    luma = torch.einsum("bchw,c->bhw", images, coeffs).unsqueeze(1)
    return luma + (16.0 / 255.0) * data_range


def _prepare(
    sr: Tensor,
    hr: Tensor,
    *,
    y_channel: bool,
    crop_border: int,
    data_range: float,
    check_values: bool,
) -> tuple[Tensor, Tensor]:
    """Check a pair, then crop it, cast half precision to float32 and take the luma, as asked:
    what PSNR and SSIM compare."""
    check_pair(sr, hr)
    if check_values:
        check_image_values({"sr": sr, "hr": hr}, data_range=data_range)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        height, width = sr.shape[-2:]
        if 2 * crop_border >= min(height, width):
            raise ValueError(
                f"crop_border={crop_border} leaves nothing of a {height}x{width} image"
            )
        sr = sr[..., crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[..., crop_border:-crop_border, crop_border:-crop_border]
    # Half-precision sums of squares lose digits; metrics are computed in float32 at least.
    if sr.dtype in (torch.float16, torch.bfloat16):
        sr, hr = sr.float(), hr.float()
    if y_channel:
        sr, hr = rgb_to_y(sr, data_range=data_range), rgb_to_y(hr, data_range=data_range)
    return sr, hr


def bicubic_downsample(images: Tensor, scale: int) -> Tensor:
    """Bicubic, antialiased downsampling by ``scale`` (the LR degradation), clamped to [0, 1]."""
    height, width = images.shape[-2:]
    return downsample_bicubic(images, (height // scale, width // scale)).clamp(0.0, 1.0)


def bicubic_upsample(images: Tensor, size: Sequence[int]) -> Tensor:
    """Bicubic upsampling to ``size`` (the reward's baseline SR), clamped to [0, 1]
    (:func:`orl_gym.data.upsample_bicubic`, also the residual models' anchor)."""
    return upsample_bicubic(images, size)


def psnr(
    sr: Tensor,
    hr: Tensor,
    *,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    check_values: bool = True,
) -> Tensor:
    """Per-image PSNR in dB, ``(B,)``; ``inf`` where ``sr == hr``. See :mod:`orl_gym.rewards`."""
    sr, hr = _prepare(sr, hr, y_channel=y_channel, crop_border=crop_border, data_range=data_range,
                      check_values=check_values)
    mse = (sr - hr).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    # Same construction as torchmetrics' _gaussian, so both agree to float rounding.
    offsets = torch.arange(
        (1 - _SSIM_WINDOW) / 2, (1 + _SSIM_WINDOW) / 2, 1.0, dtype=dtype, device=device
    )
    taps = torch.exp(-((offsets / _SSIM_SIGMA) ** 2) / 2)
    taps = taps / taps.sum()
    return taps[:, None] * taps[None, :]


@ieee_float32  # its Gaussian window is a convolution: batch-invariant on CUDA too
def ssim(
    sr: Tensor,
    hr: Tensor,
    *,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    padding: Literal["reflect", "valid"] = "reflect",
    check_values: bool = True,
) -> Tensor:
    """Per-image SSIM, ``(B,)``, Gaussian window 11 / sigma 1.5. See :mod:`orl_gym.rewards`."""
    if padding not in ("reflect", "valid"):
        raise ValueError(f"padding must be 'reflect' or 'valid', got {padding!r}")
    sr, hr = _prepare(sr, hr, y_channel=y_channel, crop_border=crop_border, data_range=data_range,
                      check_values=check_values)
    batch, channels, height, width = sr.shape
    half = _SSIM_WINDOW // 2
    if padding == "reflect" and min(height, width) <= half:
        raise ValueError(f"ssim needs images larger than {half}x{half}, got {height}x{width}")
    if padding == "valid" and min(height, width) < _SSIM_WINDOW:
        raise ValueError(
            f"ssim with padding='valid' needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW}, "
            f"got {height}x{width}"
        )
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    pad = half if padding == "reflect" else 0
    if sr.device.type == "cpu":
        # Vectorized within each chunk; the chunks only bound the working set (see the constant).
        bytes_per_image = 2 * 5 * channels * (height + 2 * pad) * (width + 2 * pad) * sr.element_size()
        chunk = max(1, _SSIM_CPU_CHUNK_BYTES // bytes_per_image)
        if batch > chunk:
            return torch.cat([_ssim_batch(a, b, pad=pad, c1=c1, c2=c2)
                              for a, b in zip(sr.split(chunk), hr.split(chunk), strict=True)])
    return _ssim_batch(sr, hr, pad=pad, c1=c1, c2=c2)


def _ssim_batch(sr: Tensor, hr: Tensor, *, pad: int, c1: float, c2: float) -> Tensor:
    """Per-image SSIM of prepared images (see :func:`ssim`); ``pad`` 5 = reflect, 0 = valid."""
    batch, channels = sr.shape[:2]
    # The five moment maps of every image, blurred by one grouped convolution. (B, 5C) with
    # groups=5C is several times faster on CPU than torchmetrics' (5B, C) with groups=C.
    # Reflect-padding the products equals the products of reflect-padded images.
    moments = torch.cat((sr, hr, sr * sr, hr * hr, sr * hr), dim=1)
    if pad:
        moments = F.pad(moments, (pad, pad, pad, pad), mode="reflect")
    groups = 5 * channels
    window = _gaussian_window(sr.dtype, sr.device).expand(groups, 1, _SSIM_WINDOW, _SSIM_WINDOW)
    blurred = F.conv2d(moments, window, groups=groups)
    del moments
    mu_sr, mu_hr, sr_sq, hr_sq, sr_hr = blurred.unflatten(1, (5, channels)).unbind(1)
    if torch.is_grad_enabled() and (sr.requires_grad or hr.requires_grad):
        mu_sr_sq, mu_hr_sq, mu_sr_hr = mu_sr * mu_sr, mu_hr * mu_hr, mu_sr * mu_hr
        # Variances clamp at 0 as torchmetrics does: rounding can make E[x^2] - E[x]^2 < 0.
        var_sr = (sr_sq - mu_sr_sq).clamp_min(0.0)
        var_hr = (hr_sq - mu_hr_sq).clamp_min(0.0)
        cov = sr_hr - mu_sr_hr
        ssim_map = ((2 * mu_sr_hr + c1) * (2 * cov + c2)) / (
            (mu_sr_sq + mu_hr_sq + c1) * (var_sr + var_hr + c2)
        )
    else:
        # The same arithmetic in place in the blurred buffer. Each fresh large temporary can
        # cost a round of page faults on CPU (glibc hands big blocks back to the OS), which
        # made this function 2x slower out of place.
        mu_sr_hr = mu_sr * mu_hr
        mu_sr.square_()
        mu_hr.square_()
        sr_sq.sub_(mu_sr).clamp_min_(0.0)  # var_sr
        hr_sq.sub_(mu_hr).clamp_min_(0.0)  # var_hr
        sr_hr.sub_(mu_sr_hr).mul_(2.0).add_(c2)  # 2 cov + c2
        ssim_map = mu_sr_hr.mul_(2.0).add_(c1).mul_(sr_hr)  # numerator
        denominator = mu_sr.add_(mu_hr).add_(c1).mul_(sr_sq.add_(hr_sq).add_(c2))
        ssim_map.div_(denominator)
    return ssim_map.reshape(batch, -1).mean(1)


def lr_consistency(sr: Tensor, lr: Tensor, *, scale: int, check_values: bool = True) -> Tensor:
    """PSNR (dB) between ``bicubic_downsample(sr, scale)`` and ``lr``, ``(B,)``; higher is better.

    Needs no ground truth: it measures whether the output explains its own LR input under the
    bicubic (antialiased) degradation. ``inf`` where they agree exactly.
    """
    check_image_batch("sr", sr)
    found_scale = check_lr(sr, lr)
    if found_scale != scale:
        raise ValueError(f"scale={scale} but the output is {found_scale}x the size of lr")
    if check_values:
        check_image_values({"sr": sr, "lr": lr})
    return psnr(bicubic_downsample(sr, scale), lr, check_values=False)
