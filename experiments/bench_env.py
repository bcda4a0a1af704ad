"""Env throughput: env-steps/s of the batched env for N = 1, 8, 64, and its machinery overhead.

    python experiments/bench_env.py [--model bundled] [--device cpu] [--out experiments/results/bench_env.md]

An env step is one transition of one image (N per batched step). The machinery ratio is the wall
time of one whole batched episode (K plain DDIM steps, the final VQ decode and the reward, and
one reset) over the model's own work for that batch: K UNet calls plus one VQ decode, timed alone
on the same shapes. The one reset is the same-step autoreset of every row in the episode's last
step (the vector env's ``AutoresetMode.SAME_STEP``), which is how training pays one reset per
episode; the clock starts after the explicit ``reset()`` that begins the timing, so that reset is
not counted twice (until 2026-11-27 it was: the committed ratios before then are upper bounds).
Targets (CPU): N = 64 >= 10x the env-steps/s of N = 1; machinery ratio <= 1.3.

For the 10x target it also states the arithmetic bound (orl_gym.profiling): the FLOPs of one env
step per image at the largest N, over the same steps as the timing, against the device's float32
matrix-product rate: whether any batching could reach 10x on this hardware.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from orl_gym import sampler
from orl_gym.actions import encode_params
from orl_gym.configs import env_preset
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.precision import ieee_float32
from orl_gym.profiling import ComputeBound, count_flops, matmul_gflops
from orl_gym.vector import LDMSuperResolutionVectorEnv


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warmed_up_actions(env: LDMSuperResolutionVectorEnv, *, seed: int, plain: bool):
    """Reset ``env``, take 3 warm-up steps (allocator, kernels), return the action source."""
    rng = np.random.default_rng(seed)
    fixed = np.stack([encode_params(env.params.actions)] * env.num_envs)

    def action() -> np.ndarray:
        return fixed if plain else rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)

    env.reset(seed=seed)
    for _ in range(3):
        env.step(action())
    return action


def steps_per_second(env: LDMSuperResolutionVectorEnv, *, steps: int, seed: int, plain: bool) -> float:
    """Env steps per second with random actions, or with the plain DDIM action (``plain``)."""
    action = _warmed_up_actions(env, seed=seed, plain=plain)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action())
    _sync(env.params.device)
    return env.num_envs * steps / (time.perf_counter() - start)


def flops_per_env_step(env: LDMSuperResolutionVectorEnv, *, steps: int, seed: int, plain: bool) -> float:
    """FLOPs per env step (one image, one transition) over the steps :func:`steps_per_second` times."""
    action = _warmed_up_actions(env, seed=seed, plain=plain)
    total = count_flops(lambda: [env.step(action()) for _ in range(steps)])
    return total / (env.num_envs * steps)


@ieee_float32  # the precision the env computes in: with TF32 allowed, CUDA's model work would be cheaper
def _model_work_seconds(env: LDMSuperResolutionVectorEnv) -> float:
    """Seconds of one episode's model work for the env's batch: K UNet calls and one VQ decode (and,
    for a network-anchored residual model, the anchor network's forward that every decode needs)."""
    params, state = env.params, env.state.sampler
    latents = torch.randn_like(state.latents)
    unet_input = torch.cat([latents, state.lr * 2 - 1], dim=1)
    t = params.schedule.timesteps[0].expand(env.num_envs)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(len(params.schedule)):
            params.model.unet(unet_input, t)
        sampler.decode(params.model, latents, state.lr)  # the env's decode (a network anchor's forward included)
        _sync(params.device)
    return time.perf_counter() - start


def machinery_ratio(env: LDMSuperResolutionVectorEnv, *, repeats: int) -> tuple[float, float, float]:
    """(episode seconds, model-work seconds, ratio), medians over ``repeats``."""
    params = env.params
    plain = np.stack([encode_params(params.actions)] * env.num_envs)
    episode, work = [], []
    for r in range(repeats):
        env.reset(seed=r)
        _sync(params.device)
        # The episode's own reset is its last step's autoreset (timed below), not this one.
        start = time.perf_counter()
        while True:
            _, _, terminated, truncated, _ = env.step(plain)
            if (terminated | truncated).all():
                break
        _sync(params.device)
        episode.append(time.perf_counter() - start)

        work.append(_model_work_seconds(env))
    episode_s, work_s = statistics.median(episode), statistics.median(work)
    return episode_s, work_s, episode_s / work_s


def bench_threads(threads: int, kwargs: dict, args: argparse.Namespace) -> str:
    """The report section for one torch thread count: rates, machinery ratio, arithmetic bound."""
    torch.set_num_threads(threads)
    envs = {n: LDMSuperResolutionVectorEnv(num_envs=n, **kwargs) for n in args.num_envs}
    # Round-robin over N and action kind, --rate-repeats times: one short timing of a small batch
    # varies by +-20% from run to run here, and the median of interleaved runs cancels drifts.
    samples: dict[int, dict[str, list[float]]] = {n: {"random": [], "plain": []} for n in args.num_envs}
    for repeat in range(args.rate_repeats):
        for n, env in envs.items():
            for mode in ("random", "plain"):
                samples[n][mode].append(steps_per_second(env, steps=args.steps, seed=repeat, plain=mode == "plain"))
            print(f"threads {threads}, repeat {repeat}, N={n}: "
                  f"{ {m: round(v[-1], 1) for m, v in samples[n].items()} } env-steps/s", file=sys.stderr)
    rates = {n: {mode: float(np.median(v)) for mode, v in by_mode.items()} for n, by_mode in samples.items()}
    del envs
    first = rates[args.num_envs[0]]

    def cell(n: int, mode: str) -> str:
        values = samples[n][mode]
        return f"{rates[n][mode]:.1f} ({min(values):.1f}-{max(values):.1f}) | {rates[n][mode] / first[mode]:.1f}x"

    rows = [f"| {n} | {cell(n, 'random')} | {cell(n, 'plain')} |" for n in args.num_envs]
    n_one, n_max = args.num_envs[0], max(args.num_envs)
    env = LDMSuperResolutionVectorEnv(num_envs=n_max, **kwargs)
    episode_s, work_s, ratio = machinery_ratio(env, repeats=args.repeats)
    ceiling = matmul_gflops(args.device)
    bounds = []
    for mode in ("random", "plain"):
        flops = flops_per_env_step(env, steps=args.steps, seed=0, plain=mode == "plain")
        # 10x the one-env rate leaves 1 / (10 x rate at N = 1) seconds per env step.
        bound = ComputeBound(flops, 1.0 / (10 * rates[n_one][mode]), ceiling)
        label = "random actions" if mode == "random" else "the plain DDIM action"
        bounds.append(f"- {label}: {bound.describe(f'the work at N = {n_max}', unit='env step')}")
    K = len(env.params.schedule)
    anchor = " + the anchor network" if env.params.model.latent_target.anchor == "network" else ""
    return "\n".join([
        f"## torch threads: {threads}",
        "",
        f"| N | env-steps/s, random actions | vs N = {n_one} | env-steps/s, plain DDIM | vs N = {n_one} |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Machinery ratio at N = {n_max}: whole episode ({K} plain DDIM steps, decode, reward "
        f"incl. LPIPS, and one reset: the same-step autoreset of every row) {episode_s:.3f} s / model work ({K} UNet calls + 1 VQ decode{anchor}) {work_s:.3f} s "
        f"= **{ratio:.2f}** (target <= 1.3).",
        "",
        f"Speed-up N = {n_max} over N = {n_one}: **{rates[n_max]['random'] / rates[n_one]['random']:.1f}x** "
        f"with random actions, **{rates[n_max]['plain'] / rates[n_one]['plain']:.1f}x** with the plain "
        "DDIM action (target >= 10x).",
        "",
        f"Arithmetic bound for 10x (work per env step at N = {n_max} over the timed steps, "
        f"budget = 1 / (10 x the N = {n_one} rate)):",
        "",
        *bounds,
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-x4", help="env preset (default: tiny-x4)")
    parser.add_argument("--model", default=None, help="override the preset's model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="the model's precision (default: the preset's; float16 / bfloat16 need CUDA)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--steps", type=int, default=20, help="timed batched steps per N")
    parser.add_argument("--repeats", type=int, default=3, help="episodes for the machinery ratio")
    parser.add_argument("--rate-repeats", type=int, default=3,
                        help="timings of each N and action kind, interleaved; the table gives their median")
    parser.add_argument("--out", default="experiments/results/bench_env.md")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch CPU thread counts, each measured in turn (default: torch's)")
    args = parser.parse_args(argv)

    kwargs = env_preset(args.preset)
    kwargs["device"] = args.device
    if args.dtype not in (None, "float32") and not args.device.startswith("cuda"):
        parser.error(f"--dtype {args.dtype} needs --device cuda (CPU convolutions run in float32)")
    if args.dtype:
        kwargs["dtype"] = args.dtype
    elif args.device == "cpu":
        kwargs["dtype"] = "float32"
    if args.model:
        kwargs["model"] = args.model
    machine = machine_description(args.device)  # before any thread change: the default count
    sections = [bench_threads(threads, kwargs, args)
                for threads in (args.threads or [torch.get_num_threads()])]
    write_report(args.out, [
        f"# Env throughput ({args.preset}, {kwargs['model']}, {args.device}, {kwargs.get('dtype', 'float32')})",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine}",
        "",
        f"Env-steps/s: median (range) of {args.rate_repeats} interleaved timings of {args.steps} batched steps, "
        "each after 3 warm-up steps; the speed-ups are ratios of medians. Random actions use all four parameters "
        "(guidance, on half of the steps, adds a decoder forward and backward per guided image); the plain "
        "action is the default DDIM step (stride 1, eta 0, no guidance). Both N of a ratio ran with the "
        "same torch thread count.",
        "",
        *sections,
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
