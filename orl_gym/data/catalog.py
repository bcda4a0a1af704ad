"""The images of one split of one source, listed without decoding them: identity, class and
where the bytes are (a file, or a row of an Arrow table); the selection by category and the
header scan that drops unreadable and undersized images.

Sources with splits (the hub, parquet copies, ``save_to_disk`` dicts) use their own; the others
are split per image by :func:`orl_gym.data.splits.assign_split`. Labels always index the
source's full class list, so they do not change with the category selection.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orl_gym.data.categories import PAPER_CATEGORIES, category_keys, normalize_name, resisc45_class
from orl_gym.data.checks import list_names
from orl_gym.data.images import DataWarning, UnreadableImageError, image_size
from orl_gym.data.sources import (
    HUB_DATASET_ID,
    DataSource,
    DataSourceError,
    hub_error,
    image_and_label_columns,
    is_class_folder_dataset,
    load_hub_dataset,
    scan_class_folders,
    subdirectories,
)
from orl_gym.data.splits import assign_split

if TYPE_CHECKING:
    from orl_gym.data.config import DataConfig


@dataclass(frozen=True)
class ClassInfo:
    name: str  # as listed in PairDataset.classes
    native: str  # the class's own name in its dataset
    dataset: str  # the dataset's name (key of CATEGORY_ALIASES' inner dicts, lowercased)


@dataclass(frozen=True)
class Entry:
    name: str  # identity shown to users; hashed for the split of unsplit sources
    label: int
    path: str | None = None  # a file on disk ...
    row: int | None = None  # ... or a row of the Arrow table


@dataclass
class Catalog:
    """Classes and image entries of one split of one source.

    Attributes:
        classes: Every class of the source, in label order.
        entries: The split's images (before any category selection or header check).
        table: For table sources, the Arrow dataset reduced to its (undecoded) image column;
            None for folders.
        image_column: The name of that column.
    """

    classes: list[ClassInfo]
    entries: list[Entry]
    table: Any = None
    image_column: str = ""

    def raw(self, entry: Entry) -> bytes | str:
        """Where entry's encoded image is: a file path, or the bytes stored in its Arrow row."""
        if entry.path is not None:
            return entry.path
        return self._stored_image(entry.name, self.table[entry.row][self.image_column])

    @staticmethod
    def _stored_image(name: str, image: dict) -> bytes | str:
        # The datasets Image feature stores {"bytes": ..., "path": ...}; a path alone refers to a
        # file next to the data (an un-embedded imagefolder copy).
        if image.get("bytes") is not None:
            return image["bytes"]
        if image.get("path"):
            return image["path"]
        raise UnreadableImageError(f"{name}: the row holds neither image bytes nor a path")

    def raw_all(self, entries: list[Entry]) -> Iterator[bytes | str | Exception]:
        """:meth:`raw` of each entry in order; Arrow rows are read in batches (per-row access
        costs ~150 us, a scan of RESISC45's train split several seconds)."""
        if self.table is None:
            yield from (entry.path for entry in entries)
            return
        rows = self.table.select([entry.row for entry in entries])
        entry_iter = iter(entries)
        for batch in rows.iter(batch_size=256):
            for image in batch[self.image_column]:
                entry = next(entry_iter)
                try:
                    yield self._stored_image(entry.name, image)
                except UnreadableImageError as error:
                    yield error

    def match_classes(self, name: str) -> list[int]:
        """Labels of the classes that category ``name`` denotes (:mod:`orl_gym.data.categories`)."""
        exact = [label for label, info in enumerate(self.classes) if info.name == name]
        if exact:
            return exact
        return [label for label, info in enumerate(self.classes)
                if normalize_name(info.native) in category_keys(name, info.dataset)]

    def select_categories(
        self, categories: tuple[str, ...] | None, source: DataSource
    ) -> list[Entry]:
        """The entries of the classes ``categories`` name (all for None); ValueError for a name
        that matches no class of ``source``."""
        if categories is None:
            return self.entries
        selected: set[int] = set()
        for name in categories:
            labels = self.match_classes(name)
            if not labels:
                resisc = resisc45_class(name)
                known = f" (RESISC45 {resisc!r}, no stand-in here)" if resisc else ""
                raise ValueError(
                    f"category {name!r}{known} matches no class of {source.describe()}. "
                    f"Classes that exist: {list_names([info.name for info in self.classes])}. "
                    f"Paper names: {list(PAPER_CATEGORIES)}"
                )
            selected.update(labels)
        return [entry for entry in self.entries if entry.label in selected]


