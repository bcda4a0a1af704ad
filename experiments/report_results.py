"""The result: does the learned sampling policy beat the same model's sampler without RL?

    python experiments/report_results.py [--runs experiments/results/runs] [--main ppo]
        [--others a2c sac] [--out experiments/results] [--grid full] [--grid-max-images 128]
        [--max-images N] [--notes experiments/results/notes.md]

Trains nothing. It evaluates the runs that ``orl-gym train`` wrote into RUNS/<algo> (each run's
``command.txt`` is the command that trained it) on the test split of the paper's eight scene
categories (``orl_gym.data.PAPER_CATEGORIES``; center crops, the same noise for every method):

- bicubic x4 and Real-ESRGAN x4plus (``orl_gym.realesrgan``; a GAN super-resolver, the peer a
  user would otherwise pick), both without diffusion;
- "No RL": the model's default sampler (plain DDIM over the env's schedule, the action that
  decodes to stride 1, eta 0, noise scale 1, no guidance);
- "best constant": the one action, held at every step, with the highest mean validation reward in
  a grid search over the same action space (``orl_gym.evaluation.GRIDS``);
- each RL policy (its run's best validation checkpoint), deterministic;
- "No RL" and the main policy again with ``--output-fix`` (``orl_gym.postprocess``, default LR
  back-projection): the same trajectories, each decoded image corrected from its own LR input
  before it is scored. The cheap non-RL way to what the guidance parameter does, so the question
  is whether the policy beats it, and whether it still adds something on top of it.

It writes into OUT: ``README.md`` (the tables, paired 95% t intervals, the targets checked, the
figures), ``per_image.csv``, ``summary.json``, ``grid_search.csv``, ``comparison.png``,
``policy.png`` (the main policy's stride / eta / noise scale / guidance over t),
``training_curves.png``. Every number in README.md comes from this one command.
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

from orl_gym.actions import PARAMETERS, ActionConfig, encode_params
from orl_gym.agents import algorithm_class, hyperparams_entry
from orl_gym.data import resolve_source
from orl_gym.env import DEFAULT_NUM_INFERENCE_STEPS, resolve_num_inference_steps
from orl_gym.evaluation import (
    BEST_CONSTANT,
    GRIDS,
    NO_RL,
    REALESRGAN_METHOD,
    MethodResult,
    PolicyTrace,
    SB3Policy,
    bicubic_result,
    comparison_grid,
    constant_policy,
    evaluate_method,
    evaluate_upsampler,
    grid_for_actions,
    grid_search_constant_action,
    paired_columns,
    paired_interval,
    paper_categories_present,
    paper_category,
    plot_policy_trace,
    plot_training_curves,
)
from orl_gym.io import (
    atomic_open,
    atomic_write_text,
    machine_description,
    rerun_command,
    write_report,
)
from orl_gym.postprocess import OUTPUT_FIX_NAMES, OUTPUT_FIXES
from orl_gym.rewards import RewardConfig

METRICS = ("psnr", "ssim", "lpips", "unet_calls", "reward")
NAMES = {"ppo": "PPO", "a2c": "A2C", "sac": "SAC", "td3": "TD3", "ddpg": "DDPG", "tqc": "TQC", "trpo": "TRPO",
         "recurrent_ppo": "RecurrentPPO", "crossq": "CrossQ"}


def run_summary(run_dir: Path) -> dict:
    """Algorithm, timesteps trained, wall time and the command of a run (its ``training.json``,
    which ``orl-gym train`` writes with every checkpoint)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    record_path = run_dir / "training.json"
    if not record_path.is_file():
        raise SystemExit(f"report_results: {record_path} is missing; it is written by `orl-gym train` "
                         "with each checkpoint (resume the run for one more checkpoint to write it)")
    record = json.loads(record_path.read_text())
    # command.txt: one "<date> <time>  <command>" line per invocation (a resume adds one).
    lines = (run_dir / "command.txt").read_text().splitlines() if (run_dir / "command.txt").is_file() else []
    commands = [line.split("  ", 1)[-1].strip() for line in lines if line.strip()]
    return {"algo": config["algo"], "timesteps": int(record["num_timesteps"]),
            "configured_timesteps": config["timesteps"], "minutes": record["wall_seconds"] / 60,
            "commands": commands, "hyperparams": config["hyperparams"], "n_envs": config["n_envs"],
            "seed": config["seed"]}


