"""Benchmark: per-image loop vs batched reward metrics, and the full reward vs one UNet call.

For each batch size B (default 1, 16, 64, 256) of 64x64 images, times every metric of
orl_gym.rewards (PSNR, SSIM, LPIPS-alex, LR-consistency) and the full reward
(``RewardModel.final`` with the baseline the env caches at reset; and with the baseline computed
inside) two ways: one batched call, and a Python loop of B single-image calls. Also times one
forward pass of the bundled model's UNet on the latents of the same batch: the target is a full
reward cheaper than one UNet call at B = 64. For the other target (batched >= 8x the loop at
B = 64) it states the arithmetic bound (orl_gym.profiling): the FLOPs of the batched reward per
image against the device's float32 matrix-product rate, i.e. whether batching could reach 8x on
this hardware at all.

Writes a Markdown table with the machine's description to experiments/results/bench_rewards.md
(atomically). Run: ``python experiments/bench_rewards.py [--device cpu cuda] [--repeats 7]``.
Needs the LPIPS backbone weights (fetched into the user cache on first use).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from orl_gym.io import rerun_command
from orl_gym.lpips_weights import LPIPSWeightsNotFoundError, fetch_lpips_weights
from orl_gym.models import load_ldmsr
from orl_gym.profiling import ComputeBound, count_flops, matmul_gflops
from orl_gym.rewards import (
    LPIPS,
    RewardConfig,
    RewardModel,
    bicubic_downsample,
    lr_consistency,
    psnr,
    ssim,
)

UNET_ROW = "UNet call (bundled model)"
FINAL_ROW = "reward: final (baseline from reset)"
# Rows that are not timings: the bound's inputs, measured in the same process as the timings.
FLOPS_ROW = "FLOPs per image of the batched final reward"
LPIPS_FLOPS_ROW = "FLOPs per image of its LPIPS features"
MATMUL_ROW = "float32 matmul rate (GFLOP/s)"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_rewards.md"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, *, repeats: int, budget_s: float
) -> dict[str, tuple[float, float]]:
    """(minimum, median) wall seconds of each function, timed round-robin after a warm-up.

    Round-robin spreads the load of other processes on a shared machine evenly over the
    candidates; the minimum is the least disturbed run. Stops after ``repeats`` rounds, or after
    3 rounds once ``budget_s`` is spent.
    """
    for fn in fns.values():
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    for round_index in range(repeats):
        if round_index >= 3 and spent > budget_s:
            break
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def bundled_unet(device: torch.device) -> torch.nn.Module:
    """The UNet of the bundled model (float32), the one the env calls every step."""
    return load_ldmsr("bundled", device=device).unet.eval().requires_grad_(False)


def machine_description(devices: list[torch.device]) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        if names:
            cpu = names[0]
    except OSError:
        pass
    malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- MALLOC_* environment of this process: {malloc or 'none (glibc defaults)'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
    ]
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
        lines.append(f"- load average at start (1/5/15 min): {load}")
    for device in devices:
        if device.type == "cuda":
            lines.append(f"- CUDA: {torch.cuda.get_device_name(device)}")
    return lines


def bench_device(device: torch.device, args: argparse.Namespace) -> list[tuple]:
    config = RewardConfig(lpips_weights_path=args.lpips_weights)
    try:
        model = RewardModel(config, device=device)
    except LPIPSWeightsNotFoundError:
        fetch_lpips_weights("alex")
        model = RewardModel(config, device=device)
    unet = bundled_unet(device)
    rows: list[tuple] = []
    for batch in args.batches:
        rows += bench_batch(model, unet, device, batch, args)
    rows.append((device.type, 0, MATMUL_ROW, None, (matmul_gflops(device),) * 2))
    return rows


def bench_batch(
    model: RewardModel,
    unet: torch.nn.Module,
    device: torch.device,
    batch: int,
    args: argparse.Namespace,
) -> list[tuple]:
    size, scale = args.size, 4
    lpips_metric: LPIPS = model.lpips  # type: ignore[assignment]
    generator = torch.Generator().manual_seed(batch)
    hr = torch.rand(batch, 3, size, size, generator=generator).to(device)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=generator).to(device)).clamp(0, 1)
    lr = bicubic_downsample(hr, scale)
    nfe = torch.full((batch,), 25, device=device)
    baseline = model.baseline(hr, lr)
    per_image = [slice(i, i + 1) for i in range(batch)]
    baselines = [{key: value[i] for key, value in baseline.items()} for i in per_image]

    def final(i=slice(None), cached=True):
        kept = (baseline if i == slice(None) else baselines[i.start]) if cached else None
        return model.final(sr[i], hr[i], lr[i], nfe=nfe[i], reference_nfe=50, baseline=kept)

    metrics: dict[str, Callable[[slice], object]] = {
        "psnr": lambda i: psnr(sr[i], hr[i]),
        "ssim": lambda i: ssim(sr[i], hr[i]),
        "lpips (pair)": lambda i: lpips_metric(sr[i], hr[i]),
        "lr_consistency": lambda i: lr_consistency(sr[i], lr[i], scale=scale),
        FINAL_ROW: lambda i: final(i, cached=True),
        "reward: baseline + final": lambda i: final(i, cached=False),
    }
    latents = torch.randn(batch, unet.config.in_channels, size // scale, size // scale, generator=generator)
    latents = latents.to(device)
    timestep = torch.full((batch,), 500, device=device)
    fns: dict[str, Callable[[], object]] = {UNET_ROW: lambda: unet(latents, timestep)}
    for name, metric in metrics.items():
        fns[f"{name}/batched"] = lambda metric=metric: metric(slice(None))
        fns[f"{name}/loop"] = lambda metric=metric: [metric(i) for i in per_image]
    with torch.no_grad():
        timings = time_interleaved(fns, device, repeats=args.repeats, budget_s=args.budget_s)
    rows = []
    for name in metrics:
        loop, batched = timings[f"{name}/loop"], timings[f"{name}/batched"]
        rows.append((device.type, batch, name, loop, batched))
        print(
            f"{device.type} B={batch:4d} {name:38s} loop {loop[0] * 1e3:9.2f} ms  "
            f"batched {batched[0] * 1e3:8.2f} ms  x{loop[0] / batched[0]:6.1f}",
            flush=True,
        )
    rows.append((device.type, batch, UNET_ROW, None, timings[UNET_ROW]))
    with torch.no_grad():
        flops = count_flops(final) / batch
        lpips_flops = count_flops(lpips_metric.features, sr) / batch
    rows.append((device.type, batch, FLOPS_ROW, None, (flops, flops)))
    rows.append((device.type, batch, LPIPS_FLOPS_ROW, None, (lpips_flops, lpips_flops)))
    print(f"{device.type} B={batch:4d} {UNET_ROW} {timings[UNET_ROW][0] * 1e3:8.2f} ms", flush=True)
    return rows


def render(rows, machine: list[str], args: argparse.Namespace, unet_params: int) -> str:
    fact_rows = (FLOPS_ROW, LPIPS_FLOPS_ROW, MATMUL_ROW)
    facts = {(row[0], row[1], row[2]): row[4][0] for row in rows if row[2] in fact_rows}
    rows = [row for row in rows if row[2] not in fact_rows]
    lines = [
        "# Reward metrics: per-image loop vs batched",
        "",
        f"Command: `{rerun_command(__file__)}`",
        "",
        f"{args.size}x{args.size} images (x4 SR: LR {args.size // 4}x{args.size // 4}), float32, "
        'no autograd. LPIPS is alex. "loop" calls the same function once per image. '
        '"reward: final (baseline from reset)" is the env\'s hot path: the bicubic baseline and the '
        'HR image\'s LPIPS features were computed at reset; "reward: baseline + final" computes '
        "them too. The UNet row is one forward pass of the bundled model's UNet "
        f"({unet_params / 1e6:.2f} M params; the one the env calls every step) on the same batch "
        f"of {args.size // 4}x{args.size // 4} latents.",
        "",
        f"Times are the minimum over up to {args.repeats} runs, all candidates of one batch size "
        "timed round-robin after a warm-up (median in parentheses): the machine is shared, and "
        "the minimum is the least disturbed run.",
        "",
        "Machine:",
        "",
        *machine,
        "",
        "| device | B | what | loop (ms) | batched (ms) | speed-up | batched ms / image |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for device, batch, name, loop, batched in rows:
        loop_text = f"{loop[0] * 1e3:.2f} ({loop[1] * 1e3:.2f})" if loop else "-"
        speedup = f"{loop[0] / batched[0]:.1f}x" if loop else "-"
        lines.append(
            f"| {device} | {batch} | {name} | {loop_text} | {batched[0] * 1e3:.2f} "
            f"({batched[1] * 1e3:.2f}) | {speedup} | {batched[0] * 1e3 / batch:.3f} |"
        )
    lines.append("")
    lines += ["Targets at B = 64 (64x64 images):", ""]
    for device in sorted({row[0] for row in rows}):
        best = {(row[1], row[2]): (row[3], row[4]) for row in rows if row[0] == device}
        unet = best.get((64, UNET_ROW))
        final = best.get((64, FINAL_ROW))
        full = best.get((64, "reward: baseline + final"))
        if not (unet and final and full):
            continue
        unet_s, (final_loop, final_s), full_s = unet[1][0], final, full[1][0]
        speedup = final_loop[0] / final_s[0]
        lines.append(
            f"- {device}: full reward batched {speedup:.1f}x faster than the loop (target >= 8x: "
            f"{'met' if speedup >= 8 else 'not met'}); it costs {final_s[0] * 1e3:.1f} ms = "
            f"{final_s[0] / unet_s:.2f} UNet calls (target < 1: "
            f"{'met' if final_s[0] < unet_s else 'not met'}); with the baseline computed too "
            f"{full_s * 1e3:.1f} ms = {full_s / unet_s:.2f} UNet calls."
        )
        flops, ceiling = facts.get((device, 64, FLOPS_ROW)), facts.get((device, 0, MATMUL_ROW))
        if flops and ceiling:
            # 8x the loop means at most (loop time per image) / 8 per image, batched.
            bound = ComputeBound(flops, final_loop[0] / 64 / 8, ceiling)
            lines.append(f"  Arithmetic bound for 8x: {bound.describe('the batched final reward', unit='image')} "
                         f"LPIPS's AlexNet features are {facts[(device, 64, LPIPS_FLOPS_ROW)] / 1e6:.1f} "
                         "MFLOP of it.")
    lines += [
        "",
        "LPIPS dominates the reward's arithmetic (its share is in the bound lines) and is "
        "compute-bound: AlexNet costs about the same per image at any batch size, so batching "
        "removes only the per-call overhead (the lpips rows). PSNR and LR-consistency are "
        "memory-bound. SSIM is memory-bound too; on CPU it runs in cache-sized chunks of the batch "
        "(orl_gym.rewards), and its rows with and without the tuned allocator settings show "
        "what allocation still costs.",
    ]
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
        lines += ["", f"Load average at the end (1/5/15 min): {load}"]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# glibc returns large freed blocks to the OS, so every big tensor of a CPU forward pass is
# page-faulted in again on the next call; these settings keep freed memory in the process.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "40000000000"}


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its values (``--opt a b`` or ``--opt=a``)."""
    kept, skipping = [], False
    for arg in argv:
        if arg == option or arg.startswith(option + "="):
            skipping = arg == option
            continue
        if skipping and not arg.startswith("-"):
            continue
        skipping = False
        kept.append(arg)
    return kept


