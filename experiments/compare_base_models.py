"""Compare LDM-SR checkpoints on the same images: which one to ship, measured, not guessed.

Runs ``eval_base_model.evaluate`` for each model (same split, images, samplers and seeds) and
writes a Markdown report: per dataset, each model's PSNR / SSIM / LPIPS / colour offset for the
VQ reconstruction and every sampler, and for each model after the first its paired differences
from the first (mean over images and 95% t interval, ``orl_gym.evaluation.paired_interval``).
Model selection belongs on the ``validation`` split (the default here); the test split is for
the card of the model chosen.

    ORL_GYM_DATA=../shared/data python experiments/compare_base_models.py \\
        --models epsilon=/path/to/export_a v_prediction=/path/to/export_b --max-images 32

``--scheduler-config LABEL:KEY=VALUE ...`` changes one model's scheduler config (the same weights
under another sampler setting; a label may name the same folder as another label):

    ORL_GYM_DATA=../shared/data python experiments/compare_base_models.py \\
        --models leading=bundled trailing=bundled --scheduler-config trailing:timestep_spacing=trailing

The raw per-image scores go to a JSON file next to the report (``--out`` with ``.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from orl_gym.evaluation import paired_interval
from orl_gym.io import atomic_write_text, machine_description, rerun_command, write_report
from orl_gym.models import load_ldmsr

HERE = Path(__file__).resolve().parent
METRICS = (("psnr", "PSNR (dB)", 2, "higher"), ("ssim", "SSIM", 4, "higher"),
           ("lpips", "LPIPS", 4, "lower"), ("colour_offset", "colour offset (8-bit levels)", 2, "lower"))


def _eval_base_model():
    spec = importlib.util.spec_from_file_location("eval_base_model", HERE / "eval_base_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_models(items: list[str]) -> dict[str, str]:
    """``label=path`` (or just ``path``, labelled by itself) -> {label: path}, labels unique."""
    models: dict[str, str] = {}
    for item in items:
        label, _, path = item.partition("=") if "=" in item else (item, "", item)
        if not label or not path:
            raise SystemExit(f"--models: {item!r} is not LABEL=PATH")
        if label in models:
            raise SystemExit(f"--models: label {label!r} given twice; labels name the report's rows")
        models[label] = path
    if len(models) < 2:
        raise SystemExit("--models: give at least two models to compare")
    return models


def parse_scheduler_overrides(items: list[str], models: dict[str, str]) -> dict[str, list[str]]:
    """``LABEL:KEY=VALUE`` items -> {label: [KEY=VALUE, ...]} for every model label."""
    overrides: dict[str, list[str]] = {label: [] for label in models}
    for item in items:
        label, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            raise SystemExit(f"--scheduler-config: {item!r} is not LABEL:KEY=VALUE")
        if label not in models:
            raise SystemExit(f"--scheduler-config: {label!r} is not one of the labels {list(models)}")
        overrides[label].append(setting)
    return overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", required=True,
                   help="LABEL=PATH ... ('bundled', a folder or a hub id); differences are to the first")
    p.add_argument("--datasets", default="ucmerced,aid150")
    p.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    p.add_argument("--max-images", type=int, default=32, help="images per dataset (0: all)")
    p.add_argument("--samplers", default="ddim100_eta0,ddim50_eta1")
    p.add_argument("--output-fixes", default="",
                   help="comma list of orl_gym.postprocess corrections to add after each sampler")
    p.add_argument("--scheduler-config", nargs="*", default=[], metavar="LABEL:KEY=VALUE",
                   help="override a key of one model's scheduler config (eval_base_model.py's option)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-lpips", action="store_true")
    p.add_argument("--out", type=Path, default=Path("experiments/results/compare_base_models.md"))
    return p.parse_args(argv)


def check_same_crops(models: dict[str, str]) -> None:
    """Refuse, before minutes of evaluation, models that crop whole images to other multiples
    (UNets of other depths): their images could not be paired. ``check_same_images`` checks the
    evaluated images themselves afterwards."""
    multiples = {label: load_ldmsr(path, dtype=torch.float32).hr_multiple for label, path in models.items()}
    if len(set(multiples.values())) > 1:
        raise SystemExit("the models crop whole images to other multiples (HR sides a multiple of "
                         f"{', '.join(f'{m} for `{label}`' for label, m in multiples.items())}): the paired "
                         "comparison needs the same images and crops; compare models with equal hr_multiple")


def check_same_images(results: dict[str, dict]) -> None:
    """The paired intervals pair images by position: every model must have seen the same images,
    cut the same way (models whose UNets differ in depth crop whole images to other multiples)."""
    def cut(result: dict) -> tuple:  # (images, HR shapes); JSON turns the shape tuples into lists
        return result["images"], [list(shape) for shape in result["hr_shapes"]]

    first, *others = results
    for label in others:
        for dataset, base in results[first]["datasets"].items():
            other = results[label]["datasets"].get(dataset)
            if other is None or cut(other) != cut(base):
                found = "none" if other is None else f"{other['images']} images of shapes {other['hr_shapes']}"
                raise SystemExit(f"{dataset}: `{label}` was evaluated on {found}, `{first}` on {base['images']} "
                                 f"images of shapes {base['hr_shapes']}: the paired comparison needs the same "
                                 "images and crops (compare models with equal hr_multiple)")


def report(results: dict[str, dict], command: str, split: str) -> list[str]:
    check_same_images(results)
    labels = list(results)
    first = labels[0]
    lines = ["# LDM-SR checkpoints compared on the same images", "", f"Command: `{command}`  ",
             f"Machine: {machine_description('cpu')}", ""]
    lines += [f"- `{label}`: {r['setup']['model']}"
              + "".join(f"; scheduler {k}={v}" for k, v in r["setup"].get("scheduler_overrides", {}).items())
              for label, r in results.items()]
    lines += ["", f"`{split}` split, whole images, seed {results[first]['setup']['seed']} for every "
              f"sampler; LPIPS: {results[first]['lpips']}. Intervals: 95% t over images, paired "
              f"(same image, same seed), of model minus `{first}`.", ""]
    for dataset, base in results[first]["datasets"].items():
        bicubic = base["metrics"]["bicubic"]
        shown = [m for m in METRICS if m[0] in bicubic]  # LPIPS is absent with --no-lpips
        lines += [f"## {dataset} ({base['images']} images)", "",
                  "| model | method | " + " | ".join(name for _, name, _, _ in shown) + " | PSNR vs bicubic |",
                  "|---|---|" + "---:|" * (len(shown) + 1),
                  "| | bicubic x4 | " + " | ".join(f"{bicubic[k]:.{d}f}" for k, _, d, _ in shown) + " | |"]
        methods = [m for m in base["metrics"] if m != "bicubic"]
        for method in methods:
            for label in labels:
                m = results[label]["datasets"][dataset]["metrics"][method]
                lines.append(f"| `{label}` | {method} | " + " | ".join(f"{m[k]:.{d}f}" for k, _, d, _ in shown)
                             + f" | {m['psnr'] - bicubic['psnr']:+.2f} |")
        for label in labels[1:]:
            per_image = results[label]["datasets"][dataset]["per_image"]
            lines += ["", f"Paired differences `{label}` - `{first}`:", "",
                      "| method | " + " | ".join(f"{name} ({better} is better)" for _, name, _, better in shown) + " |",
                      "|---|" + "---|" * len(shown)]
            for method in methods:
                cells = []
                for key, _, digits, _ in shown:
                    mean, low, high = paired_interval(per_image[method][key], base["per_image"][method][key])
                    cells.append(f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    models = parse_models(args.models)
    overrides = parse_scheduler_overrides(args.scheduler_config, models)
    check_same_crops(models)
    evaluator = _eval_base_model()
    results = {}
    for label, path in models.items():
        print(f"{label}: {path}", file=sys.stderr)
        eval_args = evaluator.parse_args([
            "--model", path, "--datasets", args.datasets, "--split", args.split,
            "--max-images", str(args.max_images), "--samplers", args.samplers,
            "--output-fixes", args.output_fixes, "--scheduler-config", *overrides[label],
            "--batch-size", str(args.batch_size), "--seed", str(args.seed),
            *(["--no-lpips"] if args.no_lpips else [])])
        results[label] = evaluator.evaluate(eval_args)
    command = rerun_command(__file__, argv)
    for r in results.values():
        r["setup"]["command"] = command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_report(args.out, report(results, command, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
