"""The LR-anchored (residual) latent target: x = bicubic(LR) + D(z) / s.

Tiny seeded random models (no downloads); the env cases use the session's small image folder.
"""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch

import orl_gym
from orl_gym import sampler
from orl_gym.actions import encode_params
from orl_gym.data import upsample_bicubic
from orl_gym.models import (
    AnchorNet,
    LatentTarget,
    LDMSRArchitecture,
    ModelLoadError,
    bundled_model_path,
    load_ldmsr,
)
from orl_gym.rewards import bicubic_upsample
from orl_gym.sampler import Schedule, StepParams

LR_SIZE = 8
RESIDUAL = LatentTarget(kind="residual", residual_scale=5.0)


def _residual_model(seed: int = 0):
    return LDMSRArchitecture(**{**LDMSRArchitecture.tiny().__dict__, "latent_target": RESIDUAL}).build(seed=seed)


def _zero_decoder(model):
    """The same model whose decoder outputs 0 everywhere (its last convolution zeroed)."""
    conv = model.vqvae.decoder.conv_out
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    return model


def _lr(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, LR_SIZE, LR_SIZE, generator=torch.Generator().manual_seed(seed))


def _sample(model, lr, steps=4, params=None):
    schedule = Schedule.from_model(model, steps)
    state = sampler.init_state(model, schedule, lr, sampler.make_generators(range(len(lr))))
    while not bool(state.done(schedule).all()):
        state = sampler.step(model, schedule, state, params or StepParams(eta=0.0)).state
    return state


def test_vq_input_and_image_are_inverse_and_anchor_is_the_reward_baseline():
    hr = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    lr = _lr(3, seed=2)
    x = RESIDUAL.vq_input(hr, lr)
    torch.testing.assert_close(RESIDUAL.image(x, lr), hr, atol=1e-6, rtol=0)
    # The anchor is exactly the bicubic image the reward scores as 0.
    torch.testing.assert_close(RESIDUAL.anchor_image(lr, (32, 32)), bicubic_upsample(lr, (32, 32)), atol=0, rtol=0)
    torch.testing.assert_close(RESIDUAL.image(torch.zeros_like(hr), lr), upsample_bicubic(lr, (32, 32)),
                               atol=0, rtol=0)
    # The image format is unchanged: 2 HR - 1 in, (D + 1) / 2 out.
    image = LatentTarget()
    torch.testing.assert_close(image.vq_input(hr, lr), hr * 2 - 1)
    torch.testing.assert_close(image.image(hr * 2 - 1, None), hr, atol=1e-6, rtol=0)


def test_bad_latent_targets_are_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        LatentTarget(kind="residuals")
    with pytest.raises(ValueError, match="residual_scale"):
        LatentTarget(kind="residual", residual_scale=0.0)
    with pytest.raises(ValueError, match="pass the LR images"):
        RESIDUAL.image(torch.zeros(1, 3, 32, 32), None)
    with pytest.raises(ValueError, match="one LR image per latent"):
        RESIDUAL.image(torch.zeros(2, 3, 32, 32), _lr(1))


def test_a_zero_residual_decodes_to_exactly_bicubic():
    model = _zero_decoder(_residual_model())
    lr = _lr(4)
    state = _sample(model, lr)
    torch.testing.assert_close(sampler.decode(model, state), bicubic_upsample(lr, (32, 32)), atol=0, rtol=0)
    # The same through the latents-and-LR form.
    torch.testing.assert_close(sampler.decode(model, state.latents, lr), bicubic_upsample(lr, (32, 32)),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="pass the LR images"):
        sampler.decode(model, state.latents)


def test_residual_decode_adds_the_decoder_output_over_bicubic():
    model = _residual_model()
    lr = _lr(2)
    state = _sample(model, lr)
    raw = sampler.vq_decode(model, state.latents)
    expected = (bicubic_upsample(lr, (32, 32)) + raw / RESIDUAL.residual_scale).clamp(0, 1)
    torch.testing.assert_close(sampler.decode(model, state), expected, atol=1e-6, rtol=0)
    # and not the image format's reading of the same latents
    assert (sampler.decode(model, state) - (raw.clamp(-1, 1) + 1) / 2).abs().max() > 1e-2


