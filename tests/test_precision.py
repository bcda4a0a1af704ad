"""orl_gym.precision: IEEE float32 on CUDA where results must not depend on batching."""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest
import torch

import orl_gym
from orl_gym.precision import ieee_float32
from orl_gym.rewards import reward


def test_ieee_float32_turns_tf32_off_inside_and_restores_the_flags():
    seen = []

    @ieee_float32
    def work(fail: bool):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        if fail:
            raise RuntimeError("inside")
        return "result"

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert work(False) == "result"
        with pytest.raises(RuntimeError, match="inside"):
            work(True)
        assert seen == [(False, False), (False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_env_runs_its_unet_and_decoder_and_ssim_with_tf32_off(tiny_model, image_folder, monkeypatch):
    """Where the batched == sequential contract needs it: every UNet and VQ-decoder forward of
    reset, step and render, and the reward's SSIM, see the flags off (the CPU sees the flags too)."""
    model = copy.deepcopy(tiny_model)
    seen: list[tuple[str, bool, bool]] = []

    def record(name):
        return lambda *_: seen.append((name, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))

    model.unet.register_forward_pre_hook(record("unet"))
    model.vqvae.decoder.register_forward_pre_hook(record("decoder"))
    ssim = reward.ssim  # where RewardModel looks it up
    monkeypatch.setattr(reward, "ssim", lambda *a, **k: (record("ssim")(), ssim(*a, **k))[1])
    env = gym.make(orl_gym.ENV_ID, model=model, data=str(image_folder), hr_size=32, num_inference_steps=3,
                   reward={"lpips_net": None, "lpips_weight": 0.0}, render_mode="rgb_array")
    seen.clear()  # gym.make ran the networks once to count the guidance step's FLOPs
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        env.reset(seed=0)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
        env.render()
        flags_after = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    names = {name for name, *_ in seen}
    assert {"unet", "decoder", "ssim"} <= names
    assert all(not cudnn and not matmul for _, cudnn, matmul in seen), seen
    assert flags_after == (True, True)
