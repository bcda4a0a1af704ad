"""Images of one split of one source served as batched (HR, LR) pairs: :class:`PairDataset`.

HR is a crop of the decoded RGB image (``DataConfig.crop``); LR is :func:`degrade` of HR,
rounded to 8-bit levels. Both are float32 in [0, 1], NCHW, on the dataset's device. Images are
decoded on first use and cached; a file whose pixel data turn out broken is skipped with a
warning and the batch takes the next readable image (``PairBatch.indices`` says which).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from orl_gym.data.catalog import check_images, load_catalog
from orl_gym.data.checks import checked_batch_size, integer_or_none, list_names
from orl_gym.data.config import DataConfig
from orl_gym.data.degradations import Generators, degrade, per_image_draw
from orl_gym.data.images import DataWarning, UnreadableImageError, decode_image
from orl_gym.data.sources import resolve_source


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
        self,
        config: DataConfig = DataConfig(),  # noqa: B008 - a frozen dataclass, never mutated
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.source = resolve_source(config.source)
        self._generator = torch.Generator().manual_seed(config.seed)
        self.unreadable: dict[str, str] = {}
        """Identity -> reason of every image skipped as unreadable so far."""

        self._catalog = load_catalog(self.source, config)
        self.classes: list[str] = [info.name for info in self._catalog.classes]
        entries = self._catalog.select_categories(config.categories, self.source)
        self._entries, sizes = check_images(
            self._catalog, entries, hr_size=config.hr_size, unreadable=self.unreadable
        )
        if not self._entries:
            raise ValueError(
                f"no usable images in split {config.split!r} of {self.source.describe()} "
                f"(categories={config.categories}, hr_size={config.hr_size}); classes that "
                f"exist: {list_names(self.classes)}"
            )
        self.image_sizes = torch.tensor(sizes, dtype=torch.int64)
        """(N, 2) int64: (height, width) of every image in pixels."""
        self.labels = torch.tensor([entry.label for entry in self._entries], dtype=torch.int64)
        """(N,) int64: class index of every image."""
        self.names = [entry.name for entry in self._entries]
        """Identity of every image."""
        self._cache: list[torch.Tensor | None] = [None] * len(self._entries)

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
            image = decode_image(self._catalog.raw(entry))
        except Exception as error:  # any decoder error: see orl_gym.data.images
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
                index = integer_or_none(value)
                if index is None:
                    raise TypeError(
                        f"{what}: indices must be integers, got {value!r} ({type(value).__name__})"
                    )
                values.append(index)
        bad = [index for index in values if not 0 <= index < len(self)]
        if bad:
            raise IndexError(
                f"{what}: image indices {list_names([str(i) for i in bad], limit=10)} out of "
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
        labels = self._catalog.match_classes(name)
        indices = torch.nonzero(torch.isin(self.labels, torch.tensor(labels, dtype=torch.int64)))
        indices = indices.flatten()
        if indices.numel() == 0 and not missing_ok:
            present = sorted({self.classes[label] for label in self.labels.tolist()})
            raise ValueError(
                f"no image of category {name!r} in this dataset; classes present: "
                f"{list_names(present)}"
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
        offsets = per_image_draw(torch.rand, (len(indices), 2), generator, torch.device("cpu"))

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
        batch_size = checked_batch_size(batch_size)
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
            checked_batch_size(batch_size), generator=generator, shuffle=shuffle, drop_last=drop_last
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
