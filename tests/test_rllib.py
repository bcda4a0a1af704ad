"""Ray RLlib (orl-gym train --engine rllib): the batched env in RLlib's next-step autoreset mode
(tested without Ray), PPO on a local Ray cluster with 2 env runners on a tiny random model, its run
folder, checkpoint and resume, and orl-gym evaluate on the saved checkpoint."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from gymnasium.vector import AutoresetMode

from orl_gym.actions import ActionConfig, encode_params
from orl_gym.agents import flatten_observation
from orl_gym.cli import main
from orl_gym.rllib_env import make_rllib_env
from orl_gym.spaces import PROGRESS_FEATURES
from orl_gym.vector import LDMSuperResolutionVectorEnv

# Where the UNet-call count of the progress features sits in a flattened observation (progress is
# the last key): 0 exactly on an episode's first observation, > 0 after any step.
NFE = -len(PROGRESS_FEATURES) + PROGRESS_FEATURES.index("nfe")
STEPS = 4  # schedule steps of conftest's tiny env: episodes take 1 to 4 steps


@pytest.fixture(scope="module")
def env_kwargs(tiny_env_kwargs):
    assert tiny_env_kwargs["num_inference_steps"] == STEPS
    return tiny_env_kwargs


@pytest.fixture(scope="module")
def preset(tiny_preset):
    return tiny_preset


def test_adapter_is_next_step_autoreset_of_the_batched_env(env_kwargs):
    env = make_rllib_env({**env_kwargs, "num_envs": 3})
    ref = LDMSuperResolutionVectorEnv(num_envs=3, **env_kwargs)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=5)
    ref_obs, ref_info = ref.reset(seed=15)  # runner seed 5, N = 3: rows 15, 16, 17
    np.testing.assert_array_equal(obs, flatten_observation(ref_obs))
    np.testing.assert_array_equal(info["image_index"], ref_info["image_index"])
    assert obs.dtype == np.float32 and env.observation_space.contains(obs) and (obs[:, NFE] == 0).all()

    # Constant plain-DDIM actions: every row ends at step 4, with the batched env's final observation.
    actions = np.tile(encode_params(ActionConfig()), (3, 1))
    for step in range(1, STEPS + 1):
        obs, reward, terminated, truncated, info = env.step(actions)
        ref_obs, ref_reward, ref_terminated, _, ref_info = ref.step(actions)
        np.testing.assert_array_equal(reward, ref_reward)
        np.testing.assert_array_equal(terminated, ref_terminated)
        if step < STEPS:
            np.testing.assert_array_equal(obs, flatten_observation(ref_obs))
            assert "psnr" not in info and info["_unet_calls"].all()
    assert terminated.all() and not truncated.any() and np.isfinite(reward).all()
    final = flatten_observation({k: np.stack([o[k] for o in ref_info["final_obs"]]) for k in ref_obs})
    np.testing.assert_array_equal(obs, final)  # not the next image's first observation
    for key in ("psnr", "reward", "image_index"):  # the finished image's metrics, not the next image's
        np.testing.assert_array_equal(info[key], ref_info["final_info"][key])
    assert info["_psnr"].all() and "category" not in info

    # The next step starts the new episodes: their first observation, reward 0, not done, which image.
    obs, reward, terminated, truncated, info = env.step(actions)
    assert (obs[:, NFE] == 0).all() and (reward == 0).all() and not (terminated | truncated).any()
    assert info["_category"].all() and not info["_unet_calls"].any() and "psnr" not in info
    base = env.unwrapped
    np.testing.assert_array_equal(info["image_index"], base.state.image_index.numpy())
    for _ in range(STEPS - 1):
        obs, reward, terminated, _, info = env.step(actions)
        assert not terminated.any() and (obs[:, NFE] > 0).all()
    _, _, terminated, _, info = env.step(actions)
    assert terminated.all() and np.isfinite(info["psnr"]).all()

    # Random actions: rows end at different steps; every episode RLlib records (from the step after
    # a reset to the step that ends it) starts fresh, never restarts midway, and has 1 to 4 steps.
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=1)
    lengths, current, starting = [], np.zeros(3, int), np.zeros(3, bool)
    for _ in range(40):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, (3, 4)).astype(np.float32))
        done = terminated | truncated
        assert (obs[starting, NFE] == 0).all() and (reward[starting] == 0).all() and not done[starting].any()
        assert (obs[~starting, NFE] > 0).all()
        np.testing.assert_array_equal(info.get("_psnr", np.zeros(3, bool)), done)
        current[~starting] += 1
        lengths += current[done].tolist()
        current[done] = 0
        starting = done
    assert len(lengths) >= 10 and min(lengths) >= 1 and max(lengths) <= STEPS
    env.close()
    ref.close()


def test_check_resources_says_what_is_short():
    from orl_gym.rllib import _check_resources

    config = SimpleNamespace(num_env_runners=3, num_cpus_per_env_runner=1, num_gpus_per_env_runner=0.5,
                             num_learners=0, num_cpus_per_learner="auto", num_gpus_per_learner=0)
    _check_resources({"CPU": 3, "GPU": 2}, config)
    with pytest.raises(ValueError, match=r"need 3 CPUs \(the cluster has 2\) and 1.5 GPUs \(the cluster has 1\)"):
        _check_resources({"CPU": 2, "GPU": 1}, config)


def test_missing_ray_is_one_line(preset, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["train", "--engine", "rllib", "--env", str(preset), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'orl_gym[rllib]'" in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs (one per env runner), no dashboard."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.rllib", reason="Ray without RLlib's dependencies: pip install 'orl_gym[rllib]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_two_runners_each_sample_one_batched_env(ray_cluster, env_kwargs):
    from ray import tune

    from orl_gym.rllib import RLLIB_ENV, build_ppo_config

    tune.register_env(RLLIB_ENV, make_rllib_env)
    run = {"env_kwargs": env_kwargs, "seed": 3, "n_envs": 4, "agent_device": "cpu",
           "hyperparams": {"num_env_runners": 2, "rollout_fragment_length": 8, "minibatch_size": 32, "num_epochs": 1,
                           "fcnet_hiddens": [16]}}
    algo = build_ppo_config(run).build_algo()
    try:
        group = algo.env_runner_group
        assert group.num_remote_env_runners() == 2
        described = group.foreach_env_runner(
            lambda r: (r.worker_index, type(r.env.env).__name__, r.env.unwrapped.num_envs), local_env_runner=False)
        assert sorted(described) == [(1, "RLlibBatchedEnv", 4), (2, "RLlibBatchedEnv", 4)]
        sampled = group.foreach_env_runner(lambda r: r.sample(num_timesteps=24, explore=True), local_env_runner=False)
        first_latents = []
        for episodes in sampled:
            assert sum(len(e) for e in episodes) >= 24
            first_latents.append(np.stack([e.get_observations(0) for e in episodes[:4]]))
            for episode in episodes:
                observations = np.stack([episode.get_observations(i) for i in range(len(episode) + 1)])
                assert observations[0, NFE] == 0 and (observations[1:, NFE] > 0).all()
                if episode.is_done:
                    assert 1 <= len(episode) <= STEPS and np.isfinite(episode.get_return())
                    assert np.isfinite(episode.get_infos(-1)["psnr"])
        assert not np.array_equal(first_latents[0], first_latents[1])  # runners seeded apart
        result = algo.train()
        assert math.isfinite(result["learners"]["default_policy"]["policy_loss"])
        assert result["env_runners"]["num_env_steps_sampled"] >= 2 * 4 * 8
    finally:
        algo.stop()


def test_train_rllib_run_evaluates_and_resumes(ray_cluster, preset, tmp_path, capsys):
    from orl_gym.rllib import MODULE_PATH, RLlibPolicy
    from orl_gym.run_policies import load_run_policy

    run = tmp_path / "run"
    args = ["--threads", "1", "train", "--engine", "rllib", "--env", str(preset), "--n-envs", "4", "--timesteps",
            "256", "--params", "num_env_runners=2", "rollout_fragment_length=16", "minibatch_size=32", "num_epochs=2",
            "--eval-freq", "128", "--eval-images", "3", "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["engine"] == "rllib" and config["algo"] == "ppo" and config["n_envs"] == 4
    assert config["hyperparams"]["num_env_runners"] == 2 and config["env_kwargs"]["hr_size"] == 32
    for name in ("latest", "best"):
        assert (run / "checkpoints" / name / "rllib_checkpoint.json").is_file()
        assert any((run / "checkpoints" / name / MODULE_PATH).glob("module_state*"))
    curve = (run / "reward_curve.csv").read_text().splitlines()[1:]
    assert len(curve) == 2  # one row per iteration of 2 runners x 4 images x 16 steps
    steps, rewards = zip(*[(int(t), float(r)) for t, r in (line.split(",") for line in curve)], strict=True)
    assert 128 <= steps[0] < steps[1] and all(math.isfinite(r) for r in rewards)
    validation = (run / "validation.csv").read_text().splitlines()[1:]
    assert len(validation) == 2 and all(math.isfinite(float(line.split(",")[1])) for line in validation)
    assert json.loads((run / "training.json").read_text())["num_timesteps"] == steps[1]
    assert list((run / "tb" / "run").glob("events.out.tfevents.*"))

    # The restored policy is deterministic: the same observations give the same actions, load after load.
    policy, checkpoint = load_run_policy(run, config)
    assert isinstance(policy, RLlibPolicy) and checkpoint == run / "checkpoints" / "best"
    env = LDMSuperResolutionVectorEnv(num_envs=3, **config["env_kwargs"])
    obs, _ = env.reset(seed=0)
    actions = policy(obs, np.ones(3, bool))
    assert actions.shape == (3, 4) and actions.dtype == np.float32 and np.abs(actions).max() <= 1
    np.testing.assert_array_equal(actions, policy(obs, np.ones(3, bool)))
    np.testing.assert_array_equal(actions, load_run_policy(run, config)[0](obs, np.ones(3, bool)))

    # orl-gym evaluate scores every image of the split once, with this policy.
    images = len(LDMSuperResolutionVectorEnv(num_envs=1, split="validation", **config["env_kwargs"]).params.image_pool)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "validation", "--no-grid", "--n-envs", "2", "--grid-images", "1",
                 "--no-progress"]) == 0
    table = (run / "evaluation" / "table.md").read_text()
    assert f"Evaluation of {run / 'checkpoints' / 'best'} (ppo)" in table and f"| RL | all | {images} |" in table
    rows = (run / "evaluation" / "per_image.csv").read_text().splitlines()[1:]
    assert images >= 2 and sum(line.startswith("RL,") for line in rows) == images
    assert sum(line.startswith("No RL,") for line in rows) == images

    # Another env shape is a one-line error, before anything is scored.
    capsys.readouterr()
    assert main(["evaluate", str(run), "--env-kwargs", "hr_size=16", "--no-grid", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flattened observations have shape" in err

    # --resume continues from checkpoints/latest with the run's own engine; RLlib's lifetime step
    # count comes back with the checkpoint (counted once).
    capsys.readouterr()
    assert main(["train", "--engine", "sb3", "--resume", str(run)]) == 2
    assert "was trained with rllib" in capsys.readouterr().err
    assert main(["--threads", "1", "train", "--resume", str(run), "--timesteps", "384", "--no-progress"]) == 0
    resumed = [int(line.split(",")[0]) for line in (run / "reward_curve.csv").read_text().splitlines()[1:]]
    assert len(resumed) == 3 and resumed[:2] == list(steps) and 384 <= resumed[2] < steps[1] + 2 * 130
    training = json.loads((run / "training.json").read_text())
    assert training["num_timesteps"] == resumed[2] and len(training["segments"]) == 2
    assert len((run / "command.txt").read_text().splitlines()) == 2
