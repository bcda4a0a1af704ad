"""Pixels in and out of ``orl-gym upscale``: PNG / JPEG / TIFF files, GeoTIFF through rasterio,
PIL images and tensors, converted to (3, H, W) float32 in [0, 1] and back.

Input conversions (``read_image``, ``upscale``), each reported in ``LoadedImage.notes``:
grayscale is copied to 3 channels; an alpha channel is dropped (not composited: the colour values
are kept as stored); 16-bit integer images are scaled to [0, 1] by 1 / 65535 (the dtype's maximum:
a 12-bit sensor's data stored in 16 bits comes out dark; stretch it first); floating-point images
must already lie in [0, 1]. Unreadable files, other dtypes, more than 4 bands (or 4 without an
alpha band) and images under ``MIN_SIDE`` pixels are a one-line ``ValueError``.

GeoTIFF: with rasterio installed (``pip install 'orl_gym[geo]'``), ``.tif`` / ``.tiff`` files are
read and written with it: a georeferenced input written to a ``.tif`` keeps its CRS, and its
affine transform is scaled by ``1 / scale`` (same footprint, pixels ``scale`` times smaller); the
output keeps the input's integer dtype (uint8 / uint16). Without rasterio, TIFFs go through Pillow
and lose their georeferencing (said in a note). PNG / JPEG / Pillow-TIFF outputs are 8-bit RGB.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MIN_SIDE", "PIL_FORMATS", "LoadedImage", "check_output_path", "read_image", "write_image"]

MIN_SIDE = 8
"""Smallest input side, in pixels, that ``upscale`` accepts (smaller ones are refused: there is
too little for the model to work from, and reflection padding would repeat the image)."""

PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
"""Output suffixes and the Pillow format each is written in (``.tif`` by rasterio when installed)."""
TIFF_SUFFIXES = (".tif", ".tiff")
EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------------------------
# Pixels in: conversions



def _unit_rgb(pixels: np.ndarray, *, what: str, layout: str = "HWC") -> tuple[torch.Tensor, list[str]]:
    """(3, H, W) float32 in [0, 1] from integer or float pixels with 1-4 channels, and the
    conversions applied (see the module docstring)."""
    notes: list[str] = []
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[None] if layout == "CHW" else array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{what}: expected an image of 1-4 channels, got an array of shape {array.shape}")
    chw = array if layout == "CHW" else np.moveaxis(array, -1, 0)
    channels = chw.shape[0]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"{what}: {channels} channels; upscale needs RGB (3), grayscale (1) or either with "
                         "alpha; pick 3 bands first (e.g. gdal_translate -b 1 -b 2 -b 3)")
    if channels in (2, 4):
        chw = chw[:-1]
        notes.append("alpha channel dropped (colours kept as stored, not composited)")
    if chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
        notes.append("grayscale copied to 3 channels")
    dtype = chw.dtype
    if dtype == np.uint8:
        values = chw.astype(np.float32) / 255.0
    elif dtype == np.uint16:
        values = chw.astype(np.float32) / 65535.0
        notes.append("16-bit: scaled to [0, 1] by 1/65535")
    elif np.issubdtype(dtype, np.floating):
        values = chw.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            raise ValueError(f"{what}: floating-point pixels {low:g}..{high:g} (or NaN) have no defined scale; "
                             "scale them to [0, 1] or convert to 8- or 16-bit integers")
    else:
        raise ValueError(f"{what}: pixels of dtype {dtype} are not supported; convert to 8- or 16-bit unsigned "
                         "integers (or floats in [0, 1])")
    height, width = values.shape[1:]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"{what}: {width}x{height} px is too small; upscale needs at least {MIN_SIDE} px on each side")
    return torch.from_numpy(np.ascontiguousarray(values)), notes


def _pil_pixels(image: Any, what: str) -> tuple[np.ndarray, list[str]]:
    """An opened PIL image's pixels (H, W, C) in their own bit depth, and what was converted."""
    notes: list[str] = []
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16), notes
    if mode == "I":  # 32-bit integers: 16-bit data in older Pillows, else no defined scale
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{what}: 32-bit integer pixels {values.min()}..{values.max()} have no defined scale; "
                             "convert to 8- or 16-bit")
        return values.astype(np.uint16), notes
    if mode == "F":
        return np.asarray(image, dtype=np.float32), notes
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image), notes
    if mode in ("1", "P", "PA", "La", "RGBa", "RGBX"):
        has_alpha = mode in ("PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB")), notes
    notes.append(f"converted from {mode} to RGB")  # CMYK, YCbCr, LAB, HSV
    return np.asarray(image.convert("RGB")), notes


