"""orl_gym.data: sources, splits, categories, pairs, degradations and bad input.

Fixtures are small images the tests write (synthetic noise, plus a grayscale, RGBA, palette,
CMYK, undersized, corrupt and truncated file). The hub code path runs offline on a local copy
in the hub's schema, built from real images when ORL_GYM_DATA is set. Tests that need the real
aerial images use conftest's ``data_root`` fixture and skip when ORL_GYM_DATA is unset.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from orl_gym import data
from orl_gym.data import (
    CATEGORY_ALIASES,
    PAPER_CATEGORIES,
    RESISC45_CLASSES,
    DataConfig,
    DataSourceError,
    DataWarning,
    Degradation,
    PairDataset,
    assign_split,
    degrade,
    resolve_source,
)

# Everything in one split, so every fixture file is seen whatever the hash says.
ALL_TRAIN = (1.0, 0.0, 0.0)
SMALL = {"hr_size": 16, "scale": 4}


def _noise_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def _make_dataset_folder(root: Path, classes: dict[str, int], *, seed: int, size=(36, 40)) -> None:
    """``root/<class>/<class>NN.png`` noise images, ``classes`` maps class -> image count."""
    rng = np.random.default_rng(seed)
    for class_name, count in classes.items():
        (root / class_name).mkdir(parents=True)
        for i in range(count):
            _noise_image(rng, *size).save(root / class_name / f"{class_name}{i:02d}.png")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    """A data root shaped like ../shared/data: ``ucmerced/`` and ``aid150/`` class folders.

    ``ucmerced/forest`` also holds one file of each awkward kind.
    """
    root = tmp_path_factory.mktemp("data_root")
    _make_dataset_folder(root / "ucmerced", {"buildings": 6, "forest": 6, "river": 6}, seed=0)
    _make_dataset_folder(root / "aid150", {"Commercial": 5, "Desert": 5}, seed=1, size=(32, 32))
    forest = root / "ucmerced" / "forest"
    rng = np.random.default_rng(2)
    base = _noise_image(rng, 36, 40)
    base.convert("L").save(forest / "gray.png")
    base.convert("RGBA").save(forest / "rgba.png")
    base.convert("P").save(forest / "palette.png")
    base.convert("CMYK").save(forest / "cmyk.jpg", quality=95)
    _noise_image(rng, 8, 40).save(forest / "tiny.png")  # shorter than hr_size=16
    (forest / "corrupt.png").write_bytes(b"this is not an image" * 10)
    whole = _encode(_noise_image(rng, 36, 40), "PNG")
    (forest / "truncated.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixels cut
    (forest / "notes.txt").write_text("not an image: ignored")
    return root


def _load_quietly(config: DataConfig, **kwargs) -> PairDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return PairDataset(config, **kwargs)


# ---------------------------------------------------------------------------- names


def test_paper_categories_map_to_resisc45_classes_and_aliases():
    assert len(RESISC45_CLASSES) == 45 and list(RESISC45_CLASSES) == sorted(RESISC45_CLASSES)
    assert len(PAPER_CATEGORIES) == 8
    assert PAPER_CATEGORIES["Business district"] == "commercial_area"
    assert PAPER_CATEGORIES["Train station"] == "railway_station"
    assert set(PAPER_CATEGORIES.values()) <= set(RESISC45_CLASSES)
    assert set(CATEGORY_ALIASES) == set(PAPER_CATEGORIES.values())
    assert CATEGORY_ALIASES["commercial_area"] == {"ucmerced": "buildings", "aid150": "Commercial"}
    assert CATEGORY_ALIASES["desert"]["ucmerced"] is None


def test_aliases_name_real_class_folders(data_root):
    for dataset in ("ucmerced", "aid150"):
        existing = {p.name for p in (data_root / dataset).iterdir() if p.is_dir()}
        for aliases in CATEGORY_ALIASES.values():
            assert aliases[dataset] is None or aliases[dataset] in existing


# ---------------------------------------------------------------------------- degrade


def test_degrade_is_antialiased_bicubic_for_every_scale():
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for scale in (2, 4, 8):
        lr = degrade(hr, scale=scale)
        expected = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)
        assert lr.shape == (2, 3, 32 // scale, 32 // scale) and lr.dtype == torch.float32
        torch.testing.assert_close(lr, expected.clamp(0, 1))
    quantized = degrade(hr, scale=4, quantize=True)
    torch.testing.assert_close(quantized * 255, (quantized * 255).round())


def test_degradations_are_seeded_and_do_what_they_say():
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clean = degrade(hr, scale=2)

    blurred = degrade(hr, scale=2, degradation=Degradation(blur_sigma=1.5))
    assert blurred.std() < clean.std()  # a low-pass filter removes variance from noise

    noisy = Degradation(noise_std=0.05)
    first = degrade(hr, scale=2, degradation=noisy, generator=torch.Generator().manual_seed(3))
    again = degrade(hr, scale=2, degradation=noisy, generator=torch.Generator().manual_seed(3))
    other = degrade(hr, scale=2, degradation=noisy, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert 0.03 < (first - clean).std() < 0.06  # clamping trims a little of the 0.05
    assert first.min() >= 0 and first.max() <= 1

    jpeg = degrade(hr, scale=2, degradation=Degradation(jpeg_quality=10))
    torch.testing.assert_close(jpeg * 255, (jpeg * 255).round())
    assert (jpeg - clean).abs().mean() > 0.01


def test_degrade_and_degradation_reject_bad_input():
    with pytest.raises(ValueError, match="not divisible by scale=4"):
        degrade(torch.rand(1, 3, 30, 32), scale=4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        degrade(torch.rand(3, 32, 32), scale=4)
    with pytest.raises(ValueError, match="blur_sigma"):
        Degradation(blur_sigma=-1)
    with pytest.raises(ValueError, match="noise_std"):
        Degradation(noise_std=float("nan"))
    with pytest.raises(ValueError, match="jpeg_quality"):
        Degradation(jpeg_quality=0)


def test_config_rejects_bad_values_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"scale must be one of \(2, 4, 8\)"):
        DataConfig(scale=3)
    with pytest.raises(ValueError, match="multiple of scale=4"):
        DataConfig(hr_size=30)
    with pytest.raises(ValueError, match="crop must be one of"):
        DataConfig(crop="middle")
    with pytest.raises(ValueError, match="split must be one of"):
        DataConfig(split="val")
    with pytest.raises(ValueError, match="summing to 1"):
        DataConfig(split_fractions=(0.5, 0.1, 0.1))
    assert DataConfig(categories="forest").categories == ("forest",)
    assert DataConfig(source=Path("/x")).source == "/x"


# ---------------------------------------------------------------------------- bad input


def test_bad_files_are_converted_skipped_and_reported_once(fixture_root):
    config = DataConfig(source=str(fixture_root / "ucmerced"), split_fractions=ALL_TRAIN, **SMALL)
    with pytest.warns(DataWarning) as record:
        dataset = PairDataset(config)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    unreadable = next(m for m in messages if "unreadable" in m)
    assert "skipped 1 unreadable" in unreadable and "ucmerced/forest/corrupt.png" in unreadable
    undersized = next(m for m in messages if "shorter than" in m)
    assert "skipped 1 of" in undersized and "tiny.png (40x8)" in undersized
    assert len(dataset) == 18 + 5  # 18 noise images + gray, rgba, palette, cmyk, truncated
    assert "ucmerced/forest/corrupt.png" in dataset.unreadable

    for name in ("gray.png", "rgba.png", "palette.png", "cmyk.jpg"):
        image = dataset.image(dataset.names.index(f"ucmerced/forest/{name}"))
        assert image.shape == (3, 36, 40) and image.dtype == torch.uint8
        expected = np.asarray(Image.open(fixture_root / "ucmerced/forest" / name).convert("RGB"))
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)
    gray = dataset.image(dataset.names.index("ucmerced/forest/gray.png"))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])

    # The truncated file only fails when decoded: mid-epoch it is skipped, not raised.
    truncated = dataset.names.index("ucmerced/forest/truncated.png")
    with pytest.warns(DataWarning, match="truncated.png.*2 unreadable image") as record:
        batches = list(dataset.batches(8, shuffle=False))
    assert len(record) == 1
    assert sum(len(b) for b in batches) == len(dataset)
    used = torch.cat([b.indices for b in batches])
    assert truncated not in used.tolist() and used.tolist().count(truncated + 1) == 2
    assert set(dataset.unreadable) == {
        "ucmerced/forest/corrupt.png",
        "ucmerced/forest/truncated.png",
    }
    with pytest.raises(data.UnreadableImageError, match="truncated.png"):
        dataset.image(truncated)


def test_preload_reports_all_unreadable_images_in_one_warning(fixture_root):
    config = DataConfig(source=str(fixture_root / "ucmerced"), split_fractions=ALL_TRAIN, **SMALL)
    dataset = _load_quietly(config)
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable image\(s\) of 23: .*truncated"):
        dataset.preload()


# ---------------------------------------------------------------------------- splits


def _names_by_split(source: Path, **kwargs) -> dict[str, set[str]]:
    return {
        split: set(
            _load_quietly(DataConfig(source=str(source), split=split, **SMALL, **kwargs)).names
        )
        for split in ("train", "validation", "test")
    }


def test_folder_split_is_disjoint_complete_and_stable_when_files_are_added(fixture_root, tmp_path):
    copy = tmp_path / "moved" / "ucmerced"
    shutil.copytree(fixture_root / "ucmerced", copy)
    before = _names_by_split(copy, split_fractions=(0.5, 0.25, 0.25))
    train, validation, test = before.values()
    assert not (train & test) and not (train & validation) and not (validation & test)
    everything = _load_quietly(DataConfig(source=str(copy), split_fractions=ALL_TRAIN, **SMALL))
    assert train | validation | test == set(everything.names)

    # The identity is dataset/class/file, not the absolute path: the moved copy splits alike.
    assert before == _names_by_split(fixture_root / "ucmerced", split_fractions=(0.5, 0.25, 0.25))

    rng = np.random.default_rng(9)
    for i in range(6):
        _noise_image(rng, 36, 40).save(copy / "river" / f"added{i}.png")
    after = _names_by_split(copy, split_fractions=(0.5, 0.25, 0.25))
    for split in before:
        assert after[split] - before[split] <= {f"ucmerced/river/added{i}.png" for i in range(6)}
        assert before[split] <= after[split]

    reseeded = _names_by_split(copy, split_fractions=(0.5, 0.25, 0.25), split_seed=1)
    assert reseeded != after


def test_assign_split_follows_the_fractions():
    identities = [f"ds/class/{i:05d}.png" for i in range(20_000)]
    splits = [assign_split(identity) for identity in identities]
    assert splits == [assign_split(identity) for identity in identities]
    for split, fraction in zip(("train", "validation", "test"), (0.7, 0.1, 0.2), strict=True):
        assert abs(splits.count(split) / len(splits) - fraction) < 0.015


# ---------------------------------------------------------------------------- pairs


@pytest.mark.filterwarnings("ignore::orl_gym.data.DataWarning")  # the fixture's bad files
def test_same_seed_gives_the_same_pairs(fixture_root):
    config = DataConfig(
        source=str(fixture_root),
        split_fractions=ALL_TRAIN,
        degradation=Degradation(blur_sigma=0.8, noise_std=0.02, jpeg_quality=80),
        **SMALL,
    )
    dataset = _load_quietly(config)
    other = _load_quietly(config)
    first = dataset.sample(8, generator=torch.Generator().manual_seed(5))
    again = other.sample(8, generator=torch.Generator().manual_seed(5))
    different = dataset.sample(8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first.indices, again.indices) and first.names == again.names
    assert torch.equal(first.hr, again.hr) and torch.equal(first.lr, again.lr)
    assert not torch.equal(first.hr, different.hr)
    assert len(set(first.indices.tolist())) == 8  # distinct images within a batch

    assert first.hr.shape == (8, 3, 16, 16) and first.lr.shape == (8, 3, 4, 4)
    assert first.hr.dtype == first.lr.dtype == torch.float32
    assert 0 <= first.lr.min() and first.lr.max() <= 1
    assert first.labels.dtype == first.indices.dtype == torch.int64
    assert torch.equal(first.labels, dataset.labels[first.indices])

    # A random crop is a window of the cached image; without a generator the dataset's own
    # generator (seeded by config.seed) gives reproducible batches across instances.
    image = dataset.image(int(first.indices[0]))
    windows = image.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, H-15, W-15, 16, 16)
    hr0 = (first.hr[0] * 255).round().to(torch.uint8)
    assert (windows == hr0[:, None, None]).all(dim=(0, 3, 4)).any()
    fresh = _load_quietly(config)
    assert torch.equal(fresh.pairs([1, 2]).lr, _load_quietly(config).pairs([1, 2]).lr)
    assert not torch.equal(fresh.pairs([1, 2]).hr, fresh.pairs([1, 2]).hr)  # it advances


def test_one_generator_per_image_equals_images_made_one_at_a_time(fixture_root):
    config = DataConfig(
        source=str(fixture_root / "aid150"),
        split_fractions=ALL_TRAIN,
        degradation=Degradation(noise_std=0.05),
        **SMALL,
    )
    dataset = _load_quietly(config)
    seeds, indices = [11, 12, 13], [4, 0, 4]
    batch = dataset.pairs(indices, generator=[torch.Generator().manual_seed(s) for s in seeds])
    for k, (seed, index) in enumerate(zip(seeds, indices, strict=True)):
        single = dataset.pairs([index], generator=torch.Generator().manual_seed(seed))
        assert torch.equal(batch.hr[k], single.hr[0]) and torch.equal(batch.lr[k], single.lr[0])
    assert not torch.equal(batch.hr[0], batch.hr[2])  # same image, own crop
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        dataset.pairs(indices, generator=[torch.Generator(), torch.Generator()])


@pytest.mark.filterwarnings("ignore::orl_gym.data.DataWarning")  # the fixture's bad files
def test_crop_modes(fixture_root):
    source = str(fixture_root / "ucmerced")
    center = _load_quietly(
        DataConfig(source=source, crop="center", split_fractions=ALL_TRAIN, **SMALL)
    )
    batch = center.pairs([0, 0])
    assert torch.equal(batch.hr[0], batch.hr[1])
    image = center.image(0)  # 36 x 40
    torch.testing.assert_close(batch.hr[0], image[:, 10:26, 12:28].float() / 255)
    torch.testing.assert_close(batch.lr, degrade(batch.hr, scale=4, quantize=True))

    resized = _load_quietly(
        DataConfig(source=source, crop="resize", split_fractions=ALL_TRAIN, **SMALL)
    )
    assert resized.pairs([0]).hr.shape == (1, 3, 16, 16)

    full = _load_quietly(
        DataConfig(source=str(fixture_root), crop="full", split_fractions=ALL_TRAIN, **SMALL)
    )
    groups = full.indices_by_shape()
    assert set(groups) == {(36, 40), (32, 32)}
    assert sum(len(g) for g in groups.values()) == len(full)
    whole = full.pairs(groups[(36, 40)][:3])
    assert whole.hr.shape == (3, 3, 36, 40) and whole.lr.shape == (3, 3, 9, 10)
    mixed = [int(groups[(36, 40)][0]), int(groups[(32, 32)][0])]
    with pytest.raises(ValueError, match="different shapes.*indices_by_shape"):
        full.pairs(mixed)
    assert full.full_crop_shape(mixed[1]) == (32, 32)


@pytest.mark.filterwarnings("ignore::orl_gym.data.DataWarning")  # the fixture's bad files
def test_cuda_device_gives_the_same_pairs(fixture_root):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = DataConfig(source=str(fixture_root), split_fractions=ALL_TRAIN, **SMALL)
    on_cpu = _load_quietly(config).sample(4, generator=torch.Generator().manual_seed(0))
    on_gpu = _load_quietly(config, device="cuda").sample(
        4, generator=torch.Generator().manual_seed(0)
    )
    assert on_gpu.hr.is_cuda and on_gpu.lr.is_cuda and not on_gpu.labels.is_cuda
    torch.testing.assert_close(on_gpu.hr.cpu(), on_cpu.hr)
    torch.testing.assert_close(on_gpu.lr.cpu(), on_cpu.lr, atol=1 / 255, rtol=0)


# ---------------------------------------------------------------------------- categories


def test_categories_map_paper_names_per_dataset(fixture_root):
    root = str(fixture_root)
    dataset = _load_quietly(DataConfig(source=root, split_fractions=ALL_TRAIN, **SMALL))
    assert dataset.classes == [
        "aid150/Commercial", "aid150/Desert", "ucmerced/buildings", "ucmerced/forest", "ucmerced/river",
    ]  # fmt: skip
    business = dataset.category_indices("Business district")
    assert {dataset.classes[label] for label in dataset.labels[business].tolist()} == {
        "aid150/Commercial",
        "ucmerced/buildings",
    }
    assert torch.equal(business, dataset.category_indices("commercial_area"))
    assert len(dataset.category_indices("ucmerced/forest")) == len(
        dataset.category_indices("forest")
    )
    assert dataset.category_indices("Runway", missing_ok=True).numel() == 0
    with pytest.raises(ValueError, match="no image of category 'Runway'.*ucmerced/river"):
        dataset.category_indices("Runway")

    selected = _load_quietly(
        DataConfig(
            source=root,
            categories=("Business district", "Desert"),
            split_fractions=ALL_TRAIN,
            **SMALL,
        )
    )
    assert selected.classes == dataset.classes  # labels keep their meaning
    assert {selected.classes[label] for label in selected.labels.tolist()} == {
        "aid150/Commercial",
        "aid150/Desert",
        "ucmerced/buildings",
    }


def test_unknown_class_or_empty_selection_lists_the_classes(fixture_root):
    source = str(fixture_root / "ucmerced")
    with pytest.raises(
        ValueError, match=r"category 'harbour' matches no class.*buildings, forest, river"
    ):
        PairDataset(DataConfig(source=source, categories=("harbour",), **SMALL))
    with pytest.raises(
        ValueError,
        match=r"category 'Desert' \(RESISC45 'desert', no stand-in here\).*buildings, forest",
    ):
        PairDataset(DataConfig(source=source, categories=("Desert",), **SMALL))
    with pytest.raises(ValueError, match=r"no usable images.*classes that exist: buildings"):
        _load_quietly(DataConfig(source=source, hr_size=64, split_fractions=ALL_TRAIN))
    with pytest.raises(ValueError, match=r"no usable images in split 'validation'"):
        _load_quietly(
            DataConfig(source=source, split="validation", split_fractions=ALL_TRAIN, **SMALL)
        )


# ---------------------------------------------------------------------------- sources


def test_env_var_root_and_dataset_names(fixture_root, monkeypatch):
    pinned = resolve_source("hub:timm/resisc45@fe12fc5")
    assert (pinned.kind, pinned.location, pinned.revision) == ("hub", "timm/resisc45", "fe12fc5")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(fixture_root))
    assert resolve_source(None).kind == "root"
    named = resolve_source("aid150")
    assert (named.kind, named.name) == ("folder", "aid150")
    with pytest.raises(DataSourceError, match=r"'nwpu'.*holds \['aid150', 'ucmerced'\]"):
        resolve_source("nwpu")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(fixture_root / "missing"))
    with pytest.raises(DataSourceError, match="ORL_GYM_DATA=.*missing.* is not a folder"):
        resolve_source(None)


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
        (_encode(_noise_image(rng, 40, 40), "PNG"), f"{name}_{i}.png", name)
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
        split: len(_load_quietly(DataConfig(source=source, split=split, split_fractions=(0.5, 0.0, 0.5), hub_cache_dir=str(tmp_path), **SMALL)))
        for split in ("train", "test")
    }  # fmt: skip
    assert sizes["train"] + sizes["test"] == 8


# ---------------------------------------------------------------------------- real images


def test_real_root_splits_categories_and_pairs(data_root):
    config = DataConfig(source=str(data_root))
    splits = {split: PairDataset(DataConfig(source=str(data_root), split=split)) for split in ("train", "validation", "test")}  # fmt: skip
    names = {split: set(dataset.names) for split, dataset in splits.items()}
    assert not names["train"] & names["test"] and not names["train"] & names["validation"]
    assert not names["validation"] & names["test"]
    total = sum(len(n) for n in names.values())
    assert total == 1050 + 1911
    assert (
        abs(len(names["test"]) / total - 0.2) < 0.03
        and abs(len(names["train"]) / total - 0.7) < 0.03
    )

    train = splits["train"]
    assert train.config == config and len(train.classes) == 21 + 8
    for paper_name in PAPER_CATEGORIES:  # every paper category has a stand-in in one of the two
        assert len(train.category_indices(paper_name)) > 0

    batch = train.sample(64, generator=torch.Generator().manual_seed(0))
    assert batch.hr.shape == (64, 3, 64, 64) and batch.lr.shape == (64, 3, 16, 16)
    assert 0.05 < batch.hr.std() and 0.2 < batch.hr.mean() < 0.8  # real content, not blank
    torch.testing.assert_close(batch.lr, degrade(batch.hr, scale=4, quantize=True))


def test_real_ucmerced_full_images_batch_by_shape(data_root):
    ucmerced = PairDataset(
        DataConfig(source=str(data_root / "ucmerced"), split="test", crop="full")
    )
    groups = ucmerced.indices_by_shape()
    assert next(iter(groups)) == (256, 256) and len(groups) > 1  # a few 242-257 px images
    batch = ucmerced.pairs(groups[(256, 256)][:4])
    assert batch.hr.shape == (4, 3, 256, 256) and batch.lr.shape == (4, 3, 64, 64)
    assert all(name.startswith("ucmerced/") for name in batch.names)


def test_one_bicubic_kernel_for_degradation_metric_and_guidance():
    # The LR images, the LR-consistency metric and the sampler's guidance must use the same
    # resize, or a perfect SR would be scored (and pushed) as inconsistent with its own LR.
    from orl_gym.rewards import bicubic_downsample
    from orl_gym.sampler import lr_consistency_error

    hr = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    lr = degrade(hr, scale=4)
    assert torch.equal(bicubic_downsample(hr, 4), lr)
    assert torch.equal(lr_consistency_error(hr, lr), torch.zeros(3))
    assert lr_consistency_error(hr.flip(-1), lr).min() > 1e-3  # the check can fail


def test_full_crop_to_a_model_multiple(fixture_root):
    # A UNet that halves the latent twice needs HR sides that are multiples of 16 at x4: full crops
    # floor to that multiple (centered), and the LR is made from the cropped HR.
    config = DataConfig(source=str(fixture_root), crop="full", full_multiple=16, split_fractions=ALL_TRAIN, **SMALL)
    full = _load_quietly(config)
    shapes = full.indices_by_shape()
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in shapes)
    (h, w), indices = next(iter(shapes.items()))
    batch = full.pairs(indices[:2])
    assert tuple(batch.hr.shape[-2:]) == (h, w) == full.full_crop_shape(int(indices[0]))
    assert tuple(batch.lr.shape[-2:]) == (h // 4, w // 4)
    index = int(indices[0])
    image = full.image(index).float() / 255
    top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    assert torch.equal(batch.hr[0], image[:, top:top + h, left:left + w])
    with pytest.raises(ValueError, match="full_multiple must be a multiple of scale=4"):
        DataConfig(crop="full", full_multiple=6)
    with pytest.raises(ValueError, match="at most hr_size=32"):
        DataConfig(crop="full", hr_size=32, full_multiple=48)


def test_spread_indices_and_grouping_a_subset_by_shape(fixture_root):
    full = _load_quietly(
        DataConfig(source=str(fixture_root), crop="full", split_fractions=ALL_TRAIN, **SMALL)
    )
    assert torch.equal(full.spread_indices(0), torch.arange(len(full)))
    assert torch.equal(full.spread_indices(len(full) + 5), torch.arange(len(full)))
    picked = full.spread_indices(3)
    assert len(picked) == 3 and int(picked[0]) == 0 and int(picked[-1]) == len(full) - 1
    subset = torch.tensor([i for i in range(len(full)) if i % 2 == 0])
    groups = full.indices_by_shape(subset)
    # Exactly the given images, each under its own full-crop shape, ascending within a group.
    assert sorted(torch.cat(list(groups.values())).tolist()) == subset.tolist()
    for shape, members in groups.items():
        assert all(full.full_crop_shape(int(i)) == shape for i in members)
        assert members.tolist() == sorted(members.tolist())


# ---------------------------------------------------------------------------- review fixes


def _tiny_class_folder(root: Path, files: dict[str, Image.Image], *, fmt_kwargs=None) -> Path:
    """``root/ds/things/<name>`` for each (file name -> image); returns the dataset folder."""
    folder = root / "ds" / "things"
    folder.mkdir(parents=True)
    for name, image in files.items():
        image.save(folder / name, **(fmt_kwargs or {}).get(name, {}))
    return root / "ds"


def test_32bit_integer_images_read_as_16_bit_and_float_images_are_reported(tmp_path):
    # PIL's convert("RGB") clips mode "I" at 255 and turns a 0..1 mode "F" image black.
    values = (np.arange(16 * 20).reshape(16, 20) * 200).astype(np.int32)  # 0..63800: 16-bit data
    beyond = values.copy()
    beyond[0, 0] = 70_000
    dataset_dir = _tiny_class_folder(tmp_path, {
        "int32.tif": Image.fromarray(values),
        "int32_beyond.tif": Image.fromarray(beyond),
        "float.tif": Image.fromarray((values / 65535).astype(np.float32)),
    })
    with Image.open(dataset_dir / "things" / "int32.tif") as image:
        assert image.mode == "I"
    with Image.open(dataset_dir / "things" / "float.tif") as image:
        assert image.mode == "F"
    dataset = _load_quietly(DataConfig(source=str(dataset_dir), split_fractions=ALL_TRAIN, **SMALL))
    decoded = dataset.image(dataset.names.index("ds/things/int32.tif"))
    high_byte = torch.from_numpy((values >> 8).astype(np.uint8))
    assert all(torch.equal(decoded[c], high_byte) for c in range(3))

    with pytest.warns(DataWarning, match=r"2 unreadable image\(s\) of 3") as record:
        dataset.preload()
    assert "ds/things/float.tif" in str(record[0].message)
    assert "mode 'F'" in dataset.unreadable["ds/things/float.tif"]
    assert "70000" in dataset.unreadable["ds/things/int32_beyond.tif"]
    for reason in dataset.unreadable.values():
        assert "convert it to 8- or 16-bit" in reason
    with pytest.raises(data.UnreadableImageError, match="mode 'F'"):
        dataset.image(dataset.names.index("ds/things/float.tif"))


def test_degrade_rejects_integer_out_of_range_and_non_finite_hr():
    hr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="divide .*by 255"):
        degrade((hr * 255).round().to(torch.uint8), scale=4)
    with pytest.raises(ValueError, match=r"in \[0, 1\], got -0\.99"):
        degrade(hr * 2 - 1, scale=4)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        degrade(hr * 255, scale=4)
    for bad in (float("nan"), float("inf")):
        broken = hr.clone()
        broken[0, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="1 non-finite value"):
            degrade(broken, scale=4, degradation=Degradation(jpeg_quality=90))
    # Float rounding just outside the range is not an error.
    torch.testing.assert_close(degrade(hr * (1 + 1e-5), scale=4), degrade(hr, scale=4), atol=1e-4, rtol=0)


def test_a_blur_wider_than_hr_is_a_clear_error():
    hr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert degrade(hr, scale=4, degradation=Degradation(blur_sigma=5.0)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"blur_sigma=6.0 .* 18 px .* 16x16"):
        degrade(hr, scale=4, degradation=Degradation(blur_sigma=6.0))
    with pytest.raises(ValueError, match=r"blur_sigma=6.0 .* 16 px \(hr_size=16"):
        DataConfig(hr_size=16, scale=4, degradation=Degradation(blur_sigma=6.0))
    # crop="full" can floor the shortest side below hr_size: 24 px images crop to 16.
    with pytest.raises(ValueError, match=r"as small as 16 px \(hr_size=24, crop='full'\)"):
        DataConfig(hr_size=24, scale=4, crop="full", full_multiple=16, degradation=Degradation(blur_sigma=5.4))
    DataConfig(hr_size=16, scale=4, degradation=Degradation(blur_sigma=5.0))


def test_config_rejects_non_integer_ints_and_nan_fractions():
    for field, value in (("scale", 4.0), ("hr_size", 64.0), ("full_multiple", 4.0), ("seed", True),
                         ("split_seed", 0.0)):
        with pytest.raises(ValueError, match=f"{field} must be an int, got {value!r}"):
            DataConfig(**{field: value})
    for fractions in ((float("nan"), 0.5, 0.5), (float("inf"), 0.0, 0.0)):
        with pytest.raises(ValueError, match="finite, non-negative"):
            DataConfig(split_fractions=fractions)
    for quality in (True, 50.0):
        with pytest.raises(ValueError, match="jpeg_quality must be an int"):
            Degradation(jpeg_quality=quality)
    # NumPy integers are ints: stored as Python ints, so the split hash sees "0", not "np.int64(0)".
    config = DataConfig(scale=np.int64(4), split_seed=np.int64(0), degradation=Degradation(jpeg_quality=np.int64(50)))
    assert type(config.scale) is int and type(config.split_seed) is int
    assert type(config.degradation.jpeg_quality) is int


def test_pairs_and_grouping_reject_bad_indices(fixture_root):
    dataset = _load_quietly(DataConfig(source=str(fixture_root / "aid150"), split_fractions=ALL_TRAIN, **SMALL))
    n = len(dataset)
    for indices in ([-1], [0, n], torch.tensor([n + 2])):
        with pytest.raises(IndexError, match=rf"out of range: this dataset has {n} images, indices 0\.\.{n - 1}"):
            dataset.pairs(indices)
        with pytest.raises(IndexError, match="out of range"):
            dataset.indices_by_shape(indices)
    mask = dataset.labels == 1
    for indices in (mask, mask.numpy()):
        with pytest.raises(TypeError, match="bool .*for a mask pass its indices"):
            dataset.pairs(indices)
        with pytest.raises(TypeError, match="bool"):
            dataset.indices_by_shape(indices)
    for indices in (torch.tensor([1.0]), [1.9], [2.0], [True]):
        with pytest.raises(TypeError, match="indices must be integers"):
            dataset.pairs(indices)
    assert dataset.pairs(torch.nonzero(mask).flatten()).labels.tolist() == [1] * int(mask.sum())
    assert dataset.pairs(np.array([0, 1])).indices.tolist() == [0, 1]


def test_batches_rejects_a_batch_size_below_one_at_the_call(fixture_root):
    dataset = _load_quietly(DataConfig(source=str(fixture_root / "aid150"), split_fractions=ALL_TRAIN, **SMALL))
    for batch_size in (0, -4, 2.0):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            dataset.batches(batch_size)  # raised before the first batch is asked for
    assert sum(len(batch) for batch in dataset.batches(4)) == len(dataset)


def test_a_stray_parquet_file_does_not_turn_a_data_root_into_a_hub_copy(fixture_root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "root"
    shutil.copytree(fixture_root, root)
    (root / "results").mkdir()
    pq.write_table(pa.table({"psnr": [30.0, 31.5]}), root / "results" / "metrics.parquet")
    assert resolve_source(str(root)).kind == "root"
    assert resolve_source(str(root / "ucmerced")).kind == "folder"
    pq.write_table(pa.table({"psnr": [30.0]}), root / "ucmerced" / "scores.parquet")
    assert resolve_source(str(root / "ucmerced")).kind == "folder"


def test_paper_category_of_a_capitalised_dataset_folder(tmp_path):
    _make_dataset_folder(tmp_path / "AID150", {"Commercial": 2, "Desert": 2}, seed=0, size=(16, 16))
    _make_dataset_folder(tmp_path / "UCMerced", {"buildings": 2}, seed=1, size=(16, 16))
    dataset = _load_quietly(DataConfig(source=str(tmp_path), split_fractions=ALL_TRAIN, **SMALL))
    assert dataset.classes == ["AID150/Commercial", "AID150/Desert", "UCMerced/buildings"]
    assert [data.paper_category(name) for name in dataset.classes] == ["Business district", "Desert", "Business district"]
    # The same matching as categories=: both agree on which classes are "Business district".
    business = _load_quietly(DataConfig(source=str(tmp_path), categories=("Business district",), split_fractions=ALL_TRAIN, **SMALL))
    assert {business.classes[label] for label in business.labels.tolist()} == {"AID150/Commercial", "UCMerced/buildings"}


def test_exif_orientation_is_applied_and_header_sizes_agree(tmp_path):
    from PIL import ImageOps

    rng = np.random.default_rng(5)
    stored = _noise_image(rng, 16, 24)  # 16 high, 24 wide as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": upright it is 24 high, 16 wide
    dataset_dir = _tiny_class_folder(
        tmp_path,
        {"rotated.jpg": stored, "rotated.tif": stored, "rotated.png": stored, "plain.jpg": stored},
        fmt_kwargs={"rotated.jpg": {"exif": exif, "quality": 95}, "rotated.tif": {"exif": exif},
                    "rotated.png": {"exif": exif}, "plain.jpg": {"quality": 95}},
    )
    dataset = _load_quietly(DataConfig(source=str(dataset_dir), split_fractions=ALL_TRAIN, crop="full", **SMALL))
    for name, shape in (("rotated.jpg", (24, 16)), ("rotated.tif", (24, 16)), ("rotated.png", (24, 16)),
                        ("plain.jpg", (16, 24))):
        index = dataset.names.index(f"ds/things/{name}")
        image = dataset.image(index)
        assert tuple(image.shape[1:]) == shape == tuple(dataset.image_sizes[index].tolist()), name
        with Image.open(dataset_dir / "things" / name) as opened:  # what datasets.Image decodes
            expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)
    assert set(dataset.indices_by_shape()) == {(24, 16), (16, 24)}


def _labelled_hub_copy(root: Path, labels: list[int]) -> Path:
    import datasets

    rng = np.random.default_rng(6)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(RESISC45_CLASSES))}
    )
    rows = {"image": [{"bytes": _encode(_noise_image(rng, 16, 16), "PNG"), "path": f"{i}.png"}
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
