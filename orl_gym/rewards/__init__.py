"""Batched image-quality metrics and the weighted super-resolution reward.

Every metric takes a batch of images ``(B, C, H, W)``, float, values in ``[0, 1]``, and returns
one value per image, a ``(B,)`` tensor on the input's device. Nothing loops over images in Python
and nothing copies to the host, except the optional value check (one sync per call, see
``check_values``).

Modules, one job each (everything public is importable from ``orl_gym.rewards``):

- :mod:`~orl_gym.rewards.checks`: the shape, type, device and value checks of image batches.
- :mod:`~orl_gym.rewards.metrics`: PSNR, SSIM, LR consistency, luma and the bicubic resamplers.
- :mod:`~orl_gym.rewards.perceptual`: the LPIPS network (:class:`LPIPS`).
- :mod:`~orl_gym.rewards.reward`: :class:`RewardConfig`, :class:`RewardModel` and its terms.
- :mod:`~orl_gym.rewards.cli`: ``python -m orl_gym.rewards fetch-weights``.

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

from orl_gym.lpips_weights import FETCH_COMMAND, LPIPSWeightsNotFoundError, fetch_lpips_weights
from orl_gym.rewards.checks import check_image_batch, check_image_values, check_lr
from orl_gym.rewards.cli import main
from orl_gym.rewards.metrics import (
    bicubic_downsample,
    bicubic_upsample,
    lr_consistency,
    psnr,
    rgb_to_y,
    ssim,
)
from orl_gym.rewards.perceptual import LPIPS
from orl_gym.rewards.reward import (
    TERM_NAMES,
    RewardConfig,
    RewardModel,
    RewardOutput,
    combine_terms,
)

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
    "main",
    "psnr",
    "rgb_to_y",
    "ssim",
]
