"""Aerial scene datasets as batched (HR, LR) super-resolution pairs.

Sources
-------
A :class:`DataConfig` names its source with one string (``source``):

``None`` (the default)
    ``$ORL_GYM_DATA`` when that environment variable is set (the path is used as given, so a
    relative path is relative to the working directory), else NWPU-RESISC45 from the Hugging Face
    hub (``hub:timm/resisc45``). Failing to reach the hub is one :class:`DataSourceError` that
    names ``ORL_GYM_DATA`` and ``--data``.
``"hub:<repo id>[@<revision>]"``
    ``datasets.load_dataset(repo_id, revision=revision)``; the repository's own splits are used.
    ``timm/resisc45`` has train 18,900 / validation 6,300 / test 6,300 images of 256x256 px, an
    ``image`` column and a ``label`` ClassLabel column with the 45 names of
    :data:`RESISC45_CLASSES`. Any dataset with one Image column and one ClassLabel column works.
a path to a folder in class-folder layout
    ``<folder>/<class>/<image file>``: NWPU-RESISC45 as distributed (``NWPU-RESISC45/<class>/*.jpg``),
    ``ucmerced/`` or ``aid150/`` in ../shared/data. Split by file identity (see below).
a path to a data root
    a folder whose subfolders are class-folder datasets (what ``$ORL_GYM_DATA`` names). Every
    dataset under it is loaded; class names are prefixed by the dataset (``"ucmerced/forest"``).
a path to a local copy in the hub's schema
    a folder of parquet files laid out like the hub repository (``data/train-*.parquet`` ...),
    loaded with the same ``datasets.load_dataset`` call as the hub; a ``save_to_disk`` folder
    (``datasets.load_from_disk``); or a single ``.parquet`` file (split by identity). Parquet
    files outside ``data/`` make a hub copy only of a folder without images in class-folder
    layout, so a results table saved in a data root does not hide its datasets.
a dataset name such as ``"ucmerced"`` or ``"aid150"``
    the folder of that name under ``$ORL_GYM_DATA``.

Folders are scanned directly rather than through ``datasets``' ``imagefolder`` builder: the split
needs each file's identity (dataset, class, file name), a data root holds several datasets whose
class names collide, and a scan costs ~0.2 ms a file without writing an Arrow cache per folder.

Splits
------
Sources with splits (the hub, parquet copies, ``save_to_disk`` dicts) use their own. Anything
else is split per image by a seeded hash (BLAKE2b) of its identity ``"<dataset>/<class>/<file
name>"`` (never the absolute path, so moving the data root changes nothing): an image's split
depends only on its own identity and ``split_seed``, so adding files never moves the others.
Default fractions are train 0.7 / validation 0.1 / test 0.2 (train + validation : test = 80 : 20).

Categories
----------
``categories`` selects classes by name. A name matches a class of the source when it is that
class's name as listed in ``classes``, the same name up to case and punctuation
(``dense_residential`` = ``DenseResidential`` = ``denseresidential``), a paper name from
:data:`PAPER_CATEGORIES` (``"Business district"`` -> ``commercial_area``), or a RESISC45 name whose
stand-in in that dataset is given by :data:`CATEGORY_ALIASES` (``commercial_area`` -> UC Merced
``buildings``, AID ``Commercial``). Labels always index the source's full class list, so they do
not change with the selection.

Pairs
-----
HR is a crop of the decoded RGB image (``crop``): ``"random"`` (training), ``"center"``, ``"full"``
(the whole image, center-cropped to the largest multiple of ``full_multiple``, by default
``scale``, on each side; a batch needs equal crop shapes, see
:meth:`PairDataset.indices_by_shape`) or ``"resize"`` (center square,
resized to ``hr_size`` with antialiased bicubic). LR is :func:`degrade` of HR: optional Gaussian
blur, antialiased bicubic downsampling by ``scale``, optional Gaussian noise and JPEG, rounded
to 8-bit levels. Both are float32 in [0, 1], NCHW, on the dataset's device.

Bad input
---------
Grayscale, grayscale+alpha, RGBA, palette, CMYK and 16-bit grayscale images are converted to
8-bit RGB (alpha is dropped, not composited; 16-bit keeps its high byte). 32-bit integer
grayscale (PIL mode ``"I"``) whose values fit 0..65535 is read as 16-bit (its high byte); other
32-bit integer and all floating-point images (mode ``"F"``) have no defined 8-bit scale and are
skipped as unreadable, with a reason that says to convert them to 8- or 16-bit. An EXIF
Orientation tag is applied, as ``datasets.Image`` does (``ImageOps.exif_transpose``), and the
header scan's image sizes include it (PNG metadata stored after the pixel data, which PIL finds
only by decoding them, is not read, so header sizes and decoded images always agree). Rows of a
table whose ClassLabel is missing (-1) are skipped with one warning giving their count.
Images with a side shorter than ``hr_size`` are skipped at load time with one
:class:`DataWarning` giving their count (upscaling them would make a blurry "ground truth"). A file that cannot be read is skipped: at load time (unreadable header) with one
warning naming every such file and the count; when only its pixel data is broken, on first
decode with a warning naming it and the running count, and the batch takes the next readable
image instead (``PairBatch.indices`` says which), so an epoch never stops on a bad file.
:meth:`PairDataset.preload` decodes everything up front and reports all broken files at once;
``PairDataset.unreadable`` lists every file skipped so far with the reason.
"""

from __future__ import annotations

import hashlib
import io
import math
import operator
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "CATEGORY_ALIASES",
    "CROP_MODES",
    "DATA_ENV_VAR",
    "DEFAULT_SPLIT_FRACTIONS",
    "HUB_DATASET_ID",
    "IMAGE_EXTENSIONS",
    "PAPER_CATEGORIES",
    "RESISC45_CLASSES",
    "SPLITS",
    "DataConfig",
    "DataSource",
    "DataSourceError",
    "DataWarning",
    "Degradation",
    "PairBatch",
    "PairDataset",
    "UnreadableImageError",
    "assign_split",
    "degrade",
    "downsample_bicubic",
    "upsample_bicubic",
    "paper_category",
    "resolve_source",
]

DATA_ENV_VAR = "ORL_GYM_DATA"
"""Environment variable naming a local data root (a folder of class-folder datasets)."""

HUB_DATASET_ID = "timm/resisc45"
"""Hub dataset loaded when no source is given and ``$ORL_GYM_DATA`` is unset."""

SPLITS = ("train", "validation", "test")
CROP_MODES = ("random", "center", "full", "resize")
SCALES = (2, 4, 8)
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

RESISC45_CLASSES: tuple[str, ...] = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge",
    "chaparral", "church", "circular_farmland", "cloud", "commercial_area",
    "dense_residential", "desert", "forest", "freeway", "golf_course", "ground_track_field",
    "harbor", "industrial_area", "intersection", "island", "lake", "meadow",
    "medium_residential", "mobile_home_park", "mountain", "overpass", "palace", "parking_lot",
    "railway", "railway_station", "rectangular_farmland", "river", "roundabout", "runway",
    "sea_ice", "ship", "snowberg", "sparse_residential", "stadium", "storage_tank",
    "tennis_court", "terrace", "thermal_power_station", "wetland",
)  # fmt: skip
"""The 45 NWPU-RESISC45 class names in ClassLabel order (alphabetical, as on the hub)."""

