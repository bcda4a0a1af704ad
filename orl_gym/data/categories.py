"""Scene classes: the 45 NWPU-RESISC45 names, the paper's eight categories, and their stand-ins
in the local datasets (UC Merced, AID); how a category name matches a class of a source.

A name matches a class when it is that class's name as listed in ``PairDataset.classes``, the
same name up to case and punctuation (``dense_residential`` = ``DenseResidential`` =
``denseresidential``), a paper name from :data:`PAPER_CATEGORIES` (``"Business district"`` ->
``commercial_area``), or a RESISC45 name whose stand-in in that dataset is given by
:data:`CATEGORY_ALIASES` (``commercial_area`` -> UC Merced ``buildings``, AID ``Commercial``).
"""

from __future__ import annotations

import re

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


def normalize_name(name: str) -> str:
    """``name`` lower-cased without punctuation: the key names are compared by."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_PAPER_BY_KEY = {normalize_name(paper): resisc for paper, resisc in PAPER_CATEGORIES.items()}
_RESISC45_BY_KEY = {normalize_name(name): name for name in RESISC45_CLASSES}


def resisc45_class(name: str) -> str | None:
    """The RESISC45 class that ``name`` denotes as a paper name or a RESISC45 name (up to case and
    punctuation), else None."""
    key = normalize_name(name)
    return _PAPER_BY_KEY.get(key) or _RESISC45_BY_KEY.get(key)


def category_keys(name: str, dataset: str | None) -> set[str]:
    """Normalized native class names that category ``name`` (a paper, RESISC45 or native name)
    denotes in ``dataset`` (its stand-in from CATEGORY_ALIASES included; every dataset's stand-in
    when ``dataset`` is None)."""
    key = normalize_name(name)
    resisc = resisc45_class(name)
    keys = {key}
    if resisc is not None:
        keys.add(normalize_name(resisc))
        aliases = CATEGORY_ALIASES.get(resisc, {})
        for alias in aliases.values() if dataset is None else [aliases.get(dataset)]:
            if alias is not None:
                keys.add(normalize_name(alias))
    return keys


def paper_category(class_name: str) -> str | None:
    """The paper's scene category ("Forest", ...) of a class name of :attr:`PairDataset.classes`
    ("aid150/Forest", "forest", a RESISC45 name), by the same matching as ``categories=``; None
    when the class is none of the eight."""
    # Classes of a single-dataset source carry no "<dataset>/" prefix: any dataset's stand-in counts.
    dataset, _, native = class_name.rpartition("/")
    native_key = normalize_name(native)
    # Lower-cased like ClassInfo.dataset and CATEGORY_ALIASES' keys: "AID150/Commercial" is AID.
    dataset_key = dataset.lower() or None
    return next((paper for paper in PAPER_CATEGORIES if native_key in category_keys(paper, dataset_key)), None)
