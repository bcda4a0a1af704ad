"""orl_gym/LDMSR-v0: checkers, seeding, batched == sequential, bad actions, SB3 PPO."""

from __future__ import annotations

import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import orl_gym
from orl_gym.actions import encode_params
from orl_gym.agents import LDMSRFeatureExtractor
from orl_gym.models import bundled_model_path

NO_LPIPS = {"lpips_net": None, "lpips_weight": 0.0}
# The seeding and batching contracts hold per device (noise comes from a generator on the env's
# device, so CUDA trajectories differ from CPU ones by design); the CUDA cases run on a GPU machine.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


@pytest.fixture(scope="module")
def env_kwargs(tiny_model, image_folder):
    # 32 px HR (8 px LR) keeps a tiny model's episode at milliseconds per step.
    return dict(model=tiny_model, data=str(image_folder), hr_size=32, num_inference_steps=6,
                reward=NO_LPIPS)


def _on_device(env_kwargs, device):
    """The env kwargs with the model (a copy: the fixture is shared) and the env on ``device``."""
    if device == "cpu":
        return env_kwargs
    return {**env_kwargs, "model": copy.deepcopy(env_kwargs["model"]).to(device), "device": device}


def _rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            trace.append(env.reset()[0])
    return trace


def _assert_same(a, b):
    """Equal to 1e-5 relative to the array's scale: convolution kernels chosen by batch shape
    round differently in the last bits, and a random model's latents reach tens of units."""
    if isinstance(a, dict):
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = max(1.0, float(np.abs(a).max(initial=0.0)))
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0)