def load_catalog(source: DataSource, config: DataConfig) -> Catalog:
    """The catalog of ``config.split`` of ``source`` (headers not read yet: :func:`check_images`)."""
    if source.kind in ("folder", "root"):
        return _load_folders(source, config)
    if source.kind == "hub":
        try:
            loaded = load_hub_dataset(
                source.location, revision=source.revision, cache_dir=config.hub_cache_dir
            )
        except (ConnectionError, OSError) as error:
            # OSError covers the hub client's errors (unreachable host, offline mode,
            # repository not found); a bad local copy is reported by datasets itself.
            raise hub_error(source.location, error) from error
    elif source.kind == "hub_copy":
        loaded = load_hub_dataset(
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
    return _load_arrow(loaded, source, config)


def _load_folders(source: DataSource, config: DataConfig) -> Catalog:
    root = Path(source.location)
    if source.kind == "folder":
        dataset_dirs, prefixed = [root], False
    else:
        dataset_dirs = [sub for sub in subdirectories(root) if is_class_folder_dataset(sub)]
        prefixed = True
    infos: list[ClassInfo] = []
    files: list[tuple[str, str, str]] = []
    for dataset_dir in dataset_dirs:
        prefix = f"{dataset_dir.name}/" if prefixed else ""
        classes, found = scan_class_folders(dataset_dir, dataset_dir.name, prefix)
        infos += [
            ClassInfo(name, name[len(prefix) :], dataset_dir.name.lower()) for name in classes
        ]
        files += found
    label_of = {info.name: label for label, info in enumerate(infos)}
    entries = [
        Entry(identity, label_of[class_name], path=path)
        for identity, class_name, path in files
        if assign_split(
            identity, seed=config.split_seed, fractions=config.split_fractions
        )
        == config.split
    ]
    return Catalog(infos, entries)


def _load_arrow(loaded: Any, source: DataSource, config: DataConfig) -> Catalog:
    import datasets

    has_splits = isinstance(loaded, datasets.DatasetDict)
    if has_splits:
        if config.split not in loaded:
            raise DataSourceError(
                f"{source.describe()} has splits {list(loaded)}, not {config.split!r}"
            )
        dataset = loaded[config.split]
    else:
        dataset = loaded
    image_column, label_column, class_names = image_and_label_columns(
        dataset, source.describe()
    )
    # Undecoded: orl_gym.data.images decodes (faster, and a broken image is skipped, not raised).
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    dataset_key = "resisc45" if source.location == HUB_DATASET_ID else source.name.lower()
    infos = [ClassInfo(name, name, dataset_key) for name in class_names]

    entries: list[Entry] = []
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
                    Entry(f"{source.name}/{config.split}/{row}", int(label), row=row)
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
                entries.append(Entry(name, int(label), row=row))
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
    # Only the image column is read per row from here on.
    table = dataset.select_columns([image_column])
    return Catalog(infos, entries, table=table, image_column=image_column)


def check_images(
    catalog: Catalog, entries: list[Entry], *, hr_size: int, unreadable: dict[str, str]
) -> tuple[list[Entry], list[tuple[int, int]]]:
    """Read every header: drop unreadable (recorded in ``unreadable``: identity -> reason) and
    undersized images, one warning for each kind; returns the kept entries and their (height,
    width)."""
    kept, sizes, undersized = [], [], []
    unreadable_before = len(unreadable)
    for entry, raw in zip(entries, catalog.raw_all(entries), strict=True):
        try:
            if isinstance(raw, Exception):
                raise raw
            height, width = image_size(raw)
        except Exception as error:  # any decoder error: see orl_gym.data.images
            unreadable[entry.name] = f"{type(error).__name__}: {error}"
            continue
        if min(height, width) < hr_size:
            undersized.append(f"{entry.name} ({width}x{height})")
            continue
        kept.append(entry)
        sizes.append((height, width))
    newly_unreadable = list(unreadable.items())[unreadable_before:]
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
            f"hr_size={hr_size} px (lower hr_size to keep them): "
            f"{list_names(undersized, limit=5)}",
            DataWarning,
            stacklevel=3,
        )
    return kept, sizes
