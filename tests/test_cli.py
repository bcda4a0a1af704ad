"""The orl-gym command: train (run folder, resume), evaluate, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from orl_gym.cli import main


@pytest.fixture(scope="module")
def preset(tiny_model, image_folder, tmp_path_factory):
    """An env preset file for a tiny random model on the synthetic images (no LPIPS weights)."""
    folder = tmp_path_factory.mktemp("preset")
    tiny_model.save_pretrained(folder / "model")
    path = folder / "tiny-test.yml"
    path.write_text(yaml.safe_dump({
        "model": str(folder / "model"), "data": str(image_folder), "hr_size": 32, "num_inference_steps": 4,
        "reward": {"lpips_net": None, "lpips_weight": 0.0},
    }))
    return path


def test_train_resume_and_evaluate(preset, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--threads", "1", "train", "--env", str(preset), "--timesteps", "64", "--n-envs", "4",
            "--params", "n_steps=16", "batch_size=32",
            "--eval-freq", "32", "--eval-images", "4", "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    for name in ("config.yaml", "command.txt", "reward_curve.png", "reward_curve.csv", "validation.csv",
                 "checkpoints/latest.zip", "checkpoints/best_model.zip"):
        assert (run / name).is_file(), name
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["algo"] == "ppo" and config["hyperparams"]["gamma"] == 0.99 and config["seed"] == 42
    assert config["hyperparams"]["n_steps"] == 16
    # The env file has no hyperparameter entry of its own: the console says whose were used.
    assert "hyperparameters from agents/ppo.yml entry 'orl_gym/LDMSR-v0'" in capsys.readouterr().err

    first = json.loads((run / "training.json").read_text())
    assert first["num_timesteps"] == 64 and len(first["segments"]) == 1 and first["wall_seconds"] > 0

    assert main(["train", "--resume", str(run), "--timesteps", "128", "--no-progress"]) == 0
    assert len((run / "command.txt").read_text().splitlines()) == 2
    from stable_baselines3 import PPO

    assert PPO.load(run / "checkpoints" / "latest.zip").num_timesteps >= 128
    # The resume is a second learn() segment; the wall time is the sum of both.
    record = json.loads((run / "training.json").read_text())
    assert record["num_timesteps"] >= 128 and len(record["segments"]) == 2
    assert record["segments"][1]["timesteps_start"] == 64
    assert record["wall_seconds"] == pytest.approx(sum(s["end"] - s["start"] for s in record["segments"]))
    # Reloading a finished run (nothing left to train) adds no segment.
    assert main(["train", "--resume", str(run), "--timesteps", "128", "--no-progress"]) == 0
    assert json.loads((run / "training.json").read_text()) == record

    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-grid", "--n-envs", "4", "--grid-images", "2"]) == 0
    table = (run / "evaluation" / "table.md").read_text()
    assert "| RL | all |" in table and "| No RL | all |" in table and "| bicubic | all |" in table
    assert (run / "evaluation" / "comparison.png").is_file() and (run / "evaluation" / "per_image.csv").is_file()
    # The same policy scored after an output fix: same UNet calls per image, other images.
    fixed = tmp_path / "fixed"
    assert main(["evaluate", str(run), "--no-grid", "--n-envs", "4", "--grid-images", "2",
                 "--output-fix", "back_projection", "--out", str(fixed)]) == 0
    rows = {name: list(csv.DictReader((folder / "per_image.csv").open()))
            for name, folder in (("plain", run / "evaluation"), ("fixed", fixed))}
    assert [r["unet_calls"] for r in rows["plain"]] == [r["unet_calls"] for r in rows["fixed"]]
    assert [r["psnr"] for r in rows["plain"]] != [r["psnr"] for r in rows["fixed"]]
    assert "output fix: back_projection" in (fixed / "table.md").read_text()


@pytest.mark.parametrize("args, expected", [
    (["train", "--algo", "dqn"], "algorithms: ppo, a2c"),
    (["train", "--env", "no-such-preset"], "presets: resisc45-x4, tiny-x4"),
    (["evaluate", "/no/such/run"], "no such run folder or model file"),
    (["train", "--env-kwargs", "reward.lpips_wieght=0.4"], "unknown reward field 'lpips_wieght'"),
])
def test_bad_input_gives_one_line(args, expected, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_env_kwargs_reach_the_run_and_its_evaluation(preset, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", str(preset), "--timesteps", "32", "--n-envs", "2", "--params", "n_steps=16",
                 "batch_size=32", "--eval-freq", "32", "--eval-images", "2", "--run-dir", str(run), "--no-progress",
                 "--env-kwargs", "reward.efficiency_weight=0", "num_inference_steps=6"]) == 0
    env_kwargs = yaml.safe_load((run / "config.yaml").read_text())["env_kwargs"]
    assert env_kwargs["num_inference_steps"] == 6
    assert env_kwargs["reward"] == {"lpips_net": None, "lpips_weight": 0.0, "efficiency_weight": 0}
    # Evaluating the run starts from its env and applies the command line's overrides on top.
    assert main(["evaluate", str(run), "--no-grid", "--n-envs", "2", "--grid-images", "1",
                 "--env-kwargs", "reward.psnr_weight=1"]) == 0
    evaluated = yaml.safe_load((run / "evaluation" / "config.yaml").read_text())["env_kwargs"]
    assert evaluated["reward"] == {**env_kwargs["reward"], "psnr_weight": 1}
    assert evaluated["num_inference_steps"] == 6


def test_unknown_category_lists_the_classes(preset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--env", str(preset), "--timesteps", "32", "--n-envs", "2", "--params", "n_steps=16",
                 "batch_size=32", "--eval-freq", "32",
                 "--eval-images", "2", "--run-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-grid", "--categories", "volcano"]) == 2
    err = capsys.readouterr().err
    assert "volcano" in err and "fields" in err and "roads" in err


def test_missing_model_folder(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"model": str(tmp_path / "missing-model"), "reward": {"lpips_net": None,
                                                                                       "lpips_weight": 0.0}}))
    assert main(["train", "--env", str(bad), "--timesteps", "8", "--run-dir", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_demo_end_to_end(tiny_model, data_root, lpips_cache, tmp_path, monkeypatch, capsys):
    """The README's main job, on a tiny random model (the bundled one is tested elsewhere)."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "lpips").symlink_to(lpips_cache)
    monkeypatch.setenv("ORL_GYM_CACHE", str(tmp_path / "cache"))  # real LPIPS weights, fetched by pip
    tiny_model.save_pretrained(tmp_path / "model")
    run = tmp_path / "demo"
    assert main(["--threads", "1", "demo", "--model", str(tmp_path / "model"), "--data", str(data_root / "ucmerced"),
                 "--timesteps", "64", "--eval-images", "8", "--run-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "orl-gym demo finished" in out and "| RL | all | 8 |" in out and "| best constant | all | 8 |" in out
    for name in ("reward_curve.png", "evaluation/comparison.png", "evaluation/table.md", "config.yaml"):
        assert (run / name).is_file(), name
    assert "LPIPS" in (run / "evaluation" / "table.md").read_text()


def test_missing_lpips_weights_name_the_fetch_command(preset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORL_GYM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    from orl_gym import env as env_module

    env_module._cached_reward_model.cache_clear()  # a reward model built earlier may hold weights
    with_lpips = tmp_path / "with-lpips.yml"
    config = yaml.safe_load(preset.read_text())
    config["reward"] = {"lpips_net": "alex"}
    with_lpips.write_text(yaml.safe_dump(config))
    assert main(["train", "--env", str(with_lpips), "--timesteps", "8", "--run-dir", str(tmp_path / "r")]) == 2
    assert "fetch-weights" in capsys.readouterr().err