def test_save_and_load_keep_the_latent_target_and_the_pipeline_is_refused(tmp_path):
    model = _residual_model()
    model.save_pretrained(tmp_path / "residual")
    assert json.loads((tmp_path / "residual" / "latent_target.json").read_text()) == {
        "kind": "residual", "residual_scale": 5.0}
    loaded = load_ldmsr(tmp_path / "residual")
    assert loaded.latent_target == RESIDUAL
    lr = _lr(2)
    torch.testing.assert_close(sampler.decode(loaded, _sample(loaded, lr)), sampler.decode(model, _sample(model, lr)))
    with pytest.raises(ValueError, match="cannot run as LDMSuperResolutionPipeline"):
        loaded.to_pipeline()
    # An image-format folder has no such file and loads as the CompVis format.
    LDMSRArchitecture.tiny().build(seed=0).save_pretrained(tmp_path / "image")
    assert not (tmp_path / "image" / "latent_target.json").exists()
    assert load_ldmsr(tmp_path / "image").latent_target == LatentTarget()
    # A broken file is named.
    (tmp_path / "residual" / "latent_target.json").write_text('{"kind": "residual", "scale": 5}')
    with pytest.raises(ModelLoadError, match="latent_target.json is not a valid latent target"):
        load_ldmsr(tmp_path / "residual")


def test_guidance_lowers_the_lr_error_of_a_residual_model():
    model = _residual_model()
    schedule = Schedule.from_model(model, 5)
    # A smooth LR image, as real ones are (the error a random decoder adds to bicubic is then
    # what guidance can remove; quantization to the tiny codebook keeps part of it).
    coarse = torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    lr = torch.nn.functional.interpolate(coarse, size=(LR_SIZE, LR_SIZE), mode="bicubic").clamp(0, 1)
    errors = {}
    for strength in (0.0, 0.8):
        state = sampler.init_state(model, schedule, lr, sampler.make_generators(range(6)))
        for _ in range(5):
            state = sampler.step(model, schedule, state, StepParams(eta=0.0, guidance=strength)).state
        errors[strength] = sampler.lr_consistency_error(sampler.decode(model, state), lr).mean().item()
    assert errors[0.8] < 0.9 * errors[0.0], errors


@pytest.fixture(scope="module")
def zero_residual_env_kwargs(image_folder):
    return dict(model=_zero_decoder(_residual_model()), data=str(image_folder), hr_size=32,
                num_inference_steps=6, reward={"lpips_net": None, "lpips_weight": 0.0})


