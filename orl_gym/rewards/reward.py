"""The weighted super-resolution reward: its configuration, its terms and the batched computer.

:class:`RewardModel` scores finished outputs against their HR images as gains over the bicubic
upsampling of the same LR input, prices the UNet calls, and gives the potential of a state for
dense shaping; the terms and their normalization are tabled in :mod:`orl_gym.rewards`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from orl_gym.lpips_weights import backbone_spec
from orl_gym.rewards.checks import check_image_batch, check_image_values, check_lr, check_pair
from orl_gym.rewards.metrics import bicubic_upsample, lr_consistency, psnr, ssim
from orl_gym.rewards.perceptual import LPIPS

__all__ = ["TERM_NAMES", "RewardConfig", "RewardModel", "RewardOutput", "combine_terms"]

TERM_NAMES = ("psnr", "ssim", "lpips", "efficiency", "lr_consistency")


@dataclass(frozen=True)
class RewardConfig:
    """Weights and normalization of the reward (see :mod:`orl_gym.rewards` for every term).

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
    """Batched reward for finished super-resolution outputs (see :mod:`orl_gym.rewards`).

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
        check_pair(sr, hr)
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
        check_pair(x0_pred_images, hr, sr_name="x0_pred_images")
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
