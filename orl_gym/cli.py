"""The ``orl-gym`` command."""

from __future__ import annotations

import argparse
import sys
import time

import torch

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    """Smoke demo of the batched sampler (the full train-and-evaluate demo replaces it)."""
    from orl_gym import sampler
    from orl_gym.models import LDMSRArchitecture, ModelLoadError, load_ldmsr

    try:
        model = load_ldmsr(args.model, device=args.device)
        label = args.model
    except ModelLoadError as err:
        if args.model != "bundled":
            raise
        print(f"note: {err}\n      running on a tiny random model instead", file=sys.stderr)
        model, label = LDMSRArchitecture.tiny().build(seed=0, device=args.device), "tiny random model"
    generator = torch.Generator().manual_seed(args.seed)
    lr = torch.rand(args.batch, 3, args.lr_size, args.lr_size, generator=generator).to(args.device)
    schedule = sampler.Schedule.from_model(model, args.steps)
    # Each sample skips ahead by its own stride: sample i takes stride 1 + i % 4.
    strides = 1 + torch.arange(args.batch, device=model.device) % 4
    state = sampler.init_state(model, schedule, lr, sampler.make_generators(range(args.batch), args.device))
    start = time.perf_counter()
    while not bool(state.done(schedule).all()):
        state = sampler.step(model, schedule, state, sampler.StepParams(stride=strides, eta=0.5)).state
    images = sampler.decode(model, state)
    seconds = time.perf_counter() - start
    print(f"model: {label}; {args.batch} images {tuple(images.shape[-2:])} from LR {args.lr_size}x{args.lr_size}")
    print(f"UNet calls per image (strides 1..4 of a {args.steps}-step schedule): {state.nfe.tolist()}")
    print(f"wall time {seconds:.2f} s on {model.device}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orl-gym", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the main demo on the bundled model")
    demo.add_argument("--model", default="bundled", help="checkpoint folder, hub id or 'bundled'")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--batch", type=int, default=8)
    demo.add_argument("--lr-size", type=int, default=16)
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