def with_paper_category(result: MethodResult) -> MethodResult:
    for row in result.rows:
        row["paper_category"] = paper_category(row["category"]) or row["category"]
    return result


def mean_of(result: MethodResult, metric: str, category: str) -> float:
    values = [row.get(metric, math.nan) for row in result.rows if category in ("all", row["paper_category"])]
    return float(np.mean(values)) if values else math.nan


def interval(a: MethodResult, b: MethodResult, metric: str, category: str) -> tuple[float, float, float]:
    return paired_interval(*paired_columns(a, b, metric, category=category, category_key="paper_category"))


def fmt(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def fmt_interval(values: tuple[float, float, float], digits: int) -> str:
    mean, low, high = values
    return f"{fmt(mean, digits, True)} [{fmt(low, digits, True)}, {fmt(high, digits, True)}]"


def table(methods: list[MethodResult], categories: list[str]) -> list[str]:
    lines = ["| Category | Method | n | PSNR (dB) | SSIM | LPIPS | UNet calls / image | reward |",
             "|---|---|---|---|---|---|---|---|"]
    for category in [*categories, "all"]:
        for method in methods:
            n = sum(category in ("all", row["paper_category"]) for row in method.rows)
            lines.append(f"| {'**all**' if category == 'all' else category} | {method.name} | {n} | "
                         f"{fmt(mean_of(method, 'psnr', category), 2)} | {fmt(mean_of(method, 'ssim', category), 4)} | "
                         f"{fmt(mean_of(method, 'lpips', category), 4)} | "
                         f"{fmt(mean_of(method, 'unet_calls', category), 1)} | "
                         f"{fmt(mean_of(method, 'reward', category), 4, True)} |")
    return lines


def interval_table(rl: MethodResult, baselines: list[MethodResult], categories: list[str]) -> list[str]:
    lines = [f"| {rl.name} minus | Category | dPSNR (dB) | dSSIM | dLPIPS | dUNet calls | dreward |",
             "|---|---|---|---|---|---|---|"]
    for base in baselines:
        for category in [*categories, "all"]:
            cells = [fmt_interval(interval(rl, base, m, category), d)
                     for m, d in (("psnr", 2), ("ssim", 4), ("lpips", 4), ("unet_calls", 1), ("reward", 4))]
            lines.append(f"| {base.name} | {'**all**' if category == 'all' else category} | " + " | ".join(cells) + " |")
    return lines


def targets(rl: MethodResult, no_rl: MethodResult, best: MethodResult) -> list[str]:
    """The issue's acceptance targets, each checked on the numbers (the same as in the tables)."""
    d_psnr = interval(rl, no_rl, "psnr", "all")
    d_ssim = interval(rl, no_rl, "ssim", "all")
    d_lpips = interval(rl, no_rl, "lpips", "all")
    calls = (mean_of(rl, "unet_calls", "all"), mean_of(no_rl, "unet_calls", "all"))
    d_reward = interval(rl, best, "reward", "all")

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    return [
        "| Target (test split, mean over images) | Measured | |",
        "|---|---|---|",
        f"| {rl.name} - No RL PSNR >= +1.0 dB | {fmt_interval(d_psnr, 2)} dB | {verdict(d_psnr[0] >= 1.0)} |",
        f"| {rl.name} - No RL SSIM >= +0.03 | {fmt_interval(d_ssim, 4)} | {verdict(d_ssim[0] >= 0.03)} |",
        f"| {rl.name} LPIPS lower than No RL | {fmt_interval(d_lpips, 4)} | "
        f"{verdict(d_lpips[0] < 0) if math.isfinite(d_lpips[0]) else 'not measured (no LPIPS)'} |",
        f"| {rl.name} UNet calls <= No RL | {calls[0]:.1f} vs {calls[1]:.1f} | {verdict(calls[0] <= calls[1])} |",
        f"| {rl.name} reward >= best constant | {fmt_interval(d_reward, 4)} | {verdict(d_reward[0] >= 0)} |",
    ]


def base_model_targets(rl: MethodResult, no_rl: MethodResult, best: MethodResult) -> list[str]:
    """Issue 24's targets for the policy on a base model that beats bicubic: better than the best
    constant with the whole 95% interval above zero, and No RL's PSNR at half its UNet calls."""
    d_reward = interval(rl, best, "reward", "all")
    d_psnr = interval(rl, no_rl, "psnr", "all")
    calls = (mean_of(rl, "unet_calls", "all"), mean_of(no_rl, "unet_calls", "all"))

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    return [
        "| Target (issue 24; test split, mean over images) | Measured | |",
        "|---|---|---|",
        f"| {rl.name} reward - best constant: 95% interval above 0 | {fmt_interval(d_reward, 4)} | "
        f"{verdict(d_reward[1] > 0)} |",
        f"| {rl.name} PSNR >= No RL | {fmt_interval(d_psnr, 2)} dB | {verdict(d_psnr[0] >= 0)} |",
        f"| {rl.name} UNet calls <= half of No RL's | {calls[0]:.2f} vs {calls[1]:.2f} | "
        f"{verdict(calls[0] <= calls[1] / 2)} |",
    ]


def fix_section(no_rl: MethodResult, rl: MethodResult, fixed: list[MethodResult],
                categories: list[str]) -> list[str]:
    """No RL and the policy with and without the output fix: does RL beat a post-process?"""
    no_rl_fixed, rl_fixed = fixed
    return [
        "## Against an output fix without RL",
        "",
        f"`{no_rl_fixed.name}` and `{rl_fixed.name}`: the same trajectories as `{no_rl.name}` and "
        f"`{rl.name}`, each decoded image corrected from its own LR input (`orl_gym.postprocess`, "
        "env option `output_fix`) before it is scored; the reward includes the correction. The policy "
        "was trained without it.",
        "",
        *table([no_rl, no_rl_fixed, rl, rl_fixed], categories),
        "",
        "Paired per-image differences, mean [95% t interval]:",
        "",
        *interval_table(rl, [no_rl_fixed], []),
        "",
        *interval_table(rl_fixed, [no_rl_fixed], categories),
        "",
    ]


def trace_summary(trace: list[dict[str, float]]) -> list[str]:
    """A few numbers that say what the policy does, per third of the trajectory (by t)."""
    t = np.array([row["t"] for row in trace])
    lines = ["| t range | steps | stride (mean) | eta (mean) | noise scale (mean) | guidance on (share) | guidance (mean when on) |",
             "|---|---|---|---|---|---|---|"]
    for low, high in ((667, 1000), (334, 667), (0, 334)):
        pick = (t >= low) & ((t < high) | (high == 1000))  # the first third includes t = 1000
        if not pick.any():
            continue
        column = {name: np.array([row[name] for row in trace])[pick] for name in PARAMETERS}
        on = column["guidance"] > 0
        lines.append(f"| {low}-{high} | {int(pick.sum())} | {column['stride'].mean():.2f} | {column['eta'].mean():.2f} | "
                     f"{column['noise_scale'].mean():.2f} | {on.mean():.2f} | "
                     f"{fmt(column['guidance'][on].mean() if on.any() else math.nan, 3)} |")
    return lines


def describe_model(model: str) -> str:
    """The report's words for the env's model setting."""
    if model == "bundled":
        return "`bundled` (orl_gym/assets/ldm-sr-tiny-x4, our tiny aerial LDM-SR, x4)"
    return f"`{model}`"


def describe_data(data: str | None, categories_seen: list[str]) -> str:
    """Where the test images come from: the source, and for a data root the datasets the
    evaluated images belong to (``categories_seen``: their ``dataset/class`` names)."""
    source = resolve_source(data)
    if source.kind != "root":
        return f"`{source.describe()}`"
    datasets = sorted({name.split("/")[0] for name in categories_seen})
    where = "`$ORL_GYM_DATA`" if data is None else f"`{data}`"
    return f"{where} (datasets: {', '.join(datasets)})"


REWARD_WEIGHTS = (("PSNR", "psnr_weight"), ("SSIM", "ssim_weight"), ("LPIPS", "lpips_weight"),
                  ("efficiency", "efficiency_weight"), ("LR consistency", "lr_consistency_weight"),
                  ("shaping", "shaping_weight"))


def describe_reward(reward_kwargs: dict) -> str:
    """The reward's weights as the runs were trained with them (not the paper's defaults)."""
    config, paper = RewardConfig(**reward_kwargs), RewardConfig()
    text = ", ".join(f"{name} {getattr(config, key):g}" for name, key in REWARD_WEIGHTS if getattr(config, key))
    same = all(getattr(config, key) == getattr(paper, key) for _, key in REWARD_WEIGHTS)
    return text + (", the paper's weights" if same else ", not the paper's 0.4 / 0.3 / 0.2 / 0.1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("experiments/results/runs"))
    parser.add_argument("--main", default="ppo", help="the run (RUNS/<name>) the headline table is about")
    parser.add_argument("--others", nargs="*", default=["a2c", "sac"], help="more runs, same table")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--grid", default="full", choices=sorted(GRIDS))
    parser.add_argument("--grid-max-images", type=int, default=128, help="validation images per grid setting")
    parser.add_argument("--max-images", type=int, help="test images (spread over the categories; default all)")
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-realesrgan", action="store_true", help="skip the Real-ESRGAN peer row")
    parser.add_argument("--output-fix", default="back_projection", choices=OUTPUT_FIXES,
                        help="also evaluate No RL and the main policy with this output correction (none: skip)")
    parser.add_argument("--notes", type=Path, help="Markdown appended as the discussion section")
    parser.add_argument("--notes-only", action="store_true",
                        help="measure nothing: replace the discussion of an existing OUT/README.md with --notes")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.notes_only:
        return replace_notes(args.out / "README.md", args.notes)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    runs = {name: args.runs / name for name in [args.main, *args.others]}
    for name, run_dir in runs.items():
        if not (run_dir / "config.yaml").is_file():
            raise SystemExit(f"report_results: {run_dir} is not a run folder (no config.yaml); train it with "
                             f"`orl-gym train --algo {name} --run-dir {run_dir}` first")
    summaries = {name: run_summary(run_dir) for name, run_dir in runs.items()}
    main_config = yaml.safe_load((runs[args.main] / "config.yaml").read_text())
    env_kwargs, env_preset_name = main_config["env_kwargs"], main_config.get("env", "?")
    # The YAML entry training read (the preset's, or the env id's for an env file given by path);
    # looked up before minutes of evaluation, not after.
    entry = hyperparams_entry(summaries[args.main]["algo"], env_preset_name)
    for run_dir in runs.values():
        if yaml.safe_load((run_dir / "config.yaml").read_text())["env_kwargs"] != env_kwargs:
            raise SystemExit(f"report_results: {run_dir} was trained on other env settings than {runs[args.main]}")
    actions = ActionConfig(**env_kwargs.get("actions", {}))
    categories, missing = paper_categories_present(env_kwargs)  # a missing category is reported, not fatal
    common = dict(split="test", categories=categories, num_envs=args.n_envs, max_images=args.max_images,
                  seed=args.seed, progress=True)
    keep = 4

    print("report_results: grid search for the best constant action (validation split)", file=sys.stderr)
    best_action, best_setting, grid_table = grid_search_constant_action(
        env_kwargs, actions, grid=grid_for_actions(args.grid, actions)[0], split="validation", num_envs=args.n_envs,
        max_images=args.grid_max_images, seed=args.seed)

    default_sampler = constant_policy(encode_params(actions))  # stride 1, eta 0, noise 1, no guidance
    no_rl = evaluate_method(NO_RL, default_sampler, env_kwargs, keep_images=keep, **common)
    best = evaluate_method(BEST_CONSTANT, constant_policy(best_action), env_kwargs, keep_images=keep, **common)
    policies: dict[str, MethodResult] = {}
    trace, num_train, num_steps, main_agent = None, 1000, DEFAULT_NUM_INFERENCE_STEPS, None
    for name, run_dir in runs.items():
        model = algorithm_class(summaries[name]["algo"]).load(run_dir / "checkpoints" / "best_model.zip", device="cpu")
        policy = SB3Policy(model)
        main_agent = model if name == args.main else main_agent
        if name == args.main:
            from orl_gym.models import load_ldmsr

            loaded = load_ldmsr(env_kwargs.get("model", "bundled"))
            num_train = loaded.num_train_timesteps
            num_steps = resolve_num_inference_steps(env_kwargs.get("num_inference_steps"), loaded)
            policy = trace = PolicyTrace(policy, actions, num_train_timesteps=num_train)
        policies[name] = evaluate_method(NAMES.get(name, name), policy, env_kwargs, keep_images=keep, **common)
    fixed: list[MethodResult] = []
    if args.output_fix != "none":
        fixed_kwargs = {**env_kwargs, "output_fix": args.output_fix}
        suffix = f" + {OUTPUT_FIX_NAMES[args.output_fix]}"
        fixed = [evaluate_method(NO_RL + suffix, default_sampler, fixed_kwargs, **common),
                 evaluate_method(NAMES.get(args.main, args.main) + suffix, SB3Policy(main_agent), fixed_kwargs,
                                 **common)]
    peers = [bicubic_result(no_rl)]
    if not args.no_realesrgan:
        from orl_gym.realesrgan import load_realesrgan_x4plus

        upsampler = load_realesrgan_x4plus(env_kwargs.get("device", "cpu"))
        peers.append(evaluate_upsampler(REALESRGAN_METHOD, upsampler, env_kwargs, split="test",
                                        categories=categories, max_images=args.max_images, keep_images=keep))
    for method in [*peers, no_rl, best, *policies.values(), *fixed]:
        with_paper_category(method)
    main_rl = policies[args.main]
    others = [policies[name] for name in args.others]

    # Figures.
    args.out.mkdir(parents=True, exist_ok=True)
    comparison_grid([*peers[1:], no_rl, best, main_rl], args.out / "comparison.png", count=keep)
    # One bin per timestep of the default schedule: each point is what the policy chose there.
    plot_policy_trace(trace.rows, args.out / "policy.png", title=f"{main_rl.name}: sampler parameters chosen "
                      f"on the test images, against the timestep t they were applied at",
                      bins=num_steps, num_train_timesteps=num_train)
    plot_training_curves({NAMES.get(n, n): d for n, d in runs.items()}, args.out / "training_curves.png")

    # Files.
    methods = [*peers, no_rl, best, main_rl, *others, *fixed]
    with atomic_open(args.out / "per_image.csv", "w") as handle:
        keys = ["image_index", "name", "category", "paper_category", "psnr", "ssim", "lpips", "unet_calls",
                "guidance_evals", "reward", "seconds"]
        writer = csv.DictWriter(handle, fieldnames=["method", *keys], extrasaction="ignore")
        writer.writeheader()
        for method in methods:
            for row in method.rows:
                writer.writerow({"method": method.name, **{k: row.get(k, "") for k in keys}})
    with atomic_open(args.out / "grid_search.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(grid_table[0]))
        writer.writeheader()
        writer.writerows(grid_table)
    summary = {
        "methods": {m.name: {metric: {c: mean_of(m, metric, c) for c in [*categories, "all"]} for metric in METRICS}
                    for m in methods},
        "intervals": {f"{rl.name} - {base.name}": {metric: interval(rl, base, metric, "all") for metric in METRICS}
                      for rl in [main_rl, *others] for base in (no_rl, best)}
        | {f"{a.name} - {fixed[0].name}": {metric: interval(a, fixed[0], metric, "all") for metric in METRICS}
           for a in ([main_rl, fixed[1]] if fixed else [])},
        "best_constant": best_setting, "runs": summaries,
    }
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    # README.
    main_summary = summaries[args.main]
    trained_categories = env_kwargs.get("categories")
    grid_categories = (f"the runs' categories ({', '.join(trained_categories)})" if trained_categories
                       else "every category")
    lines = [
        "# Result: the learned sampling policy against the sampler without RL",
        "",
        f"Regenerate every number and figure below: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description()}; report wall time {(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "The runs it evaluates were trained with (each run folder's `command.txt`):",
        "",
        *[f"- {NAMES.get(n, n)}: " + " then ".join(f"`{c}`" for c in s["commands"]) + f" — {s['timesteps']:,} "
          f"timesteps, {fmt(s['minutes'], 1)} min wall (training and its validation passes; the run's "
          f"`training.json`), seed {s['seed']}, {s['n_envs']} envs in one batch"
          for n, s in summaries.items()],
        "",
        "## Setup",
        "",
        f"- Model: {describe_model(env_kwargs.get('model', 'bundled'))}, "
        f"default schedule DDIM {num_steps} steps"
        f"{'' if env_kwargs.get('num_inference_steps') is not None else ' (the model default)'}.",
        f"- Test images: the test split of {describe_data(env_kwargs.get('data'), [r['category'] for r in no_rl.rows])} "
        "in the paper's eight categories "
        f"(local stand-ins: `orl_gym.data.CATEGORY_ALIASES`), {len(no_rl.rows)} images, center "
        f"{env_kwargs.get('hr_size')}x{env_kwargs.get('hr_size')} HR crops, LR = antialiased bicubic /4. "
        "Every method sees the same images and, for the samplers, the same noise for each image (its z_T and its step noise)."
        + (f" Categories without test images here: {'; '.join(missing)}." if missing else ""),
        f"- Action space: {', '.join(actions.parameters)}; stride 1..{actions.max_stride}. "
        f"Reward: {describe_reward(env_kwargs.get('reward', {}))} (`orl_gym/rewards/reward.py`; 0 = bicubic quality at "
        "the default schedule's cost).",
        f"- Best constant: grid `{args.grid}` ({len(grid_table)} settings x {args.grid_max_images} validation "
        f"images of {grid_categories}, each image one episode, like the policies' training); "
        f"winner {best_setting}. The main policy trained for {main_summary['timesteps']:,} env steps.",
        f"- {main_rl.name} hyperparameters (agents/{main_summary['algo']}.yml, entry `{entry}`"
        + (": the paper's Table 1 sized to a 2-core CPU" if entry == "tiny-x4" else "")
        + f"): `{json.dumps({k: v for k, v in main_summary['hyperparams'].items() if k != 'policy_kwargs'})}`.",
        "",
        "## Targets",
        "",
        *targets(main_rl, no_rl, best),
        "",
        *base_model_targets(main_rl, no_rl, best),
        "",
        f"## Per category ({main_rl.name}; the paper's Table 2 layout)",
        "",
        *table([*peers, no_rl, best, main_rl], categories),
        "",
        "Paired per-image differences, mean [95% t interval]:",
        "",
        *interval_table(main_rl, [no_rl, best], categories),
        "",
        "## Other algorithms at the same budget",
        "",
        *table([no_rl, best, *others], categories),
        "",
        "Paired per-image differences over all categories, mean [95% t interval]:",
        "",
        *[line for rl in others for line in (*interval_table(rl, [no_rl, best], []), "")],
        *(fix_section(no_rl, main_rl, fixed, categories) if fixed else []),
        "## Figures",
        "",
        "Training reward (left: running mean of training episodes; right: deterministic validation reward, "
        "the checkpoint with the best one is evaluated here):",
        "",
        "![training curves](training_curves.png)",
        "",
        "Four test images (rows), LR | bicubic | each method | HR:",
        "",
        "![comparison](comparison.png)",
        "",
        f"## What {main_rl.name} learned",
        "",
        "![policy](policy.png)",
        "",
        *trace_summary(trace.rows),
        "",
    ]
    if args.notes:
        lines += [NOTES_MARKER, args.notes.read_text().rstrip(), ""]
    write_report(args.out / "README.md", lines)
    return 0


# Where the measured part of README.md ends and the hand-written discussion (--notes) begins.
NOTES_MARKER = "<!-- notes: the discussion below is hand-written (--notes); everything above is measured -->"


def replace_notes(readme: Path, notes: Path | None) -> int:
    """Swap the discussion after NOTES_MARKER for ``notes``; the measured part stays byte for byte."""
    if notes is None:
        raise SystemExit("report_results: --notes-only needs --notes FILE")
    if not readme.is_file() or NOTES_MARKER not in readme.read_text():
        raise SystemExit(f"report_results: {readme} has no discussion marker to replace after; "
                         "run the full command (without --notes-only) first")
    head = readme.read_text().split(NOTES_MARKER, 1)[0]
    atomic_write_text(readme, head + NOTES_MARKER + "\n" + notes.read_text().rstrip() + "\n")
    print(f"report_results: {readme}: discussion replaced from {notes}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
