"""orl_gym.postprocess: each correction removes a colour cast, leaves a consistent image alone,
is batched, differentiable, and refuses bad input with a clear message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orl_gym.data import downsample_bicubic
from orl_gym.postprocess import OUTPUT_FIXES, apply_output_fix, back_project, match_mean_colour
from orl_gym.rewards import lr_consistency, psnr

FIXES = [name for name in OUTPUT_FIXES if name != "none"]


def _smooth_images(batch: int = 3, side: int = 64, seed: int = 0) -> torch.Tensor:
    """Band-limited random images in [0.25, 0.75]: a cast of +-0.1 stays inside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, side // 8, side // 8, generator=gen)
    detail = torch.rand(batch, 3, side, side, generator=gen)
    images = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False) * 0.8 + 0.2 * detail
    return 0.25 + 0.5 * images.clamp(0, 1)


def _pair(batch: int = 3, side: int = 64):
    hr = _smooth_images(batch, side)
    return hr, downsample_bicubic(hr, (side // 4, side // 4))


@pytest.mark.parametrize("name", FIXES)
def test_a_colour_cast_is_removed(name):
    hr, lr = _pair()
    cast = torch.tensor([0.1, -0.08, 0.05]).view(1, 3, 1, 1)
    before = psnr(hr + cast, hr)
    after = psnr(apply_output_fix(name, hr + cast, lr), hr)
    # A constant cast is pure low frequency: every fix takes at least 15 dB of it away.
    assert (after > before + 15).all(), (before, after)


@pytest.mark.parametrize("name", ["mean_colour", "back_projection"])
def test_an_image_consistent_with_its_lr_is_left_alone(name):
    hr, lr = _pair()
    torch.testing.assert_close(apply_output_fix(name, hr, lr), hr, atol=2e-5, rtol=0)


def test_mean_colour_matches_the_lr_mean_exactly():
    hr, lr = _pair()
    sr = _smooth_images(seed=1)  # another image: only its mean colour is changed
    fixed = match_mean_colour(sr, lr)
    torch.testing.assert_close(downsample_bicubic(fixed, lr.shape[-2:]).mean(dim=(2, 3)), lr.mean(dim=(2, 3)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed - fixed.mean(dim=(2, 3), keepdim=True),
                               sr - sr.mean(dim=(2, 3), keepdim=True), atol=1e-5, rtol=0)


def test_back_projection_makes_the_output_explain_its_lr():
    hr, lr = _pair()
    sr = _smooth_images(seed=1)
    once, thrice = back_project(sr, lr), back_project(sr, lr, iterations=3)
    scores = [lr_consistency(x, lr, scale=4) for x in (sr, once, thrice)]
    assert (scores[1] > scores[0] + 10).all() and (scores[2] > scores[1]).all(), scores


def test_wavelet_keeps_the_detail_and_takes_the_lr_colour():
    hr, lr = _pair()
    sr = _smooth_images(seed=1) + torch.tensor([0.1, -0.08, 0.05]).view(1, 3, 1, 1)  # other detail, cast
    fixed = apply_output_fix("wavelet", sr, lr)
    # The fine detail (what a 3x3 blur removes) is the output's, not the LR's.
    def detail(x):
        return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert psnr(detail(fixed) + 0.5, detail(sr) + 0.5).min() > 35
    # The coarse colour (the lowest band: structures of 32 px and more) is the LR's.
    coarse = [downsample_bicubic(x, (2, 2)) for x in (fixed, sr, hr)]
    assert (psnr(coarse[0], coarse[2]) > psnr(coarse[1], coarse[2]) + 10).all()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OUTPUT_FIXES)
def test_batched_equals_per_image_and_gradients_flow(name, device):
    hr, lr = (x.to(device) for x in _pair())
    sr = _smooth_images(seed=2).to(device).requires_grad_(True)
    batched = apply_output_fix(name, sr, lr)
    rows = torch.cat([apply_output_fix(name, sr[i:i + 1], lr[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, rows, atol=1e-6, rtol=0)
    batched.sum().backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


def test_bad_input_is_refused_with_what_to_do():
    hr, lr = _pair()
    with pytest.raises(ValueError, match="unknown 'colour'; choose one of"):
        apply_output_fix("colour", hr, lr)
    with pytest.raises(ValueError, match="same integer multiple"):
        apply_output_fix("mean_colour", hr, lr[..., :15])
    with pytest.raises(ValueError, match="batch of images"):
        apply_output_fix("back_projection", hr[0], lr[0])
    with pytest.raises(ValueError, match="iterations"):
        back_project(hr, lr, iterations=0)


@pytest.mark.parametrize("name", FIXES)
def test_images_smaller_than_the_largest_dilation_work(name):
    hr, lr = _pair(side=8)  # 8x8 output, 2x2 LR: replicate padding needs no minimum size
    cast = torch.tensor([0.1, -0.08, 0.05]).view(1, 3, 1, 1)
    assert (psnr(apply_output_fix(name, hr + cast, lr), hr) > psnr(hr + cast, hr) + 10).all()


@pytest.mark.parametrize("name", OUTPUT_FIXES[1:])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_fixed_in_float32_on_cpu(name, dtype):
    sr, lr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8)
    out = apply_output_fix(name, sr.to(dtype), lr.to(dtype))
    assert out.dtype == dtype
    reference = apply_output_fix(name, sr.to(dtype).float(), lr.to(dtype).float())
    torch.testing.assert_close(out.float(), reference, atol=1e-2, rtol=0)


@pytest.mark.parametrize("name", FIXES)
def test_half_precision_inputs_are_checked_before_the_float32_cast(name):
    """A uint8 LR beside a half-precision SR is refused (cast to float first, its 0-255 values
    would pass as an image and saturate the fix); a non-tensor LR is a TypeError, not an
    AttributeError."""
    sr = torch.rand(2, 3, 32, 32, dtype=torch.float16)
    with pytest.raises((TypeError, ValueError), match="lr"):
        apply_output_fix(name, sr, (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8))
    with pytest.raises(TypeError):
        apply_output_fix(name, sr, [[0.5]])
