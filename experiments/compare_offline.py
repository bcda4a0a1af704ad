"""Offline RL from one logged dataset against the behaviour policy, the best constant and PPO.

    ORL_GYM_DATA=../shared/data OMP_NUM_THREADS=1 python experiments/compare_offline.py --threads 1
        [--behaviour random] [--episodes 2048] [--algos iql cql td3plusbc bc] [--quick]

1. ``orl-gym collect``: the behaviour policy (default: uniform random actions) on the train split
   of the env preset, ``--episodes`` images, once, as a Minari dataset (WORK/datasets; resumable).
2. ``orl-gym train-offline`` for each algorithm on that dataset (WORK/runs/<algo>; a finished run
   with the same settings is reused), no env step during training.
3. Every method on the test split's images of the paper's eight categories, the same images and
   noise for each (``orl_gym.evaluation.evaluate_method``, seed 0): No RL (the default sampler),
   the behaviour policy itself, the best constant action (grid search on the validation split),
   the committed PPO run (``--ppo-run``, loaded through ``orl_gym.run_policies.load_run_policy``)
   and each offline policy.

Writes OUT/README.md (tables, command, machine), OUT/offline.png, OUT/per_image.csv and
OUT/summary.json. ``--quick`` is a smaller run (fewer episodes, gradient steps and test images)
whose results say so in their title.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from orl_gym.actions import ActionConfig, encode_params
from orl_gym.cli import build_parser
from orl_gym.collect import (
    CollectSettings,
    GridMixPolicy,
    RandomPolicy,
    collect,
    default_dataset_id,
)
from orl_gym.configs import env_preset
from orl_gym.data import paper_category
from orl_gym.evaluation import (
    BEST_CONSTANT,
    GRIDS,
    NO_RL,
    MethodResult,
    constant_policy,
    evaluate_method,
    grid_for_actions,
    grid_search_constant_action,
    paired_columns,
    paired_interval,
    paper_categories_present,
)
from orl_gym.io import (
    atomic_open,
    atomic_write_text,
    machine_description,
    rerun_command,
    save_figure,
)
from orl_gym.offline import OFFLINE_ALGORITHMS
from orl_gym.run_policies import load_run_policy

NAMES = {"iql": "IQL", "cql": "CQL", "td3plusbc": "TD3+BC", "bc": "BC"}
FULL = {"episodes": 2048, "n_steps": None, "max_images": None, "grid_max_images": 64}
QUICK = {"episodes": 256, "n_steps": 200, "max_images": 48, "grid_max_images": 16}


def fmt(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def mean_of(result: MethodResult, metric: str, category: str = "all") -> float:
    values = [row.get(metric, math.nan) for row in result.rows if category in ("all", row["paper_category"])]
    return float(np.mean(values)) if values else math.nan


def interval(a: MethodResult, b: MethodResult, metric: str, category: str) -> tuple[float, float, float]:
    return paired_interval(*paired_columns(a, b, metric, category=category, category_key="paper_category"))


def with_paper_category(result: MethodResult) -> MethodResult:
    for row in result.rows:
        row["paper_category"] = paper_category(row["category"]) or row["category"]
    return result


def run_command(argv: list[str]) -> None:
    """One orl-gym command in this process (errors raise, as they should in a script)."""
    args = build_parser().parse_args(argv)
    args.func(args)


def planned_steps(hyperparams: dict) -> int:
    """The gradient steps train-offline runs for these hyperparameters (whole epochs)."""
    n_steps, per_epoch = int(hyperparams["n_steps"]), int(hyperparams["n_steps_per_epoch"])
    per_epoch = min(per_epoch, n_steps)
    return per_epoch * max(1, n_steps // per_epoch)


def train_run(algo: str, dataset: Path, run_dir: Path, n_steps: int | None, seed: int, progress: bool) -> dict:
    """Train, or reuse a finished run on the same dataset with the same seed and steps; its
    config and training record."""
    config_path, record_path = run_dir / "config.yaml", run_dir / "training.json"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        record = json.loads(record_path.read_text()) if record_path.is_file() else {"gradient_steps": 0}
        if (config["dataset"]["path"] == str(dataset.resolve()) and config["seed"] == seed
                and n_steps in (None, config["hyperparams"]["n_steps"])
                and record["gradient_steps"] == planned_steps(config["hyperparams"])):
            print(f"compare_offline: {run_dir} is trained already; reusing it", file=sys.stderr)
            return {"config": config, "training": record}
        raise SystemExit(f"compare_offline: {run_dir} holds an unfinished run or one with other settings "
                         "(dataset, seed, steps); delete it or pass another --work")
    run_command(["train-offline", "--algo", algo, "--dataset", str(dataset), "--seed", str(seed), "--run-dir",
                 str(run_dir), *(["--n-steps", str(n_steps)] if n_steps else []),
                 *([] if progress else ["--no-progress"])])
    return {"config": yaml.safe_load(config_path.read_text()), "training": json.loads(record_path.read_text())}


def plot(methods: list[MethodResult], categories: list[str], cost: dict[str, float], path: Path, title: str) -> Path:
    """PNG: mean reward per category and method; mean reward against env steps spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2.6, 1]})
    groups = [*categories, "all"]
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        bars.bar(x, [mean_of(method, "reward", c) for c in groups], width, label=method.name)
    bars.set_xticks(np.arange(len(groups)), groups, rotation=25, ha="right", fontsize=8)
    bars.set_ylabel("mean reward (test)")
    bars.axhline(0, color="black", linewidth=0.6)
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=7, ncol=2)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):  # the bars' colours
        steps = cost.get(method.name, math.nan)
        if math.isfinite(steps) and steps > 0:
            scatter.plot(steps, mean_of(method, "reward"), "o", color=colors[i % len(colors)])
            scatter.annotate(method.name, (steps, mean_of(method, "reward")), fontsize=7, xytext=(4, 2),
                             textcoords="offset points")
    scatter.set_xscale("log")
    scatter.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
    scatter.set_xlabel("env steps spent (collection, training or grid search)")
    scatter.set_ylabel("mean reward (test, all)")
    scatter.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="tiny-x4")
    parser.add_argument("--behaviour", default="random", help="random, grid, or a run folder (orl-gym collect --policy)")
    parser.add_argument("--episodes", type=int, help="images in the dataset (default 2048; --quick 256)")
    parser.add_argument("--algos", nargs="+", default=list(OFFLINE_ALGORITHMS), choices=list(OFFLINE_ALGORITHMS))
    parser.add_argument("--n-steps", type=int, help="gradient steps of every algorithm (default: each YAML's; "
                        "--quick 200)")
    parser.add_argument("--ppo-run", type=Path, default=Path("experiments/results/runs/ppo"))
    parser.add_argument("--grid", default="quick", choices=sorted(GRIDS))
    parser.add_argument("--grid-max-images", type=int, help="validation images per grid setting (default 64; --quick 16)")
    parser.add_argument("--max-images", type=int, help="test images, spread over the categories (default all; "
                        "--quick 48)")
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="collection seed (evaluation: seed 0 for every method)")
    parser.add_argument("--train-seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smaller run, its results labelled as such")
    parser.add_argument("--work", type=Path, help="datasets and run folders (default runs/offline[/quick])")
    parser.add_argument("--out", type=Path, help="report folder (default experiments/results/offline[/quick])")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    suffix = "quick" if args.quick else ""
    args.work = args.work or Path("runs/offline") / suffix
    args.out = args.out or Path("experiments/results/offline") / suffix
    started = time.perf_counter()
    progress = not args.no_progress

    env_kwargs = env_preset(args.env)
    actions = ActionConfig(**env_kwargs.get("actions", {}))
    # 1. The dataset, once.
    settings = CollectSettings(dataset_id=default_dataset_id(args.env, args.behaviour, args.grid), env_kwargs=env_kwargs,
                               policy=args.behaviour, grid=args.grid, episodes=args.episodes, num_envs=args.n_envs,
                               seed=args.seed, chunk_episodes=4 * args.n_envs, env=args.env)
    fresh = not (args.work / "datasets" / settings.dataset_id).exists()
    dataset = collect(settings, root=args.work / "datasets", progress=progress)
    record = json.loads((dataset / "data" / "metadata.json").read_text())["orl_gym"]
    # 2. The offline policies, from that dataset only.
    runs = {algo: train_run(algo, dataset, args.work / "runs" / algo, args.n_steps, args.train_seed, progress)
            for algo in args.algos}

    # 3. Every method on the same test images and noise.
    categories, _ = paper_categories_present(env_kwargs)  # one without test images here is left out
    common = dict(split="test", categories=categories, num_envs=args.n_envs, max_images=args.max_images, seed=0,
                  progress=progress)
    best_action, best_setting, grid_table = grid_search_constant_action(
        env_kwargs, actions, grid=grid_for_actions(args.grid, actions)[0], split="validation", num_envs=args.n_envs,
        max_images=args.grid_max_images, seed=0, progress=progress)
    grid_steps = sum(row["unet_calls"] for row in grid_table) * args.grid_max_images  # one UNet call per env step
    if args.behaviour == "random":
        behaviour = RandomPolicy(actions.size, seed=[args.seed, 10**6])
    elif args.behaviour == "grid":
        behaviour = GridMixPolicy(actions, grid_for_actions(args.grid, actions)[0], seed=[args.seed, 10**6])
    else:
        behaviour_config = yaml.safe_load((Path(args.behaviour) / "config.yaml").read_text())
        behaviour = load_run_policy(Path(args.behaviour), behaviour_config)[0]
    ppo_config = yaml.safe_load((args.ppo_run / "config.yaml").read_text())
    if ppo_config["env_kwargs"] != env_kwargs:
        raise SystemExit(f"compare_offline: {args.ppo_run} was trained on other env settings than --env {args.env}")
    ppo_policy, ppo_checkpoint = load_run_policy(args.ppo_run, ppo_config)
    ppo_training = json.loads((args.ppo_run / "training.json").read_text())

    methods = [
        evaluate_method(NO_RL, constant_policy(encode_params(actions)), env_kwargs, **common),
        evaluate_method("behaviour", behaviour, env_kwargs, **common),
        evaluate_method(BEST_CONSTANT, constant_policy(best_action), env_kwargs, **common),
        evaluate_method("PPO", ppo_policy, env_kwargs, **common),
    ]
    for algo in args.algos:
        policy, _ = load_run_policy(args.work / "runs" / algo, runs[algo]["config"])
        methods.append(evaluate_method(NAMES[algo], policy, env_kwargs, **common))
    for method in methods:
        with_paper_category(method)
    by_name = {m.name: m for m in methods}
    offline = [by_name[NAMES[a]] for a in args.algos]
    cost = {NO_RL: 0.0, "behaviour": 0.0, BEST_CONSTANT: float(grid_steps),
            "PPO": float(ppo_training["num_timesteps"]),
            **{NAMES[a]: float(runs[a]["training"]["dataset_env_steps"]) for a in args.algos}}
    cost_note = {NO_RL: "none", "behaviour": "none (it is the policy that collected the data)",
                 BEST_CONSTANT: f"grid search: {len(grid_table)} settings x {args.grid_max_images} validation images",
                 "PPO": f"online training ({ppo_training['num_timesteps']:,} timesteps; its validation passes not counted)",
                 **{NAMES[a]: f"the shared dataset ({record['env_steps']:,} env steps once; 0 in training)"
                    for a in args.algos}}

    # Report.
    minutes = (time.perf_counter() - started) / 60
    n_images = len(methods[0].rows)
    quick = " (QUICK RUN: smaller dataset, fewer gradient steps and test images; not the full experiment)" if args.quick else ""
    lines = [
        f"# Offline RL from one logged dataset{quick}",
        "",
        f"Regenerate: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description()}; wall time {minutes:.1f} min for this invocation "
        f"({'collection, training and evaluation' if fresh else 'evaluation; it reused the dataset and runs in ' + str(args.work) + ', whose own times are below'}).",
        "",
        "## Setup",
        "",
        f"- Env: preset `{args.env}` (the bundled tiny LDM-SR x4, 64 px HR crops, DDIM 20 steps, reward PSNR 0.4 / "
        "SSIM 0.3 / LPIPS 0.2 / efficiency 0.1).",
        f"- Dataset: `orl-gym collect --policy {args.behaviour}` on the train split, {record['episodes']:,} images "
        f"({record['transitions']:,} transitions; {record['env_steps']:,} env steps spent, the images still in flight "
        f"when a chunk ended included; {record['collect_seconds'] / 60:.1f} min). Minari id `{record['dataset_id']}`.",
        "- Offline policies: `orl-gym train-offline` (d3rlpy 2.8.1) on that dataset alone, hyperparameters "
        "`agents/<algo>.yml` entry `" + str(runs[args.algos[0]]["config"]["hyperparams_entry"]) + "`: "
        + "; ".join(f"{NAMES[a]} {runs[a]['training']['gradient_steps']:,} gradient steps in "
                    f"{runs[a]['training']['wall_seconds'] / 60:.1f} min" for a in args.algos) + ".",
        f"- Best constant: grid `{args.grid}` ({len(grid_table)} settings x {args.grid_max_images} validation "
        f"images); winner {best_setting}.",
        f"- PPO: the committed run `{args.ppo_run}` ({ppo_checkpoint.name}, {ppo_training['num_timesteps']:,} "
        "timesteps online).",
        f"- Test: {n_images} images of the test split in the paper's categories "
        f"({', '.join(categories)}){'' if args.max_images is None else f' (max {args.max_images}, spread over them)'}, "
        "center crops; every method sees the same images and noise (seed 0).",
        "",
        "## All test images",
        "",
        "| Method | PSNR (dB) | SSIM | LPIPS | UNet calls | reward | env steps spent | what they bought |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        lines.append(f"| {method.name} | {fmt(mean_of(method, 'psnr'), 2)} | {fmt(mean_of(method, 'ssim'), 4)} | "
                     f"{fmt(mean_of(method, 'lpips'), 4)} | {fmt(mean_of(method, 'unet_calls'), 1)} | "
                     f"{fmt(mean_of(method, 'reward'), 4, True)} | {cost[method.name]:,.0f} | {cost_note[method.name]} |")
    lines += ["", "## Per category: mean reward", "",
              "| Category | n | " + " | ".join(m.name for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    for category in [*categories, "all"]:
        n = sum(category in ("all", row["paper_category"]) for row in methods[0].rows)
        lines.append(f"| {'**all**' if category == 'all' else category} | {n} | "
                     + " | ".join(fmt(mean_of(m, "reward", category), 4, True) for m in methods) + " |")
    for base_name in ("behaviour", BEST_CONSTANT, "PPO"):
        base = by_name[base_name]
        lines += ["", f"## Paired per-image reward difference: offline policy minus {base_name}",
                  "", "Mean [95% t interval] over the category's images.", "",
                  "| Category | " + " | ".join(m.name for m in offline) + " |", "|---|" + "---|" * len(offline)]
        for category in [*categories, "all"]:
            cells = []
            for method in offline:
                mean, low, high = interval(method, base, "reward", category)
                cells.append(f"{fmt(mean, 4, True)} [{fmt(low, 4, True)}, {fmt(high, 4, True)}]")
            lines.append(f"| {'**all**' if category == 'all' else category} | " + " | ".join(cells) + " |")
    lines += ["", "Files: `offline.png` (reward per category; reward against env steps), `per_image.csv` (every "
              "method's metrics per image), `summary.json`.", ""]

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "README.md", "\n".join(lines))
    plot(methods, categories, cost, args.out / "offline.png", f"Offline RL from {record['episodes']:,} logged images "
         f"({args.behaviour} behaviour){' - quick run' if args.quick else ''}")
    keys = ["image_index", "name", "category", "paper_category", "psnr", "ssim", "lpips", "unet_calls", "reward"]
    with atomic_open(args.out / "per_image.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", *keys], extrasaction="ignore")
        writer.writeheader()
        for method in methods:
            for row in method.rows:
                writer.writerow({"method": method.name, **row})
    summary = {"quick": args.quick, "dataset": record, "best_constant": best_setting, "env_steps": cost,
               "training": {a: runs[a]["training"] for a in args.algos},
               "reward": {m.name: {c: mean_of(m, "reward", c) for c in [*categories, "all"]} for m in methods}}
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    print("\n".join(lines))
    print(f"compare_offline: wrote {args.out} in {minutes:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
