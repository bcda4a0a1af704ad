"""orl_gym.data from the Hugging Face hub's schema, offline: local copies in the hub's layout
(parquet files, ``save_to_disk``, one parquet file), rows without a class label, and the one
error when neither ``$ORL_GYM_DATA`` nor the hub is there.

The copies are built from real images when ORL_GYM_DATA is set, else from noise images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import SMALL, encode, load_quietly, noise_image

from orl_gym import data
from orl_gym.data import (
    RESISC45_CLASSES,
    DataConfig,
    DataSourceError,
    DataWarning,
    PairDataset,
    resolve_source,
)


def test_no_env_var_and_no_hub_is_one_clear_error(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    # Offline, and an id that no cache holds: the real load_dataset call fails at once.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(data.sources, "HUB_DATASET_ID", "orl-gym-tests/not-a-dataset")
    assert resolve_source(None).describe() == "hub:orl-gym-tests/not-a-dataset"
    with pytest.raises(DataSourceError) as raised:
        PairDataset(DataConfig(hub_cache_dir=str(tmp_path)))
    message = str(raised.value)
    assert "ORL_GYM_DATA" in message and "--data" in message and "not-a-dataset" in message


def _hub_images(data_root_or_none: Path | None) -> list[tuple[bytes, str, str]]:
    """(encoded image, file name, RESISC45 class) for a small hub-schema copy."""
    if data_root_or_none is not None:  # real images: UC Merced PNGs and AID JPEGs
        files = sorted((data_root_or_none / "ucmerced" / "forest").glob("*.png"))[:4]
        files += sorted((data_root_or_none / "aid150" / "Desert").glob("*.jpg"))[:4]
        return [
            (f.read_bytes(), f.name, "forest" if f.suffix == ".png" else "desert") for f in files
        ]
    rng = np.random.default_rng(4)
    return [
        (encode(noise_image(rng, 40, 40), "PNG"), f"{name}_{i}.png", name)
        for name in ("forest", "desert")
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory) -> Path:
    """A local copy of the hub dataset's layout and schema: data/<split>-00000-of-00001.parquet."""
    import os

    import datasets

    root_env = os.environ.get(data.DATA_ENV_VAR)
    images = _hub_images(Path(root_env) if root_env else None)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(RESISC45_CLASSES))}
    )
    label_of = {name: i for i, name in enumerate(RESISC45_CLASSES)}
    rows = {
        "image": [{"bytes": encoded, "path": name} for encoded, name, _ in images],
        "label": [label_of[class_name] for _, _, class_name in images],
    }
    table = datasets.Dataset.from_dict(rows, features=features)
    copy = tmp_path_factory.mktemp("hub_copy")
    (copy / "data").mkdir()
    splits = {"train": [0, 1, 4, 5], "validation": [2, 6], "test": [3, 7]}
    for split, rows_of_split in splits.items():
        table.select(rows_of_split).to_parquet(
            str(copy / "data" / f"{split}-00000-of-00001.parquet")
        )
    datasets.DatasetDict({s: table.select(r) for s, r in splits.items()}).save_to_disk(
        str(copy / "saved")
    )
    table.to_parquet(str(copy / "single.parquet"))
    return copy


@pytest.mark.parametrize("spec", ["{copy}/", "hub:{copy}", "{copy}/saved"])
def test_hub_schema_copies_use_their_own_splits(hub_copy, spec, tmp_path):
    source = spec.format(copy=hub_copy).rstrip("/")
    config = DataConfig(source=source, hub_cache_dir=str(tmp_path), **SMALL)
    train = PairDataset(config)
    test = PairDataset(
        DataConfig(source=source, split="test", hub_cache_dir=str(tmp_path), **SMALL)
    )
    assert train.classes == list(RESISC45_CLASSES)
    assert len(train) == 4 and len(test) == 2
    assert (
        sorted(train.classes[label] for label in train.labels.tolist())
        == ["desert"] * 2 + ["forest"] * 2
    )
    assert not set(train.names) & set(test.names)
    batch = train.sample(4, generator=torch.Generator().manual_seed(0))
    assert batch.hr.shape == (4, 3, 16, 16) and batch.lr.shape == (4, 3, 4, 4)

    forest = PairDataset(
        DataConfig(source=source, categories=("Forest",), hub_cache_dir=str(tmp_path), **SMALL)
    )
    assert len(forest) == 2 and set(forest.labels.tolist()) == {RESISC45_CLASSES.index("forest")}
    assert len(train.category_indices("Desert")) == 2


def test_single_parquet_file_is_split_by_identity(hub_copy, tmp_path):
    source = str(hub_copy / "single.parquet")
    sizes = {
        split: len(load_quietly(DataConfig(source=source, split=split, split_fractions=(0.5, 0.0, 0.5), hub_cache_dir=str(tmp_path), **SMALL)))
        for split in ("train", "test")
    }  # fmt: skip
    assert sizes["train"] + sizes["test"] == 8


def _labelled_hub_copy(root: Path, labels: list[int]) -> Path:
    import datasets

    rng = np.random.default_rng(6)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(RESISC45_CLASSES))}
    )
    rows = {"image": [{"bytes": encode(noise_image(rng, 16, 16), "PNG"), "path": f"{i}.png"}
                      for i in range(len(labels))], "label": labels}
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def test_rows_with_a_missing_class_label_are_skipped_with_one_warning(tmp_path):
    forest = RESISC45_CLASSES.index("forest")
    copy = _labelled_hub_copy(tmp_path / "copy", [-1, forest, -1, forest, forest])
    with pytest.warns(DataWarning, match=r"skipped 2 of 5 row\(s\) of split 'train' .* missing class label") as record:
        dataset = PairDataset(DataConfig(source=str(copy), hub_cache_dir=str(tmp_path / "cache"), **SMALL))
    assert len(record) == 1
    assert len(dataset) == 3 and dataset.labels.tolist() == [forest] * 3
    assert dataset.names == ["copy/train/1", "copy/train/3", "copy/train/4"]

    unlabelled = _labelled_hub_copy(tmp_path / "unlabelled", [-1, -1])
    with pytest.raises(DataSourceError, match="every one of the 2 rows .* missing class label"):
        PairDataset(DataConfig(source=str(unlabelled), hub_cache_dir=str(tmp_path / "cache"), **SMALL))
