"""The before/after figure of ``orl-gym upscale`` and its tiled-vs-untiled table (docs/upscale.md).

    ORL_GYM_DATA=../shared/data python experiments/upscale_example.py --threads 1
    # the previous default model and sampler (docs/upscale.md's older tables)
    ORL_GYM_DATA=../shared/data python experiments/upscale_example.py --threads 1 \
        --model orl_gym/assets/ldm-sr-tiny-x4 --sampler ddim20 --out /tmp/upscale_compvis.png

Test-split UC Merced scenes (orl_gym.data's seeded split: images the bundled model never trained
on), each x4-downsampled with the degradation's antialiased bicubic so that the original is a
ground truth, then super-resolved back by ``orl_gym.upscale`` (the code behind the command):

* the figure: the first test image of ``--category``: the LR input, bicubic x4, orl-gym upscale x4
  (``--sampler`` on ``--model``, tiles ``--tile`` / ``--overlap``), the original; PSNR against
  the original in each title. Written to ``--out``.
* the table: the first test image of each UC Merced class, PSNR of bicubic, of the untiled run
  (the whole 64 px LR as one tile), and of the tiled runs (32 px tiles with overlap 8, and the
  policy-sized 16 px tiles with overlap 4), all with seed 0 (the tiles take their windows of the
  untiled run's noise field). Printed as Markdown, then for each tiling its PSNR difference from
  the untiled run and how close the two images are (PSNR of one against the other).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from orl_gym.data import assign_split, downsample_bicubic, upsample_bicubic
from orl_gym.io import machine_description, rerun_command, save_figure
from orl_gym.upscale import WHOLE, sampler_from_name, upscale_tiles

ROOT = Path(__file__).resolve().parents[1]
TABLE_RUNS = (("untiled (whole)", WHOLE, 0), ("tiles 32 / overlap 8", 32, 8), ("tiles 16 / overlap 4", 16, 4))


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    return float(-10.0 * torch.log10((image - reference).pow(2).mean()))


def first_test_image(ucmerced: Path, category: str) -> Path:
    """The first file (by name) of a class that orl_gym.data puts in the test split."""
    for path in sorted((ucmerced / category).iterdir()):
        if assign_split(f"ucmerced/{category}/{path.name}") == "test":
            with Image.open(path) as image:
                if image.size == (256, 256):  # 44 UC Merced files are 242-257 px on one side
                    return path
    raise SystemExit(f"{ucmerced / category}: no 256x256 test-split image")


def load_pair(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with Image.open(path) as image:
        hr = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255.0
    lr = downsample_bicubic(hr[None], (hr.shape[1] // 4, hr.shape[2] // 4))[0].clamp(0.0, 1.0)
    lr = (lr * 255.0).round() / 255.0  # 8-bit, as a user's file is
    return hr, lr


def figure(args: argparse.Namespace, tiles, ucmerced: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = first_test_image(ucmerced, args.category)
    hr, lr = load_pair(path)
    result = upscale_tiles(lr, tiles, tile=args.tile, overlap=args.overlap, seed=args.seed)
    bicubic = upsample_bicubic(lr[None], hr.shape[-2:])[0]
    name = f"{path.parent.name}/{path.name}"
    panels = [
        (lr.repeat_interleave(4, 1).repeat_interleave(4, 2),
         f"input {lr.shape[2]}x{lr.shape[1]} px (shown x4, nearest)\nUC Merced {name}, test split"),
        (bicubic, f"bicubic x4\n{psnr(bicubic, hr):.2f} dB"),
        (result.image, f"orl-gym upscale x4: {psnr(result.image, hr):.2f} dB\n{args.model} model, {tiles.name}, "
                       f"{len(result.grid)} tiles of {args.tile} px, overlap {args.overlap}"),
        (hr, f"original {hr.shape[2]}x{hr.shape[1]}\n(ground truth)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 5.0))
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    save_figure(fig, args.out, dpi=100)
    print(f"figure: {args.out} ({path.name}: bicubic {psnr(bicubic, hr):.2f} dB, upscale {psnr(result.image, hr):.2f} dB)")


def table(args: argparse.Namespace, tiles, ucmerced: Path) -> None:
    rows, scores = [], {name: [] for name, _, _ in TABLE_RUNS}
    bicubic_scores, agreement = [], {name: [] for name, _, _ in TABLE_RUNS[1:]}
    for category in sorted(p.name for p in ucmerced.iterdir() if p.is_dir()):
        path = first_test_image(ucmerced, category)
        hr, lr = load_pair(path)
        bicubic_scores.append(psnr(upsample_bicubic(lr[None], hr.shape[-2:])[0], hr))
        cells = [f"{bicubic_scores[-1]:.2f}"]
        untiled = None
        for name, tile, overlap in TABLE_RUNS:
            image = upscale_tiles(lr, tiles, tile=tile, overlap=overlap, seed=args.seed).image
            if untiled is None:
                untiled = image
            else:
                agreement[name].append(psnr(image, untiled))
            scores[name].append(psnr(image, hr))
            cells.append(f"{scores[name][-1]:.2f}")
        rows.append(f"| {category}/{path.name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    untiled = np.array(scores[TABLE_RUNS[0][0]])
    print(f"\nPSNR (dB) against the original, x4 from the 64 px bicubic downsampling, {tiles.name} on the "
          f"{args.model} model, seed {args.seed}; {machine_description()}; `{rerun_command(__file__)}`\n")
    print("| image | bicubic | " + " | ".join(name for name, _, _ in TABLE_RUNS) + " |")
    print("|---|" + "---:|" * (1 + len(TABLE_RUNS)))
    print("\n".join(rows))
    means = [f"{np.mean(bicubic_scores):.2f}", *(f"{np.mean(scores[name]):.2f}" for name, _, _ in TABLE_RUNS)]
    print(f"| mean of {len(rows)} | " + " | ".join(means) + " |")
    for name, _, _ in TABLE_RUNS[1:]:
        diff = np.array(scores[name]) - untiled
        print(f"{name} - untiled: mean {diff.mean():+.2f} dB, min {diff.min():+.2f}, max {diff.max():+.2f}, "
              f"|difference| <= 0.1 dB on {int((np.abs(diff) <= 0.1).sum())} of {len(diff)}; the two images "
              f"{np.mean(agreement[name]):.1f} dB apart on average (min {np.min(agreement[name]):.1f})")


def parse_with_data(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path]:
    """Add --data and --threads to ``parser``, parse, apply --threads; returns the arguments and
    the ucmerced/ folder (exits with a message without one)."""
    parser.add_argument("--data", default=os.environ.get("ORL_GYM_DATA"), help="root holding ucmerced/")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data or not (Path(args.data) / "ucmerced").is_dir():
        raise SystemExit("--data: a root with ucmerced/ (or ORL_GYM_DATA) is needed")
    return args, Path(args.data) / "ucmerced"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="denseresidential", help="UC Merced class of the figure's image")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--sampler", default="default", help="ddim<N>, or default: the model's default sampler (upscale's)")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "upscale_before_after.png")
    parser.add_argument("--no-table", action="store_true", help="only the figure")
    args, ucmerced = parse_with_data(parser)
    tiles = sampler_from_name(args.sampler, model=args.model)
    figure(args, tiles, ucmerced)
    if not args.no_table:
        table(args, tiles, ucmerced)


if __name__ == "__main__":
    main()
