"""orl_gym.data without image files: degrade and Degradation, the one bicubic kernel of the
degradation, the metric and the guidance, DataConfig's checks, the split hash and the paper's
category names (the data on image folders: tests/test_data.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orl_gym.data import (
    CATEGORY_ALIASES,
    PAPER_CATEGORIES,
    RESISC45_CLASSES,
    DataConfig,
    Degradation,
    assign_split,
    degrade,
)


def test_degrade_is_antialiased_bicubic_for_every_scale():
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for scale in (2, 4, 8):
        lr = degrade(hr, scale=scale)
        expected = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)
        assert lr.shape == (2, 3, 32 // scale, 32 // scale) and lr.dtype == torch.float32
        torch.testing.assert_close(lr, expected.clamp(0, 1))
    quantized = degrade(hr, scale=4, quantize=True)
    torch.testing.assert_close(quantized * 255, (quantized * 255).round())


def test_degradations_are_seeded_and_do_what_they_say():
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clean = degrade(hr, scale=2)

    blurred = degrade(hr, scale=2, degradation=Degradation(blur_sigma=1.5))
    assert blurred.std() < clean.std()  # a low-pass filter removes variance from noise

    noisy = Degradation(noise_std=0.05)
    first = degrade(hr, scale=2, degradation=noisy, generator=torch.Generator().manual_seed(3))
    again = degrade(hr, scale=2, degradation=noisy, generator=torch.Generator().manual_seed(3))
    other = degrade(hr, scale=2, degradation=noisy, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert 0.03 < (first - clean).std() < 0.06  # clamping trims a little of the 0.05
    assert first.min() >= 0 and first.max() <= 1

    jpeg = degrade(hr, scale=2, degradation=Degradation(jpeg_quality=10))
    torch.testing.assert_close(jpeg * 255, (jpeg * 255).round())
    assert (jpeg - clean).abs().mean() > 0.01


def test_degrade_and_degradation_reject_bad_input():
    with pytest.raises(ValueError, match="not divisible by scale=4"):
        degrade(torch.rand(1, 3, 30, 32), scale=4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        degrade(torch.rand(3, 32, 32), scale=4)
    with pytest.raises(ValueError, match="blur_sigma"):
        Degradation(blur_sigma=-1)
    with pytest.raises(ValueError, match="noise_std"):
        Degradation(noise_std=float("nan"))
    with pytest.raises(ValueError, match="jpeg_quality"):
        Degradation(jpeg_quality=0)


def test_degrade_rejects_integer_out_of_range_and_non_finite_hr():
    hr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="divide .*by 255"):
        degrade((hr * 255).round().to(torch.uint8), scale=4)
    with pytest.raises(ValueError, match=r"in \[0, 1\], got -0\.99"):
        degrade(hr * 2 - 1, scale=4)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        degrade(hr * 255, scale=4)
    for bad in (float("nan"), float("inf")):
        broken = hr.clone()
        broken[0, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="1 non-finite value"):
            degrade(broken, scale=4, degradation=Degradation(jpeg_quality=90))
    # Float rounding just outside the range is not an error.
    torch.testing.assert_close(degrade(hr * (1 + 1e-5), scale=4), degrade(hr, scale=4), atol=1e-4, rtol=0)


def test_a_blur_wider_than_hr_is_a_clear_error():
    hr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert degrade(hr, scale=4, degradation=Degradation(blur_sigma=5.0)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"blur_sigma=6.0 .* 18 px .* 16x16"):
        degrade(hr, scale=4, degradation=Degradation(blur_sigma=6.0))
    with pytest.raises(ValueError, match=r"blur_sigma=6.0 .* 16 px \(hr_size=16"):
        DataConfig(hr_size=16, scale=4, degradation=Degradation(blur_sigma=6.0))
    # crop="full" can floor the shortest side below hr_size: 24 px images crop to 16.
    with pytest.raises(ValueError, match=r"as small as 16 px \(hr_size=24, crop='full'\)"):
        DataConfig(hr_size=24, scale=4, crop="full", full_multiple=16, degradation=Degradation(blur_sigma=5.4))
    DataConfig(hr_size=16, scale=4, degradation=Degradation(blur_sigma=5.0))


def test_one_bicubic_kernel_for_degradation_metric_and_guidance():
    # The LR images, the LR-consistency metric and the sampler's guidance must use the same
    # resize, or a perfect SR would be scored (and pushed) as inconsistent with its own LR.
    from orl_gym.rewards import bicubic_downsample
    from orl_gym.sampler import lr_consistency_error

    hr = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    lr = degrade(hr, scale=4)
    assert torch.equal(bicubic_downsample(hr, 4), lr)
    assert torch.equal(lr_consistency_error(hr, lr), torch.zeros(3))
    assert lr_consistency_error(hr.flip(-1), lr).min() > 1e-3  # the check can fail


def test_config_rejects_bad_values_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"scale must be one of \(2, 4, 8\)"):
        DataConfig(scale=3)
    with pytest.raises(ValueError, match="multiple of scale=4"):
        DataConfig(hr_size=30)
    with pytest.raises(ValueError, match="crop must be one of"):
        DataConfig(crop="middle")
    with pytest.raises(ValueError, match="split must be one of"):
        DataConfig(split="val")
    with pytest.raises(ValueError, match="summing to 1"):
        DataConfig(split_fractions=(0.5, 0.1, 0.1))
    assert DataConfig(categories="forest").categories == ("forest",)
    assert DataConfig(source=Path("/x")).source == "/x"


def test_config_rejects_non_integer_ints_and_nan_fractions():
    for field, value in (("scale", 4.0), ("hr_size", 64.0), ("full_multiple", 4.0), ("seed", True),
                         ("split_seed", 0.0)):
        with pytest.raises(ValueError, match=f"{field} must be an int, got {value!r}"):
            DataConfig(**{field: value})
    for fractions in ((float("nan"), 0.5, 0.5), (float("inf"), 0.0, 0.0)):
        with pytest.raises(ValueError, match="finite, non-negative"):
            DataConfig(split_fractions=fractions)
    for quality in (True, 50.0):
        with pytest.raises(ValueError, match="jpeg_quality must be an int"):
            Degradation(jpeg_quality=quality)
    # NumPy integers are ints: stored as Python ints, so the split hash sees "0", not "np.int64(0)".
    config = DataConfig(scale=np.int64(4), split_seed=np.int64(0), degradation=Degradation(jpeg_quality=np.int64(50)))
    assert type(config.scale) is int and type(config.split_seed) is int
    assert type(config.degradation.jpeg_quality) is int


def test_assign_split_follows_the_fractions():
    identities = [f"ds/class/{i:05d}.png" for i in range(20_000)]
    splits = [assign_split(identity) for identity in identities]
    assert splits == [assign_split(identity) for identity in identities]
    for split, fraction in zip(("train", "validation", "test"), (0.7, 0.1, 0.2), strict=True):
        assert abs(splits.count(split) / len(splits) - fraction) < 0.015


def test_paper_categories_map_to_resisc45_classes_and_aliases():
    assert len(RESISC45_CLASSES) == 45 and list(RESISC45_CLASSES) == sorted(RESISC45_CLASSES)
    assert len(PAPER_CATEGORIES) == 8
    assert PAPER_CATEGORIES["Business district"] == "commercial_area"
    assert PAPER_CATEGORIES["Train station"] == "railway_station"
    assert set(PAPER_CATEGORIES.values()) <= set(RESISC45_CLASSES)
    assert set(CATEGORY_ALIASES) == set(PAPER_CATEGORIES.values())
    assert CATEGORY_ALIASES["commercial_area"] == {"ucmerced": "buildings", "aid150": "Commercial"}
    assert CATEGORY_ALIASES["desert"]["ucmerced"] is None
