"""Which images, which split, and how they become (HR, LR) pairs: :class:`DataConfig`, checked
when it is made, so a bad value is one clear error before anything loads."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from orl_gym.data.checks import integer_or_none
from orl_gym.data.degradations import Degradation, blur_radius
from orl_gym.data.splits import DEFAULT_SPLIT_FRACTIONS, SPLITS

CROP_MODES = ("random", "center", "full", "resize")
SCALES = (2, 4, 8)


@dataclass(frozen=True)
class DataConfig:
    """Which images, which split, and how they become (HR, LR) pairs.

    Attributes:
        source: Where the images come from; see :mod:`orl_gym.data`. None: ``$ORL_GYM_DATA``
            if set, else ``hub:timm/resisc45``.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        categories: Class names to keep (RESISC45 names, the paper's names, or the source's own
            class names); None keeps every class.
        hr_size: Side of the square HR crop in pixels; the LR side is ``hr_size // scale``.
            Images with a side shorter than this are skipped. For ``crop="full"`` it is only
            that minimum.
        scale: Downsampling factor, 2, 4 or 8.
        crop: ``"random"``, ``"center"``, ``"full"`` or ``"resize"``; see :mod:`orl_gym.data`.
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
            as_int = integer_or_none(value)
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
        radius = blur_radius(self.degradation.blur_sigma)
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