def run_variants(args: argparse.Namespace, argv: list[str]) -> list[tuple]:
    """Re-run this script once per allocator variant in a child process; collect its rows."""
    rows = []
    for variant in args.malloc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if variant == "tuned":
            env.update(TUNED_MALLOC)
        with tempfile.TemporaryDirectory() as scratch:
            rows_file = Path(scratch) / "rows.json"
            command = [sys.executable, __file__, *argv, "--malloc", "inherit"]
            subprocess.run([*command, "--rows-out", str(rows_file)], env=env, check=True)
            for row in json.loads(rows_file.read_text()):
                allocator = "glibc default malloc" if variant == "default" else "tuned malloc"
                label = f"{row[0]}, {allocator}"
                rows.append((label, row[1], row[2], *(tuple(x) if x else None for x in row[3:])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--device", nargs="+", default=None, help="default: cpu, and cuda if present"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="CPU thread counts (default: torch's)"
    )
    parser.add_argument("--budget-s", type=float, default=10.0, help="stop repeating after this")
    parser.add_argument("--lpips-weights", default=None, help="an LPIPS backbone state dict")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--malloc",
        nargs="+",
        default=["default", "tuned"],
        choices=["default", "tuned", "inherit"],
        help="allocator variants, each in a child process (tuned: "
        + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
        + "); inherit: this process as it is",
    )
    parser.add_argument("--rows-out", type=Path, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    names = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    devices = [torch.device(name) for name in names]
    machine = machine_description(devices)
    if args.malloc != ["inherit"]:
        rows = run_variants(args, without_option(argv, "--malloc"))
    else:
        rows = []
        for device in devices:
            for threads in args.threads or [torch.get_num_threads()]:
                if device.type == "cpu":
                    torch.set_num_threads(threads)
                label = f"cpu, {threads} thread{'s' if threads > 1 else ''}"
                label = label if device.type == "cpu" else device.type
                rows += [(label, *row[1:]) for row in bench_device(device, args)]
                if device.type != "cpu":
                    break
        if args.rows_out is not None:
            args.rows_out.write_text(json.dumps(rows))
            return
    unet_params = sum(p.numel() for p in bundled_unet(torch.device("cpu")).parameters())
    write_atomically(args.output, render(rows, machine, args, unet_params))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