def test_checkers_pass_without_warnings(env_kwargs):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(orl_gym.ENV_ID, render_mode="rgb_array", **env_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (32, 96, 3) and frame.dtype == np.uint8


def test_episode_ends_at_t0_with_every_metric_in_info(env_kwargs):
    env = gym.make(orl_gym.ENV_ID, **env_kwargs)
    env.reset(seed=1)
    stride2 = encode_params(env.unwrapped.params.actions, stride=2)
    rewards, steps = [], 0
    while True:
        _, reward, terminated, truncated, info = env.step(stride2)
        rewards.append(reward)
        steps += 1
        if terminated or truncated:
            break
    assert terminated and not truncated and steps == 3  # 6 schedule entries, stride 2
    assert rewards[:-1] == [0.0, 0.0] and rewards[-1] != 0.0
    for key in ("psnr", "ssim", "lr_consistency", "nfe", "unet_calls", "seconds", "bicubic_psnr", "efficiency"):
        assert np.isfinite(info[key]), key
    assert info["unet_calls"] == 3 and info["efficiency"] == pytest.approx(0.5)
    assert info["reward"] == pytest.approx(rewards[-1], abs=1e-6)


def test_step_budget_truncates_and_still_scores(env_kwargs):
    env = gym.make(orl_gym.ENV_ID, **{**env_kwargs, "step_budget": 2})
    env.reset(seed=0)
    plain = encode_params(env.unwrapped.params.actions)
    env.step(plain)
    _, reward, terminated, truncated, info = env.step(plain)
    assert truncated and not terminated and np.isfinite(info["psnr"]) and reward != 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_trajectory_different_seed_different(env_kwargs, device):
    env = gym.make(orl_gym.ENV_ID, **_on_device(env_kwargs, device))
    actions = np.random.default_rng(0).uniform(-1, 1, size=(14, 4)).astype(np.float32)
    a, b = _rollout(env, 7, actions), _rollout(env, 7, actions)
    for x, y in zip(a, b, strict=True):
        _assert_same(x, y)
    c = _rollout(env, 8, actions)
    assert not np.allclose(a[0]["latent"], c[0]["latent"])


@pytest.mark.parametrize("device", DEVICES)
def test_batched_env_equals_single_envs(env_kwargs, device):
    env_kwargs = _on_device(env_kwargs, device)
    n, steps = 3, 14
    actions = np.random.default_rng(1).uniform(-1.2, 1.2, size=(steps, n, 4)).astype(np.float32)
    venv = gym.make_vec(orl_gym.ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **env_kwargs)
    obs, _ = venv.reset(seed=100)
    batched = [obs]
    finished = 0
    for t in range(steps):
        obs, reward, terminated, truncated, info = venv.step(actions[t])
        final = info.get("final_obs", np.full(n, None))
        batched.append((obs, reward, terminated, truncated, final))
        finished += int((terminated | truncated).sum())
    assert finished >= n  # autoresets happened, at different steps for different rows

    for i in range(n):
        env = gym.make(orl_gym.ENV_ID, **env_kwargs)
        obs, _ = env.reset(seed=100 + i)
        _assert_same({k: v[i] for k, v in batched[0].items()}, obs)
        for t in range(steps):
            obs, reward, terminated, truncated, _ = env.step(actions[t, i])
            b_obs, b_reward, b_term, b_trunc, b_final = batched[t + 1]
            assert (terminated, truncated) == (bool(b_term[i]), bool(b_trunc[i]))
            np.testing.assert_allclose(reward, b_reward[i], atol=1e-5)
            if terminated or truncated:
                _assert_same(obs, b_final[i])
                obs, _ = env.reset()
            _assert_same(obs, {k: v[i] for k, v in b_obs.items()})


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA_ONLY
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_on_cuda_scores_in_float32(env_kwargs, dtype):
    """A float16 / bfloat16 model (``EnvConfig.dtype``) runs whole episodes with every reward term
    (LR consistency, per-step shaping, guidance on): finite float32 metrics, close to float32's."""
    reward = {**NO_LPIPS, "lr_consistency_weight": 0.1, "shaping_weight": 1.0}
    actions = np.random.default_rng(2).uniform(-1, 1, size=(6, 3, 4)).astype(np.float32)
    actions[:, :, 0] = -1.0  # stride 1: every row runs the whole 6-step schedule
    actions[:, :, 3] = 1.0  # full guidance: its decode and downsampling run in the model dtype
    psnr = {}
    for run_dtype in (torch.float32, dtype):
        model = copy.deepcopy(env_kwargs["model"]).to("cuda", run_dtype)
        venv = gym.make_vec(orl_gym.ENV_ID, num_envs=3, vectorization_mode="vector_entry_point",
                            **{**env_kwargs, "model": model, "device": "cuda", "reward": reward,
                               "dtype": str(run_dtype).removeprefix("torch.")})
        venv.reset(seed=5)
        for step_actions in actions:
            _, rewards, terminated, truncated, info = venv.step(step_actions)
            assert np.isfinite(rewards).all() and rewards.dtype == np.float32, (run_dtype, rewards)
        assert terminated.all() and not truncated.any()
        for key in ("psnr", "ssim", "lr_consistency", "bicubic_psnr", "reward"):
            assert np.isfinite(info["final_info"][key]).all(), (run_dtype, key, info["final_info"])
        psnr[run_dtype] = info["final_info"]["psnr"]
    # Same seeds, same actions: half precision moves an image's PSNR by rounding, not by dBs.
    np.testing.assert_allclose(psnr[dtype], psnr[torch.float32], atol=0.5)


def test_step_after_the_episode_ended_raises_until_reset(env_kwargs):
    for extra, ended in (({}, "terminated"), ({"step_budget": 1}, "truncated")):
        env = gym.make(orl_gym.ENV_ID, **{**env_kwargs, **extra})
        env.reset(seed=0)
        action = encode_params(env.unwrapped.params.actions, stride=4)
        while True:
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert (terminated, truncated) == (ended == "terminated", ended == "truncated")
        assert isinstance(info["unet_calls"], int) and isinstance(info["image_index"], int)
        with pytest.raises(RuntimeError, match="after the episode ended"):
            env.step(action)
        env.reset()
        env.step(action)  # a new episode steps again


@pytest.mark.parametrize("change, message", [
    ({"guidance_cost": float("inf")}, "guidance_cost: expected a finite value"),
    ({"gamma": float("nan")}, "gamma: expected a discount"),
    ({"hr_size": 24}, "multiples of 16"),
    ({"device": "cuda:0"}, "the LDMSR object is on cpu"),
])
def test_bad_env_arguments_are_refused_at_construction(env_kwargs, change, message):
    with pytest.raises(ValueError, match=message):
        gym.make(orl_gym.ENV_ID, **{**env_kwargs, **change})


def test_vector_infos_follow_gymnasiums_same_step_convention(env_kwargs):
    """As SyncVectorEnv in SAME_STEP mode: a finished row's step info is in final_info, and the top
    level describes its new episode (which image; no UNet calls yet)."""
    n = 2
    venv = gym.make_vec(orl_gym.ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **env_kwargs)
    _, first = venv.reset(seed=0)
    stride4 = np.stack([encode_params(venv.unwrapped.params.actions, stride=4)] * n)
    venv.step(stride4)
    finishing = stride4.copy()
    finishing[:, 1] = 5.0  # an eta coordinate out of range: clipped (counted), the same step count
    _, _, terminated, _, info = venv.step(finishing)  # 6 schedule entries, stride 4: done in 2 steps
    assert terminated.all()
    final = info["final_info"]
    assert final["_action_clipped"].all() and final["unet_calls"].tolist() == [2, 2]
    assert final["action_clipped"].tolist() == [1, 1]  # the finishing step's count, not the new episode's
    assert final["image_index"].tolist() == first["image_index"].tolist()  # the images that finished
    assert final["image_index"].dtype == np.int64 and final["unet_calls"].dtype == np.int64
    state = venv.unwrapped.state
    assert info["image_index"].tolist() == state.image_index.tolist() and info["_image_index"].all()
    assert info["unet_calls"].tolist() == [0, 0] and info["action_clipped"].tolist() == [0, 0]
    _, _, _, _, info = venv.step(stride4)
    assert "image_index" not in info and info["unet_calls"].tolist() == [1, 1]  # no row reset here


def test_sequential_order_gives_every_image_the_same_noise_whatever_the_policy(env_kwargs):
    """Common random numbers for evaluation: z_T of every image, not only of each row's first,
    is the same under two policies that take different numbers of steps."""
    kwargs = {**env_kwargs, "image_order": "sequential", "crop": "center", "max_images": 6}

    def starts(stride):
        venv = gym.make_vec(orl_gym.ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
        obs, info = venv.reset(seed=11)
        seen = {int(i): obs["latent"][r] for r, i in enumerate(info["image_index"])}
        action = np.stack([encode_params(venv.unwrapped.params.actions, stride=stride)] * 2)
        wanted = len(venv.unwrapped.params.image_pool)
        for _ in range(6 * wanted):  # enough steps to start every image of the pool
            if len(seen) == wanted:
                break
            obs, _, _, _, info = venv.step(action)
            for r in np.flatnonzero(info.get("_image_index", np.zeros(2, dtype=bool))):
                seen.setdefault(int(info["image_index"][r]), obs["latent"][r])
        return seen

    one, three = starts(1), starts(3)
    assert len(one) > 2 and sorted(one) == sorted(three)  # more images than rows: autoresets happened
    for index in one:
        np.testing.assert_array_equal(one[index], three[index], err_msg=f"image {index}")


def test_sb3_vec_env_reset_infos_shapes_indices_and_render_mode(env_kwargs):
    venv = orl_gym.make_sb3_env(num_envs=2, monitor=False, **env_kwargs)
    venv.seed(0)
    venv.reset()
    started = [info["image_index"] for info in venv.reset_infos]
    stride4 = np.stack([encode_params(venv.vector_env.params.actions, stride=4)] * 2)
    venv.step(stride4)
    _, _, dones, infos = venv.step(stride4)
    assert dones.all() and [info["image_index"] for info in infos] == started  # the finished images
    assert [info["unet_calls"] for info in infos] == [2, 2]
    assert [info["image_index"] for info in venv.reset_infos] == venv.vector_env.state.image_index.tolist()
    with pytest.raises(ValueError, match="expected shape"):
        venv.step(stride4.T.copy())  # (k, N) is not reshaped into (N, k)
    with pytest.raises(IndexError, match="out of range"):
        venv.get_attr("num_envs", indices=[7])
    assert venv.get_attr("num_envs", indices=[-1]) == [2]
    with pytest.warns(UserWarning, match="render_mode"):
        assert venv.get_images() == [None, None]
    with pytest.raises(ValueError, match="render_mode"):
        orl_gym.make_sb3_env(num_envs=2, render_mode="rgb_arry", **env_kwargs)


def test_bad_actions(env_kwargs):
    env = gym.make(orl_gym.ENV_ID, **env_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([np.inf, 0.0, 0.0, 0.0], dtype=np.float32))
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3, dtype=np.float32))
    _, _, _, _, info = env.step(np.array([-5.0, 3.0, 0.0, -1.0], dtype=np.float32))
    assert info["action_clipped"] == 2
    assert info["unet_calls"] == 1  # -5 was clipped to -1: stride 1


