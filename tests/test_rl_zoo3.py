"""rl-zoo3 trains on orl_gym/LDMSR-v0 with the shipped agents/ppo.yml, as its users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_rl_zoo3_train_with_shipped_hyperparameters(tiny_model, image_folder, tmp_path):
    pytest.importorskip("rl_zoo3")
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "orl_gym/LDMSR-v0",
        "--gym-packages", "orl_gym", "--conf-file", str(ROOT / "agents" / "ppo.yml"),
        "-n", "256", "-f", str(logs), "--seed", "42", "--eval-freq", "-1",
        "--env-kwargs", f"model:'{model_dir}'", f"data:'{image_folder}'", "hr_size:32",
        "num_inference_steps:4", "reward:dict(lpips_net=None,lpips_weight=0.0)",
        "-params", "n_steps:32", "n_envs:2", "batch_size:32",
    ]
    # One thread: the suite shares two cores, and oversubscribed OpenMP threads are 10x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = logs / "ppo" / "orl_gym-LDMSR-v0_1"
    assert (run / "orl_gym-LDMSR-v0.zip").is_file()
    assert "total_timesteps" in done.stdout and "| 256 " in done.stdout
