"""What the data tests (tests/test_data.py, tests/test_data_hub.py) share: seeded noise images,
their encoded bytes, and a ``PairDataset`` loaded without the warnings of deliberately bad files.

A plain module, not a test file: pytest puts ``tests/`` on ``sys.path`` (no ``__init__.py``), so
the test files import it as ``data_files``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from orl_gym.data import DataConfig, DataWarning, PairDataset

# Pairs small enough for a fast test: 16 px HR, x4.
SMALL = {"hr_size": 16, "scale": 4}


def noise_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Uniform noise, 8-bit RGB."""
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, image_format: str) -> bytes:
    """``image`` as the bytes of an ``image_format`` file ("PNG", "JPEG", ...)."""
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def load_quietly(config: DataConfig, **kwargs) -> PairDataset:
    """``PairDataset(config, **kwargs)`` with its :class:`DataWarning` s silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return PairDataset(config, **kwargs)
