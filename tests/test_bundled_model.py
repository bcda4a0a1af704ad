"""The bundled CompVis-format model (orl_gym/assets/ldm-sr-tiny-x4, the default until issue 24)
loads, denoises a real image and runs as diffusers' LDMSuperResolutionPipeline."""

from __future__ import annotations

import pytest
import torch

from orl_gym import sampler
from orl_gym.models import bundled_model_path, load_ldmsr
from orl_gym.sampler import Schedule, StepParams

COMPVIS_FORMAT = bundled_model_path("ldm-sr-tiny-x4")

pytestmark = pytest.mark.skipif(
    not (COMPVIS_FORMAT / "model_index.json").is_file(),
    reason=f"the bundled checkpoint {COMPVIS_FORMAT} is not there yet: "
    "train and export it with experiments/train_ldm.py",
)


@pytest.fixture(scope="module")
def bundled():
    return load_ldmsr(COMPVIS_FORMAT)


@pytest.fixture(scope="module")
def real_pair(data_root):
    """One whole UC Merced test image: 256x256 HR, 64x64 LR, in [0, 1]."""
    from orl_gym.data import DataConfig, PairDataset

    ds = PairDataset(DataConfig(source=str(data_root / "ucmerced"), split="test", hr_size=64,
                                scale=4, crop="full"))
    index = next(i for i in range(len(ds)) if ds.full_crop_shape(i) == (256, 256))
    return ds.pairs([index])


def test_bundled_checkpoint_is_small_and_float32_in_memory(bundled):
    size = sum(f.stat().st_size for f in COMPVIS_FORMAT.rglob("*") if f.is_file())
    assert size <= 25e6
    assert bundled.dtype == torch.float32 and bundled.vqvae.dtype == torch.float32
    assert bundled.scale_factor == 4 and bundled.latent_channels == 3
    assert bundled.hr_multiple == 16  # x4 VQ, UNet of three levels: AID 150 px crops to 144
    assert bundled.unet.config.in_channels == 6
    assert bundled.scheduler.config.beta_schedule == "scaled_linear"


def test_two_denoising_steps_on_a_real_image(bundled, real_pair):
    lr = real_pair.lr
    schedule = Schedule.from_model(bundled, 100)
    state = sampler.init_state(bundled, schedule, lr, sampler.make_generators([0]))
    for _ in range(2):
        out = sampler.step(bundled, schedule, state, StepParams(eta=0.0))
        state = out.state
    assert state.nfe.tolist() == [2] and state.latents.shape == (1, 3, 64, 64)
    assert bool(torch.isfinite(state.latents).all())
    assert out.pred_original_sample.shape == (1, 3, 64, 64)
    image = sampler.decode(bundled, out.pred_original_sample)
    assert image.shape == real_pair.hr.shape == (1, 3, 256, 256)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and bool(torch.isfinite(image).all())


def test_vq_reconstructs_a_real_image(bundled, real_pair):
    hr = real_pair.hr
    with torch.no_grad():
        rec = bundled.vqvae.decode(bundled.vqvae.encode(hr * 2 - 1).latents).sample
    rec = ((rec.clamp(-1, 1) + 1) / 2)
    psnr = -10 * torch.log10((rec - hr).pow(2).mean())
    assert rec.shape == hr.shape and float(psnr) > 20.0  # a trained autoencoder, not random weights


def test_diffusers_pipeline_from_pretrained_runs_two_steps(real_pair):
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
        LDMSuperResolutionPipeline,
    )

    pipe = LDMSuperResolutionPipeline.from_pretrained(str(COMPVIS_FORMAT), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32
    images = pipe(real_pair.lr * 2 - 1, num_inference_steps=2, eta=0.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 256, 256)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_blocked_codebook_search_equals_diffusers_on_a_large_batch(bundled):
    # 64 images of 16x16 latents: 16,384 latent vectors against 8,192 codes, in 64 blocks.
    latents = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(sampler.vq_decode(bundled, latents), bundled.vqvae.decode(latents).sample)
