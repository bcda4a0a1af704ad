"""Seeded splits of sources that have none of their own.

An image's split comes from a seeded hash (BLAKE2b) of its identity ``"<dataset>/<class>/<file
name>"`` (never the absolute path, so moving the data root changes nothing): it depends only on
the image's own identity and the seed, so adding files never moves the others. Default
fractions are train 0.7 / validation 0.1 / test 0.2 (train + validation : test = 80 : 20).
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def assign_split(
    identity: str,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
) -> str:
    """The split of one image, from a seeded hash of its identity.

    Args:
        identity: ``"<dataset>/<class>/<file name>"`` for files in folders.
        seed: Hash seed; a different seed gives an independent split.
        fractions: (train, validation, test) fractions.

    Returns:
        ``"train"``, ``"validation"`` or ``"test"``.
    """
    digest = hashlib.blake2b(f"{seed}\0{identity}".encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "validation"
    return "test"