def test_ppo_with_shipped_extractor_learns_something(env_kwargs):
    from stable_baselines3 import PPO

    venv = orl_gym.make_sb3_env(num_envs=4, **env_kwargs)
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=2, learning_rate=3e-3, seed=0,
                policy_kwargs={"features_extractor_class": LDMSRFeatureExtractor}, device="cpu")
    obs = venv.reset()
    obs_t, _ = model.policy.obs_to_tensor(obs)
    before = model.policy.get_distribution(obs_t).distribution.mean.detach().clone()
    model.learn(total_timesteps=256)
    after = model.policy.get_distribution(obs_t).distribution.mean.detach()
    buffer = model.rollout_buffer
    assert model.num_timesteps >= 256
    for array in (buffer.rewards, buffer.values, buffer.advantages, buffer.returns, buffer.log_probs):
        assert np.isfinite(array).all()
    assert (buffer.rewards != 0).any()  # episodes finished and were paid
    assert not torch.allclose(before, after)


def test_sb3_vec_env_infos(env_kwargs):
    venv = orl_gym.make_sb3_env(num_envs=2, **{**env_kwargs, "step_budget": 2})
    venv.seed(3)
    venv.reset()
    plain = np.stack([encode_params(venv.unwrapped.vector_env.params.actions)] * 2)
    venv.step(plain)
    obs, rewards, dones, infos = venv.step(plain)
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert set(info["terminal_observation"]) == {"lr", "latent", "progress"}
        assert np.isfinite(info["psnr"])
    assert venv.get_attr("num_envs") == [2, 2]
    assert venv.env_is_wrapped(gym.Wrapper) == [False, False]


