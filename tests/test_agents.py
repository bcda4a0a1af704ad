"""Every algorithm of agents/ trains a few hundred steps on a tiny random model and evaluates."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy

import orl_gym
from orl_gym.agents import ALGORITHMS, build_agent, hyperparams_entry, load_hyperparams, wrap_for


@pytest.fixture(scope="module")
def venv(tiny_model, image_folder):
    return orl_gym.make_sb3_env(num_envs=4, model=tiny_model, data=str(image_folder), hr_size=32,
                                num_inference_steps=4, reward={"lpips_net": None, "lpips_weight": 0.0})


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_each_algorithm_trains_and_evaluates(algo, venv, tmp_path):
    params = load_hyperparams(algo, "tiny-x4")
    # Sized down for a test: short rollouts, an early start for off-policy learners.
    for key, value in {"n_steps": 8, "batch_size": 16, "learning_starts": 16, "gradient_steps": 1,
                       "buffer_size": 1000, "n_epochs": 1}.items():
        if key in params:
            params[key] = value
    model, timesteps = build_agent(algo, wrap_for(params, venv), params, seed=0, device="cpu", tensorboard_log=str(tmp_path))
    assert timesteps == 50_000
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    logged = model.logger.name_to_value
    losses = {k: v for k, v in logged.items() if "loss" in k}
    assert all(np.isfinite(v) for v in losses.values()), losses
    model.save(tmp_path / "model.zip")
    assert (tmp_path / "model.zip").is_file()
    mean_reward, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=4, deterministic=True)
    assert np.isfinite(mean_reward)


def test_an_env_file_by_path_reads_the_env_id_entry():
    # A preset has its own entry; an env file passed by path has none and falls back to the env
    # id's (other n_envs / n_steps), which `orl-gym train` then says on the console.
    assert hyperparams_entry("ppo", "tiny-x4") == "tiny-x4"
    assert hyperparams_entry("ppo", "experiments/configs/tiny-x4-lpips-heavy.yml") == "orl_gym/LDMSR-v0"
    assert load_hyperparams("ppo", "experiments/configs/tiny-x4-lpips-heavy.yml")["n_envs"] == 8
    assert load_hyperparams("ppo", "tiny-x4")["n_envs"] == 64


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(ValueError, match="ppo, a2c"):
        load_hyperparams("dqn")


def test_a_crossq_model_loaded_from_disk_is_scored_on_its_training_layout(venv, tmp_path):
    # `orl-gym evaluate` loads CrossQ without an env; SB3Policy must feed it the flat vector
    # FlattenDictObservation trained it on (sorted keys), not the Dict's own key order.
    from sb3_contrib import CrossQ

    from orl_gym.evaluation import SB3Policy

    params = load_hyperparams("crossq", "tiny-x4")
    wrapped = wrap_for(params, venv)
    model, _ = build_agent("crossq", wrapped, {**params, "learning_starts": 16, "buffer_size": 1000}, seed=0,
                           device="cpu")
    model.save(tmp_path / "crossq.zip")
    loaded = CrossQ.load(tmp_path / "crossq.zip", device="cpu")
    assert loaded.get_env() is None
    venv.seed(0)
    obs = venv.reset()  # the Dict observation, keys in the env's order (lr, latent, progress)
    assert list(obs) != sorted(obs)
    wrapped.seed(0)
    flat = wrapped.reset()  # the same observation, as training fed it to the model
    expected, _ = loaded.predict(flat, deterministic=True)
    actions = SB3Policy(loaded)(obs, np.ones(venv.num_envs, dtype=bool))
    np.testing.assert_array_equal(actions, expected)
    # Its spaces check compares the flattened size: this env's passes, a larger LR does not.
    SB3Policy(loaded).check_spaces(venv.observation_space, venv.action_space)
    larger = gym.spaces.Dict({**venv.observation_space.spaces,
                              "lr": gym.spaces.Box(0, 255, (2 * venv.observation_space["lr"].shape[0],), np.uint8)})
    with pytest.raises(ValueError, match="observations have shapes"):
        SB3Policy(loaded).check_spaces(larger, venv.action_space)


def test_unknown_hyperparameters_are_a_one_line_value_error(venv):
    params = load_hyperparams("ppo", "tiny-x4")
    with pytest.raises(ValueError, match=r"PPO takes no n_step; check agents/ppo.yml / --params") as caught:
        build_agent("ppo", venv, {**params, "n_step": 16}, device="cpu")
    assert len(str(caught.value).splitlines()) == 1
    no_policy = {k: v for k, v in params.items() if k != "policy"}
    with pytest.raises(ValueError, match="no 'policy'"):
        build_agent("ppo", venv, no_policy, device="cpu")


def test_a_hyperparameter_file_that_does_not_parse_is_a_value_error(tmp_path):
    bad = tmp_path / "ppo.yml"
    bad.write_text("orl_gym/LDMSR-v0: {policy: [MultiInputPolicy\n")
    with pytest.raises(ValueError, match=r"ppo.yml: not valid YAML \(.* at line 2") as caught:
        load_hyperparams("ppo", conf_file=bad)
    assert len(str(caught.value).splitlines()) == 1
