"""Offline RL: orl-gym collect writes Minari datasets that round-trip exactly and resume after an
interruption; train-offline trains d3rlpy algorithms on them with no env step; evaluate reads the
run; bad datasets are one-line errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import yaml

from orl_gym import collect as collect_module
from orl_gym.cli import main
from orl_gym.collect import CollectSettings, RandomPolicy, collect, load_collected_dataset
from orl_gym.vector import LDMSuperResolutionVectorEnv

minari = pytest.importorskip("minari")


@pytest.fixture(scope="module")
def env_kwargs(tiny_env_kwargs):
    return tiny_env_kwargs


@pytest.fixture(scope="module")
def preset(tiny_preset):
    return tiny_preset


def replay(env_kwargs, *, seed, num_envs, chunk_sizes):
    """The episodes a collection with the random policy must hold, recorded here independently:
    per chunk, a fresh env reset with seed + chunk * num_envs, the chunk's policy seed, and the
    first episodes to finish (rows in order within a step)."""
    env = LDMSuperResolutionVectorEnv(num_envs=num_envs, **env_kwargs)
    episodes = []
    for chunk, count in enumerate(chunk_sizes):
        policy = RandomPolicy(env.single_action_space.shape[0], seed=[seed, chunk])
        obs, _ = env.reset(seed=seed + chunk * num_envs)
        current = [{"obs": [{k: v[r] for k, v in obs.items()}], "actions": [], "rewards": []} for r in range(num_envs)]
        done_here = []
        while len(done_here) < count:
            actions = policy(obs, np.zeros(num_envs, bool))
            obs, rewards, terminated, truncated, info = env.step(actions)
            for r in range(num_envs):
                ended = terminated[r] or truncated[r]
                current[r]["obs"].append(info["final_obs"][r] if ended else {k: v[r] for k, v in obs.items()})
                current[r]["actions"].append(actions[r])
                current[r]["rewards"].append(rewards[r])
                if ended:
                    if len(done_here) < count:
                        done_here.append({**current[r], "psnr": info["final_info"]["psnr"][r]})
                    current[r] = {"obs": [{k: v[r] for k, v in obs.items()}], "actions": [], "rewards": []}
        episodes += done_here
    env.close()
    return episodes


def test_collect_round_trips_exactly_and_resumes(env_kwargs, tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    settings = CollectSettings(dataset_id="orl_gym/test/random-v0", env_kwargs=env_kwargs, policy="random",
                               episodes=10, num_envs=3, seed=5, chunk_episodes=4)
    # Interrupted in its second chunk: nothing appears under the dataset's id, the first chunk is kept.
    original = collect_module._collect_chunk

    def interrupted(*args, chunk, **kwargs):
        if chunk == 1:
            raise KeyboardInterrupt
        return original(*args, chunk=chunk, **kwargs)

    monkeypatch.setattr(collect_module, "_collect_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect(settings, root=root, progress=False)
    partial = root / ".orl_gym-partial" / "orl_gym__test__random-v0"
    assert not (root / settings.dataset_id).exists()
    assert (partial / "chunk-00000.npz").is_file() and not (partial / "chunk-00001.npz").exists()
    # Other settings do not continue it.
    with pytest.raises(ValueError, match="partial collection .* with other seed"):
        collect(CollectSettings(**{**vars(settings), "seed": 6}), root=root, progress=False)
    # The same command continues it: chunk 0 is not collected again.
    calls = []
    monkeypatch.setattr(collect_module, "_collect_chunk", lambda *a, chunk, **k: calls.append(chunk) or original(
        *a, chunk=chunk, **k))
    path = collect(settings, root=root, progress=False)
    assert calls == [1, 2] and path == root / settings.dataset_id and not partial.exists()

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    dataset = minari.load_dataset(settings.dataset_id)
    expected = replay(env_kwargs, seed=5, num_envs=3, chunk_sizes=[4, 4, 2])
    assert dataset.total_episodes == 10 and dataset.total_steps == sum(len(e["actions"]) for e in expected)
    metadata = list(dataset.storage.get_episode_metadata(range(10)))
    for episode, want, meta in zip(dataset.iterate_episodes(), expected, metadata, strict=True):
        for key in ("lr", "latent", "progress"):
            got = episode.observations[key]
            assert got.dtype == dataset.observation_space[key].dtype
            np.testing.assert_array_equal(got, np.stack([o[key] for o in want["obs"]]))  # exact, T + 1 rows
        np.testing.assert_array_equal(episode.actions, np.stack(want["actions"]))
        np.testing.assert_array_equal(episode.rewards, np.asarray(want["rewards"], dtype=np.float64))
        assert episode.terminations[-1] and not episode.terminations[:-1].any()
        assert len(episode.infos["image_index"]) == len(episode.rewards) + 1
        assert meta["psnr"] == pytest.approx(want["psnr"]) and meta["reward"] == pytest.approx(want["rewards"][-1])
        assert meta["name"].endswith(".png") and math.isfinite(meta["ssim"])
    record = dataset.storage.metadata["orl_gym"]
    assert record["env_kwargs"] == env_kwargs and record["transitions"] == dataset.total_steps
    assert record["env_steps"] >= record["transitions"]  # images in flight at a chunk's end are not stored
    # Minari's eval env spec rebuilds the env the data came from.
    env = dataset.recover_environment(eval_env=True)
    assert env.unwrapped.config.hr_size == 32
    env.close()

    # The finished collection again: nothing to do; with other settings: an error, not an overwrite.
    assert collect(settings, root=root, progress=False) == path
    with pytest.raises(ValueError, match="exists, collected with other episodes"):
        collect(CollectSettings(**{**vars(settings), "episodes": 11}), root=root, progress=False)


def test_collect_train_offline_and_evaluate(preset, tmp_path, capsys):
    pytest.importorskip("d3rlpy", reason="d3rlpy is installed with --no-deps (docs/offline.md)")
    import d3rlpy

    from orl_gym.offline import D3RLPyPolicy, load_run_policy

    root = tmp_path / "datasets"
    assert main(["--threads", "1", "collect", "--env", str(preset), "--policy", "grid", "--episodes", "12",
                 "--n-envs", "4", "--out", str(root), "--no-progress"]) == 0
    dataset_id = "orl_gym/tiny-test/grid-quick-v0"
    assert f"dataset {dataset_id}" in capsys.readouterr().err
    data, record = load_collected_dataset(dataset_id, root=root)
    assert data.total_episodes == 12 and record["policy"] == "grid"
    # Each episode of the grid's mix keeps one constant action for the whole image.
    for episode in data.iterate_episodes():
        assert (episode.actions == episode.actions[0]).all()

    for algo in ("iql", "cql", "td3plusbc", "bc"):
        run = tmp_path / f"run-{algo}"
        assert main(["train-offline", "--algo", algo, "--dataset", dataset_id, "--datasets-root", str(root),
                     "--n-steps", "4", "--params", "n_steps_per_epoch=2", "batch_size=8", "--run-dir", str(run),
                     "--no-progress"]) == 0, algo
        for name in ("config.yaml", "command.txt", "checkpoints/latest.d3", "losses.csv", "training_curve.png",
                     "training.json"):
            assert (run / name).is_file(), (algo, name)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["engine"] == "d3rlpy" and config["algo"] == algo and config["dataset"]["episodes"] == 12
        assert config["env_kwargs"]["hr_size"] == 32
        training = json.loads((run / "training.json").read_text())
        assert training["gradient_steps"] == 4 and training["env_steps_training"] == 0
        assert training["dataset_env_steps"] == record["env_steps"]
        assert len((run / "losses.csv").read_text().splitlines()) == 3  # header + 2 epochs

    run = tmp_path / "run-iql"
    policy, path = load_run_policy(run, yaml.safe_load((run / "config.yaml").read_text()))
    assert isinstance(policy, D3RLPyPolicy) and path == run / "checkpoints" / "latest.d3"
    episode = next(data.iterate_episodes())
    obs = {k: v[:2] for k, v in episode.observations.items()}
    actions = policy(obs, np.ones(2, bool))
    assert actions.shape == (2, 4) and actions.dtype == np.float32 and np.abs(actions).max() <= 1
    from orl_gym.agents import flatten_observation

    direct = d3rlpy.load_learnable(str(path)).predict(flatten_observation(obs))
    np.testing.assert_allclose(actions, np.clip(direct, -1, 1))

    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-grid", "--n-envs", "2", "--max-images", "3", "--grid-images", "1",
                 "--no-progress"]) == 0
    table = (run / "evaluation" / "table.md").read_text()
    assert "| RL | all |" in table and "| No RL | all |" in table and "(iql)" in table


def _one_line_error(args, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_datasets_give_one_line(env_kwargs, preset, tmp_path, capsys):
    root = tmp_path / "datasets"
    settings = CollectSettings(dataset_id="orl_gym/test/const-v0", env_kwargs=env_kwargs, policy="constant",
                               action={"stride": 2}, episodes=4, num_envs=2, chunk_episodes=4)
    path = collect(settings, root=root, progress=False)
    common = ["train-offline", "--algo", "bc", "--dataset", str(path), "--run-dir", str(tmp_path / "run")]

    # Another env config than the dataset's (checked field by field), before any folder is made.
    err = _one_line_error([*common, "--env-kwargs", "hr_size=48", "reward.psnr_weight=1"], capsys)
    assert "collected with another env config" in err and "hr_size (32 vs 48)" in err
    assert "reward.psnr_weight (0.4 vs 1)" in err and not (tmp_path / "run").exists()
    # The env its record names makes other observations now (as if its model or hr_size changed).
    metadata_file = path / "data" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["orl_gym"]["env_kwargs"]["hr_size"] = 48
    metadata_file.write_text(json.dumps(metadata))
    err = _one_line_error(common, capsys)
    assert "holds observations" in err and "collect the data again" in err
    # An empty dataset, and one orl-gym did not write (no env record, a Box observation).
    import gymnasium as gym

    with collect_module._datasets_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari's advice on the metadata left unset
        box = gym.spaces.Box(-1, 1, (3,), np.float32)
        empty = minari.create_dataset_from_buffers("orl_gym/test/empty-v0", [], observation_space=box,
                                                   action_space=box, data_format="arrow")
        empty.storage.update_metadata({"orl_gym": {"env_kwargs": env_kwargs}})
        step = {"observations": np.zeros((2, 3), np.float32), "actions": np.zeros((1, 3), np.float32),
                "rewards": [0.0], "terminations": [True], "truncations": [False]}
        minari.create_dataset_from_buffers("other/box-v0", [minari.data_collector.EpisodeBuffer(**step)],
                                           observation_space=box, action_space=box, data_format="arrow")
    assert "holds no episodes" in _one_line_error(
        ["train-offline", "--algo", "iql", "--dataset", "orl_gym/test/empty-v0", "--datasets-root", str(root)], capsys)
    assert "was not collected by orl-gym collect" in _one_line_error(
        ["train-offline", "--algo", "iql", "--dataset", str(root / "other/box-v0")], capsys)
    assert "no dataset 'orl_gym/none-v0'" in _one_line_error(
        ["train-offline", "--algo", "iql", "--dataset", "orl_gym/none-v0", "--datasets-root", str(root)], capsys)
    assert "is not a Minari dataset id" in _one_line_error(
        ["collect", "--env", str(preset), "--dataset-id", "no version", "--out", str(root)], capsys)
    assert "only --policy constant takes" in _one_line_error(
        ["collect", "--env", str(preset), "--action", "stride=2", "--out", str(root)], capsys)


def test_offline_run_evaluated_on_other_shapes_is_one_line(preset, tmp_path, capsys):
    pytest.importorskip("d3rlpy", reason="d3rlpy is installed with --no-deps (docs/offline.md)")
    root = tmp_path / "datasets"
    assert main(["collect", "--env", str(preset), "--episodes", "4", "--n-envs", "2", "--out", str(root),
                 "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["train-offline", "--algo", "td3plusbc", "--dataset", "orl_gym/tiny-test/random-v0",
                 "--datasets-root", str(root), "--n-steps", "2", "--params", "batch_size=4", "--run-dir", str(run),
                 "--no-progress"]) == 0
    err = _one_line_error(["evaluate", str(run), "--no-grid", "--n-envs", "2", "--env-kwargs", "hr_size=48",
                           "--out", str(tmp_path / "mismatch")], capsys)
    assert "the policy's observations have shapes" in err and not (tmp_path / "mismatch").exists()
    # An unknown d3rlpy field, named with what the algorithm takes.
    err = _one_line_error(["train-offline", "--algo", "iql", "--dataset", str(run.parent / "datasets" /
                           "orl_gym/tiny-test/random-v0"), "--params", "expectiles=0.9"], capsys)
    assert "IQLConfig takes no expectiles" in err and "expectile" in err
