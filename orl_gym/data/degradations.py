"""How an HR image becomes its LR input: antialiased bicubic downsampling (the package's one
definition of it), optional blur, noise and JPEG; and bicubic upsampling, the baseline.

LR = JPEG(noise(downsample(blur(HR)))), rounded to 8-bit levels by ``PairDataset``. Noise draws
take one generator for a batch or one per image (image k's values from generator k alone, so a
batch equals its images made one at a time).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torchvision.transforms.v2 import functional as TF

from orl_gym.data.checks import integer_or_none


def blur_radius(blur_sigma: float) -> int:
    """Half the side of the Gaussian kernel of ``blur_sigma``: also the reflect padding, which
    must be smaller than each side of the blurred image."""
    return math.ceil(3 * blur_sigma)


@dataclass(frozen=True)
class Degradation:
    """Extra degradations of the LR image, beyond antialiased bicubic downsampling.

    Applied in the classical order LR = JPEG(noise(downsample(blur(HR)))). The default
    degrades nothing beyond the downsampling.

    Attributes:
        blur_sigma: Standard deviation, in HR pixels, of an isotropic Gaussian blur applied to
            HR before downsampling (kernel side 2 * ceil(3 sigma) + 1, reflect padding).
            0 disables it.
        noise_std: Standard deviation of additive white Gaussian noise on LR, in intensity
            units of the [0, 1] range (0.01 is ~2.6 grey levels of 255). 0 disables it.
        jpeg_quality: JPEG quality (1-100, libjpeg scale; Pillow's default 4:2:0 chroma
            subsampling) of a compress-decompress round trip of the 8-bit LR image, done on the
            CPU. None disables it.
    """

    blur_sigma: float = 0.0
    noise_std: float = 0.0
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if not (self.blur_sigma >= 0 and math.isfinite(self.blur_sigma)):
            raise ValueError(f"blur_sigma must be a finite number >= 0, got {self.blur_sigma!r}")
        if not (self.noise_std >= 0 and math.isfinite(self.noise_std)):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        if self.jpeg_quality is not None:
            quality = integer_or_none(self.jpeg_quality)
            if quality is None or not 1 <= quality <= 100:
                raise ValueError(
                    f"jpeg_quality must be an int in 1..100 or None, got {self.jpeg_quality!r}"
                )
            object.__setattr__(self, "jpeg_quality", quality)

    @property
    def is_identity(self) -> bool:
        """True when no degradation beyond downsampling is applied."""
        return self.blur_sigma == 0 and self.noise_std == 0 and self.jpeg_quality is None


Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for a whole batch, one per image, or None (a default source)."""