PAPER_CATEGORIES: dict[str, str] = {
    "Business district": "commercial_area",
    "Dense residential area": "dense_residential",
    "Desert": "desert",
    "Forest": "forest",
    "Industrial area": "industrial_area",
    "Train station": "railway_station",
    "River": "river",
    "Runway": "runway",
}
"""The eight scene categories of ORL-LDM's per-category table -> RESISC45 class names."""

CATEGORY_ALIASES: dict[str, dict[str, str | None]] = {
    # UC Merced has no commercial class; "buildings" (dense built-up blocks) is the rough match.
    "commercial_area": {"ucmerced": "buildings", "aid150": "Commercial"},
    "dense_residential": {"ucmerced": "denseresidential", "aid150": "DenseResidential"},
    "desert": {"ucmerced": None, "aid150": "Desert"},
    "forest": {"ucmerced": "forest", "aid150": "Forest"},
    "industrial_area": {"ucmerced": None, "aid150": "Industrial"},
    "railway_station": {"ucmerced": None, "aid150": "RailwayStation"},
    "river": {"ucmerced": "river", "aid150": "River"},
    # AID's "Airport" contains runways but also terminals and aprons: not a stand-in.
    "runway": {"ucmerced": "runway", "aid150": None},
}
"""RESISC45 class -> {dataset folder name: its nearest class, or None when it has none}.

Covers the paper's eight categories for the two datasets in ../shared/data (UC Merced, AID).
Classes whose names agree up to case and punctuation (``golf_course`` = ``golfcourse``) match
without an entry here.
"""


class DataWarning(UserWarning):
    """Input data was skipped or repaired (unreadable or undersized images)."""


class DataSourceError(RuntimeError):
    """The data source could not be found or loaded."""


