"""Where a batched episode's time goes: the env's stages against the model's own work.

    python experiments/profile_env.py [--device cpu] [--num-envs 64] [--out experiments/results/profile_env.md]

bench_env.py gives one machinery ratio (a whole episode over its UNet calls and VQ decode); this
breaks the episode down. It runs a warm-up episode, then profiles whole episodes of the plain
DDIM action with torch.profiler (CPU and, on a GPU, CUDA activity), each env stage labelled
(``record_function``): the stages' CPU-side and device time per episode, and the operators that
take the most. An episode here is what bench_env.py times: reset, K steps, and the same-step
autoreset of every row at the last step (the vector env's contract), so reset appears twice.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

import orl_gym.env as env_module
import orl_gym.sampler as sampler_module
import orl_gym.vector as vector_module
from orl_gym.actions import encode_params
from orl_gym.configs import env_preset
from orl_gym.data import PairDataset
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.rewards import RewardModel
from orl_gym.vector import LDMSuperResolutionVectorEnv

# (owner, attribute, label): the env's stages, in the order an episode meets them. Module-level
# functions are patched where they are looked up at call time (vector.py imports some by name).
STAGES = [
    (vector_module, "reset_rows", "env: reset rows"),
    (PairDataset, "pairs", "data: crop + degrade pairs"),
    (sampler_module, "init_state", "sampler: init state (z_T)"),
    (RewardModel, "baseline", "reward: baseline at reset"),
    (vector_module, "step_batch", "env: step"),
    (env_module, "decode_action", "actions: decode"),
    (sampler_module, "step", "sampler: step (UNet + DDIM)"),
    (env_module, "output_images", "decode: VQ + output fix"),
    (RewardModel, "final", "reward: final"),
    (vector_module, "observe", "env: observe (host copy)"),
]


@contextmanager
def labelled_stages() -> Iterator[None]:
    """Wrap each stage of :data:`STAGES` in a profiler label for the duration."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]

    def labelled(function: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with record_function(label):
                return function(*args, **kwargs)

        return wrapper

    try:
        for (owner, name, _), (_, _, label) in zip(saved, STAGES, strict=True):
            setattr(owner, name, labelled(getattr(owner, name), label))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def run_episode(env: LDMSuperResolutionVectorEnv, action: np.ndarray, seed: int) -> None:
    env.reset(seed=seed)
    while True:
        _, _, terminated, truncated, _ = env.step(action)
        if (terminated | truncated).all():
            break
    if env.params.device.type == "cuda":
        torch.cuda.synchronize(env.params.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-x4", help="env preset (default: tiny-x4)")
    parser.add_argument("--model", default=None, help="override the preset's model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=3, help="profiled episodes (after one warm-up)")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--out", default="experiments/results/profile_env.md")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.num_envs < 1 or args.top < 1:
        parser.error("--episodes, --num-envs and --top must be >= 1")

    kwargs = env_preset(args.preset)
    kwargs["device"] = args.device
    if args.device == "cpu":
        kwargs["dtype"] = "float32"
    if args.model:
        kwargs["model"] = args.model
    env = LDMSuperResolutionVectorEnv(num_envs=args.num_envs, **kwargs)
    action = np.stack([encode_params(env.params.actions)] * env.num_envs)
    on_gpu = env.params.device.type == "cuda"
    run_episode(env, action, seed=0)  # warm-up: allocator, kernels, LPIPS weights

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with labelled_stages(), profile(activities=activities) as prof:
        for episode in range(args.episodes):
            run_episode(env, action, seed=1 + episode)
    events = prof.key_averages()
    per_episode = 1e-3 / args.episodes  # profiler times are microseconds; report ms per episode
    device_attr = "device_time_total" if on_gpu else None
    K = len(env.params.schedule)

    def stage_times(label: str) -> tuple[int, float, float]:
        """(calls, CPU us, device us) of a label: with CUDA activity the profiler keeps a host event
        and a device-side annotation under the same name, so take each figure where it is."""
        matching = [e for e in events if e.key == label]
        calls = max(e.count for e in matching)
        device = max(getattr(e, device_attr) for e in matching) if device_attr else 0.0
        return calls, max(e.cpu_time_total for e in matching), device

    rows = []
    labels = {e.key for e in events}
    for _, _, label in STAGES:
        if label not in labels:
            continue
        calls, cpu_us, device_us = stage_times(label)
        device_ms = f"{device_us * per_episode:.2f}" if device_attr else "-"
        rows.append(f"| {label} | {calls // args.episodes} | {cpu_us * per_episode:.2f} | {device_ms} |")

    def top_ops(sort_attr: str) -> list[str]:
        ops = [e for e in events if not e.key.startswith(("env:", "data:", "sampler:", "reward:", "actions:", "decode:"))]
        ops.sort(key=lambda e: getattr(e, sort_attr), reverse=True)
        lines = []
        for e in ops[:args.top]:
            device_ms = f"{e.self_device_time_total * per_episode:.2f}" if on_gpu else "-"
            lines.append(f"| `{e.key}` | {e.count // args.episodes} | {e.self_cpu_time_total * per_episode:.2f} | {device_ms} |")
        return lines

    episode_stage = (stage_times("env: step")[1] + stage_times("env: reset rows")[1]) * per_episode
    write_report(args.out, [
        f"# Where an episode's time goes ({args.preset}, {kwargs['model']}, {args.device}, N = {args.num_envs})",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description(args.device)}",
        "",
        f"torch.profiler over {args.episodes} whole episodes of the plain DDIM action (after one warm-up "
        f"episode): reset, {K} steps, and the same-step autoreset of every row at the last step. Times are "
        "per episode, in ms. \"CPU\" is the time the stage's Python and operator calls took on the host "
        "(on a GPU: launching and waiting, inclusive of nested stages); \"device\" is the GPU kernel time "
        "inside the stage. Stages nest: a step contains its sampler step, decode, final reward and "
        "observation; a reset contains its data, z_T and baseline.",
        "",
        "| stage | calls per episode | CPU ms | device ms |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"Steps and resets together: {episode_stage:.1f} ms per episode on the host.",
        "",
        f"## Operators by self {'device' if on_gpu else 'CPU'} time",
        "",
        "| operator | calls per episode | self CPU ms | self device ms |",
        "|---|---:|---:|---:|",
        *top_ops("self_device_time_total" if on_gpu else "self_cpu_time_total"),
        "",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
