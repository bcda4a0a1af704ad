"""orl_gym.profiling: FLOP counts, the matmul ceiling and the arithmetic bound of a speed target."""

from __future__ import annotations

import math

import pytest
import torch

from orl_gym.profiling import ComputeBound, count_flops, matmul_gflops


def test_count_flops_of_a_linear_layer_is_two_multiply_adds_per_weight_and_row():
    layer = torch.nn.Linear(10, 20, bias=False)
    assert count_flops(layer, torch.randn(5, 10)) == 2 * 5 * 10 * 20


def test_count_flops_through_autograd_grad_on_a_leaf():
    # The sampler's LR guidance takes torch.autograd.grad of a leaf; FlopCounterMode's module
    # hooks fail there. The input gradient of a convolution costs its forward's FLOPs again.
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    forward = count_flops(conv, x)
    assert forward == 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3

    def forward_and_input_gradient():
        return torch.autograd.grad(conv(x).sum(), x)

    assert count_flops(forward_and_input_gradient) == 2 * forward


def test_count_flops_ignores_elementwise_work():
    assert count_flops(lambda: torch.randn(100, 100).exp().sum()) == 0


def test_matmul_rate_is_a_positive_finite_number_and_checks_its_arguments():
    rate = matmul_gflops("cpu", size=64, repeats=1)
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="size and repeats"):
        matmul_gflops("cpu", size=0)


def test_compute_bound_compares_the_needed_rate_with_the_ceiling():
    # 1 GFLOP per item in 10 ms needs 100 GFLOP/s.
    fits = ComputeBound(work_flops=1e9, budget_s=0.01, ceiling_gflops=150)
    assert fits.needed_gflops == pytest.approx(100)
    assert fits.reachable and "within that ceiling" in fits.describe("the work", unit="image")
    too_much = ComputeBound(work_flops=1e9, budget_s=0.01, ceiling_gflops=50)
    assert not too_much.reachable
    text = too_much.describe("the work", unit="image")
    assert "1000.0 MFLOP per image" in text and "above that ceiling" in text
    with pytest.raises(ValueError, match="budget_s"):
        ComputeBound(work_flops=1e9, budget_s=0.0, ceiling_gflops=50)


def test_fused_attention_is_not_counted_on_any_device(monkeypatch):
    # torch has formulas for CUDA's attention kernels, none for the CPU one: counting it would make
    # the env's guidance cost depend on the device. Give the CPU kernel a formula, as the CUDA ones
    # have, and it is still not counted. The same attention as plain matmuls counts.
    from torch.utils import flop_counter

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    monkeypatch.setitem(flop_counter.flop_registry, cpu_attention,
                        lambda q, k, v, *args, out_val=None, **kwargs: flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape))
    q = torch.randn(1, 1, 64, 16)
    assert count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 0
    assert count_flops(lambda: (q @ q.transpose(-1, -2)).softmax(-1) @ q) == 2 * 2 * 64 * 64 * 16