class UnreadableImageError(OSError):
    """An image file's pixel data could not be decoded."""


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is an integer (Python or NumPy), else None.

    Bools and integral floats are not integers here: ``True`` would silently mean 1, and
    ``scale=4.0`` passes ``in (2, 4, 8)`` but breaks tensor shapes much later.
    """
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, torch.Tensor) and value.dtype == torch.bool
    ):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _blur_radius(blur_sigma: float) -> int:
    """Half the side of the Gaussian kernel of ``blur_sigma``: also the reflect padding, which
    must be smaller than each side of the blurred image."""
    return math.ceil(3 * blur_sigma)


@dataclass(frozen=True)
class Degradation:
    """Extra degradations of the LR image, beyond antialiased bicubic downsampling.

    Applied in the classical order LR = JPEG(noise(downsample(blur(HR)))). The default
    degrades nothing beyond the downsampling.

    Attributes:
        blur_sigma: Standard deviation, in HR pixels, of an isotropic Gaussian blur applied to
            HR before downsampling (kernel side 2 * ceil(3 sigma) + 1, reflect padding).
            0 disables it.
        noise_std: Standard deviation of additive white Gaussian noise on LR, in intensity
            units of the [0, 1] range (0.01 is ~2.6 grey levels of 255). 0 disables it.
        jpeg_quality: JPEG quality (1-100, libjpeg scale; Pillow's default 4:2:0 chroma
            subsampling) of a compress-decompress round trip of the 8-bit LR image, done on the
            CPU. None disables it.
    """

    blur_sigma: float = 0.0
    noise_std: float = 0.0
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if not (self.blur_sigma >= 0 and math.isfinite(self.blur_sigma)):
            raise ValueError(f"blur_sigma must be a finite number >= 0, got {self.blur_sigma!r}")
        if not (self.noise_std >= 0 and math.isfinite(self.noise_std)):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        if self.jpeg_quality is not None:
            quality = _integer(self.jpeg_quality)
            if quality is None or not 1 <= quality <= 100:
                raise ValueError(
                    f"jpeg_quality must be an int in 1..100 or None, got {self.jpeg_quality!r}"
                )
            object.__setattr__(self, "jpeg_quality", quality)

    @property
    def is_identity(self) -> bool:
        """True when no degradation beyond downsampling is applied."""
        return self.blur_sigma == 0 and self.noise_std == 0 and self.jpeg_quality is None


@dataclass(frozen=True)
class DataConfig:
    """Which images, which split, and how they become (HR, LR) pairs.

    Attributes:
        source: Where the images come from; see the module docstring. None: ``$ORL_GYM_DATA``
            if set, else ``hub:timm/resisc45``.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        categories: Class names to keep (RESISC45 names, the paper's names, or the source's own
            class names); None keeps every class.
        hr_size: Side of the square HR crop in pixels; the LR side is ``hr_size // scale``.
            Images with a side shorter than this are skipped. For ``crop="full"`` it is only
            that minimum.
        scale: Downsampling factor, 2, 4 or 8.
        crop: ``"random"``, ``"center"``, ``"full"`` or ``"resize"``; see the module docstring.
        full_multiple: ``crop="full"`` only: each side is center-cropped to the largest multiple
            of this; None means ``scale``. A model needs its ``LDMSR.hr_multiple`` (16 for the
            bundled one: x4 VQ, and a UNet that halves the latent twice), which turns AID's
            150x150 into 144x144. A multiple of ``scale``, at most ``hr_size``.
        degradation: Extra LR degradations; none by default.
        seed: Seed of the dataset's own generator, used by :meth:`PairDataset.pairs` and
            :meth:`PairDataset.batches` when no generator is passed. It does not affect splits.
        split_seed: Seed of the identity hash that splits sources without splits of their own.
            Train and test are only disjoint for equal ``split_seed``.
        split_fractions: (train, validation, test) fractions of that hash split; they sum to 1.
        cache_images: Keep each decoded image in memory (uint8, 3 * H * W bytes: 197 kB for
            256x256, 3.7 GB for RESISC45's train split) so later pairs and env resets skip
            decoding.
        hub_cache_dir: ``cache_dir`` for ``datasets.load_dataset`` (default: the datasets cache).
    """

    source: str | None = None
    split: str = "train"
    categories: tuple[str, ...] | None = None
    hr_size: int = 64
    scale: int = 4
    crop: str = "random"
    full_multiple: int | None = None
    degradation: Degradation = field(default_factory=Degradation)
    seed: int = 0
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    cache_images: bool = True
    hub_cache_dir: str | None = None

    def __post_init__(self) -> None:
        # Accept the obvious spellings (a Path, a list, one string) and store the canonical form.
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        if isinstance(self.categories, str):
            object.__setattr__(self, "categories", (self.categories,))
        elif self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        # Integer fields must be ints (NumPy ints are stored as int): a bool or a float would be
        # accepted by the range checks below and fail, or split differently, much later.
        for name in ("hr_size", "scale", "full_multiple", "seed", "split_seed"):
            value = getattr(self, name)
            if value is None and name == "full_multiple":
                continue
            as_int = _integer(value)
            if as_int is None:
                raise ValueError(
                    f"{name} must be an int, got {value!r} ({type(value).__name__})"
                )
            object.__setattr__(self, name, as_int)

        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.hr_size < self.scale or self.hr_size % self.scale:
            raise ValueError(
                f"hr_size must be a positive multiple of scale={self.scale} (so LR has "
                f"hr_size // scale pixels), got {self.hr_size!r}"
            )
        if self.full_multiple is not None and (
            self.full_multiple < self.scale
            or self.full_multiple % self.scale
            or self.full_multiple > self.hr_size
        ):
            raise ValueError(
                f"full_multiple must be a multiple of scale={self.scale} and at most "
                f"hr_size={self.hr_size} (the shortest side kept, so no image crops to nothing), "
                f"got {self.full_multiple!r}"
            )
        if self.categories is not None and not self.categories:
            raise ValueError("categories is empty: pass None to keep every class")
        if not isinstance(self.degradation, Degradation):
            raise TypeError(f"degradation must be a Degradation, got {type(self.degradation)}")
        fractions = self.split_fractions
        # isfinite: NaN passes `< 0` and makes the sum test pass too (NaN fractions sent every
        # image to the test split).
        if (
            len(fractions) != 3
            or not all(math.isfinite(f) and f >= 0 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-6
        ):
            raise ValueError(
                "split_fractions must be three finite, non-negative (train, validation, test) "
                f"fractions summing to 1, got {fractions!r}"
            )
        radius = _blur_radius(self.degradation.blur_sigma)
        if radius >= self._min_hr_side:
            raise ValueError(
                f"degradation.blur_sigma={self.degradation.blur_sigma} needs HR sides of more "
                f"than ceil(3 * blur_sigma) = {radius} px, but HR crops can be as small as "
                f"{self._min_hr_side} px (hr_size={self.hr_size}, crop={self.crop!r}): lower "
                "blur_sigma or raise hr_size"
            )

    @property
    def full_crop_multiple(self) -> int:
        """What ``crop="full"`` floors each side to: ``full_multiple``, or ``scale``."""
        return self.full_multiple if self.full_multiple is not None else self.scale

    @property
    def lr_size(self) -> int:
        """Side of the LR image in pixels for the square crop modes."""
        return self.hr_size // self.scale

    @property
    def _min_hr_side(self) -> int:
        """The shortest HR side a pair can have: ``hr_size``, or for ``crop="full"`` the
        shortest image side allowed (``hr_size``) floored to ``full_crop_multiple``."""
        if self.crop != "full":
            return self.hr_size
        return self.hr_size // self.full_crop_multiple * self.full_crop_multiple


@dataclass
class PairBatch:
    """A batch of (HR, LR) pairs.

    Attributes:
        hr: (B, 3, H, W) float32 in [0, 1] on the dataset's device; exact 8-bit levels.
        lr: (B, 3, H / scale, W / scale) float32 in [0, 1] on the same device; exact 8-bit levels.
        labels: (B,) int64 on the CPU, index into ``PairDataset.classes``.
        indices: (B,) int64 on the CPU, index of each image in the dataset (after any
            substitution of an unreadable image).
        names: Identity of each image, e.g. ``"ucmerced/forest/forest07.png"``.
    """

    hr: torch.Tensor
    lr: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return self.hr.shape[0]

    def to(self, device: torch.device | str) -> PairBatch:
        """This batch with ``hr`` and ``lr`` on ``device`` (labels and indices stay on the CPU)."""
        return PairBatch(
            hr=self.hr.to(device),
            lr=self.lr.to(device),
            labels=self.labels,
            indices=self.indices,
            names=self.names,
        )


def downsample_bicubic(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased bicubic resize of ``(B, C, H, W)`` images to ``size``: the degradation's kernel.

    The one definition of "bicubic downsampling" in the package: the LR images are made with it,
    and the LR-consistency metric and the sampler's guidance compare against it, so all three
    agree exactly. Not clamped (bicubic overshoots slightly outside [0, 1]), so gradients pass
    through everywhere; callers that need the range clamp.
    """
    return F.interpolate(
        images, size=tuple(size), mode="bicubic", antialias=True, align_corners=False
    )


def upsample_bicubic(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic upsampling of ``(B, C, h, w)`` images to ``size``, clamped to [0, 1]: the one
    definition of "bicubic super-resolution" in the package (the reward's baseline, and the
    anchor of residual-format models, which therefore decode a zero residual to exactly it)."""
    return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def degrade(
    hr: torch.Tensor,
    *,
    scale: int,
    degradation: Degradation = Degradation(),
    generator: Generators = None,
    quantize: bool = False,
    check_values: bool = True,
) -> torch.Tensor:
    """Make LR images from HR images: blur, antialiased bicubic downsampling, noise, JPEG.

    Args:
        hr: (B, 3, H, W) float in [0, 1]; H and W multiples of ``scale``.
        scale: Downsampling factor (LR is H / scale x W / scale).
        degradation: Blur / noise / JPEG parameters; the default only downsamples.
        generator: Source of the noise (on any device): one generator for the batch, one per
            image (image k's noise from generator k alone, so a batch equals its images made
            one at a time), or None for the global RNG.
        quantize: Round LR to 8-bit levels (k / 255), like a stored image. Off by default so the
            function stays differentiable for consistency terms; ``PairDataset`` turns it on.
            JPEG always quantizes.
        check_values: Check that HR is finite and in [0, 1] (one host sync); ``PairDataset``,
            whose HR is decoded 8-bit pixels / 255, skips it.

    Returns:
        (B, 3, H / scale, W / scale) float32 in [0, 1] on ``hr``'s device.

    Raises:
        TypeError: ``hr`` is not a floating-point tensor (e.g. uint8 pixels).
        ValueError: a wrong shape, a size not divisible by ``scale``, a value outside [0, 1]
            (more than ``_HR_RANGE_TOLERANCE``) or not finite, or a blur wider than HR.
    """
    if not isinstance(hr, torch.Tensor) or not hr.is_floating_point():
        found = hr.dtype if isinstance(hr, torch.Tensor) else type(hr).__name__
        raise TypeError(
            f"hr must be a float tensor with values in [0, 1], got {found}: divide 8-bit (uint8) "
            "images by 255"
        )
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"hr must be a (B, 3, H, W) batch, got shape {tuple(hr.shape)}")
    height, width = hr.shape[-2:]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(
            f"HR size {height}x{width} is not divisible by scale={scale}: crop HR to a multiple "
            "of the scale first"
        )
    if check_values:
        _check_unit_range(hr)
    image = hr.float()
    if degradation.blur_sigma > 0:
        radius = _blur_radius(degradation.blur_sigma)
        if radius >= min(height, width):
            raise ValueError(
                f"blur_sigma={degradation.blur_sigma} needs HR sides of more than ceil(3 * "
                f"blur_sigma) = {radius} px (the reflect padding of its kernel), got HR "
                f"{height}x{width}: lower blur_sigma or use larger HR crops"
            )
        kernel_size = 2 * radius + 1
        image = TF.gaussian_blur(
            image, kernel_size=[kernel_size, kernel_size], sigma=[degradation.blur_sigma] * 2
        )
    lr = downsample_bicubic(image, (height // scale, width // scale))
    if degradation.noise_std > 0:
        lr = lr + degradation.noise_std * _per_image_draw(
            torch.randn, lr.shape, generator, lr.device
        )
    lr = lr.clamp(0.0, 1.0)
    if degradation.jpeg_quality is not None:
        # Pillow on the CPU: the same bytes on every device.
        lr_uint8 = (lr * 255).round().to(torch.uint8).cpu()
        lr_uint8 = _jpeg_round_trip(lr_uint8, degradation.jpeg_quality)
        lr = lr_uint8.to(lr.device, torch.float32) / 255
    elif quantize:
        lr = lr.mul(255).round_().div_(255)
    return lr


Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for a whole batch, one per image, or None (a default source)."""

_HR_RANGE_TOLERANCE = 1e-3
"""How far outside [0, 1] :func:`degrade` accepts HR values (float rounding of a resize or a
colour conversion); clearly larger excursions mean another convention, such as [-1, 1]."""


def _check_unit_range(hr: torch.Tensor) -> None:
    """ValueError unless every value of ``hr`` is finite and in [0, 1] (within the tolerance).

    One min/max pass (no image-sized temporaries) and one host sync in the common case; the
    details are computed only on error.
    """
    if hr.numel() == 0:
        return
    # min and max propagate NaN, and NaN fails every comparison: non-finite values fail here too.
    lowest, highest = torch.stack(torch.aminmax(hr.detach())).float().tolist()
    if -_HR_RANGE_TOLERANCE <= lowest and highest <= 1 + _HR_RANGE_TOLERANCE:
        return
    finite = torch.isfinite(hr)
    if not bool(finite.all()):
        raise ValueError(
            f"hr has {int((~finite).sum())} non-finite value(s) (NaN or inf): HR must be finite "
            "pixel values in [0, 1]"
        )
    raise ValueError(
        f"hr values must be in [0, 1], got {float(hr.min()):.4g}..{float(hr.max()):.4g}: map "
        "[-1, 1] images with (x + 1) / 2 and divide 8-bit values by 255"
    )


def _per_image_draw(
    draw: Any, shape: Sequence[int], generator: Generators, device: torch.device
) -> torch.Tensor:
    """``draw(shape)`` (torch.rand / torch.randn) from one generator, or per image from a list.

    Per image, image k's values come from generator k only, in the same order a batch of one
    would draw them, so a batch equals its images drawn one at a time.
    """
    if generator is None:
        return draw(tuple(shape), device=device)
    if isinstance(generator, torch.Generator):
        return draw(tuple(shape), generator=generator, device=generator.device).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0]}: pass one per image, "
            "or a single generator"
        )
    return torch.stack(
        [draw(tuple(shape[1:]), generator=g, device=g.device).to(device) for g in generators]
    )


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


