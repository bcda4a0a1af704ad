"""How good can the VQ autoencoder's reconstruction be at its bit rate? Codes, rate, and codecs.

A VQModel with f = 4 and one code index per latent position (the format of
CompVis/ldm-super-resolution-4x-openimages) stores each 4x4 RGB patch as one index: at most
log2(num_codes) / 16 bits per pixel, 0.81 bpp for 8192 codes. This script measures, on whole test
images (the crops of ``eval_base_model.py``):

* the VQ: reconstruction PSNR through the quantizing ``vqvae.decode`` (what the pipeline does)
  and with the continuous pre-quantization latents (``force_not_quantize=True``): their gap is
  what the codebook costs; codes used and the entropy of the code histogram (the rate the codes
  really carry);
* JPEG (libjpeg, 4:2:0, optimized Huffman tables) and WebP (lossy, method 6) through Pillow at the
  highest quality whose file fits the VQ's fixed-length rate: what standard codecs reach at the
  same number of bits. Images of one shape are tiled into one mosaic per codec call so that
  headers do not count (their 16x16 blocks do not straddle two images: sides are multiples of 16).

Results go to a Markdown file: whether a reconstruction target is within reach of the format is
then a measured comparison, not a guess.

    ORL_GYM_DATA=../shared/data python experiments/vq_rate_distortion.py
"""

from __future__ import annotations

import argparse
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from orl_gym.data import DataConfig, PairDataset
from orl_gym.io import machine_description, rerun_command, write_report
from orl_gym.models import load_ldmsr
from orl_gym.rewards import psnr

