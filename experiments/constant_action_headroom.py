"""How much an image-dependent sampler could gain over the best constant action.

    ORL_GYM_DATA=../shared/data python experiments/constant_action_headroom.py \
        --run experiments/results/residual/runs/ppo_stride10 --report experiments/results/residual_stride10 \
        --out experiments/results/residual_stride10/headroom --threads 1

A policy beats the best constant action only if different images want different actions. This
script measures that room on the run's env (its ``config.yaml``; the same center crops, noise and
reward as ``report_results.py``) with a grid of constant actions, each evaluated on every
validation and every test image of the paper's categories:

* **best constant**: the setting with the best mean validation reward, on the test images (what
  report_results.py compares the policy with, here on this script's grid);
* **best constant per category**: for each paper category, the setting with the best validation
  reward on that category, on its test images: what a policy that only recognises the scene
  category could reach, chosen on other images, so an honest estimate;
* **best setting per image**: each test image's best grid setting, picked on that image's own
  reward: an optimistic bound (the pick also fits the image's noise draw), not a reachable number.

With ``--report`` (a report_results.py folder on the same run), the policy's test rewards from its
``per_image.csv`` are set beside them (``--policy-method`` when it holds several policies).
Writes OUT.md and OUT.json (atomically) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from orl_gym.actions import ActionConfig
from orl_gym.configs import apply_env_overrides
from orl_gym.data import paper_category
from orl_gym.evaluation import (
    BASELINE_METHODS,
    BEST_CONSTANT,
    evaluate_grid,
    grid_for_actions,
    paired_interval,
    paper_categories_present,
)
from orl_gym.io import atomic_write_text, machine_description, rerun_command, write_report

GRID = "no_guidance"  # orl_gym.evaluation.GRIDS: the full grid without guidance (never best so far;
# its decoder passes dominate CPU time), strides extended to the actions' max_stride.


def rewards_by_setting(env_kwargs: dict, actions: ActionConfig, grid: dict, split: str, categories: list[str],
                       n_envs: int, seed: int, max_images: int | None) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """Every grid setting on every image of the split (orl_gym.evaluation.evaluate_grid): (settings,
    image indices (N,), paper categories (N,), rewards (N, settings))."""
    evaluated = evaluate_grid(env_kwargs, actions, grid=grid, split=split, categories=categories, num_envs=n_envs,
                              max_images=max_images, seed=seed)
    rows = evaluated[0][1].rows  # evaluate_grid checks that every setting has these images, in this order
    index = np.array([int(row["image_index"]) for row in rows])
    category = np.array([paper_category(row["category"]) or row["category"] for row in rows])
    rewards = np.stack([result.column("reward") for _, result in evaluated], axis=1)
    return [setting for setting, _ in evaluated], index, category, rewards


def report_policy_rewards(per_image: Path, method: str | None) -> tuple[str, dict[int, float]]:
    """(method name, test reward by image index) of a policy in report_results.py's per-image CSV:
    ``method``, or else the one method there that is neither a baseline nor an output-fixed copy."""
    if not per_image.is_file():
        raise SystemExit(f"constant_action_headroom: {per_image} does not exist; --report takes a folder written "
                         "by experiments/report_results.py")
    with open(per_image, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if method is None:
        policies = sorted({row["method"] for row in rows} - set(BASELINE_METHODS))
        policies = [name for name in policies if " + " not in name]
        if len(policies) != 1:
            raise SystemExit(f"constant_action_headroom: {per_image} holds the policies {policies}; name one with "
                             "--policy-method")
        method = policies[0]
    rewards = {int(float(row["image_index"])): float(row["reward"]) for row in rows if row["method"] == method}
    if not rewards:
        raise SystemExit(f"constant_action_headroom: no rows of method {method!r} in {per_image}")
    return method, rewards


def describe(setting: dict) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in setting.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder (its config.yaml gives the env)")
    parser.add_argument("--report", type=Path, help="a report_results.py folder on this run (its per_image.csv)")
    parser.add_argument("--policy-method", help="the policy's method name in the report (default: its only policy)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    parser.add_argument("--max-images", type=int, help="images per split (spread over the categories; default all)")
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the run's env, as orl-gym's (num_inference_steps=8 actions.max_stride=8 "
                             "reward.efficiency_weight=0): the headroom of another setting of the same env; the "
                             "report then holds no policy (--report is refused)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config_path = args.run / "config.yaml"
    if not config_path.is_file():
        raise SystemExit(f"constant_action_headroom: {args.run} is not a run folder (no config.yaml)")
    started = time.perf_counter()
    config = yaml.safe_load(config_path.read_text())
    if args.env_kwargs and args.report:
        raise SystemExit("constant_action_headroom: --report compares the run's policy on the run's own env; with "
                         "--env-kwargs the env differs, so leave one of them out")
    try:
        env_kwargs = apply_env_overrides(config["env_kwargs"], args.env_kwargs)
    except ValueError as error:
        raise SystemExit(f"constant_action_headroom: {error}") from None
    actions = ActionConfig(**env_kwargs.get("actions", {}))
    grid, _ = grid_for_actions(GRID, actions)
    categories, _ = paper_categories_present(env_kwargs)  # as report_results.py: one without images is left out

    settings, _, validation_category, validation = rewards_by_setting(
        env_kwargs, actions, grid, "validation", categories, args.n_envs, args.seed, args.max_images)
    _, test_index, test_category, test = rewards_by_setting(env_kwargs, actions, grid, "test", categories,
                                                            args.n_envs, args.seed, args.max_images)
    best = int(validation.mean(axis=0).argmax())
    constant = test[:, best]
    # A category without validation images (only with --max-images) keeps the overall pick.
    per_category_pick = {c: int(validation[validation_category == c].mean(axis=0).argmax())
                         if (validation_category == c).any() else best for c in categories}
    by_category = np.array([test[i, per_category_pick[c]] for i, c in enumerate(test_category)])
    per_image = test.max(axis=1)
    methods = {BEST_CONSTANT: constant, "best constant per category": by_category,
               "best setting per image (optimistic)": per_image}
    if args.report:
        name, policy = report_policy_rewards(args.report / "per_image.csv", args.policy_method)
        if set(policy) != set(test_index.tolist()):
            raise SystemExit(f"constant_action_headroom: {args.report}/per_image.csv's {name} rows are not this "
                             "run's test images; rerun report_results.py on the same run and data")
        methods[f"{name} (report_results.py)"] = np.array([policy[int(i)] for i in test_index])

    lines = [
        "# Headroom over the best constant action",
        "",
        f"Regenerate: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description()}; wall time {(time.perf_counter() - started) / 60:.1f} min.",
        "",
        f"Run `{args.run}` (its env: model `{env_kwargs.get('model')}`, max_stride {actions.max_stride}"
        + (f"; changed: {', '.join(f'`{item}`' for item in args.env_kwargs)}" if args.env_kwargs else "") + "); grid "
        f"{' x '.join(f'{k} {list(v)}' for k, v in grid.items())} = {len(settings)} settings, each on all "
        f"{len(validation)} validation and {len(test)} test images of the paper's categories (center crops, "
        "the same noise for every setting). Rewards as report_results.py's; paired 95% intervals against the "
        "best constant.",
        "",
        f"Best constant (validation): {describe(settings[best])}.",
        "",
        "| method | test reward | minus best constant [95% CI] |",
        "|---|---:|---|",
    ]
    summary = {"settings": settings, "best_constant": settings[best],
               "per_category_pick": {c: settings[n] for c, n in per_category_pick.items()},
               "validation_reward": validation.mean(axis=0).tolist(), "test_reward": test.mean(axis=0).tolist(),
               "test_images": len(test), "validation_images": len(validation), "methods": {}}
    for name, values in methods.items():
        mean, low, high = paired_interval(values, constant)
        lines.append(f"| {name} | {values.mean():+.4f} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] |")
        summary["methods"][name] = {"reward": float(values.mean()), "minus_best_constant": [mean, low, high]}
    lines += ["", "Per category (test images; the setting each category picks on validation):", "",
              "| category | n | best constant | category's pick | its reward | minus best constant [95% CI] | "
              "best per image (optimistic) |", "|---|---:|---:|---|---:|---|---:|"]
    for c in categories:
        mask = test_category == c
        mean, low, high = paired_interval(by_category[mask], constant[mask])
        lines.append(f"| {c} | {int(mask.sum())} | {constant[mask].mean():+.4f} | {describe(settings[per_category_pick[c]])} "
                     f"| {by_category[mask].mean():+.4f} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | "
                     f"{per_image[mask].mean():+.4f} |")
    wins = np.bincount(test.argmax(axis=1), minlength=len(settings))
    lines += ["", "Which setting is best for how many test images:", "", "| setting | validation reward | "
              "test reward | best for images |", "|---|---:|---:|---:|"]
    for n in np.argsort(-validation.mean(axis=0)):
        lines.append(f"| {describe(settings[n])} | {validation[:, n].mean():+.4f} | {test[:, n].mean():+.4f} | "
                     f"{wins[n]} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args.out.with_suffix(".md"), lines)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
