"""Soak: run the batched env for many env steps and watch resident memory for growth.

    python experiments/soak_env.py [--num-envs 64] [--env-steps 20000] [--out experiments/results/soak_env.md]

An env step is one transition of one image, so 20,000 env steps at N = 64 are 313 batched steps
(about 60 episodes per env with random strides). Resident memory (VmRSS) is sampled after every
batched step; growth is measured from the end of the warm-up (the first 10% of steps, when
allocator pools fill) to the end. The decoded-image cache is filled before the run (preload): its
size is bounded by the split, so it is memory held by design, not growth. Target: under 5%.

Resident memory mixes what the program holds with what the allocator keeps after ``free``. On
glibc the script also samples ``mallinfo2()``: bytes in use by malloc (``uordblks + hblkhd``) and
bytes free but kept in the heap (``fordblks``). A leak grows the first; allocator retention grows
the second. Both series go to a PNG next to the Markdown file. Under another allocator put in front
of glibc's with ``LD_PRELOAD`` (jemalloc, tcmalloc) mallinfo2 would describe the unused glibc heap,
so only resident memory is reported.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from orl_gym.configs import env_preset
from orl_gym.io import machine_description, rerun_command, save_figure, write_report
from orl_gym.vector import LDMSuperResolutionVectorEnv


def resident_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_mib() -> tuple[float, float] | None:
    """(in use, free but retained) MiB from glibc's mallinfo2(); None where it does not exist."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


def plot_memory(rss: list[float], malloc: list[tuple[float, float]] | None, warmup: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps = np.arange(1, len(rss) + 1)
    ax.plot(steps, rss, label="resident (VmRSS)")
    if malloc:
        in_use, retained = (np.array(v) for v in zip(*malloc, strict=True))
        ax.plot(steps, in_use, label="malloc in use (mallinfo2)")
        ax.plot(steps, retained, label="freed, kept by glibc (mallinfo2)")
    ax.axvline(warmup, color="gray", linestyle="--", label="end of warm-up")
    ax.set_xlabel("batched step")
    ax.set_ylabel("MiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-x4")
    parser.add_argument("--model", default=None)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--env-steps", type=int, default=20_000)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="glibc M_MMAP_THRESHOLD in bytes (mallopt): blocks above it are mmap'd and "
                             "returned to the OS when freed; default: glibc's own (dynamic) threshold")
    parser.add_argument("--out", default="experiments/results/soak_env.md")
    args = parser.parse_args(argv)
    if args.num_envs < 1 or args.env_steps < args.num_envs:
        parser.error(f"--env-steps ({args.env_steps}) must be at least --num-envs ({args.num_envs}) >= 1: one batched step")
    if not 0.0 <= args.warmup_fraction < 1.0:
        parser.error(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if args.mmap_threshold is not None:
        # M_MMAP_THRESHOLD = -3 in glibc's malloc.h. Without it, glibc raises its threshold as large
        # tensors are freed and keeps them in the heap: resident memory ratchets up with each new
        # peak of fragmentation although nothing leaks.
        if ctypes.CDLL("libc.so.6").mallopt(-3, args.mmap_threshold) != 1:
            raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed (glibc only)")
    kwargs = env_preset(args.preset)
    kwargs.update(device="cpu", dtype="float32")
    if args.model:
        kwargs["model"] = args.model

    env = LDMSuperResolutionVectorEnv(num_envs=args.num_envs, **kwargs)
    # The decoded-image cache is bounded memory by design (3 * H * W bytes an image); fill it first
    # so that growth measured after warm-up is what would leak, not what the cache holds.
    env.params.dataset.preload()
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    batched_steps = -(-args.env_steps // args.num_envs)
    warmup = max(1, int(batched_steps * args.warmup_fraction))
    samples, allocator, episodes = [], [], 0
    start = time.perf_counter()
    for _ in tqdm(range(batched_steps), desc="soak", unit="step"):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        episodes += int((terminated | truncated).sum())
        samples.append(resident_mib())
        allocator.append(malloc_mib())
    seconds = time.perf_counter() - start
    base, end, peak = samples[warmup - 1], samples[-1], max(samples[warmup - 1:])
    growth = (end - base) / base * 100
    preloaded = os.environ.get("LD_PRELOAD", "").strip()
    malloc = None if None in allocator or preloaded else allocator
    figure = Path(args.out).with_suffix(".png")
    plot_memory(samples, malloc, warmup, figure)
    if malloc:
        (use_base, kept_base), (use_end, kept_end) = malloc[warmup - 1], malloc[-1]
        allocator_lines = [
            f"- malloc in use (mallinfo2 uordblks + hblkhd): {use_base:.1f} MiB after warm-up, {use_end:.1f} MiB "
            f"at the end: **{(use_end - use_base) / use_base * 100:+.2f}%** (a leak would grow this)",
            f"- freed but kept in glibc's heap (fordblks): {kept_base:.1f} MiB after warm-up, {kept_end:.1f} MiB "
            "at the end (allocator retention)",
        ]
    elif preloaded:
        allocator_lines = [f"- allocator: LD_PRELOAD={preloaded} (glibc's mallinfo2 does not see it): no breakdown"]
    else:
        allocator_lines = ["- mallinfo2() is not available here (not glibc >= 2.33): no allocator breakdown"]
    write_report(args.out, [
        "# Soak: resident memory of the batched env",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description('cpu')}; "
        + (f"allocator: LD_PRELOAD={preloaded}" if preloaded else "glibc mmap threshold: "
           f"{'default (dynamic)' if args.mmap_threshold is None else args.mmap_threshold}"),
        "",
        f"- {batched_steps * args.num_envs} env steps ({batched_steps} batched steps at N = {args.num_envs}), "
        f"{episodes} episodes finished, {seconds:.0f} s",
        f"- resident memory after warm-up ({warmup} batched steps): {base:.1f} MiB; at the end: {end:.1f} MiB; "
        f"peak after warm-up: {peak:.1f} MiB",
        f"- growth after warm-up: **{growth:+.2f}%** (target < 5%)",
        *allocator_lines,
        "",
        f"![memory]({figure.name})",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
