"""Throughput of orl_gym.data: (HR, LR) pairs per second from the UC Merced folder.

For HR crops of 64x64 and 256x256 (x4, so LR 16x16 and 64x64) it times, in batches of 64:

- cold: the first epoch over the train split, every image decoded from its PNG file (the files
  are likely in the OS page cache, so this is decode cost, not disk cost);
- warm: later epochs (median of 3), every image already decoded and cached in memory;
- reset: ``sample(64)`` on the warm cache, what one reset of 64 environments costs;

and compares the reset with an env step: the reference ~100 ms for a batch of 64 with the tiny
UNet on 16x16 latents (../shared/MEASURED.md), and that UNet's forward pass timed in this run,
under the same machine load, on the latents of each HR size (HR / 4). Results go to
experiments/results/bench_data.md.

    python experiments/bench_data.py --data ../shared/data/ucmerced --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import PIL
import torch

from orl_gym.data import DATA_ENV_VAR, DataConfig, DataWarning, Degradation, PairDataset

REFERENCE_ENV_STEP_S = 0.100  # tiny UNet, batch of 64, 2-core CPU (../shared/MEASURED.md)
BATCH_SIZE = 64


def _default_data() -> str | None:
    root = os.environ.get(DATA_ENV_VAR)
    return os.path.join(root, "ucmerced") if root else None


def _epoch_seconds(dataset: PairDataset, generator: torch.Generator) -> tuple[float, int]:
    start = time.perf_counter()
    pairs = sum(len(batch) for batch in dataset.batches(BATCH_SIZE, generator=generator))
    return time.perf_counter() - start, pairs


def _median_reset_seconds(dataset: PairDataset, generator: torch.Generator, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dataset.sample(BATCH_SIZE, generator=generator)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(data: str, hr_size: int, degradation: Degradation, repeats: int) -> dict:
    """One row of the table: load, cold epoch, warm epoch and reset timings."""
    config = DataConfig(source=data, hr_size=hr_size, scale=4, degradation=degradation)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # 256 px crops skip the few smaller images
        dataset = PairDataset(config)
    load_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    cold_s, pairs = _epoch_seconds(dataset, generator)
    warm_s = statistics.median(_epoch_seconds(dataset, generator)[0] for _ in range(3))
    reset_s = _median_reset_seconds(dataset, generator, repeats)
    return {
        "hr": hr_size,
        "degradation": "none" if degradation.is_identity else _describe(degradation),
        "images": len(dataset),
        "load_s": load_s,
        "cold_pairs_per_s": pairs / cold_s,
        "warm_pairs_per_s": pairs / warm_s,
        "reset_ms": reset_s * 1e3,
        "ratio": REFERENCE_ENV_STEP_S / reset_s,
    }


def unet_forward_seconds(latent_side: int, repeats: int = 3) -> float:
    """Median time of one forward pass of MEASURED.md's reference UNet on a batch of 64.

    UNet2DModel, in 6 (latent 3 + LR 3) / out 3 channels, block_out_channels (32, 64, 64), one
    layer per block, attention in the middle level, 1.11 M parameters: the bulk of an env step.
    """
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        in_channels=6,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval()
    sample = torch.randn(BATCH_SIZE, 6, latent_side, latent_side)
    timesteps = torch.full((BATCH_SIZE,), 500)
    times = []
    with torch.inference_mode():
        unet(sample, timesteps)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            unet(sample, timesteps)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _describe(degradation: Degradation) -> str:
    return (
        f"blur {degradation.blur_sigma}, noise {degradation.noise_std}, "
        f"JPEG {degradation.jpeg_quality}"
    )


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs "
        f"(load average {load} at the end), Python {platform.python_version()}, "
        f"torch {torch.__version__}, Pillow {PIL.__version__}, CUDA "
        f"{'available' if torch.cuda.is_available() else 'not used'}"
    ).replace("  ", " ")


def _markdown(rows: list[dict], data: str) -> str:
    lines = [
        "# Data throughput (experiments/bench_data.py)",
        "",
        f"UC Merced train split from `{data}`, batches of {BATCH_SIZE}, random crops, x4 "
        "(LR = HR / 4), on the CPU. Cold: first epoch, each PNG decoded; warm: median of 3 "
        f"later epochs, decoded images cached; reset: median `sample({BATCH_SIZE})` on the warm "
        f"cache. Ratio: a reference env step ({REFERENCE_ENV_STEP_S * 1e3:.0f} ms for a batch of "
        "64 with the tiny UNet on 16x16 latents, i.e. HR 64x64; ../shared/MEASURED.md) divided "
        "by the reset time. UNet now: that UNet's forward pass on a batch of 64 latents of "
        "HR / 4 (16x16 for HR 64, 64x64 for HR 256), timed in this run under the same load: "
        "the fair comparison on a shared machine.",
        "",
        "Reading it: a reset loads data once per episode, and an episode is many env steps, so "
        "the data cost per step is the reset time divided by the episode length. Cold decoding is paid once per image "
        "(`PairDataset.preload()` pays it up front). These machines are shared: compare rows "
        "of one run only, and see the load average below. With 2 torch threads on a loaded "
        "machine, every small op waits for a descheduled worker thread, hence the slower rows.",
        "",
        "| torch threads | HR | extra degradation | images | load (s) | cold pairs/s "
        "| warm pairs/s | reset of 64 (ms) | 100 ms step / reset | UNet now (ms) "
        "| UNet now / reset |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['threads']} | {row['hr']}x{row['hr']} | {row['degradation']} | "
            f"{row['images']} | {row['load_s']:.2f} | {row['cold_pairs_per_s']:.0f} | "
            f"{row['warm_pairs_per_s']:.0f} | {row['reset_ms']:.1f} | {row['ratio']:.1f}x | "
            f"{row['unet_ms']:.0f} | {row['unet_ms'] / row['reset_ms']:.1f}x |"
        )
    lines += ["", f"Machine: {_machine()}.", ""]
    return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same folder, then a rename: readers never see half a file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(text)
        temporary = handle.name
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=_default_data(),
        help=f"the UC Merced class folder (default: ${DATA_ENV_VAR}/ucmerced)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch intra-op thread counts to measure, each in turn (default: torch's own)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="sample() calls per reset timing")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "bench_data.md",
        help="Markdown report to write",
    )
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error(f"pass --data <UC Merced folder> or set {DATA_ENV_VAR}")

    cases = [
        (64, Degradation()),
        (256, Degradation()),
        (64, Degradation(blur_sigma=1.0, noise_std=0.01, jpeg_quality=75)),
    ]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)  # this benchmark process only
        unet_ms = {hr: unet_forward_seconds(hr // 4) * 1e3 for hr in {hr for hr, _ in cases}}
        for hr_size, degradation in cases:
            row = {"threads": threads, **bench(args.data, hr_size, degradation, args.repeats)}
            row["unet_ms"] = unet_ms[hr_size]
            rows.append(row)
            print(
                f"threads {threads} HR {hr_size} ({row['degradation']}): "
                f"cold {row['cold_pairs_per_s']:.0f} pairs/s, warm {row['warm_pairs_per_s']:.0f} "
                f"pairs/s, reset of {BATCH_SIZE} {row['reset_ms']:.1f} ms; UNet forward on "
                f"{hr_size // 4}x{hr_size // 4} latents now {row['unet_ms']:.0f} ms "
                f"({row['unet_ms'] / row['reset_ms']:.1f}x the reset; reference step "
                f"{REFERENCE_ENV_STEP_S * 1e3:.0f} ms = {row['ratio']:.1f}x)",
                flush=True,
            )
    _write_atomically(args.out, _markdown(rows, args.data))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