def test_env_scores_a_zero_residual_model_as_bicubic(zero_residual_env_kwargs):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(orl_gym.ENV_ID, **zero_residual_env_kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    action = encode_params(env.unwrapped.params.actions)
    for _ in range(20):
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert terminated
    # The image is bicubic's, so every quality metric equals its bicubic baseline.
    for key in ("psnr", "ssim", "lr_consistency"):
        np.testing.assert_allclose(info[key], info[f"bicubic_{key}"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# A residual over an anchor network (orl_gym.models.AnchorNet) instead of bicubic

NETWORK = LatentTarget(kind="residual", residual_scale=5.0, anchor="network")


def _network_model(seed: int = 0):
    arch = {**LDMSRArchitecture.tiny().__dict__, "latent_target": NETWORK, "anchor_channels": 8, "anchor_blocks": 2}
    model = LDMSRArchitecture(**arch).build(seed=seed)
    # A random tail adds a visible, LR-dependent correction to bicubic (its own init is near 0).
    torch.nn.init.normal_(model.latent_target.network.tail[-1].weight, std=0.05)
    return model


def test_a_network_anchor_decodes_over_the_networks_prediction():
    model = _network_model()
    network = model.latent_target.network
    assert isinstance(network, AnchorNet) and not network.training
    assert not any(p.requires_grad for p in network.parameters())
    lr = _lr(2)
    with torch.no_grad():
        anchor = network(lr)
    assert anchor.shape == (2, 3, 32, 32)
    assert (anchor - bicubic_upsample(lr, (32, 32))).abs().max() > 1e-2  # not bicubic
    state = _sample(model, lr)
    raw = sampler.vq_decode(model, state.latents)
    torch.testing.assert_close(sampler.decode(model, state), (anchor + raw / 5.0).clamp(0, 1), atol=1e-6, rtol=0)
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    target = model.latent_target  # vq_input and image are inverse over the network's anchor too
    torch.testing.assert_close(target.image(target.vq_input(hr, lr), lr), hr, atol=1e-5, rtol=0)
    # Every build makes its own network (the architecture's target holds none).
    other = _network_model(seed=1)
    assert other.latent_target.network is not network and model.latent_target == other.latent_target


def test_a_network_anchor_saves_loads_and_is_checked(tmp_path):
    model = _network_model()
    model.save_pretrained(tmp_path / "net")
    assert json.loads((tmp_path / "net" / "latent_target.json").read_text()) == {
        "kind": "residual", "residual_scale": 5.0, "anchor": "network"}
    assert (tmp_path / "net" / "anchor" / "config.json").is_file()
    loaded = load_ldmsr(tmp_path / "net")
    assert loaded.latent_target == NETWORK and isinstance(loaded.latent_target.network, AnchorNet)
    assert loaded.modules[-1] is loaded.latent_target.network
    lr = _lr(2)
    torch.testing.assert_close(sampler.decode(loaded, _sample(loaded, lr)), sampler.decode(model, _sample(model, lr)))
    # The refusals: no network to go with the target, an anchor on the image format, a missing folder.
    with pytest.raises(ValueError, match="no network is loaded"):
        NETWORK.anchor_image(lr, (32, 32))
    with pytest.raises(ModelLoadError, match="anchors on a network, but none is given"):
        type(model)(vqvae=model.vqvae, unet=model.unet, scheduler=model.scheduler, latent_target=NETWORK)
    with pytest.raises(ValueError, match="needs kind='residual'"):
        LatentTarget(kind="image", anchor="network")
    with pytest.raises(ValueError, match="unknown anchor"):
        LatentTarget(kind="residual", anchor="lanczos")
    shutil.rmtree(tmp_path / "net" / "anchor")
    with pytest.raises(ModelLoadError, match="missing: anchor/config.json"):
        load_ldmsr(tmp_path / "net")


def test_env_runs_a_network_anchored_model(image_folder):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(orl_gym.ENV_ID, model=_network_model(), data=str(image_folder), hr_size=32, num_inference_steps=4,
                   reward={"lpips_net": None, "lpips_weight": 0.0})
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    action = encode_params(env.unwrapped.params.actions, guidance=0.5)  # guidance decodes through the anchor
    for _ in range(10):
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert terminated and np.isfinite(reward) and np.isfinite(info["psnr"])


def test_guidance_cost_counts_the_anchor_networks_forward():
    network_model = _network_model()
    plain = LDMSRArchitecture(**{**LDMSRArchitecture.tiny().__dict__, "latent_target": RESIDUAL}).build(seed=0)
    with_anchor = sampler.guidance_cost_in_unet_calls(network_model, (8, 8))
    without = sampler.guidance_cost_in_unet_calls(plain, (8, 8))
    from orl_gym.profiling import count_flops

    unet_flops = count_flops(plain.unet, torch.zeros(1, 6, 8, 8), torch.zeros(1, dtype=torch.long))
    anchor_flops = count_flops(network_model.latent_target.network, torch.zeros(1, 3, 8, 8))
    assert with_anchor == pytest.approx(without + anchor_flops / unet_flops, rel=1e-6)


def test_the_shipped_network_anchored_model_loads_with_its_anchor_and_trailing_spacing():
    from pathlib import Path

    folder = Path(orl_gym.__file__).parent / "assets" / "ldm-sr-tiny-x4-anchored"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 25 * 2**20
    model = load_ldmsr(str(folder))
    assert model.latent_target.is_residual and model.latent_target.anchor == "network"
    assert isinstance(model.latent_target.network, AnchorNet)
    assert model.scheduler.config.timestep_spacing == "trailing"
    assert model.default_num_inference_steps == 2  # its sampler_defaults.json: the default sampler
    assert bundled_model_path() == folder.resolve()  # the default model, what "bundled" loads
    schedule = Schedule.from_model(model, 2)
    assert schedule.timesteps.tolist() == [999, 499]  # DDIM 2 starts at the top, not at t = 500
    lr = _lr(1)
    with torch.no_grad():
        out = sampler.decode(model, _sample(model, lr, steps=2))
        anchor = model.latent_target.anchor_image(lr, out.shape[-2:])
    assert out.shape == (1, 3, 4 * LR_SIZE, 4 * LR_SIZE) and torch.isfinite(out).all()
    # The network's prediction is not bicubic: the anchor network is really applied.
    assert (anchor - upsample_bicubic(lr, out.shape[-2:])).abs().max() > 1e-3
