"""Env speed under each memory-allocator setting, next to the soak's resident-memory growth.

    python experiments/bench_allocators.py [--num-envs 64] [--steps 30] [--out experiments/results/bench_allocators.md]

glibc's default malloc keeps freed tensor memory in its heap. While the env's decode went through
diffusers' quantizer (one 0.5 GB distance matrix per decode of 64 images, before
``orl_gym.sampler.vq_decode``), the batched env's resident memory ratcheted up on a long run
(experiments/soak_env.py: about +20% after warm-up, while the bytes in use stayed flat); with the
current code it stays flat under the default. Two remedies keep retention in check if it returns: a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_``: big
blocks go back to the OS on free) and jemalloc put in front of glibc (``LD_PRELOAD``). Both cost
speed, because freed memory has to be faulted in again. This script measures that cost: each
setting runs in a fresh child process (the allocator is chosen at process start) that times
``--steps`` batched steps with random actions and with the plain DDIM action, twice, and keeps
the faster run. jemalloc is used when ``libjemalloc.so.2`` is installed (Debian:
``apt install libjemalloc2``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "glibc default": {},
    "glibc, MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "glibc, MALLOC_MMAP_THRESHOLD_=1048576": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
    "jemalloc (LD_PRELOAD)": {"LD_PRELOAD": "libjemalloc.so.2"},
}
JEMALLOC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_jemalloc() -> str | None:
    for directory in JEMALLOC_DIRS:
        path = Path(directory) / "libjemalloc.so.2"
        if path.is_file():
            return str(path)
    return None


def measure(num_envs: int, steps: int, preset: str) -> dict[str, float]:
    """In this process: best-of-two env-steps/s with random and with plain actions."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_env import steps_per_second

    from orl_gym.configs import env_preset
    from orl_gym.vector import LDMSuperResolutionVectorEnv

    torch.set_num_threads(1)
    kwargs = env_preset(preset)
    kwargs.update(device="cpu", dtype="float32")
    env = LDMSuperResolutionVectorEnv(num_envs=num_envs, **kwargs)
    env.params.dataset.preload()
    return {mode: max(steps_per_second(env, steps=steps, seed=seed, plain=mode == "plain") for seed in (0, 1))
            for mode in ("random", "plain")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-x4")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed batched steps per run")
    parser.add_argument("--out", default="experiments/results/bench_allocators.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.num_envs, args.steps, args.preset)))
        return 0

    from orl_gym.io import machine_description, rerun_command, write_report

    jemalloc = find_jemalloc()
    rows = []
    for name, extra in SETTINGS.items():
        if "LD_PRELOAD" in extra:
            if jemalloc is None:
                rows.append(f"| {name} | - | - | libjemalloc.so.2 not installed |")
                continue
            extra = {"LD_PRELOAD": jemalloc}
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
        env.update(extra)
        command = [sys.executable, __file__, "--child", "--preset", args.preset,
                   "--num-envs", str(args.num_envs), "--steps", str(args.steps)]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        rates = json.loads(output.strip().splitlines()[-1])
        rows.append(f"| {name} | {rates['random']:.1f} | {rates['plain']:.1f} | |")
        print(f"{name}: {rates}", file=sys.stderr)
    write_report(args.out, [
        "# Env speed by memory allocator",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description('cpu')} (each setting in its own process, torch threads 1)",
        "",
        f"Env-steps/s of the batched env at N = {args.num_envs} ({args.preset}), best of two runs of "
        f"{args.steps} batched steps after 3 warm-up steps. Resident-memory growth of each setting over "
        "20,000 env steps: experiments/results/soak_env*.md.",
        "",
        "| allocator | env-steps/s, random actions | env-steps/s, plain DDIM | note |",
        "|---|---|---|---|",
        *rows,
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
