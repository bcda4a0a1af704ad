"""orl-gym upscale: whole images tile by tile (orl_gym.upscale), seams, policies, files, GeoTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from orl_gym import sampler, upscale
from orl_gym.actions import ActionConfig, decode_action, encode_params
from orl_gym.cli import main
from orl_gym.data import downsample_bicubic, upsample_bicubic
from orl_gym.models import bundled_model_path
from orl_gym.upscale import grid, runner


def _psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    return float(-10.0 * torch.log10((image - reference).pow(2).mean()))


def _uc_merced(data_root, name: str = "agricultural/agricultural00.png") -> Image.Image:
    with Image.open(data_root / "ucmerced" / name) as image:
        return image.convert("RGB")


def _as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def ddim4(tiny_model):
    return upscale.sampler_from_name("ddim4", model=tiny_model)


@pytest.fixture(scope="module")
def tiny_folder(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(folder)
    return folder


def _reference(tiles: upscale.TileSampler, lr: torch.Tensor, seed: int, params: sampler.StepParams) -> torch.Tensor:
    """The whole image sampled straight through orl_gym.sampler with the noise of ``seed``'s field
    (z_T, then each step's fresh noise): what the untiled run is."""
    model, schedule = tiles.model, tiles.schedule
    noise, size = upscale.NoiseField(seed, model.latent_channels), lr.shape[-2:]
    z_t = noise.windows(0, [(0, 0)], *size) * model.scheduler.init_noise_sigma
    state = sampler.init_state(model, schedule, lr[None], sampler.make_generators([seed]), latents=z_t)
    step = 0
    while not bool(state.done(schedule).all()):
        step += 1
        state = sampler.step(model, schedule, state, params, noise=noise.windows(step, [(0, 0)], *size)).state
    return sampler.decode(model, state)[0]


# --------------------------------------------------------------------------------------------
# Tiles and blending


@pytest.mark.parametrize(("length", "tile", "overlap"), [(16, 16, 4), (17, 16, 4), (64, 16, 4), (100, 32, 8),
                                                         (257, 64, 8), (40, 16, 0), (50, 16, 15)])
def test_tiles_cover_the_image_with_at_least_the_overlap(length, tile, overlap):
    starts = grid.tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    gaps = np.diff(starts)
    assert (gaps >= 1).all() and (gaps <= tile - overlap).all()  # neighbours share >= overlap pixels


def test_blend_windows_sum_to_one_where_neighbours_overlap_by_the_ramp():
    left = upscale.blend_window(64, 16, ramp_start=False, ramp_end=True)
    right = upscale.blend_window(64, 16, ramp_start=True, ramp_end=False)
    assert torch.allclose(left[-16:] + right[:16], torch.ones(16))
    assert left[0] == 1 and right[-1] == 1 and float(left.min()) > 0
    assert torch.equal(upscale.blend_window(64, 16, ramp_start=False, ramp_end=False), torch.ones(64))


def _fake_sampler(monkeypatch, tiles, make_tile):
    def fake(tile_sampler, lr, noise, corners):
        return torch.stack([make_tile(t, c) for t, c in zip(lr, corners, strict=True)]), torch.zeros(len(lr))

    monkeypatch.setattr(runner, "_sample_tiles", fake)


def test_tiles_are_placed_where_they_belong(monkeypatch, ddim4):
    # A tile "super-resolved" by pixel repetition: blending tiles that agree must give back the
    # repetition of the whole image (every tile in its place, weights normalised).
    _fake_sampler(monkeypatch, ddim4, lambda t, s: t.repeat_interleave(4, 1).repeat_interleave(4, 2))
    lr = torch.rand(3, 45, 70, generator=torch.Generator().manual_seed(0))
    result = upscale.upscale_tiles(lr, ddim4, tile=16, overlap=5)
    assert len(result.grid) > 10 and result.image.shape == (3, 180, 280)
    assert torch.allclose(result.image, lr.repeat_interleave(4, 1).repeat_interleave(4, 2), atol=1e-6)


def test_blending_has_no_seams(monkeypatch, ddim4):
    # Tiles that disagree (each a different constant): the output moves between them smoothly,
    # at most one ramp step (1 / (overlap * scale)) of the difference per pixel, never jumping.
    values = {}
    _fake_sampler(monkeypatch, ddim4, lambda t, c: torch.full((3, 64, 64), values.setdefault(c, len(values) % 2)))
    result = upscale.upscale_tiles(torch.rand(3, 40, 40), ddim4, tile=16, overlap=4)
    assert len(result.grid) == 9
    jumps = max(float(result.image.diff(dim=d).abs().max()) for d in (1, 2))
    assert 0 < jumps <= 1.0 / 16 + 1e-6


# --------------------------------------------------------------------------------------------
# Sampling


def test_one_tile_equals_the_untiled_sampler_exactly(ddim4, data_root):
    lr = _as_tensor(_uc_merced(data_root).crop((0, 0, 32, 32)))
    reference = _reference(ddim4, lr, 7, sampler.StepParams())
    for tile in (32, "whole", 64):
        result = upscale.upscale_tiles(lr, ddim4, tile=tile, overlap=8, seed=7)
        if tile == 64:  # a tile larger than the image: reflect-padded, the output cropped
            padded = grid._reflect_pad(lr, 64, 64)
            reference = _reference(ddim4, padded, 7, sampler.StepParams())[:, :128, :128]
        assert len(result.grid) == 1 and torch.equal(result.image, reference), tile
    # Another seed is another sample.
    assert not torch.equal(upscale.upscale_tiles(lr, ddim4, tile=32, seed=8).image,
                           _reference(ddim4, lr, 7, sampler.StepParams()))


def test_noise_field_windows_are_crops_of_one_field():
    noise = upscale.NoiseField(seed=5, channels=3, block=16)
    whole = noise.windows(2, [(0, 0)], 40, 52)[0]
    corners = [(5, 7), (24, 36), (0, 16), (17, 3)]  # across block boundaries, and on them
    tiles = noise.windows(2, corners, 16, 16)
    for (top, left), tile in zip(corners, tiles, strict=True):
        assert torch.equal(tile, whole[:, top:top + 16, left:left + 16])
    assert torch.equal(noise.windows(2, corners[1:2], 16, 16)[0], tiles[1])  # whatever else is in the batch
    assert abs(float(whole.mean())) < 0.1 and abs(float(whole.std()) - 1) < 0.1
    for other in (noise.windows(3, [(0, 0)], 40, 52)[0], upscale.NoiseField(6, 3).windows(2, [(0, 0)], 40, 52)[0]):
        assert abs(float((other * whole).mean())) < 0.1  # another step / seed: independent values


def test_tiles_do_not_depend_on_their_batch(ddim4):
    lr = torch.rand(3, 36, 36, generator=torch.Generator().manual_seed(1))
    one = upscale.upscale_tiles(lr, ddim4, tile=16, overlap=4, seed=3, batch_size=1)
    many = upscale.upscale_tiles(lr, ddim4, tile=16, overlap=4, seed=3, batch_size=4)
    assert len(one.grid) == 9 and one.unet_calls == 9 * 4
    assert torch.allclose(one.image, many.image, atol=1e-5)


@pytest.fixture(scope="module")
def real_runs(data_root):
    """The CompVis-format model (ldm-sr-tiny-x4, DDIM 20) on a real 256 px scene, x4 from its 64 px
    bicubic downsampling: the original, the untiled run (seeds 0 and 1) and 9 tiles of 32 px with
    overlap 8 (seed 0)."""
    hr = _as_tensor(_uc_merced(data_root))
    lr = downsample_bicubic(hr[None], (64, 64))[0].clamp(0, 1)
    tiles = upscale.sampler_from_name("ddim20", model=str(bundled_model_path("ldm-sr-tiny-x4")))
    untiled = [upscale.upscale_tiles(lr, tiles, tile="whole", seed=seed) for seed in (0, 1)]
    tiled = upscale.upscale_tiles(lr, tiles, tile=32, overlap=8, seed=0)
    assert len(untiled[0].grid) == 1 and len(tiled.grid) == 9
    return hr, untiled[0].image, untiled[1].image, tiled.image


def test_tiles_share_the_untiled_runs_noise_on_a_real_image(real_runs):
    # The tiles start from their windows of the untiled run's z_T, so they land near its sample
    # (36.4 dB apart here), not as far from it as another sample of the image (another seed's
    # untiled run: 32.6 dB), where tiles that drew their own noise were (docs/upscale.md).
    hr, untiled, other_seed, tiled = real_runs
    assert _psnr(tiled, untiled) > _psnr(other_seed, untiled) + 3.0


def test_tiled_psnr_is_within_0_1_db_of_untiled_with_the_default_sampler(data_root):
    """Issue 26's seam check on what `orl-gym upscale` runs by default: the default model and its
    default sampler (DDIM 2 from t = 999), 9 tiles of 32 px against one untiled run. (Over the 21
    images of experiments/results/upscale_groupnorm_windows_ldm-sr-tiny-x4-anchored_default.md it
    holds on all; at DDIM 20 the same model's tiles are within 0.1 dB on 9 of them.)"""
    hr = _as_tensor(_uc_merced(data_root))
    lr = downsample_bicubic(hr[None], (64, 64))[0].clamp(0, 1)
    tiles = upscale.sampler_from_name()
    assert tiles.model.source == str(bundled_model_path()) and len(tiles.schedule) == 2
    untiled = upscale.upscale_tiles(lr, tiles, tile="whole", seed=0)
    tiled = upscale.upscale_tiles(lr, tiles, tile=32, overlap=8, seed=0)
    assert len(untiled.grid) == 1 and len(tiled.grid) == 9 and tiled.image.shape == (3, 256, 256)
    assert abs(_psnr(tiled.image, hr) - _psnr(untiled.image, hr)) <= 0.1
    # And the model beats bicubic on this image: the check is of a useful result, not a blur.
    bicubic = upsample_bicubic(lr[None], (256, 256))[0].clamp(0, 1)
    assert _psnr(untiled.image, hr) > _psnr(bicubic, hr)


@pytest.mark.xfail(strict=True, reason="issue 26's seam check does not hold for the CompVis-format UNet at DDIM 20: tiled "
                   "minus untiled is +0.32 dB on this image (-0.68..+0.26 dB over docs/upscale.md's 21 images), "
                   "as large inside the tiles as at their edges: each tile's GroupNorms normalise by the tile's own "
                   "statistics; windows that share the whole image's are within 0.1 dB on 18 of the 21 (the residual "
                   "model: 21 of 21), but need the whole image in one batch (docs/upscale.md, 'Tiled against untiled')")
def test_tiled_psnr_is_within_0_1_db_of_untiled_on_a_real_image(real_runs):
    hr, untiled, _, tiled = real_runs
    assert abs(_psnr(tiled, hr) - _psnr(untiled, hr)) <= 0.1


class _ConstantPolicy:
    """A policy that checks its observations against the env's space and always takes one action."""

    def __init__(self, action: np.ndarray) -> None:
        self.action, self.seen = action, []

    def check_spaces(self, observation_space, action_space) -> None:
        self.observation_space = observation_space
        assert action_space.shape == self.action.shape

    def __call__(self, obs, episode_start):
        assert all(self.observation_space[k].contains(v[0]) for k, v in obs.items())
        self.seen.append(episode_start.copy())
        return np.tile(self.action, (len(episode_start), 1))


def test_a_policy_drives_every_tile(tiny_model):
    env_kwargs = {"model": tiny_model, "hr_size": 64, "num_inference_steps": 5}
    action = encode_params(ActionConfig(), stride=2, eta=1.0)
    policy = _ConstantPolicy(action)
    tiles = upscale.sampler_from_policy(policy, env_kwargs)
    assert tiles.fixed_tile == 16
    lr = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    result = upscale.upscale_tiles(lr, tiles, seed=1)
    params = decode_action(action[None], ActionConfig()).params
    assert result.unet_calls == 3  # 5 steps at stride 2
    assert torch.equal(result.image, _reference(tiles, lr, 1, params))
    assert policy.seen[0].all() and not policy.seen[1].any()  # episode starts, then continues
    big = upscale.upscale_tiles(torch.rand(3, 40, 24), tiles, seed=1)
    assert big.image.shape == (3, 160, 96) and len(big.grid) == 3 * 2
    with pytest.raises(ValueError, match="this policy observes 16x16"):
        upscale.upscale_tiles(lr, tiles, tile=32)
    # The env's step budget truncates every tile's episode (its image: the last x0 prediction).
    budget = upscale.sampler_from_policy(_ConstantPolicy(encode_params(ActionConfig())),
                                         {**env_kwargs, "step_budget": 2})
    assert upscale.upscale_tiles(lr, budget).unet_calls == 2


# --------------------------------------------------------------------------------------------
# Files, conversions and the command


def test_cli_upscales_a_real_256px_image_to_1024(data_root, tiny_folder, tmp_path, capsys):
    source = tmp_path / "scene.png"
    _uc_merced(data_root).save(source)
    target = tmp_path / "scene_x4.png"
    assert main(["--threads", "1", "upscale", str(source), str(target), "--model", str(tiny_folder),
                 "--sampler", "ddim2", "--no-progress"]) == 0
    with Image.open(target) as out:
        assert out.size == (1024, 1024) and out.mode == "RGB"
    assert "(256x256) -> " in capsys.readouterr().err


def test_cli_upscales_with_a_trained_run(tiny_model, tiny_folder, image_folder, tmp_path, capsys):
    import gymnasium as gym
    from stable_baselines3 import PPO

    env_kwargs = {"model": str(tiny_folder), "data": str(image_folder), "hr_size": 32, "num_inference_steps": 3,
                  "reward": {"lpips_net": None, "lpips_weight": 0.0}}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    PPO("MultiInputPolicy", gym.make("orl_gym/LDMSR-v0", **env_kwargs), n_steps=8, batch_size=8, seed=0).save(
        run / "checkpoints" / "best_model.zip")
    (run / "config.yaml").write_text(yaml.safe_dump({"algo": "ppo", "env_kwargs": env_kwargs}))
    source, target = tmp_path / "in.png", tmp_path / "out.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(source)
    assert main(["upscale", str(source), str(target), "--run", str(run), "--no-progress"]) == 0
    with Image.open(target) as out:
        assert out.size == (120, 80)
    assert "ppo policy of run" in capsys.readouterr().err
    assert main(["upscale", str(source), str(target), "--run", str(run), "--tile", "16"]) == 2
    assert "this policy observes 8x8" in capsys.readouterr().err
    assert main(["upscale", str(source), str(target), "--run", str(run), "--model", "bundled"]) == 2


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    Image.new("RGB", (5, 40)).save(tmp_path / "tiny.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "fine.png")
    cases = {
        ("junk.png", "o.png"): "not an image Pillow can read",
        ("missing.png", "o.png"): "no such image file",
        ("tiny.png", "o.png"): "5x40 px is too small",
        ("fine.png", "o.bmp"): "unknown output format '.bmp'",
        ("fine.png", "o.png", "--tile", "30"): "multiples of 4",
        ("fine.png", "o.png", "--tile", "big"): "expected a side in input pixels",
        ("fine.png", "o.png", "--overlap", "64"): "expected 0 <= overlap",
        ("fine.png", "o.png", "--sampler", "euler"): "unknown sampler 'euler'",
    }
    for (source, target, *options), message in cases.items():
        code = main(["upscale", str(tmp_path / source), str(tmp_path / target), "--no-progress", *options])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (source, options, err)


def test_input_conversions(tmp_path):
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    loaded = upscale.read_image(tmp_path / "gray.png")
    assert loaded.pixels.shape == (3, 16, 16) and torch.equal(loaded.pixels[0], loaded.pixels[2])
    assert loaded.notes == ("grayscale copied to 3 channels",)

    rgba = np.random.default_rng(0).integers(0, 256, (12, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    loaded = upscale.read_image(tmp_path / "rgba.png")
    assert torch.equal(loaded.pixels, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255)
    assert "alpha channel dropped" in loaded.notes[0]

    deep = np.full((10, 10), 32768, dtype=np.uint16)
    deep[0, 0] = 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grayscale (I;16)
    loaded = upscale.read_image(tmp_path / "deep.png")
    assert float(loaded.pixels[1, 0, 0]) == 1.0 and float(loaded.pixels[0, 5, 5]) == pytest.approx(32768 / 65535)
    assert any("16-bit" in note for note in loaded.notes) and loaded.dtype == "uint16"

    with pytest.raises(ValueError, match="floating-point pixels"):
        upscale.upscale(torch.full((3, 16, 16), 2.0))
    with pytest.raises(ValueError, match="5 channels"):
        upscale.upscale(torch.zeros(5, 16, 16))


def test_python_function_takes_pil_images_and_tensors(ddim4):
    pil = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 20), dtype=np.uint8))  # grayscale
    out = upscale.upscale(pil, ddim4, tile=16, overlap=4, seed=2)
    assert isinstance(out, Image.Image) and out.size == (80, 96) and out.mode == "RGB"
    as_tensor = upscale.upscale(torch.from_numpy(np.array(pil)), ddim4, tile=16, overlap=4, seed=2)
    assert as_tensor.shape == (3, 96, 80)
    assert np.array_equal(np.array(out), (as_tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_geotiff_keeps_its_crs_and_scales_its_transform(data_root, ddim4, tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine
    from rasterio.crs import CRS

    pixels = np.array(_uc_merced(data_root).crop((0, 0, 48, 40))).transpose(2, 0, 1)
    transform = Affine(0.3, 0.0, 545_000.0, 0.0, -0.3, 4_185_000.0)  # 0.3 m pixels, UTM 10N
    for dtype, values in (("uint8", pixels), ("uint16", pixels.astype(np.uint16) * 257)):
        source = tmp_path / f"scene_{dtype}.tif"
        with rasterio.open(source, "w", driver="GTiff", width=48, height=40, count=3, dtype=dtype,
                           crs=CRS.from_epsg(32610), transform=transform) as target:
            target.write(values)
        loaded = upscale.read_image(source)
        assert torch.allclose(loaded.pixels, torch.from_numpy(pixels).float() / 255)
        result = upscale.upscale_file(loaded, tmp_path / f"scene_{dtype}_x4.tif", ddim4, tile=16, overlap=4)
        with rasterio.open(result.path) as written:
            assert (written.width, written.height, written.count) == (192, 160, 3)
            assert written.dtypes == (dtype,) * 3 and written.crs == CRS.from_epsg(32610)
            assert written.transform.almost_equals(Affine(0.075, 0.0, 545_000.0, 0.0, -0.075, 4_185_000.0))
            assert written.transform.a == pytest.approx(0.075) and written.transform.c == 545_000.0
            assert "orl-gym upscale" in written.tags()["ORL_GYM_UPSCALE"]
    # A GeoTIFF written as PNG loses its georeferencing, and says so.
    assert main(["upscale", str(source), str(tmp_path / "scene.png"), "--model", "bundled", "--sampler", "ddim1",
                 "--tile", "16", "--no-progress"]) == 0
    assert "georeferencing not written" in capsys.readouterr().err
