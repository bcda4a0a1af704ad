"""orl_gym.data on image folders: sources, splits, categories, pairs and bad input.

Fixtures are small images the tests write (synthetic noise, plus a grayscale, RGBA, palette,
CMYK, undersized, corrupt and truncated file). Tests that need the real aerial images use
conftest's ``data_root`` fixture and skip when ORL_GYM_DATA is unset. The hub code path:
tests/test_data_hub.py; degradations, config checks and the split hash, which need no files:
tests/test_data_degradations.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import SMALL, encode, load_quietly, noise_image
from PIL import Image

from orl_gym import data
from orl_gym.data import (
    CATEGORY_ALIASES,
    PAPER_CATEGORIES,
    DataConfig,
    DataSourceError,
    DataWarning,
    Degradation,
    PairDataset,
    degrade,
    resolve_source,
)

# Everything in one split, so every fixture file is seen whatever the hash says.
ALL_TRAIN = (1.0, 0.0, 0.0)


def _make_dataset_folder(root: Path, classes: dict[str, int], *, seed: int, size=(36, 40)) -> None:
    """``root/<class>/<class>NN.png`` noise images, ``classes`` maps class -> image count."""
    rng = np.random.default_rng(seed)
    for class_name, count in classes.items():
        (root / class_name).mkdir(parents=True)
        for i in range(count):
            noise_image(rng, *size).save(root / class_name / f"{class_name}{i:02d}.png")


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
    base = noise_image(rng, 36, 40)
    base.convert("L").save(forest / "gray.png")
    base.convert("RGBA").save(forest / "rgba.png")
    base.convert("P").save(forest / "palette.png")
    base.convert("CMYK").save(forest / "cmyk.jpg", quality=95)
    noise_image(rng, 8, 40).save(forest / "tiny.png")  # shorter than hr_size=16
    (forest / "corrupt.png").write_bytes(b"this is not an image" * 10)
    whole = encode(noise_image(rng, 36, 40), "PNG")
    (forest / "truncated.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixels cut
    (forest / "notes.txt").write_text("not an image: ignored")
    return root


# ---------------------------------------------------------------------------- names


def test_aliases_name_real_class_folders(data_root):
    for dataset in ("ucmerced", "aid150"):
        existing = {p.name for p in (data_root / dataset).iterdir() if p.is_dir()}
        for aliases in CATEGORY_ALIASES.values():
            assert aliases[dataset] is None or aliases[dataset] in existing


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
    dataset = load_quietly(config)
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable image\(s\) of 23: .*truncated"):
        dataset.preload()


# ---------------------------------------------------------------------------- splits


def _names_by_split(source: Path, **kwargs) -> dict[str, set[str]]:
    return {
        split: set(
            load_quietly(DataConfig(source=str(source), split=split, **SMALL, **kwargs)).names
        )
        for split in ("train", "validation", "test")
    }


def test_folder_split_is_disjoint_complete_and_stable_when_files_are_added(fixture_root, tmp_path):
    copy = tmp_path / "moved" / "ucmerced"
    shutil.copytree(fixture_root / "ucmerced", copy)
    before = _names_by_split(copy, split_fractions=(0.5, 0.25, 0.25))
    train, validation, test = before.values()
    assert not (train & test) and not (train & validation) and not (validation & test)
    everything = load_quietly(DataConfig(source=str(copy), split_fractions=ALL_TRAIN, **SMALL))
    assert train | validation | test == set(everything.names)

    # The identity is dataset/class/file, not the absolute path: the moved copy splits alike.
    assert before == _names_by_split(fixture_root / "ucmerced", split_fractions=(0.5, 0.25, 0.25))

    rng = np.random.default_rng(9)
    for i in range(6):
        noise_image(rng, 36, 40).save(copy / "river" / f"added{i}.png")
    after = _names_by_split(copy, split_fractions=(0.5, 0.25, 0.25))
    for split in before:
        assert after[split] - before[split] <= {f"ucmerced/river/added{i}.png" for i in range(6)}
        assert before[split] <= after[split]

    reseeded = _names_by_split(copy, split_fractions=(0.5, 0.25, 0.25), split_seed=1)
    assert reseeded != after


# ---------------------------------------------------------------------------- pairs


@pytest.mark.filterwarnings("ignore::orl_gym.data.DataWarning")  # the fixture's bad files
def test_same_seed_gives_the_same_pairs(fixture_root):
    config = DataConfig(
        source=str(fixture_root),
        split_fractions=ALL_TRAIN,
        degradation=Degradation(blur_sigma=0.8, noise_std=0.02, jpeg_quality=80),
        **SMALL,
    )
    dataset = load_quietly(config)
    other = load_quietly(config)
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
    fresh = load_quietly(config)
    assert torch.equal(fresh.pairs([1, 2]).lr, load_quietly(config).pairs([1, 2]).lr)
    assert not torch.equal(fresh.pairs([1, 2]).hr, fresh.pairs([1, 2]).hr)  # it advances


def test_one_generator_per_image_equals_images_made_one_at_a_time(fixture_root):
    config = DataConfig(
        source=str(fixture_root / "aid150"),
        split_fractions=ALL_TRAIN,
        degradation=Degradation(noise_std=0.05),
        **SMALL,
    )
    dataset = load_quietly(config)
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
    center = load_quietly(
        DataConfig(source=source, crop="center", split_fractions=ALL_TRAIN, **SMALL)
    )
    batch = center.pairs([0, 0])
    assert torch.equal(batch.hr[0], batch.hr[1])
    image = center.image(0)  # 36 x 40
    torch.testing.assert_close(batch.hr[0], image[:, 10:26, 12:28].float() / 255)
    torch.testing.assert_close(batch.lr, degrade(batch.hr, scale=4, quantize=True))

    resized = load_quietly(
        DataConfig(source=source, crop="resize", split_fractions=ALL_TRAIN, **SMALL)
    )
    assert resized.pairs([0]).hr.shape == (1, 3, 16, 16)

    full = load_quietly(
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
    on_cpu = load_quietly(config).sample(4, generator=torch.Generator().manual_seed(0))
    on_gpu = load_quietly(config, device="cuda").sample(
        4, generator=torch.Generator().manual_seed(0)
    )
    assert on_gpu.hr.is_cuda and on_gpu.lr.is_cuda and not on_gpu.labels.is_cuda
    torch.testing.assert_close(on_gpu.hr.cpu(), on_cpu.hr)
    torch.testing.assert_close(on_gpu.lr.cpu(), on_cpu.lr, atol=1 / 255, rtol=0)


# ---------------------------------------------------------------------------- categories


def test_categories_map_paper_names_per_dataset(fixture_root):
    root = str(fixture_root)
    dataset = load_quietly(DataConfig(source=root, split_fractions=ALL_TRAIN, **SMALL))
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

    selected = load_quietly(
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
        load_quietly(DataConfig(source=source, hr_size=64, split_fractions=ALL_TRAIN))
    with pytest.raises(ValueError, match=r"no usable images in split 'validation'"):
        load_quietly(
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


def test_full_crop_to_a_model_multiple(fixture_root):
    # A UNet that halves the latent twice needs HR sides that are multiples of 16 at x4: full crops
    # floor to that multiple (centered), and the LR is made from the cropped HR.
    config = DataConfig(source=str(fixture_root), crop="full", full_multiple=16, split_fractions=ALL_TRAIN, **SMALL)
    full = load_quietly(config)
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
    full = load_quietly(
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
    dataset = load_quietly(DataConfig(source=str(dataset_dir), split_fractions=ALL_TRAIN, **SMALL))
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


def test_pairs_and_grouping_reject_bad_indices(fixture_root):
    dataset = load_quietly(DataConfig(source=str(fixture_root / "aid150"), split_fractions=ALL_TRAIN, **SMALL))
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
    dataset = load_quietly(DataConfig(source=str(fixture_root / "aid150"), split_fractions=ALL_TRAIN, **SMALL))
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
    dataset = load_quietly(DataConfig(source=str(tmp_path), split_fractions=ALL_TRAIN, **SMALL))
    assert dataset.classes == ["AID150/Commercial", "AID150/Desert", "UCMerced/buildings"]
    assert [data.paper_category(name) for name in dataset.classes] == ["Business district", "Desert", "Business district"]
    # The same matching as categories=: both agree on which classes are "Business district".
    business = load_quietly(DataConfig(source=str(tmp_path), categories=("Business district",), split_fractions=ALL_TRAIN, **SMALL))
    assert {business.classes[label] for label in business.labels.tolist()} == {"AID150/Commercial", "UCMerced/buildings"}


def test_exif_orientation_is_applied_and_header_sizes_agree(tmp_path):
    from PIL import ImageOps

    rng = np.random.default_rng(5)
    stored = noise_image(rng, 16, 24)  # 16 high, 24 wide as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": upright it is 24 high, 16 wide
    dataset_dir = _tiny_class_folder(
        tmp_path,
        {"rotated.jpg": stored, "rotated.tif": stored, "rotated.png": stored, "plain.jpg": stored},
        fmt_kwargs={"rotated.jpg": {"exif": exif, "quality": 95}, "rotated.tif": {"exif": exif},
                    "rotated.png": {"exif": exif}, "plain.jpg": {"quality": 95}},
    )
    dataset = load_quietly(DataConfig(source=str(dataset_dir), split_fractions=ALL_TRAIN, crop="full", **SMALL))
    for name, shape in (("rotated.jpg", (24, 16)), ("rotated.tif", (24, 16)), ("rotated.png", (24, 16)),
                        ("plain.jpg", (16, 24))):
        index = dataset.names.index(f"ds/things/{name}")
        image = dataset.image(index)
        assert tuple(image.shape[1:]) == shape == tuple(dataset.image_sizes[index].tolist()), name
        with Image.open(dataset_dir / "things" / name) as opened:  # what datasets.Image decodes
            expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)
    assert set(dataset.indices_by_shape()) == {(24, 16), (16, 24)}