REPO = Path(__file__).resolve().parents[1]
TILES_PER_SIDE = 4  # mosaics of up to 4 x 4 images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="bundled", help="'bundled', a checkpoint folder or a hub id")
    p.add_argument("--datasets", default="ucmerced,aid150", help="comma list of datasets under $ORL_GYM_DATA")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--max-images", type=int, default=64, help="images per dataset, evenly spread (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "vq_rate_distortion.md")
    return p.parse_args(argv)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mosaic(tiles: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) -> one image of ceil(n / 4) rows of 4 tiles (the last row padded with grey)."""
    n, height, width, _ = tiles.shape
    rows = math.ceil(n / TILES_PER_SIDE)
    canvas = np.full((rows * height, TILES_PER_SIDE * width, 3), 128, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, TILES_PER_SIDE)
        canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = tiles[k]
    return canvas


def untile(canvas: np.ndarray, n: int, height: int, width: int) -> np.ndarray:
    return np.stack([canvas[(k // TILES_PER_SIDE) * height:(k // TILES_PER_SIDE + 1) * height,
                            (k % TILES_PER_SIDE) * width:(k % TILES_PER_SIDE + 1) * width] for k in range(n)])


def encode(canvas: np.ndarray, codec: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if codec == "JPEG":
        Image.fromarray(canvas).save(buffer, format="JPEG", quality=quality, optimize=True, subsampling="4:2:0")
    else:
        Image.fromarray(canvas).save(buffer, format="WEBP", quality=quality, method=6)
    return buffer.getvalue()


def best_under_rate(tiles: np.ndarray, codec: str, bits_per_pixel: float) -> tuple[np.ndarray, float, int]:
    """The decoded tiles at the highest quality (1..100) whose mosaic fits ``bits_per_pixel``
    (counted over the real images, not the grey padding), that rate, and the quality."""
    n, height, width, _ = tiles.shape
    canvas = mosaic(tiles)
    budget = bits_per_pixel * n * height * width
    low, high, best = 1, 100, None
    while low <= high:  # file size grows with quality (monotone enough for a bisection)
        quality = (low + high) // 2
        data = encode(canvas, codec, quality)
        if 8 * len(data) <= budget:
            best, low = (data, quality), quality + 1
        else:
            high = quality - 1
    if best is None:
        raise RuntimeError(f"{codec}: even quality 1 exceeds {bits_per_pixel:.3f} bpp")
    data, quality = best
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return untile(decoded, n, height, width), 8 * len(data) / (n * height * width), quality


def measure(model, name: str, args: argparse.Namespace) -> dict:
    ds = PairDataset(DataConfig(source=name, split=args.split, hr_size=64, scale=4, crop="full",
                                full_multiple=model.hr_multiple))
    indices = ds.spread_indices(args.max_images)
    groups = ds.indices_by_shape(indices)
    codebook_size = model.vqvae.quantize.embedding.weight.shape[0]
    fixed_rate = math.log2(codebook_size) / model.scale_factor ** 2
    histogram = torch.zeros(codebook_size, dtype=torch.long)
    scores: dict[str, list[float]] = defaultdict(list)
    rates: dict[str, list[float]] = defaultdict(list)
    qualities: dict[str, list[int]] = defaultdict(list)
    shapes = set()
    with torch.no_grad():
        for shape, group in tqdm(groups.items(), desc=name, unit="shape"):
            for chunk in group.split(TILES_PER_SIDE ** 2):
                hr = ds.pairs(chunk).hr
                shapes.add(shape)
                latents = model.vqvae.encode(hr * 2 - 1).latents
                # vqvae.decode(latents) quantizes first; with the quantized latents at hand the
                # quantized reconstruction is decode(quantized, force_not_quantize=True).
                quantized, _, (_, _, codes) = model.vqvae.quantize(latents)
                histogram += torch.bincount(codes.flatten().cpu(), minlength=codebook_size)
                for key, inputs in (("vq", quantized), ("vq_continuous", latents)):
                    rec = model.vqvae.decode(inputs, force_not_quantize=True).sample
                    scores[key] += psnr((rec.clamp(-1, 1) + 1) / 2, hr, check_values=False).tolist()
                tiles = to_uint8(hr)
                for codec in ("JPEG", "WEBP"):
                    decoded, rate, quality = best_under_rate(tiles, codec, fixed_rate)
                    out = torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255
                    scores[codec] += psnr(out, hr, check_values=False).tolist()
                    rates[codec] += [rate] * len(chunk)
                    qualities[codec].append(quality)
    p = histogram.double() / histogram.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
    return {
        "n": len(indices), "shapes": sorted(shapes), "fixed_rate": fixed_rate,
        "entropy_rate": entropy / model.scale_factor ** 2, "entropy": entropy,
        "codes_used": int((histogram > 0).sum()), "codebook_size": codebook_size,
        "psnr": {k: float(np.mean(v)) for k, v in scores.items()},
        "rate": {k: float(np.mean(v)) for k, v in rates.items()},
        "quality": {k: f"{min(v)}-{max(v)}" if min(v) != max(v) else str(v[0]) for k, v in qualities.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_ldmsr(args.model)
    results = {name.strip(): measure(model, name.strip(), args) for name in args.datasets.split(",") if name.strip()}
    lines = [
        "# VQ reconstruction against its bit rate",
        "",
        f"Command: `{rerun_command(__file__, argv)}`  ",
        f"Machine: {machine_description('cpu')}",
        "",
        f"Model `{args.model}` (VQ f = {model.scale_factor}, {model.latent_channels} latent channels); "
        f"`{args.split}` split, whole images (HR sides cropped to multiples of {model.hr_multiple}). "
        "PSNR over RGB in dB, mean over images. JPEG / WebP: Pillow at the highest quality whose file "
        "fits the VQ's fixed-length rate (images of one shape tiled into 4 x 4 mosaics, so headers do "
        "not count).",
        "",
        "| dataset | images | VQ rate: fixed / code entropy (bpp) | codes used | VQ (quantized, as the pipeline) "
        "| VQ, continuous latents | JPEG at <= VQ rate | WebP at <= VQ rate |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['n']} | {r['fixed_rate']:.3f} / {r['entropy_rate']:.3f} | {r['codes_used']} of "
            f"{r['codebook_size']} | {r['psnr']['vq']:.2f} | {r['psnr']['vq_continuous']:.2f} | "
            f"{r['psnr']['JPEG']:.2f} ({r['rate']['JPEG']:.3f} bpp, q {r['quality']['JPEG']}) | "
            f"{r['psnr']['WEBP']:.2f} ({r['rate']['WEBP']:.3f} bpp, q {r['quality']['WEBP']}) |")
    lines += [
        "",
        "Reading: the quantized-vs-continuous gap is what the codebook costs; the rest of the error is "
        "the encoder/decoder's. The codec columns are what two standard image codecs reach with the "
        "same number of bits per pixel as the VQ's indices.",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
