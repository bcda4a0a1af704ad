"""Arithmetic ceilings for the speed benchmarks: is a target reachable on this hardware at all?

A target of the form "batched is F times faster than one at a time" can only be met if the
batched work of one item fits in ``(time per item one at a time) / F``. That work has a floor,
its floating-point operations, and the hardware has a ceiling, the rate at which it can do them.
This module measures both, so a benchmark can state next to a missed target whether batching
could have met it here:

- :func:`count_flops`: FLOPs of one call, from ``torch.utils.flop_counter`` (convolutions and
  matrix products, forward and backward; element-wise work and fused attention
  (``scaled_dot_product_attention``) are *not* counted, so the count is a lower bound on the
  work);
- :func:`matmul_gflops`: the rate of a large square float32 matrix product on the device with
  the current torch threads (about the practical peak of dense float32 arithmetic there);
- :class:`ComputeBound`: the two put together for one target.

If ``needed_gflops`` (the lower-bound work over the time budget) exceeds ``ceiling_gflops``, no
implementation of the same arithmetic meets the target on that hardware.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["ComputeBound", "count_flops", "matmul_gflops"]


class _FlopCount(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s formulas over every op run under it.

    ``FlopCounterMode`` itself also tracks modules with global hooks, and those break
    ``torch.autograd.grad`` on a leaf tensor (the sampler's LR guidance does that), so only its
    formulas are used here, the way it applies them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "scaled_dot_product" in func.name():
            # Fused attention: torch has formulas for its CUDA kernels but none for the CPU one,
            # so counting it would make a count (and the env's guidance cost) depend on the device.
            return func(*args, **kwargs)
        if func not in flop_registry and func is not torch.ops.prim.device.default:
            with self:  # count a composite op through the ops it decomposes into
                result = func.decompose(*args, **kwargs)
                if result is not NotImplemented:
                    return result
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` by ``torch.utils.flop_counter``'s formulas (a lower bound)."""
    with _FlopCount() as counter:
        fn(*args, **kwargs)
    return int(counter.total)


def matmul_gflops(
    device: str | torch.device = "cpu", *, size: int = 2048, repeats: int = 10
) -> float:
    """GFLOP/s of a ``size`` x ``size`` float32 matrix product, the best of ``repeats`` runs."""
    device = torch.device(device)
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be >= 1, got size={size}, repeats={repeats}")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: the library picks and loads its kernel
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@dataclass(frozen=True)
class ComputeBound:
    """Whether ``work_flops`` per item fits in ``budget_s`` per item at ``ceiling_gflops``.

    ``budget_s`` is the time one item may take for the target to hold (for "F times faster than
    one at a time": the one-at-a-time time per item divided by F).
    """

    work_flops: float
    budget_s: float
    ceiling_gflops: float

    def __post_init__(self) -> None:
        if not (self.work_flops >= 0 and self.budget_s > 0 and self.ceiling_gflops > 0):
            raise ValueError(
                "ComputeBound needs work_flops >= 0 and budget_s, ceiling_gflops > 0; got "
                f"{self.work_flops}, {self.budget_s}, {self.ceiling_gflops}"
            )

    @property
    def needed_gflops(self) -> float:
        """The rate the counted work alone needs to fit in the budget."""
        return self.work_flops / self.budget_s / 1e9

    @property
    def reachable(self) -> bool:
        """False when even the counted work cannot fit in the budget at the ceiling rate."""
        return self.needed_gflops <= self.ceiling_gflops

    def describe(self, what: str, *, unit: str = "item") -> str:
        """One sentence for a benchmark report; ``what`` names the work of one ``unit``."""
        verdict = (
            "within that ceiling, so batching could in principle meet the target here"
            if self.reachable
            else "above that ceiling, so no implementation of the same arithmetic meets the "
            "target on this hardware"
        )
        return (
            f"{what} is at least {self.work_flops / 1e6:.1f} MFLOP per {unit} (torch's FLOP "
            f"counter: convolutions and matrix products only); fitting it in "
            f"{self.budget_s * 1e3:.2f} ms per {unit} needs >= {self.needed_gflops:.0f} GFLOP/s, against "
            f"{self.ceiling_gflops:.0f} GFLOP/s for a large float32 matrix product on the same "
            f"device and threads; {verdict}."
        )
