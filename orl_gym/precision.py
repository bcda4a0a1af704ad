"""Numerical precision of CUDA float32 work: IEEE float32 where results must not depend on batching.

PyTorch lets cuDNN convolutions run float32 as TF32 by default (a 10-bit mantissa: relative
errors near 1e-3), and cuDNN picks kernels by batch shape, so on a GPU the same image came out
different by ~1e-3 depending on which other images shared its batch (seen on an H100: the batched
env did not equal N single envs). The env's batched functions, the reward metrics that
convolve (SSIM's window, LPIPS's backbone) and the one-shot peers that evaluation scores beside
the env (``evaluation.evaluate_upsampler``, e.g. Real-ESRGAN) run under :func:`ieee_float32`.
On CPU, and for float16 / bfloat16 models, it changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["ieee_float32"]

_F = TypeVar("_F", bound=Callable[..., Any])


@contextmanager
def _tf32_off() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def ieee_float32(function: _F) -> _F:
    """Run ``function``'s float32 CUDA convolutions and matrix products in IEEE float32, not TF32
    (the flags are restored on return, also on an exception)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _tf32_off():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