@pytest.mark.skipif(not bundled_model_path().is_dir(), reason="the bundled checkpoint is not trained yet (issue 6)")
def test_make_with_no_arguments_uses_the_bundled_model(data_root, lpips_home, monkeypatch):
    monkeypatch.setenv("ORL_GYM_DATA", str(data_root))
    env = gym.make(orl_gym.ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs["lr"].shape == (3 * 16 * 16,)
    # The default model states its default sampler (2 DDIM steps from the top of a trailing schedule).
    assert env.unwrapped.params.schedule.timesteps.tolist() == [999, 499]
    venv = gym.make_vec(orl_gym.ENV_ID, num_envs=4, vectorization_mode="vector_entry_point")
    obs, _ = venv.reset(seed=0)
    obs, *_ = venv.step(venv.action_space.sample())
    assert obs["latent"].shape[0] == 4


def test_output_fix_is_applied_to_the_scored_and_rendered_image(env_kwargs):
    infos, frames = {}, {}
    for fix in ("none", "back_projection"):
        env = gym.make(orl_gym.ENV_ID, render_mode="rgb_array", output_fix=fix, **env_kwargs)
        env.reset(seed=3)
        stride2 = encode_params(env.unwrapped.params.actions, stride=2)
        frames[fix] = env.render()
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(stride2)
        infos[fix] = info
    # Same trajectory, different scored image: back-projection makes it explain its LR input.
    assert infos["none"]["unet_calls"] == infos["back_projection"]["unet_calls"]
    assert infos["back_projection"]["lr_consistency"] > infos["none"]["lr_consistency"] + 3
    assert infos["back_projection"]["psnr"] != infos["none"]["psnr"]
    width = frames["none"].shape[1] // 3  # LR | x0 prediction | HR: only the middle panel differs
    assert np.array_equal(frames["none"][:, :width], frames["back_projection"][:, :width])
    assert not np.array_equal(frames["none"][:, width:2 * width], frames["back_projection"][:, width:2 * width])
    with pytest.raises(ValueError, match="output_fix: expected one of"):
        gym.make(orl_gym.ENV_ID, output_fix="colour", **env_kwargs)
