"""Same budget, each algorithm, one table: train every algorithm for the same number of timesteps
on the same env preset, then evaluate each policy on the same test images and noise.

    python experiments/compare_algorithms.py [--algos ppo a2c sac ...] [--env tiny-x4] [--timesteps 20480]
        [--max-images 128] [--out experiments/results/compare_algorithms]

Runs go to OUT/runs/<algo> (each a normal run folder: config, command, checkpoints, curve);
OUT/compare_algorithms.md and .csv hold the table (with "No RL", the default sampler, as the
reference row, and each algorithm's paired 95% interval against it).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from orl_gym.actions import ActionConfig, encode_params
from orl_gym.agents import ALGORITHMS, algorithm_class
from orl_gym.cli import build_parser, train
from orl_gym.configs import env_preset
from orl_gym.evaluation import NO_RL, SB3Policy, constant_policy, evaluate_method, paired_interval
from orl_gym.io import atomic_open, machine_description, rerun_command, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c", "sac"], choices=sorted(ALGORITHMS))
    parser.add_argument("--env", default="tiny-x4")
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--timesteps", type=int, default=20_480)
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/compare_algorithms"))
    args = parser.parse_args(argv)

    env_kwargs = env_preset(args.env)
    if args.model:
        env_kwargs["model"] = args.model
    common = dict(split="test", num_envs=args.n_envs, max_images=args.max_images, seed=0, progress=True)
    reference = evaluate_method(NO_RL, constant_policy(encode_params(ActionConfig(**env_kwargs.get("actions", {})))),
                                env_kwargs, **common)
    rows = [{"algo": "No RL (default sampler)", "train_minutes": 0.0, "result": reference}]
    for algo in args.algos:
        run_dir = args.out / "runs" / algo
        train_args = build_parser().parse_args(
            ["train", "--algo", algo, "--env", args.env, "--timesteps", str(args.timesteps), "--n-envs",
             str(args.n_envs), "--seed", str(args.seed), "--run-dir", str(run_dir), "--eval-freq",
             str(max(args.timesteps // 4, 1)), *(["--model", args.model] if args.model else [])]
            + (["--resume", str(run_dir)] if (run_dir / "checkpoints" / "latest.zip").is_file() else []))
        train(train_args)
        # The run's own wall time over all its segments (a rerun only resumes a finished run).
        minutes = json.loads((run_dir / "training.json").read_text())["wall_seconds"] / 60
        model_path = run_dir / "checkpoints" / "best_model.zip"
        model = algorithm_class(algo).load(model_path, device="cpu")
        rows.append({"algo": algo, "train_minutes": minutes, "result": evaluate_method(algo, SB3Policy(model),
                                                                                      env_kwargs, **common)})

    lines = [
        f"# Algorithms at the same budget ({args.timesteps} timesteps, {args.env})",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description()}",
        "",
        f"Test split, {len(reference.rows)} images (center crops), the same noise for every row.",
        "",
        "| Algorithm | train min | PSNR | SSIM | LPIPS | UNet calls | reward | d reward vs No RL [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = []
    for row in rows:
        r = row["result"]
        mean, low, high = paired_interval(r.column("reward"), reference.column("reward"))
        values = {m: float(r.column(m).mean()) for m in ("psnr", "ssim", "lpips", "unet_calls", "reward")}
        table.append({"algo": row["algo"], "train_minutes": row["train_minutes"], **values})
        lines.append(f"| {row['algo']} | {row['train_minutes']:.1f} | {values['psnr']:.3f} | {values['ssim']:.4f} | "
                     f"{values['lpips']:.4f} | {values['unet_calls']:.1f} | {values['reward']:+.4f} | "
                     f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] |")
    write_report(args.out / "compare_algorithms.md", lines)
    with atomic_open(args.out / "compare_algorithms.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
