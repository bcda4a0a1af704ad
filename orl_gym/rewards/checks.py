"""Shape, type, device and value checks of the image batches every metric and the reward take.

The shape and type checks are free (no host sync); :func:`check_image_values` costs one sync for
all the tensors it is given, which is why the metrics take ``check_values=False`` when a caller
(the reward) has checked already.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["check_image_batch", "check_image_values", "check_lr", "check_pair"]


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


def check_pair(sr: Tensor, hr: Tensor, *, sr_name: str = "sr", hr_name: str = "hr") -> None:
    """:func:`check_image_batch` of both, and the same shape and device (an output against its
    ground truth)."""
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