def _has_geotiff_tags(image: Any) -> bool:
    tags = getattr(image, "tag_v2", None)
    return tags is not None and any(tag in tags for tag in (33550, 33922, 34264))  # scale, tiepoint, matrix


@dataclass(frozen=True)
class LoadedImage:
    """An input image as upscale reads it.

    Attributes:
        pixels: (3, H, W) float32 in [0, 1].
        path: where it was read from.
        dtype: the stored sample type (``"uint8"``, ``"uint16"``, ``"float32"``), which a GeoTIFF
            output keeps.
        notes: the conversions applied (grayscale, alpha, 16-bit, ...).
        geo: for a georeferenced TIFF read with rasterio, ``{"crs": ..., "transform": Affine, "tags": {...}}``.
    """

    pixels: torch.Tensor
    path: Path
    dtype: str = "uint8"
    notes: tuple[str, ...] = ()
    geo: dict[str, Any] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[-1]), int(self.pixels.shape[-2])


def _rasterio():
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def read_image(path: str | Path) -> LoadedImage:
    """Read a PNG / JPEG / TIFF (GeoTIFF with rasterio) as (3, H, W) float in [0, 1], with the
    module's documented conversions; ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    rasterio = _rasterio()
    if path.suffix.lower() in TIFF_SUFFIXES and rasterio is not None:
        return _read_with_rasterio(path, rasterio)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image, notes = opened, []
            # Pillow applies a TIFF's orientation itself; other formats carry it as EXIF.
            if opened.format != "TIFF" and opened.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image, notes = ImageOps.exif_transpose(opened), ["EXIF orientation applied"]
            pixels, more = _pil_pixels(image, str(path))
            notes += more
            if path.suffix.lower() in TIFF_SUFFIXES and _has_geotiff_tags(opened):
                notes.append("GeoTIFF georeferencing not read (rasterio is not installed: pip install "
                             "'orl_gym[geo]')")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not an image Pillow can read ({type(err).__name__}: {err})") from None
    tensor, more = _unit_rgb(pixels, what=str(path))
    return LoadedImage(pixels=tensor, path=path, dtype=str(pixels.dtype), notes=tuple(notes + more))


def _read_with_rasterio(path: Path, rasterio: Any) -> LoadedImage:
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as source:
                bands = source.read()
                interp = source.colorinterp
                palette = source.colormap(1) if interp[0] == ColorInterp.palette else None
                georeferenced = source.crs is not None or not source.transform.is_identity
                geo = {"crs": source.crs, "transform": source.transform, "tags": source.tags()} \
                    if georeferenced else None
    except RasterioIOError as err:
        raise ValueError(f"{path}: not a raster rasterio can read ({err})") from None
    notes = []
    if palette is not None and bands.shape[0] == 1 and bands.dtype == np.uint8:
        lookup = np.zeros((256, 3), dtype=np.uint8)
        for index, rgba in palette.items():
            lookup[index] = rgba[:3]
        bands = np.moveaxis(lookup[bands[0]], -1, 0)
        notes.append("palette expanded to RGB")
    if bands.shape[0] == 4 and interp[3] != ColorInterp.alpha:
        raise ValueError(f"{path}: 4 bands and the 4th is {interp[3].name}, not alpha (e.g. RGB + NIR); upscale "
                         "needs RGB: pick 3 bands first (e.g. gdal_translate -b 1 -b 2 -b 3)")
    tensor, more = _unit_rgb(bands, what=str(path), layout="CHW")
    return LoadedImage(pixels=tensor, path=path, dtype=str(bands.dtype), notes=tuple(notes + more), geo=geo)


def _to_unit_rgb(image: Any) -> tuple[torch.Tensor, list[str]]:
    """A PIL image or a tensor ((H, W), (C, H, W) or (1, C, H, W); uint8, uint16 or float in
    [0, 1]) as (3, H, W) float32 in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        pixels, notes = _pil_pixels(image, "image")
        tensor, more = _unit_rgb(pixels, what="image")
        return tensor, notes + more
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.dtype == torch.uint16:  # numpy() has no uint16 path in older torch
            return _unit_rgb(tensor.to(torch.int32).numpy().astype(np.uint16), what="image", layout="CHW")
        return _unit_rgb(tensor.numpy(), what="image", layout="CHW")
    raise ValueError(f"image: expected a PIL image or a torch tensor (C, H, W), got {type(image).__name__} (a numpy "
                     "HWC array: torch.from_numpy(array).permute(2, 0, 1))")