# --------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class DataSource:
    """A resolved data source.

    Attributes:
        kind: ``"hub"`` (a hub repository), ``"hub_copy"`` (a local folder of parquet files in
            the hub's layout), ``"parquet"`` (one parquet file), ``"disk"`` (a ``save_to_disk``
            folder), ``"folder"`` (one class-folder dataset) or ``"root"`` (a folder of them).
        location: Hub repository id or filesystem path.
        name: Short name (the folder name, or the repository id); prefixes image identities.
        revision: Hub revision (branch, tag or commit), or None for the default branch.
    """

    kind: str
    location: str
    name: str
    revision: str | None = None

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.kind == "hub":
            return f"hub:{self.location}" + (f"@{self.revision}" if self.revision else "")
        return f"{self.kind} {self.location}"


def _is_image_file(entry: os.DirEntry) -> bool:
    return (
        not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )


def _list_directory(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return list(entries)


def _subdirectories(path: Path) -> list[Path]:
    return sorted(
        Path(entry.path)
        for entry in _list_directory(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _has_images(path: Path) -> bool:
    return any(_is_image_file(entry) for entry in _list_directory(path))


def _is_class_folder_dataset(path: Path) -> bool:
    return any(_has_images(class_dir) for class_dir in _subdirectories(path))


def _source_from_path(path: Path, spec: str) -> DataSource:
    location = os.fspath(path)
    if path.is_file():
        if path.suffix == ".parquet":
            return DataSource("parquet", location, path.stem)
        raise DataSourceError(
            f"data source {spec!r} is a file but not a .parquet file; pass a folder in "
            "class-folder layout, a data root, a parquet or save_to_disk copy, or hub:<repo id>"
        )
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return DataSource("disk", location, path.name)
    # The hub's own layout (data/<split>-*.parquet) first; image folders before any other parquet
    # file, so a stray one (a results table saved in a data root) does not turn a folder of
    # datasets into a "hub copy". Parquet files in other places (top level, or the hub's
    # <config>/<split>/*.parquet conversion) still make a hub copy when there are no images.
    if (path / "data").is_dir() and next((path / "data").rglob("*.parquet"), None) is not None:
        return DataSource("hub_copy", location, path.name)
    if _is_class_folder_dataset(path):
        return DataSource("folder", location, path.name)
    if any(_is_class_folder_dataset(sub) for sub in _subdirectories(path)):
        return DataSource("root", location, path.name)
    if next(path.rglob("*.parquet"), None) is not None:
        return DataSource("hub_copy", location, path.name)
    raise DataSourceError(
        f"data source {spec!r} ({path}) holds no images in class-folder layout "
        "(<folder>/<class>/<image>), no datasets in such layout (<root>/<dataset>/<class>/"
        "<image>), and no parquet or save_to_disk copy"
    )


def _hub_error(repo_id: str, cause: BaseException | str) -> DataSourceError:
    return DataSourceError(
        f"could not load {repo_id!r} from the Hugging Face hub ({cause}). To use local data, set "
        f"{DATA_ENV_VAR} to a folder of class-folder datasets (for example one holding "
        "NWPU-RESISC45/<class>/*.jpg), or pass --data (DataConfig(source=...)) with a class-"
        "folder dataset, a data root, or a parquet / save_to_disk copy of the dataset"
    )


def resolve_source(source: str | os.PathLike | None = None) -> DataSource:
    """Resolve a source spec (see the module docstring) to a :class:`DataSource`.

    Raises:
        DataSourceError: the spec names nothing that exists, or ``$ORL_GYM_DATA`` names a
            missing folder.
    """
    data_root = os.environ.get(DATA_ENV_VAR) or None
    if source is None:
        if data_root is None:
            return DataSource("hub", HUB_DATASET_ID, HUB_DATASET_ID)
        if not Path(data_root).is_dir():
            raise DataSourceError(
                f"{DATA_ENV_VAR}={data_root!r} is not a folder (relative paths are relative to "
                f"the working directory, {os.getcwd()}); point it at a folder of class-folder "
                "datasets or unset it to use the hub"
            )
        return _source_from_path(Path(data_root), data_root)

    spec = os.fspath(source)
    if spec.startswith("hub:"):
        repo_id, _, revision = spec[len("hub:") :].partition("@")
        if not repo_id:
            raise DataSourceError(
                f"data source {spec!r} names no repository: use hub:<owner>/<name>"
            )
        return DataSource("hub", repo_id, repo_id, revision or None)
    path = Path(spec).expanduser()
    if path.exists():
        return _source_from_path(path, spec)
    if data_root is not None and Path(data_root, spec).is_dir():
        return _source_from_path(Path(data_root, spec), spec)
    if data_root is not None and Path(data_root).is_dir():
        names = [sub.name for sub in _subdirectories(Path(data_root))]
        where = f"not a dataset under {DATA_ENV_VAR}={data_root!r} (it holds {names})"
    else:
        where = f"and {DATA_ENV_VAR} is not set to a data root"
    raise DataSourceError(
        f"data source {spec!r} is not an existing path, not hub:<repo id>[@<revision>], {where}"
    )


# --------------------------------------------------------------------------------------------
# Loading: every source becomes a list of entries (identity, label, where the bytes are).


@dataclass(frozen=True)
class _ClassInfo:
    name: str  # as listed in PairDataset.classes
    native: str  # the class's own name in its dataset
    dataset: str  # the dataset's name (key of CATEGORY_ALIASES' inner dicts, lowercased)


@dataclass(frozen=True)
class _Entry:
    name: str  # identity shown to users; hashed for the split of unsplit sources
    label: int
    path: str | None = None  # a file on disk ...
    row: int | None = None  # ... or a row of the Arrow table


def _scan_class_folders(
    dataset_dir: Path, dataset_name: str, prefix: str
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Class names and (identity, class, path) of every image file of one class-folder dataset."""
    classes, files = [], []
    for class_dir in _subdirectories(dataset_dir):
        names = sorted(entry.name for entry in _list_directory(class_dir) if _is_image_file(entry))
        if not names:
            continue
        classes.append(prefix + class_dir.name)
        files.extend(
            (
                f"{dataset_name}/{class_dir.name}/{name}",
                prefix + class_dir.name,
                os.path.join(class_dir, name),
            )
            for name in names
        )
    return classes, files


def _load_hub_dataset(location: str, *, revision: str | None, cache_dir: str | None) -> Any:
    """``datasets.load_dataset`` for a hub repository or a local folder in the hub's layout."""
    import datasets  # deferred: importing datasets costs ~1 s and folders do not need it

    return datasets.load_dataset(location, revision=revision, cache_dir=cache_dir)


def _image_and_label_columns(dataset: Any, where: str) -> tuple[str, str, list[str]]:
    import datasets

    image_columns = [k for k, f in dataset.features.items() if isinstance(f, datasets.Image)]
    label_columns = [k for k, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)]
    if len(image_columns) != 1 or len(label_columns) != 1:
        raise DataSourceError(
            f"{where} must have one Image column and one ClassLabel column (the hub schema of "
            f"{HUB_DATASET_ID}: image, label); its features are {dict(dataset.features)}"
        )
    return image_columns[0], label_columns[0], list(dataset.features[label_columns[0]].names)


# --------------------------------------------------------------------------------------------
# Decoding


def _decode(data: bytes | str) -> torch.Tensor:
    """Decode an encoded image (bytes or a file path) to (3, H, W) uint8 RGB, upright.

    PIL rather than torchvision.io, whose codecs are deprecated since torchvision 0.29; PIL is
    as fast here (256 px PNG ~2 ms, 150 px JPEG ~0.5 ms) and reads every format.

    Raises:
        ValueError: a floating-point image, or 32-bit integers beyond 0..65535 (no 8-bit scale).
    """
    source = data if isinstance(data, str) else io.BytesIO(data)
    with PILImage.open(source) as opened:
        transpose = _ORIENTATION_TRANSPOSE.get(_exif_orientation(opened))
        image = opened.transpose(transpose) if transpose is not None else opened
        if image.mode.startswith("I;16"):
            # 16-bit grayscale: convert("RGB") would clip at 255; keep the high byte instead.
            array = _gray_to_rgb((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
        elif image.mode == "I":
            # 32-bit integers: convert("RGB") clips at 255 too. Values that fit 16 bits are read
            # as 16-bit data (older Pillow opened 16-bit PNGs in this mode): the high-byte rule.
            values = np.asarray(image, dtype=np.int64)
            lowest, highest = (int(values.min()), int(values.max())) if values.size else (0, 0)
            if lowest < 0 or highest > 65535:
                raise ValueError(
                    f"32-bit integer image (PIL mode 'I') with values {lowest}..{highest}, outside "
                    "the 16-bit range 0..65535, has no defined 8-bit scale: convert it to 8- or "
                    "16-bit"
                )
            array = _gray_to_rgb((values >> 8).astype(np.uint8))
        elif image.mode == "F":
            # convert("RGB") clips here too (a 0..1 float image turns black).
            raise ValueError(
                "floating-point image (PIL mode 'F') has no defined 8-bit scale (it may hold "
                "0..1, 0..255 or physical units): convert it to 8- or 16-bit"
            )
        else:
            # L, LA, P, RGBA, CMYK, YCbCr ... -> RGB; alpha is dropped, not composited.
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}
"""EXIF Orientation -> the transpose that displays the image upright (ImageOps.exif_transpose's)."""


def _exif_orientation(image: PILImage.Image) -> int:
    """The EXIF Orientation (1-8) of a just-opened image that is still to be applied, from its
    header alone; 1 when absent.

    Read the same way by :func:`_decode` and :func:`_image_size`, so the sizes found by the
    header scan always match the decoded images. It calls the base class's getexif because PNG's
    override decodes the whole image to look for metadata after the pixel data: the header scan
    would become as slow as decoding.
    """
    if image.format == "TIFF":
        # Pillow's TIFF plugin applies the tag itself: the size on open, the pixels on load.
        return 1
    try:
        orientation = PILImage.Image.getexif(image).get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block: the pixels may still be fine, keep them as stored
        return 1
    return orientation if orientation in _ORIENTATION_TRANSPOSE else 1


def _jpeg_round_trip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode (B, 3, H, W) uint8 CPU images as JPEG at ``quality`` with PIL."""
    decoded = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        PILImage.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with PILImage.open(buffer) as jpeg:
            decoded.append(np.asarray(jpeg.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()


# Bad files make PIL raise OSError, ValueError, SyntaxError, struct.error, zlib.error,
# DecompressionBombError ... with no common base below Exception. The two places that decode
# (the header scan and _image) catch Exception: a broken file must never stop an epoch.


def _image_size(data: bytes | str) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels, as :func:`_decode`
    returns it: EXIF orientations 5-8 (a quarter turn or a transpose) swap the sides."""
    source = data if isinstance(data, str) else io.BytesIO(data)
    with PILImage.open(source) as image:
        width, height = image.size
        if _exif_orientation(image) >= 5:
            width, height = height, width
    return height, width


def _normalize_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


_PAPER_BY_KEY = {_normalize_name(paper): resisc for paper, resisc in PAPER_CATEGORIES.items()}
_RESISC45_BY_KEY = {_normalize_name(name): name for name in RESISC45_CLASSES}


def _category_keys(name: str, dataset: str | None) -> set[str]:
    """Normalized native class names that category ``name`` (a paper, RESISC45 or native name)
    denotes in ``dataset`` (its stand-in from CATEGORY_ALIASES included; every dataset's stand-in
    when ``dataset`` is None)."""
    key = _normalize_name(name)
    resisc = _PAPER_BY_KEY.get(key) or _RESISC45_BY_KEY.get(key)
    keys = {key}
    if resisc is not None:
        keys.add(_normalize_name(resisc))
        aliases = CATEGORY_ALIASES.get(resisc, {})
        for alias in aliases.values() if dataset is None else [aliases.get(dataset)]:
            if alias is not None:
                keys.add(_normalize_name(alias))
    return keys


def paper_category(class_name: str) -> str | None:
    """The paper's scene category ("Forest", ...) of a class name of :attr:`PairDataset.classes`
    ("aid150/Forest", "forest", a RESISC45 name), by the same matching as ``categories=``; None
    when the class is none of the eight."""
    # Classes of a single-dataset source carry no "<dataset>/" prefix: any dataset's stand-in counts.
    dataset, _, native = class_name.rpartition("/")
    native_key = _normalize_name(native)
    # Lower-cased like _ClassInfo.dataset and CATEGORY_ALIASES' keys: "AID150/Commercial" is AID.
    dataset_key = dataset.lower() or None
    return next((paper for paper in PAPER_CATEGORIES if native_key in _category_keys(paper, dataset_key)), None)


def _batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int >= 1, or ValueError."""
    size = _integer(batch_size)
    if size is None or size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return size


def _list_names(names: Sequence[str], limit: int = 60) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# The dataset


class PairDataset:
    """Images of one split of one source, served as batched (HR, LR) pairs.

    Each image is decoded on first use and kept in memory (``DataConfig.cache_images``), so
    repeated resets on the same images cost only the crop and the downsampling: a batch of 64
    pairs at HR 64x64 takes ~4-15 ms warm on a shared 2-core CPU, against ~0.2-0.4 s for one
    forward pass of the tiny UNet on that batch (experiments/bench_data.py).

    Args:
        config: Source, split, categories, sizes and degradations.
        device: Where ``hr`` and ``lr`` of every batch are made.

    Attributes:
        config: The configuration.
        source: The resolved source.
        classes: Class names; ``PairBatch.labels`` index this list. For a data root of several
            datasets they are ``"<dataset>/<class>"``.
        device: Device of the batches.
    """

    def __init__(
        self, config: DataConfig = DataConfig(), *, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.source = resolve_source(config.source)
        self._arrow: Any = None
        self._arrow_image_column = ""
        self._generator = torch.Generator().manual_seed(config.seed)
        self.unreadable: dict[str, str] = {}
        """Identity -> reason of every image skipped as unreadable so far."""

        infos, entries = self._load_entries()
        self.classes: list[str] = [info.name for info in infos]
        self._class_infos = infos
        entries = self._select_categories(entries)
        self._entries, sizes = self._check_images(entries)
        if not self._entries:
            raise ValueError(
                f"no usable images in split {config.split!r} of {self.source.describe()} "
                f"(categories={config.categories}, hr_size={config.hr_size}); classes that "
                f"exist: {_list_names(self.classes)}"
            )
        self.image_sizes = torch.tensor(sizes, dtype=torch.int64)
        """(N, 2) int64: (height, width) of every image in pixels."""
        self.labels = torch.tensor([entry.label for entry in self._entries], dtype=torch.int64)
        """(N,) int64: class index of every image."""
        self.names = [entry.name for entry in self._entries]
        """Identity of every image."""
        self._cache: list[torch.Tensor | None] = [None] * len(self._entries)

    # ---------------------------------------------------------------- loading

    def _load_entries(self) -> tuple[list[_ClassInfo], list[_Entry]]:
        source, config = self.source, self.config
        if source.kind in ("folder", "root"):
            return self._load_folders()
        if source.kind == "hub":
            try:
                loaded = _load_hub_dataset(
                    source.location, revision=source.revision, cache_dir=config.hub_cache_dir
                )
            except (ConnectionError, OSError) as error:
                # OSError covers the hub client's errors (unreachable host, offline mode,
                # repository not found); a bad local copy is reported by datasets itself.
                raise _hub_error(source.location, error) from error
        elif source.kind == "hub_copy":
            loaded = _load_hub_dataset(
                source.location, revision=None, cache_dir=config.hub_cache_dir
            )
        elif source.kind == "disk":
            import datasets

            loaded = datasets.load_from_disk(source.location)
        else:  # parquet
            import datasets

            loaded = datasets.load_dataset(
                "parquet", data_files=source.location, split="train", cache_dir=config.hub_cache_dir
            )
        return self._load_arrow(loaded)

    def _load_folders(self) -> tuple[list[_ClassInfo], list[_Entry]]:
        root = Path(self.source.location)
        if self.source.kind == "folder":
            dataset_dirs, prefixed = [root], False
        else:
            dataset_dirs = [sub for sub in _subdirectories(root) if _is_class_folder_dataset(sub)]
            prefixed = True
        infos: list[_ClassInfo] = []
        files: list[tuple[str, str, str]] = []
        for dataset_dir in dataset_dirs:
            prefix = f"{dataset_dir.name}/" if prefixed else ""
            classes, found = _scan_class_folders(dataset_dir, dataset_dir.name, prefix)
            infos += [
                _ClassInfo(name, name[len(prefix) :], dataset_dir.name.lower()) for name in classes
            ]
            files += found
        label_of = {info.name: label for label, info in enumerate(infos)}
        entries = [
            _Entry(identity, label_of[class_name], path=path)
            for identity, class_name, path in files
            if assign_split(
                identity, seed=self.config.split_seed, fractions=self.config.split_fractions
            )
            == self.config.split
        ]
        return infos, entries

    def _load_arrow(self, loaded: Any) -> tuple[list[_ClassInfo], list[_Entry]]:
        import datasets

        config, source = self.config, self.source
        has_splits = isinstance(loaded, datasets.DatasetDict)
        if has_splits:
            if config.split not in loaded:
                raise DataSourceError(
                    f"{source.describe()} has splits {list(loaded)}, not {config.split!r}"
                )
            dataset = loaded[config.split]
        else:
            dataset = loaded
        image_column, label_column, class_names = _image_and_label_columns(
            dataset, source.describe()
        )
        # Undecoded: this module decodes (faster, and a broken image is skipped, not raised).
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        # Only the image column is read per row from here on.
        self._arrow, self._arrow_image_column = dataset.select_columns([image_column]), image_column
        dataset_key = "resisc45" if source.location == HUB_DATASET_ID else source.name.lower()
        infos = [_ClassInfo(name, name, dataset_key) for name in class_names]

        entries: list[_Entry] = []
        # Sources with splits need only the labels; the others also the images, for identities.
        columns = [label_column] if has_splits else [label_column, image_column]
        row = -1
        unlabelled = 0
        for batch in dataset.select_columns(columns).iter(batch_size=1024):
            labels = batch[label_column]
            images = batch[image_column] if not has_splits else [None] * len(labels)
            for label, image in zip(labels, images, strict=True):
                row += 1
                # ClassLabel stores a missing label as -1 (or null): as an index it would silently
                # name the last class.
                if label is None or label < 0:
                    unlabelled += 1
                    continue
                if has_splits:
                    entries.append(
                        _Entry(f"{source.name}/{config.split}/{row}", int(label), row=row)
                    )
                    continue
                # Split by identity: source name / class / stored file name (content hash when
                # no name was stored).
                stored = (
                    image.get("path")
                    or "blake2b-"
                    + hashlib.blake2b(image.get("bytes") or b"", digest_size=16).hexdigest()
                )
                name = f"{source.name}/{class_names[label]}/{stored}"
                split = assign_split(name, seed=config.split_seed, fractions=config.split_fractions)
                if split == config.split:
                    entries.append(_Entry(name, int(label), row=row))
        if unlabelled:
            where = f"split {config.split!r} of " if has_splits else ""
            if unlabelled == row + 1:
                raise DataSourceError(
                    f"every one of the {unlabelled} rows of {where}{source.describe()} has a "
                    f"missing class label ({label_column} = -1); every image needs its class "
                    "(labels, categories=, per-category scores): label the rows"
                )
            warnings.warn(
                f"skipped {unlabelled} of {row + 1} row(s) of {where}{source.describe()} with a "
                f"missing class label ({label_column} = -1)",
                DataWarning,
                stacklevel=4,
            )
        return infos, entries

    def _raw(self, entry: _Entry) -> bytes | str:
        """Where entry's encoded image is: a file path, or the bytes stored in its Arrow row."""
        if entry.path is not None:
            return entry.path
        return self._stored_image(entry.name, self._arrow[entry.row][self._arrow_image_column])

    @staticmethod
    def _stored_image(name: str, image: dict) -> bytes | str:
        # The datasets Image feature stores {"bytes": ..., "path": ...}; a path alone refers to a
        # file next to the data (an un-embedded imagefolder copy).
        if image.get("bytes") is not None:
            return image["bytes"]
        if image.get("path"):
            return image["path"]
        raise UnreadableImageError(f"{name}: the row holds neither image bytes nor a path")

    def _raw_all(self, entries: list[_Entry]) -> Iterator[bytes | str | Exception]:
        """``_raw`` of each entry in order; Arrow rows are read in batches (per-row access costs
        ~150 us, a scan of RESISC45's train split several seconds)."""
        if self._arrow is None:
            yield from (entry.path for entry in entries)
            return
        rows = self._arrow.select([entry.row for entry in entries])
        entry_iter = iter(entries)
        for batch in rows.iter(batch_size=256):
            for image in batch[self._arrow_image_column]:
                entry = next(entry_iter)
                try:
                    yield self._stored_image(entry.name, image)
                except UnreadableImageError as error:
                    yield error

    def _match_classes(self, name: str) -> list[int]:
        """Indices into ``classes`` of the classes that category ``name`` denotes (see module doc)."""
        exact = [label for label, info in enumerate(self._class_infos) if info.name == name]
        if exact:
            return exact
        return [label for label, info in enumerate(self._class_infos)
                if _normalize_name(info.native) in _category_keys(name, info.dataset)]

    def _select_categories(self, entries: list[_Entry]) -> list[_Entry]:
        if self.config.categories is None:
            return entries
        selected: set[int] = set()
        for name in self.config.categories:
            labels = self._match_classes(name)
            if not labels:
                key = _normalize_name(name)
                resisc = _PAPER_BY_KEY.get(key) or _RESISC45_BY_KEY.get(key)
                known = f" (RESISC45 {resisc!r}, no stand-in here)" if resisc else ""
                raise ValueError(
                    f"category {name!r}{known} matches no class of {self.source.describe()}. "
                    f"Classes that exist: {_list_names(self.classes)}. Paper names: "
                    f"{list(PAPER_CATEGORIES)}"
                )
            selected.update(labels)
        return [entry for entry in entries if entry.label in selected]

    def _check_images(self, entries: list[_Entry]) -> tuple[list[_Entry], list[tuple[int, int]]]:
        """Read every header: drop unreadable and undersized images, one warning for each kind."""
        kept, sizes, undersized = [], [], []
        unreadable_before = len(self.unreadable)
        for entry, raw in zip(entries, self._raw_all(entries), strict=True):
            try:
                if isinstance(raw, Exception):
                    raise raw
                height, width = _image_size(raw)
            except Exception as error:  # any decoder error: see _image_size
                self.unreadable[entry.name] = f"{type(error).__name__}: {error}"
                continue
            if min(height, width) < self.config.hr_size:
                undersized.append(f"{entry.name} ({width}x{height})")
                continue
            kept.append(entry)
            sizes.append((height, width))
        newly_unreadable = list(self.unreadable.items())[unreadable_before:]
        if newly_unreadable:
            listed = "; ".join(f"{name} ({reason})" for name, reason in newly_unreadable[:20])
            more = f"; and {len(newly_unreadable) - 20} more" if len(newly_unreadable) > 20 else ""
            warnings.warn(
                f"skipped {len(newly_unreadable)} unreadable image file(s) of {len(entries)}: "
                f"{listed}{more}",
                DataWarning,
                stacklevel=3,
            )
        if undersized:
            warnings.warn(
                f"skipped {len(undersized)} of {len(entries)} image(s) with a side shorter than "
                f"hr_size={self.config.hr_size} px (lower hr_size to keep them): "
                f"{_list_names(undersized, limit=5)}",
                DataWarning,
                stacklevel=3,
            )
        return kept, sizes

    # ---------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        config = self.config
        return (
            f"PairDataset({self.source.describe()}, split={config.split!r}, {len(self)} images, "
            f"{len(self.classes)} classes, hr_size={config.hr_size}, scale={config.scale}, "
            f"crop={config.crop!r}, device={self.device})"
        )

    def image(self, index: int) -> torch.Tensor:
        """The whole image ``index`` as (3, H, W) uint8 RGB on the CPU, decoded once and cached.

        Raises:
            UnreadableImageError: its pixel data cannot be decoded (warned once, then recorded
                in ``unreadable``).
        """
        return self._image(index, warn=True)

    def _image(self, index: int, *, warn: bool) -> torch.Tensor:
        if not 0 <= index < len(self._entries):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        cached = self._cache[index]
        if cached is not None:
            return cached
        entry = self._entries[index]
        if entry.name in self.unreadable:
            raise UnreadableImageError(f"{entry.name}: {self.unreadable[entry.name]}")
        try:
            image = _decode(self._raw(entry))
        except Exception as error:  # any decoder error: see _image_size
            self.unreadable[entry.name] = f"{type(error).__name__}: {error}"
            if warn:
                warnings.warn(
                    f"skipped unreadable image {entry.name} ({self.unreadable[entry.name]}); "
                    f"{len(self.unreadable)} unreadable image(s) skipped so far",
                    DataWarning,
                    stacklevel=4,
                )
            raise UnreadableImageError(f"{entry.name}: {error}") from error
        if self.config.cache_images:
            self._cache[index] = image
        return image

    def _index_list(self, indices: Sequence[int] | torch.Tensor | np.ndarray, what: str) -> list[int]:
        """``indices`` as a list of ints in [0, len), or TypeError / IndexError saying what is wrong.

        A bool mask would otherwise count as indices 0 and 1 and a float be truncated, and
        negative or too large indices would wrap around silently.
        """
        if isinstance(indices, (torch.Tensor, np.ndarray)):
            if isinstance(indices, torch.Tensor):
                kind, mask_to_indices = "tensor", "torch.nonzero(mask).flatten()"
                is_bool = indices.dtype == torch.bool
                is_integer = not (is_bool or indices.is_floating_point() or indices.is_complex())
            else:
                kind, mask_to_indices = "array", "np.flatnonzero(mask)"
                is_bool = indices.dtype == np.bool_
                is_integer = np.issubdtype(indices.dtype, np.integer)
            if not is_integer:
                hint = f" (for a mask pass its indices, {mask_to_indices})" if is_bool else ""
                raise TypeError(
                    f"{what}: indices must be integers, got a {indices.dtype} {kind}{hint}"
                )
            values = indices.flatten().tolist()
        else:
            values = []
            for value in indices:
                index = _integer(value)
                if index is None:
                    raise TypeError(
                        f"{what}: indices must be integers, got {value!r} ({type(value).__name__})"
                    )
                values.append(index)
        bad = [index for index in values if not 0 <= index < len(self)]
        if bad:
            raise IndexError(
                f"{what}: image indices {_list_names([str(i) for i in bad], limit=10)} out of "
                f"range: this dataset has {len(self)} images, indices 0..{len(self) - 1}"
            )
        return values

    def _readable_image(self, index: int) -> tuple[int, torch.Tensor]:
        """Image ``index``, or the next readable one after it (wrapping) when it is unreadable."""
        for offset in range(len(self._entries)):
            candidate = (index + offset) % len(self._entries)
            try:
                return candidate, self._image(candidate, warn=True)
            except UnreadableImageError:
                continue
        raise UnreadableImageError(f"none of the {len(self)} images of {self!r} can be decoded")

    def preload(self) -> PairDataset:
        """Decode and cache every image now (one warning for all unreadable ones); returns self."""
        before = len(self.unreadable)
        for index in range(len(self)):
            try:
                self._image(index, warn=False)
            except UnreadableImageError:
                pass
        found = list(self.unreadable.items())[before:]
        if found:
            listed = "; ".join(f"{name} ({reason})" for name, reason in found[:20])
            warnings.warn(
                f"skipped {len(found)} unreadable image(s) of {len(self)}: {listed}",
                DataWarning,
                stacklevel=2,
            )
        return self

    def category_indices(self, name: str, *, missing_ok: bool = False) -> torch.Tensor:
        """Indices (into this dataset) of the images of one category, for per-category evaluation.

        Args:
            name: A class name from ``classes``, a RESISC45 name, or a paper name
                (:data:`PAPER_CATEGORIES`); mapped per dataset as in the module docstring.
            missing_ok: Return an empty tensor instead of raising when no image matches (the
                category has no stand-in in this source, e.g. ``desert`` in UC Merced).

        Returns:
            (K,) int64, ascending.
        """
        labels = self._match_classes(name)
        indices = torch.nonzero(torch.isin(self.labels, torch.tensor(labels, dtype=torch.int64)))
        indices = indices.flatten()
        if indices.numel() == 0 and not missing_ok:
            present = sorted({self.classes[label] for label in self.labels.tolist()})
            raise ValueError(
                f"no image of category {name!r} in this dataset; classes present: "
                f"{_list_names(present)}"
            )
        return indices

    def full_crop_shape(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` under ``crop="full"``: floored to multiples of
        ``DataConfig.full_crop_multiple``."""
        multiple = self.config.full_crop_multiple
        height, width = self.image_sizes[index].tolist()
        return height // multiple * multiple, width // multiple * multiple

    def indices_by_shape(
        self, indices: torch.Tensor | None = None
    ) -> dict[tuple[int, int], torch.Tensor]:
        """Image indices grouped by their ``crop="full"`` HR shape (H, W), largest group first.

        ``crop="full"`` batches must hold one shape; batch each group separately.

        Args:
            indices: Group only these images (1-D, ascending stays ascending within a group);
                None: every image. Checked like :meth:`pairs`' indices.
        """
        if indices is None:
            indices = torch.arange(len(self))
        else:
            indices = torch.tensor(self._index_list(indices, "indices_by_shape"), dtype=torch.long)
        multiple = self.config.full_crop_multiple
        shapes = self.image_sizes[indices] // multiple * multiple
        unique, inverse, counts = torch.unique(
            shapes, dim=0, return_inverse=True, return_counts=True
        )
        order = sorted(
            range(len(unique)), key=lambda i: (-int(counts[i]), tuple(unique[i].tolist()))
        )
        return {tuple(unique[i].tolist()): indices[inverse == i] for i in order}

    def spread_indices(self, count: int) -> torch.Tensor:
        """``count`` image indices evenly spread over the dataset (ascending; images are ordered
        by class, so every class is covered); ``count <= 0`` or ``>= len``: every image."""
        if count <= 0 or count >= len(self):
            return torch.arange(len(self))
        return torch.linspace(0, len(self) - 1, count).round().long().unique()

    # ---------------------------------------------------------------- pairs

    def _crop(self, image: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        config = self.config
        size = config.hr_size
        height, width = image.shape[-2:]
        if config.crop == "random":
            top = int(offset[0] * (height - size + 1))
            left = int(offset[1] * (width - size + 1))
            return image[:, top : top + size, left : left + size]
        if config.crop == "center":
            top, left = (height - size) // 2, (width - size) // 2
            return image[:, top : top + size, left : left + size]
        if config.crop == "full":
            multiple = config.full_crop_multiple
            crop_h, crop_w = height // multiple * multiple, width // multiple * multiple
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            return image[:, top : top + crop_h, left : left + crop_w]
        # resize: the centered square, antialiased bicubic to hr_size, rounded back to uint8.
        side = min(height, width)
        square = image[:, (height - side) // 2 :, (width - side) // 2 :][:, :side, :side]
        return TF.resize(
            square, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True
        )

    def pairs(
        self,
        indices: Sequence[int] | torch.Tensor,
        *,
        generator: Generators = None,
    ) -> PairBatch:
        """(HR, LR) pairs of the given images.

        Args:
            indices: Image indices in [0, len) (integers; a bool mask or floats are a TypeError,
                an index out of range an IndexError); repeats are allowed.
            generator: Source of the random crop offsets and the LR noise; the same generator
                state gives the same batch. A list gives one generator per image (image k's
                crop and noise come from generator k alone, exactly as ``pairs([index_k],
                generator=generator_k)`` would make them: what a batch of independently seeded
                environments needs). None uses the dataset's own generator (seeded with
                ``config.seed``, advancing with each call).

        Returns:
            A :class:`PairBatch`. With ``crop="full"`` every image must have the same full-crop
            shape (see :meth:`indices_by_shape`), else ValueError.
        """
        indices = self._index_list(indices, "pairs")
        if not indices:
            raise ValueError("pairs() needs at least one index")
        generator = generator if generator is not None else self._generator
        # Two draws per image whatever the crop mode, so the noise stream does not depend on it.
        offsets = _per_image_draw(torch.rand, (len(indices), 2), generator, torch.device("cpu"))

        used, crops = [], []
        for index, offset in zip(indices, offsets, strict=True):
            index, image = self._readable_image(index)
            used.append(index)
            crops.append(self._crop(image, offset))
        shapes = {tuple(crop.shape[-2:]) for crop in crops}
        if len(shapes) > 1:
            raise ValueError(
                f"crop='full' images of different shapes {sorted(shapes)} cannot share a batch: "
                "group indices with indices_by_shape(), or use crop='center' with hr_size"
            )
        hr_uint8 = torch.stack(crops)
        if self.device.type == "cuda":
            hr_uint8 = hr_uint8.pin_memory().to(self.device, non_blocking=True)
        else:
            hr_uint8 = hr_uint8.to(self.device)
        # In place: at 64 x 256 x 256 each full-size temporary costs tens of ms in page faults.
        hr = hr_uint8.float().div_(255)
        lr = degrade(
            hr,
            scale=self.config.scale,
            degradation=self.config.degradation,
            generator=generator,
            quantize=True,
            check_values=False,  # 8-bit pixels / 255: in [0, 1] by construction, no host sync per reset
        )
        used_tensor = torch.tensor(used, dtype=torch.int64)
        return PairBatch(
            hr=hr,
            lr=lr,
            labels=self.labels[used_tensor],
            indices=used_tensor,
            names=[self.names[i] for i in used],
        )

    def sample(self, batch_size: int, *, generator: torch.Generator) -> PairBatch:
        """``batch_size`` random images (distinct while the dataset has enough) as pairs.

        Indices and crops both come from ``generator``: the same state gives the same batch.
        """
        batch_size = _batch_size(batch_size)
        if batch_size <= len(self):
            indices = torch.randperm(len(self), generator=generator, device=generator.device)[
                :batch_size
            ]
        else:
            indices = torch.randint(
                len(self), (batch_size,), generator=generator, device=generator.device
            )
        return self.pairs(indices.cpu(), generator=generator)

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> Iterator[PairBatch]:
        """One epoch: every image once, in a seeded random order (or in order).

        Args:
            batch_size: Images per batch; the last batch may be smaller unless ``drop_last``.
            generator: Source of the order and the crops; None uses the dataset's own.
            shuffle: Random order (True) or index order (False).
            drop_last: Drop a final smaller batch.

        Raises:
            ValueError: ``batch_size`` is not a positive int (at the call, not the first batch).
        """
        # Checked here, not in the generator below, which would only run at the first next().
        return self._epoch(
            _batch_size(batch_size), generator=generator, shuffle=shuffle, drop_last=drop_last
        )

    def _epoch(
        self, batch_size: int, *, generator: torch.Generator | None, shuffle: bool, drop_last: bool
    ) -> Iterator[PairBatch]:
        generator = generator if generator is not None else self._generator
        if shuffle:
            order = torch.randperm(len(self), generator=generator, device=generator.device).cpu()
        else:
            order = torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            chunk = order[start : start + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            yield self.pairs(chunk, generator=generator)