def downsample_bicubic(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased bicubic resize of ``(B, C, H, W)`` images to ``size``: the degradation's kernel.

    The one definition of "bicubic downsampling" in the package: the LR images are made with it,
    and the LR-consistency metric and the sampler's guidance compare against it, so all three
    agree exactly. Not clamped (bicubic overshoots slightly outside [0, 1]), so gradients pass
    through everywhere; callers that need the range clamp.
    """
    return F.interpolate(
        images, size=tuple(size), mode="bicubic", antialias=True, align_corners=False
    )


def upsample_bicubic(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic upsampling of ``(B, C, h, w)`` images to ``size``, clamped to [0, 1]: the one
    definition of "bicubic super-resolution" in the package (the reward's baseline, and the
    anchor of residual-format models, which therefore decode a zero residual to exactly it)."""
    return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def degrade(
    hr: torch.Tensor,
    *,
    scale: int,
    degradation: Degradation = Degradation(),
    generator: Generators = None,
    quantize: bool = False,
    check_values: bool = True,
) -> torch.Tensor:
    """Make LR images from HR images: blur, antialiased bicubic downsampling, noise, JPEG.

    Args:
        hr: (B, 3, H, W) float in [0, 1]; H and W multiples of ``scale``.
        scale: Downsampling factor (LR is H / scale x W / scale).
        degradation: Blur / noise / JPEG parameters; the default only downsamples.
        generator: Source of the noise (on any device): one generator for the batch, one per
            image (image k's noise from generator k alone, so a batch equals its images made
            one at a time), or None for the global RNG.
        quantize: Round LR to 8-bit levels (k / 255), like a stored image. Off by default so the
            function stays differentiable for consistency terms; ``PairDataset`` turns it on.
            JPEG always quantizes.
        check_values: Check that HR is finite and in [0, 1] (one host sync); ``PairDataset``,
            whose HR is decoded 8-bit pixels / 255, skips it.

    Returns:
        (B, 3, H / scale, W / scale) float32 in [0, 1] on ``hr``'s device.

    Raises:
        TypeError: ``hr`` is not a floating-point tensor (e.g. uint8 pixels).
        ValueError: a wrong shape, a size not divisible by ``scale``, a value outside [0, 1]
            (more than ``_HR_RANGE_TOLERANCE``) or not finite, or a blur wider than HR.
    """
    if not isinstance(hr, torch.Tensor) or not hr.is_floating_point():
        found = hr.dtype if isinstance(hr, torch.Tensor) else type(hr).__name__
        raise TypeError(
            f"hr must be a float tensor with values in [0, 1], got {found}: divide 8-bit (uint8) "
            "images by 255"
        )
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"hr must be a (B, 3, H, W) batch, got shape {tuple(hr.shape)}")
    height, width = hr.shape[-2:]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(
            f"HR size {height}x{width} is not divisible by scale={scale}: crop HR to a multiple "
            "of the scale first"
        )
    if check_values:
        _check_unit_range(hr)
    image = hr.float()
    if degradation.blur_sigma > 0:
        radius = blur_radius(degradation.blur_sigma)
        if radius >= min(height, width):
            raise ValueError(
                f"blur_sigma={degradation.blur_sigma} needs HR sides of more than ceil(3 * "
                f"blur_sigma) = {radius} px (the reflect padding of its kernel), got HR "
                f"{height}x{width}: lower blur_sigma or use larger HR crops"
            )
        kernel_size = 2 * radius + 1
        image = TF.gaussian_blur(
            image, kernel_size=[kernel_size, kernel_size], sigma=[degradation.blur_sigma] * 2
        )
    lr = downsample_bicubic(image, (height // scale, width // scale))
    if degradation.noise_std > 0:
        lr = lr + degradation.noise_std * per_image_draw(
            torch.randn, lr.shape, generator, lr.device
        )
    lr = lr.clamp(0.0, 1.0)
    if degradation.jpeg_quality is not None:
        # Pillow on the CPU: the same bytes on every device.
        lr_uint8 = (lr * 255).round().to(torch.uint8).cpu()
        lr_uint8 = jpeg_round_trip(lr_uint8, degradation.jpeg_quality)
        lr = lr_uint8.to(lr.device, torch.float32) / 255
    elif quantize:
        lr = lr.mul(255).round_().div_(255)
    return lr


_HR_RANGE_TOLERANCE = 1e-3
"""How far outside [0, 1] :func:`degrade` accepts HR values (float rounding of a resize or a
colour conversion); clearly larger excursions mean another convention, such as [-1, 1]."""


def _check_unit_range(hr: torch.Tensor) -> None:
    """ValueError unless every value of ``hr`` is finite and in [0, 1] (within the tolerance).

    One min/max pass (no image-sized temporaries) and one host sync in the common case; the
    details are computed only on error.
    """
    if hr.numel() == 0:
        return
    # min and max propagate NaN, and NaN fails every comparison: non-finite values fail here too.
    lowest, highest = torch.stack(torch.aminmax(hr.detach())).float().tolist()
    if -_HR_RANGE_TOLERANCE <= lowest and highest <= 1 + _HR_RANGE_TOLERANCE:
        return
    finite = torch.isfinite(hr)
    if not bool(finite.all()):
        raise ValueError(
            f"hr has {int((~finite).sum())} non-finite value(s) (NaN or inf): HR must be finite "
            "pixel values in [0, 1]"
        )
    raise ValueError(
        f"hr values must be in [0, 1], got {float(hr.min()):.4g}..{float(hr.max()):.4g}: map "
        "[-1, 1] images with (x + 1) / 2 and divide 8-bit values by 255"
    )


def per_image_draw(
    draw: Any, shape: Sequence[int], generator: Generators, device: torch.device
) -> torch.Tensor:
    """``draw(shape)`` (torch.rand / torch.randn) from one generator, or per image from a list.

    Per image, image k's values come from generator k only, in the same order a batch of one
    would draw them, so a batch equals its images drawn one at a time.
    """
    if generator is None:
        return draw(tuple(shape), device=device)
    if isinstance(generator, torch.Generator):
        return draw(tuple(shape), generator=generator, device=generator.device).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0]}: pass one per image, "
            "or a single generator"
        )
    return torch.stack(
        [draw(tuple(shape[1:]), generator=g, device=g.device).to(device) for g in generators]
    )


def jpeg_round_trip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode (B, 3, H, W) uint8 CPU images as JPEG at ``quality`` with PIL."""
    decoded = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        PILImage.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with PILImage.open(buffer) as jpeg:
            decoded.append(np.asarray(jpeg.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()