# --------------------------------------------------------------------------------------------
# Pixels out


def _quantize(image: torch.Tensor, dtype: Any) -> np.ndarray:
    """(3, H, W) in [0, 1] -> integers of ``dtype`` over their full range (float dtypes kept)."""
    dtype = np.dtype(dtype)
    values = image.clamp(0.0, 1.0).numpy()
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    return np.round(values * np.iinfo(dtype).max).astype(dtype)


def _writes_geotiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES and _rasterio() is not None


def check_output_path(path: str | Path) -> Path:
    """The output path, checked before any work: a known image suffix (ValueError otherwise)."""
    path = Path(path)
    if path.suffix.lower() not in PIL_FORMATS:
        raise ValueError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; use one of "
                         f"{', '.join(PIL_FORMATS)}")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the output image's file name")
    return path


def write_image(path: str | Path, image: torch.Tensor, *, like: LoadedImage | None = None, scale: int = 1,
                tags: Mapping[str, str] | None = None) -> list[str]:
    """Write (3, H, W) in [0, 1] atomically; returns notes on what was (not) kept.

    A ``.tif`` with rasterio installed is written by rasterio in ``like``'s dtype (uint8 when
    there is no ``like``), and, when ``like`` is georeferenced, with its CRS and its transform
    scaled by ``1 / scale``. Otherwise Pillow writes 8-bit RGB."""
    from orl_gym.io import atomic_open

    path = check_output_path(path)
    notes = []
    if _writes_geotiff(path):
        from affine import Affine
        from rasterio.io import MemoryFile

        dtype = like.dtype if like is not None else "uint8"
        pixels = _quantize(image, dtype)
        profile = {"driver": "GTiff", "width": pixels.shape[2], "height": pixels.shape[1], "count": 3,
                   "dtype": dtype, "compress": "deflate", "photometric": "RGB"}
        if like is not None and like.geo is not None:
            # The same footprint in pixels ``scale`` times smaller: transform * Affine.scale(1 / scale),
            # spelt out (affine 3 deprecates ``*`` for ``@``, which affine 2 lacks).
            t = like.geo["transform"]
            profile.update(crs=like.geo["crs"], transform=Affine(t.a / scale, t.b / scale, t.c,
                                                                 t.d / scale, t.e / scale, t.f))
        with MemoryFile() as memory:
            with memory.open(**profile) as target:
                target.write(pixels)
                target.update_tags(**{**(like.geo["tags"] if like is not None and like.geo else {}),
                                      **dict(tags or {})})
            with atomic_open(path, "wb") as handle:
                handle.write(memory.read())
        return notes
    from PIL import Image

    if like is not None and like.geo is not None:
        notes.append(f"georeferencing not written: {path.suffix} has none; use a .tif output to keep it")
    if like is not None and like.dtype != "uint8":
        notes.append(f"written as 8-bit RGB ({like.dtype} input)")
    picture = Image.fromarray(_quantize(image, np.uint8).transpose(1, 2, 0))
    with atomic_open(path, "wb") as handle:
        picture.save(handle, format=PIL_FORMATS[path.suffix.lower()],
                     **({"quality": 95} if PIL_FORMATS[path.suffix.lower()] == "JPEG" else {}))
    return notes
