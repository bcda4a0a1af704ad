"""Where images come from: a source spec (``None``, ``"hub:<repo id>[@<revision>]"``, a folder,
a data root, a hub-schema copy, a dataset name) resolved to a :class:`DataSource`; the folder
scan and the hub loading it needs. :mod:`orl_gym.data` describes every kind of source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_ENV_VAR = "ORL_GYM_DATA"
"""Environment variable naming a local data root (a folder of class-folder datasets)."""

HUB_DATASET_ID = "timm/resisc45"
"""Hub dataset loaded when no source is given and ``$ORL_GYM_DATA`` is unset."""
IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


class DataSourceError(RuntimeError):
    """The data source could not be found or loaded."""



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


def is_image_file(entry: os.DirEntry) -> bool:
    return (
        not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )


def list_directory(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return list(entries)


def subdirectories(path: Path) -> list[Path]:
    return sorted(
        Path(entry.path)
        for entry in list_directory(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def has_images(path: Path) -> bool:
    return any(is_image_file(entry) for entry in list_directory(path))


def is_class_folder_dataset(path: Path) -> bool:
    return any(has_images(class_dir) for class_dir in subdirectories(path))


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
    if is_class_folder_dataset(path):
        return DataSource("folder", location, path.name)
    if any(is_class_folder_dataset(sub) for sub in subdirectories(path)):
        return DataSource("root", location, path.name)
    if next(path.rglob("*.parquet"), None) is not None:
        return DataSource("hub_copy", location, path.name)
    raise DataSourceError(
        f"data source {spec!r} ({path}) holds no images in class-folder layout "
        "(<folder>/<class>/<image>), no datasets in such layout (<root>/<dataset>/<class>/"
        "<image>), and no parquet or save_to_disk copy"
    )


def hub_error(repo_id: str, cause: BaseException | str) -> DataSourceError:
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
        names = [sub.name for sub in subdirectories(Path(data_root))]
        where = f"not a dataset under {DATA_ENV_VAR}={data_root!r} (it holds {names})"
    else:
        where = f"and {DATA_ENV_VAR} is not set to a data root"
    raise DataSourceError(
        f"data source {spec!r} is not an existing path, not hub:<repo id>[@<revision>], {where}"
    )



def scan_class_folders(
    dataset_dir: Path, dataset_name: str, prefix: str
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Class names and (identity, class, path) of every image file of one class-folder dataset."""
    classes, files = [], []
    for class_dir in subdirectories(dataset_dir):
        names = sorted(entry.name for entry in list_directory(class_dir) if is_image_file(entry))
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


def load_hub_dataset(location: str, *, revision: str | None, cache_dir: str | None) -> Any:
    """``datasets.load_dataset`` for a hub repository or a local folder in the hub's layout."""
    import datasets  # deferred: importing datasets costs ~1 s and folders do not need it

    return datasets.load_dataset(location, revision=revision, cache_dir=cache_dir)


def image_and_label_columns(dataset: Any, where: str) -> tuple[str, str, list[str]]:
    import datasets

    image_columns = [k for k, f in dataset.features.items() if isinstance(f, datasets.Image)]
    label_columns = [k for k, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)]
    if len(image_columns) != 1 or len(label_columns) != 1:
        raise DataSourceError(
            f"{where} must have one Image column and one ClassLabel column (the hub schema of "
            f"{HUB_DATASET_ID}: image, label); its features are {dict(dataset.features)}"
        )
    return image_columns[0], label_columns[0], list(dataset.features[label_columns[0]].names)

