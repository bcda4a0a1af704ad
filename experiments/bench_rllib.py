"""RLlib throughput: env-steps/s of PPO on Ray RLlib with 1 and 2 env runners (orl_gym.rllib).

    ORL_GYM_DATA=../shared/data python experiments/bench_rllib.py [--runners 1 2] [--n-envs 32]

Each env runner is a Ray actor with one CPU, one torch thread and ONE batched env of ``--n-envs``
images (orl_gym.rllib_env). For each runner count, on a local Ray cluster of as many CPUs as the
largest count, three rates of env steps (one transition of one image, as RLlib counts them):

- **sampling**: all runners sample ``--sample-steps`` env steps each, in parallel, with the PPO
  policy exploring (RLlib's ``EnvRunner.sample``): what the runners deliver;
- **training**: whole PPO iterations (``Algorithm.train``: sampling, then the learner's update on
  the driver, then the weight sync), env steps sampled per second of iteration;
- for reference, the same adapted batched env stepped in this process with random actions and no
  Ray (the ceiling of one runner).

Every rate is the median of ``--repeats`` timings after one warm-up iteration. A finished image
costs one more row-step that RLlib does not count (the next-step autoreset, orl_gym.rllib_env):
the table gives the episodes' mean length, so that share is 1 / (length + 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from orl_gym.configs import env_preset
from orl_gym.io import atomic_write_text, machine_description, rerun_command, write_report
from orl_gym.rllib import RLLIB_ENV, build_ppo_config
from orl_gym.rllib_env import make_rllib_env


def in_process_rate(kwargs: dict, *, n_envs: int, steps: int, repeats: int) -> float:
    """Env-steps/s of the adapted batched env in this process (random actions, no Ray)."""
    env = make_rllib_env({**kwargs, "num_envs": n_envs})
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    rates = []
    for _ in range(repeats + 1):  # the first is the warm-up
        start = time.perf_counter()
        for _ in range(steps):
            env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        rates.append(n_envs * steps / (time.perf_counter() - start))
    env.close()
    return statistics.median(rates[1:])


def bench_runners(runners: int, kwargs: dict, args: argparse.Namespace) -> dict:
    """Sampling and training rates of ``runners`` env runners (medians of ``args.repeats``)."""
    run = {"env_kwargs": kwargs, "seed": 0, "n_envs": args.n_envs, "agent_device": "cpu",
           "hyperparams": {"num_env_runners": runners, "rollout_fragment_length": args.fragment,
                           "minibatch_size": 64, "num_epochs": 4, "use_kl_loss": False, "fcnet_hiddens": [64, 64]}}
    algo = build_ppo_config(run).build_algo()
    try:
        group = algo.env_runner_group
        threads = group.foreach_env_runner(lambda r: torch.get_num_threads(), local_env_runner=False)
        algo.train()  # warm-up: actors, connectors, first episodes
        sampling, lengths = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            batches = group.foreach_env_runner(lambda r: r.sample(num_timesteps=args.sample_steps, explore=True),
                                               local_env_runner=False)
            seconds = time.perf_counter() - start
            sampling.append(sum(len(e) for episodes in batches for e in episodes) / seconds)
            lengths += [e.t for episodes in batches for e in episodes if e.is_done]  # whole episodes
        training = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = algo.train()
            training.append(result["env_runners"]["num_env_steps_sampled"] / (time.perf_counter() - start))
    finally:
        algo.stop()
    return {"runners": runners, "torch_threads_per_runner": sorted(set(threads)),
            "sampling_env_steps_per_s": statistics.median(sampling), "sampling_all": sampling,
            "training_env_steps_per_s": statistics.median(training), "training_all": training,
            "train_batch_env_steps": runners * args.n_envs * args.fragment,
            "mean_episode_length": float(np.mean(lengths)) if lengths else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-x4", help="env preset (default: tiny-x4, the bundled model)")
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2], help="env runner counts (default 1 2)")
    parser.add_argument("--n-envs", type=int, default=32, help="images in each runner's batched env (default 32)")
    parser.add_argument("--fragment", type=int, default=16, help="rollout_fragment_length (default 16)")
    parser.add_argument("--sample-steps", type=int, default=1024, help="env steps each runner samples per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each rate (default 3)")
    parser.add_argument("--out", default="experiments/results/bench_rllib.md", help="report (.md; .json beside it)")
    parser.add_argument("--note", default="", help="a line about the machine's state, written under it")
    args = parser.parse_args(argv)
    try:
        import ray
        from ray import tune
    except ImportError:
        parser.error("needs Ray RLlib: pip install 'orl_gym[rllib]'")

    torch.set_num_threads(1)  # the driver (learner) like each runner: one thread
    kwargs = {**env_preset(args.preset), "dtype": "float32", "device": "cpu"}
    machine = machine_description("cpu")
    reference = in_process_rate(kwargs, n_envs=args.n_envs, steps=args.sample_steps // args.n_envs * 2,
                                repeats=args.repeats)
    ray.init(num_cpus=max(args.runners), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tune.register_env(RLLIB_ENV, make_rllib_env)
        rows = [bench_runners(r, kwargs, args) for r in args.runners]
    finally:
        ray.shutdown()

    base = rows[0]
    table = ["| env runners | sampling env-steps/s | vs first | PPO training env-steps/s | vs first | "
             "train batch (env steps) | mean episode length |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['runners']} | {row['sampling_env_steps_per_s']:.1f} | "
                     f"{row['sampling_env_steps_per_s'] / base['sampling_env_steps_per_s']:.2f}x | "
                     f"{row['training_env_steps_per_s']:.1f} | "
                     f"{row['training_env_steps_per_s'] / base['training_env_steps_per_s']:.2f}x | "
                     f"{row['train_batch_env_steps']} | {row['mean_episode_length']:.2f} |")
    command = rerun_command(__file__, argv)
    write_report(args.out, [
        f"# RLlib throughput ({args.preset}, {kwargs['model']}, cpu, {args.n_envs} images per runner)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}" + (f"  \n{args.note}" if args.note else ""),
        "",
        f"Ray {ray.__version__}, PPO (new API stack), one CPU and one batched env per env runner, the learner on "
        f"the driver; rollout_fragment_length {args.fragment}, random-init policy exploring. Sampling: "
        f"{args.sample_steps} env steps per runner, all runners at once; training: whole PPO iterations "
        f"(4 epochs of minibatch 64). Medians of {args.repeats} timings after a warm-up iteration.",
        "",
        *table,
        "",
        f"Reference: the same adapted batched env ({args.n_envs} images) stepped in one process with random "
        f"actions and no Ray: **{reference:.1f}** env-steps/s.",
    ])
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(
        {"command": command, "machine": machine, "note": args.note, "ray": ray.__version__, "preset": args.preset,
         "n_envs": args.n_envs, "fragment": args.fragment, "sample_steps": args.sample_steps,
         "repeats": args.repeats, "in_process_env_steps_per_s": reference, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
