"""Aerial scene datasets as batched (HR, LR) super-resolution pairs.

Modules, one job each (everything public is importable from ``orl_gym.data``):

- :mod:`~orl_gym.data.sources`: resolve a source spec; scan folders, load hub tables.
- :mod:`~orl_gym.data.catalog`: the images of one split of a source, without decoding them.
- :mod:`~orl_gym.data.splits`: the seeded identity-hash split.
- :mod:`~orl_gym.data.categories`: RESISC45 classes, the paper's categories, local stand-ins.
- :mod:`~orl_gym.data.images`: decoding image files to 8-bit RGB.
- :mod:`~orl_gym.data.degradations`: bicubic down/upsampling, blur, noise, JPEG.
- :mod:`~orl_gym.data.config`: :class:`DataConfig`.
- :mod:`~orl_gym.data.pairs`: :class:`PairDataset` and :class:`PairBatch`.

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

from orl_gym.data.categories import (
    CATEGORY_ALIASES,
    PAPER_CATEGORIES,
    RESISC45_CLASSES,
    paper_category,
)
from orl_gym.data.config import CROP_MODES, SCALES, DataConfig
from orl_gym.data.degradations import (
    Degradation,
    Generators,
    degrade,
    downsample_bicubic,
    upsample_bicubic,
)
from orl_gym.data.images import DataWarning, UnreadableImageError
from orl_gym.data.pairs import PairBatch, PairDataset
from orl_gym.data.sources import (
    DATA_ENV_VAR,
    HUB_DATASET_ID,
    IMAGE_EXTENSIONS,
    DataSource,
    DataSourceError,
    resolve_source,
)
from orl_gym.data.splits import DEFAULT_SPLIT_FRACTIONS, SPLITS, assign_split

__all__ = [
    "CATEGORY_ALIASES",
    "CROP_MODES",
    "DATA_ENV_VAR",
    "DEFAULT_SPLIT_FRACTIONS",
    "HUB_DATASET_ID",
    "IMAGE_EXTENSIONS",
    "PAPER_CATEGORIES",
    "RESISC45_CLASSES",
    "SCALES",
    "SPLITS",
    "DataConfig",
    "DataSource",
    "DataSourceError",
    "DataWarning",
    "Degradation",
    "Generators",
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
