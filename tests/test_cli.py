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

    # Options that repeat the run's own values are fine; --eval-freq / --eval-images apply and are recorded.
    assert main(["train", "--resume", str(run), "--timesteps", "128", "--no-progress", "--algo", "ppo",
                 "--n-envs", "4", "--seed", "42", "--run-dir", str(run), "--eval-freq", "64",
                 "--agent-device", "cpu"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["eval_freq"] == 64
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
    assert "No RL:" in capsys.readouterr().err  # its progress bar
    # The same policy scored after an output fix: same UNet calls per image, other images.
    fixed = tmp_path / "fixed"
    assert main(["evaluate", str(run), "--no-grid", "--n-envs", "4", "--grid-images", "2",
                 "--output-fix", "back_projection", "--out", str(fixed), "--no-progress"]) == 0
    assert "No RL:" not in capsys.readouterr().err  # --no-progress: no bars
    rows = {name: list(csv.DictReader((folder / "per_image.csv").open()))
            for name, folder in (("plain", run / "evaluation"), ("fixed", fixed))}
    assert [r["unet_calls"] for r in rows["plain"]] == [r["unet_calls"] for r in rows["fixed"]]
    assert [r["psnr"] for r in rows["plain"]] != [r["psnr"] for r in rows["fixed"]]
    assert "output fix: back_projection" in (fixed / "table.md").read_text()
    # A model .zip: --out is the report folder itself, as for a run folder.
    report = tmp_path / "zip-report"
    assert main(["evaluate", str(run / "checkpoints" / "latest.zip"), "--algo", "ppo", "--env", str(preset),
                 "--no-grid", "--n-envs", "4", "--grid-images", "1", "--out", str(report)]) == 0
    assert (report / "table.md").is_file() and not (report / "evaluation").exists()


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


def test_env_kwargs_reach_the_run_and_its_evaluation(preset, tmp_path, capsys):
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
    # Observations of another shape than the model's (hr_size 48, not 32): one line, before any
    # method is scored (no report folder written).
    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-grid", "--n-envs", "2", "--env-kwargs", "hr_size=48",
                 "--out", str(tmp_path / "mismatch")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the model's observations have shapes" in err and "hr_size" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "mismatch").exists()


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


def test_demo_end_to_end(tiny_model, data_root, lpips_home, tmp_path, capsys):
    """The README's main job, on a tiny random model (the bundled one is tested elsewhere)."""
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


def _fake_run(folder, preset, **changes):
    """A run folder as orl-gym train leaves it, with a placeholder checkpoint (never loaded)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "latest.zip").write_bytes(b"")
    config = {"algo": "ppo", "env": str(preset), "env_kwargs": {**yaml.safe_load(preset.read_text()),
                                                                "dtype": "float32"},
              "hyperparams": {"policy": "MultiInputPolicy", "n_steps": 16}, "seed": 42, "timesteps": 64,
              "n_envs": 4, "eval_freq": 32, "eval_images": 4, **changes}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _one_line_error(capsys) -> str:
    """The one error line (other stderr lines are notes such as whose hyperparameters are used)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("orl-gym: error: ") and "Traceback" not in err, err
    return errors[0]


def test_bad_yaml_and_incomplete_run_configs_are_one_line_errors(preset, tmp_path, capsys):
    bad_env = tmp_path / "bad.yml"
    bad_env.write_text("model: [unclosed\n")
    assert main(["train", "--env", str(preset), "--params", "net_arch=[64"]) == 2
    assert "--params net_arch=[64: the value is not valid YAML" in _one_line_error(capsys)
    assert main(["train", "--env", str(bad_env)]) == 2
    assert f"{bad_env}: not valid YAML (" in _one_line_error(capsys)
    assert main(["train", "--env", str(preset), "--env-kwargs", "hr_size=[64"]) == 2
    assert "--env-kwargs hr_size=[64: the value is not valid YAML" in _one_line_error(capsys)
    run = _fake_run(tmp_path / "run", preset)
    (run / "config.yaml").write_text(yaml.safe_dump({"algo": "ppo", "env": "tiny-x4"}))
    assert main(["train", "--resume", str(run)]) == 2
    assert "lacks env_kwargs, hyperparams, seed, timesteps, n_envs, eval_freq, eval_images" in _one_line_error(capsys)
    assert main(["evaluate", str(run), "--no-grid"]) == 2
    assert "config.yaml lacks env_kwargs:" in _one_line_error(capsys)
    (run / "config.yaml").write_text("algo: [ppo\n")
    assert main(["evaluate", str(run), "--no-grid"]) == 2
    assert "config.yaml: not valid YAML" in _one_line_error(capsys)


def test_a_run_that_fails_to_start_leaves_no_folder(preset, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--env", str(preset), "--timesteps", "16", "--n-envs", "2", "--eval-freq", "16",
            "--eval-images", "2", "--run-dir", str(run), "--no-progress", "--params", "n_steps=8", "batch_size=16"]
    assert main([*args, "n_step=16"]) == 2
    assert "hyperparameters: PPO takes no n_step; check agents/ppo.yml / --params" in _one_line_error(capsys)
    assert not run.exists()
    assert main(args) == 0  # the retry is not blocked by a half-made folder
    # --resume says which file is missing.
    (run / "checkpoints" / "latest.zip").unlink()
    assert main(["train", "--resume", str(run)]) == 2
    assert "has no checkpoints/latest.zip" in _one_line_error(capsys)
    assert main(args) == 2
    assert "holds no checkpoints/latest.zip to resume from" in _one_line_error(capsys)
    (run / "config.yaml").unlink()
    (run / "checkpoints" / "latest.zip").write_bytes(b"")
    assert main(["train", "--resume", str(run)]) == 2
    assert "has no config.yaml" in _one_line_error(capsys)


def test_resume_rejects_options_that_would_change_the_run(preset, tmp_path, capsys):
    run = _fake_run(tmp_path / "run", preset)
    assert main(["train", "--resume", str(run), "--algo", "sac", "--n-envs", "16", "--seed", "7", "--params",
                 "n_steps=256", "--device", "cuda", "--env-kwargs", "hr_size=64", "--env", "tiny-x4"]) == 2
    err = _one_line_error(capsys)
    assert "a resumed run keeps its configuration: " in err
    for part in ("--algo sac", "--env tiny-x4", "--n-envs 16 (the run has 4)", "--seed 7 (the run has 42)",
                 "--params n_steps=256", "--device / --env-kwargs"):
        assert part in err, part
    # The run's own values again are no change: the check lets them through (to the placeholder checkpoint).
    assert main(["train", "--resume", str(run), "--algo", "ppo", "--seed", "42", "--params", "n_steps=16",
                 "--env-kwargs", "hr_size=32"]) == 2
    assert "keeps its configuration" not in _one_line_error(capsys)


def test_a_new_run_gets_the_documented_defaults(preset, tmp_path, monkeypatch, capsys):
    import orl_gym.agents

    def stop(*args, **kwargs):
        raise ValueError("stopped before training")

    monkeypatch.setattr(orl_gym.agents, "TrainingMonitor", stop)
    run = tmp_path / "run"
    assert main(["train", "--env", str(preset), "--n-envs", "2", "--params", "n_steps=8", "batch_size=16",
                 "--run-dir", str(run)]) == 2
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["algo"], config["seed"], config["eval_freq"], config["eval_images"]) == ("ppo", 42, 10_000, 64)


def test_evaluate_a_run_folder_rejects_algo_and_env(preset, tmp_path, capsys):
    run = _fake_run(tmp_path / "run", preset)
    assert main(["evaluate", str(run), "--algo", "sac", "--env", "tiny-x4", "--no-grid"]) == 2
    assert "--algo / --env: a run folder fixes its algorithm and env; use --env-kwargs" in _one_line_error(capsys)


def test_evaluate_help_warns_about_untrusted_zips(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "load only .zip files you trust (SB3 unpickles parts of them" in " ".join(capsys.readouterr().out.split())


def test_grid_values_outside_the_runs_actions(preset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--env", str(preset), "--timesteps", "16", "--n-envs", "2", "--params", "n_steps=8",
                 "batch_size=16", "--eval-freq", "16", "--eval-images", "2", "--run-dir", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    common = ["evaluate", str(run), "--grid", "quick", "--grid-max-images", "2", "--max-images", "2", "--n-envs", "2",
              "--grid-images", "1"]
    # The quick grid's stride 4 does not fit max_stride 2: left out, with a note, before anything runs.
    assert main([*common, "--env-kwargs", "actions.max_stride=2", "--out", str(tmp_path / "a")]) == 0
    assert "--grid quick fitted to this run's actions: stride: 4.0 is outside" in capsys.readouterr().err
    assert "'quick' grid of 4 settings (fitted to the actions: stride: 4.0 is outside" in (tmp_path / "a" / "table.md").read_text()
    # No value left for a parameter: an error naming --grid / --no-grid, and nothing evaluated.
    assert main([*common, "--env-kwargs", "actions.eta_range=[0.2, 0.5]", "actions.defaults={eta: 0.3}",
                 "--out", str(tmp_path / "b")]) == 2
    err = _one_line_error(capsys)
    assert "--grid quick: grid: none of the eta values" in err and "use --no-grid" in err
    assert not (tmp_path / "b").exists()


def test_grid_choices_are_the_evaluation_grids():
    # The parser lists the grid names without importing orl_gym.evaluation; they must not drift apart.
    from orl_gym.cli import GRID_NAMES, build_parser
    from orl_gym.evaluation import GRIDS

    assert GRID_NAMES == tuple(GRIDS)
    for command in (["evaluate", "RUN"], ["collect"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--grid", "no_such_grid"])
        assert build_parser().parse_args([*command, "--grid", "no_guidance"]).grid == "no_guidance"
