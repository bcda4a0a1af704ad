"""Per-category evaluation: each image once per method, paired intervals, report files."""

from __future__ import annotations

import numpy as np
import pytest

from orl_gym.actions import ActionConfig, encode_params
from orl_gym.data import DataConfig, PairDataset
from orl_gym.evaluation import (
    MethodResult,
    PolicyTrace,
    constant_policy,
    evaluate_grid,
    evaluate_method,
    evaluate_upsampler,
    grid_search_constant_action,
    grid_settings,
    paired_interval,
    paper_categories_present,
    paper_category,
    plot_policy_trace,
    plot_training_curves,
    write_report,
)


@pytest.fixture(scope="module")
def env_kwargs(tiny_model, image_folder):
    return dict(model=tiny_model, data=str(image_folder), hr_size=32, num_inference_steps=4,
                reward={"lpips_net": None, "lpips_weight": 0.0})


def test_every_image_once_and_report(env_kwargs, tmp_path):
    actions = ActionConfig()
    plain = evaluate_method("No RL", constant_policy(encode_params(actions)), env_kwargs, split="train",
                            num_envs=3, keep_images=2, progress=False)
    fast = evaluate_method("RL", constant_policy(encode_params(actions, stride=2)), env_kwargs, split="train",
                           num_envs=3, keep_images=2, progress=False)
    indices = [row["image_index"] for row in plain.rows]
    n_train = len(PairDataset(DataConfig(source=env_kwargs["data"], split="train", hr_size=32)))
    assert indices == sorted(set(indices)) and len(indices) == n_train  # each train image exactly once
    assert [row["image_index"] for row in fast.rows] == indices
    assert set(plain.column("unet_calls")) == {4.0} and set(fast.column("unet_calls")) == {2.0}
    assert {row["category"] for row in plain.rows} == {"fields", "roads"}
    paths = write_report([plain, fast], tmp_path, rl_name="RL", baselines=("No RL",), header="# test")
    table = paths["table"].read_text()
    assert "| bicubic | fields |" in table and "| RL | all |" in table and "| No RL | all |" in table
    assert paths["grid"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(paths["csv"].read_text().splitlines()) == 1 + 3 * len(indices)


def test_max_images_spreads_over_classes(env_kwargs):
    result = evaluate_method("No RL", constant_policy(encode_params(ActionConfig())), env_kwargs, split="train",
                             num_envs=2, max_images=4, progress=False)
    assert len(result.rows) == 4 and {row["category"] for row in result.rows} == {"fields", "roads"}


def test_paired_interval_matches_a_t_interval():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.5, 2.0, 4.5])
    mean, low, high = paired_interval(a, b)
    diff = a - b
    assert mean == pytest.approx(diff.mean())
    assert high - mean == pytest.approx(3.182446 * diff.std(ddof=1) / 2, rel=1e-5)  # t(0.975, 3) = 3.1824
    assert low < mean < high


def test_grid_search_picks_the_best_setting(env_kwargs):
    action, setting, table = grid_search_constant_action(
        env_kwargs, ActionConfig(), grid={"stride": (1, 4), "eta": (0.0,)}, split="train", num_envs=4, max_images=4)
    assert len(table) == 2
    assert setting["stride"] in (1, 4) and max(row["reward"] for row in table) == next(
        row["reward"] for row in table if row["stride"] == setting["stride"])
    assert action.shape == (4,)


def test_grid_settings_keep_one_eta_zero_sampler_per_noise_scale(env_kwargs):
    # At eta 0 DDIM adds no fresh noise, so settings that differ only in noise scale are the same
    # sampler (checked here on the env: same per-image rewards), and a grid evaluates it once.
    grid = {"stride": (1, 2), "eta": (0.0, 1.0), "noise_scale": (0.8, 1.0)}
    settings = grid_settings(grid, ActionConfig())
    assert len(settings) == 2 * (1 + 2)
    assert [s["noise_scale"] for s in settings if s["eta"] == 0] == [1.0, 1.0]
    assert {(s["stride"], s["noise_scale"]) for s in settings if s["eta"] == 1} == {(1, 0.8), (1, 1.0), (2, 0.8), (2, 1.0)}
    assert grid_settings({"stride": (1, 2), "eta": (0.0,), "noise_scale": (0.5, 0.8)}, ActionConfig()) == [
        {"stride": 1, "eta": 0.0, "noise_scale": 0.5}, {"stride": 2, "eta": 0.0, "noise_scale": 0.5}]

    def rewards(**setting):
        return evaluate_method("c", constant_policy(encode_params(ActionConfig(), **setting)), env_kwargs, split="train",
                               num_envs=3, max_images=3, progress=False).column("reward")

    np.testing.assert_array_equal(rewards(eta=0.0, noise_scale=0.8), rewards(eta=0.0, noise_scale=1.0))
    assert not np.array_equal(rewards(eta=1.0, noise_scale=0.8), rewards(eta=1.0, noise_scale=1.0))


def test_evaluate_grid_keeps_every_settings_images_and_checks_they_agree(env_kwargs, monkeypatch):
    evaluated = evaluate_grid(env_kwargs, ActionConfig(), grid={"stride": (1, 4), "eta": (0.0,)}, split="train",
                              num_envs=3, max_images=3, progress=False)
    assert [setting for setting, _ in evaluated] == [{"stride": 1, "eta": 0.0}, {"stride": 4, "eta": 0.0}]
    direct = evaluate_method("c", constant_policy(encode_params(ActionConfig(), stride=4)), env_kwargs, split="train",
                             num_envs=3, max_images=3, progress=False)
    np.testing.assert_array_equal(evaluated[1][1].column("reward"), direct.column("reward"))
    assert set(evaluated[1][1].column("unet_calls")) == {1.0}

    import orl_gym.evaluation as evaluation

    calls = []

    def shifting(*args, **kwargs):  # each setting scored on other images: must not be averaged as if paired
        calls.append(1)
        return MethodResult(name="c", rows=[{"image_index": len(calls), "reward": 0.0}])

    monkeypatch.setattr(evaluation, "evaluate_method", shifting)
    with pytest.raises(RuntimeError, match="different images"):
        evaluate_grid(env_kwargs, ActionConfig(), grid={"stride": (1, 4)}, split="train", progress=False)


def test_upsampler_scored_on_the_env_images_and_inputs(env_kwargs):
    # The env's own bicubic baseline, run as a one-shot upsampler, must reproduce the env's
    # bicubic metrics image by image: same images, same crops, same LR, same metric code.
    from orl_gym.rewards import bicubic_upsample

    plain = evaluate_method("No RL", constant_policy(encode_params(ActionConfig())), env_kwargs, split="train",
                            num_envs=3, progress=False)
    bicubic = evaluate_upsampler("bicubic", lambda lr: bicubic_upsample(lr, (lr.shape[-2] * 4, lr.shape[-1] * 4)),
                                 env_kwargs, split="train", batch_size=2, keep_images=1, progress=False)
    assert [r["image_index"] for r in bicubic.rows] == [r["image_index"] for r in plain.rows]
    np.testing.assert_allclose(bicubic.column("psnr"), plain.column("bicubic_psnr"), rtol=1e-6)
    np.testing.assert_allclose(bicubic.column("ssim"), plain.column("bicubic_ssim"), rtol=1e-6)
    assert [r["category"] for r in bicubic.rows] == [r["category"] for r in plain.rows]
    assert set(bicubic.column("unet_calls")) == {0.0} and np.isnan(bicubic.column("reward")).all()
    assert len(bicubic.images) == 1


def test_upsampler_of_the_wrong_scale_is_a_clear_error(env_kwargs):
    import torch.nn.functional as F

    with pytest.raises(ValueError, match="expected the HR shape"):
        evaluate_upsampler("x2", lambda lr: F.interpolate(lr, scale_factor=2), env_kwargs, split="train",
                           max_images=2, progress=False)


def test_policy_trace_records_what_the_sampler_received(env_kwargs, tmp_path):
    actions = ActionConfig()
    action = encode_params(actions, stride=2, eta=0.5, guidance=0.3)
    trace = PolicyTrace(constant_policy(action), actions, num_train_timesteps=1000)
    result = evaluate_method("const", trace, env_kwargs, split="train", num_envs=2, max_images=2, progress=False)
    assert len(result.rows) == 2 and trace.rows
    assert {row["stride"] for row in trace.rows} == {2.0}
    assert {round(row["eta"], 5) for row in trace.rows} == {0.5}
    assert {round(row["guidance"], 5) for row in trace.rows} == {0.3}
    # 4-step schedule at stride 2: every episode acts at its first and third timestep.
    ts = sorted({row["t"] for row in trace.rows})
    assert len(ts) == 2 and ts[-1] > ts[0] >= 0
    path = plot_policy_trace(trace.rows, tmp_path / "policy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_policy_trace([], tmp_path / "empty.png")


def test_paper_categories_of_local_classes():
    assert paper_category("aid150/Forest") == "Forest"
    assert paper_category("ucmerced/forest") == "Forest"
    assert paper_category("ucmerced/buildings") == "Business district"
    assert paper_category("aid150/RailwayStation") == "Train station"
    assert paper_category("railway_station") == "Train station"
    assert paper_category("ucmerced/golfcourse") is None


def test_categories_without_images_here_are_named_not_fatal(tiny_model, data_root):
    # UC Merced has stand-ins for five of the paper's eight categories (data/README.md's table).
    present, missing = paper_categories_present({"model": tiny_model, "data": str(data_root / "ucmerced"),
                                                 "hr_size": 32, "num_inference_steps": 4,
                                                 "reward": {"lpips_net": None, "lpips_weight": 0.0}})
    assert present == ["Business district", "Dense residential area", "Forest", "River", "Runway"]
    assert [note.split(" (")[0] for note in missing] == ["Desert", "Industrial area", "Train station"]
    assert all("matches no class" in note for note in missing)


def test_training_curves_of_several_runs(tmp_path):
    for name, offset in (("a", 0.0), ("b", 0.1)):
        run = tmp_path / name
        run.mkdir()
        (run / "reward_curve.csv").write_text("timesteps,reward\n" + "".join(f"{i * 10},{offset + i / 100}\n"
                                                                            for i in range(60)))
        (run / "validation.csv").write_text(f"timesteps,reward\n100,{offset}\n600,{offset + 0.3}\n")
    path = plot_training_curves({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upsampler_runs_with_tf32_off_like_the_env(env_kwargs):
    import torch

    from orl_gym.rewards import bicubic_upsample

    seen = []

    def upsample(lr):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return bicubic_upsample(lr, (lr.shape[-2] * 4, lr.shape[-1] * 4))

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        evaluate_upsampler("bicubic", upsample, env_kwargs, split="train", max_images=2, progress=False)
        assert seen and set(seen) == {(False, False)}
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture
def corrupt_folder(image_folder, tmp_path):
    """A copy of the synthetic folder whose first train image of each class has a readable PNG
    header but truncated pixel data (the dataset only finds out when it decodes the pixels)."""
    import shutil

    folder = tmp_path / "synthetic"
    shutil.copytree(image_folder, folder)
    names = PairDataset(DataConfig(source=str(folder), split="train", hr_size=32)).names
    bad = [next(n for n in names if f"/{label}/" in n) for label in ("fields", "roads")]
    for name in bad:
        path = folder / name.split("/", 1)[1]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return folder, bad


def _alarm(seconds):
    """Turn a hang into a failure (the fix under test is what makes the loop end)."""
    import signal

    def fail(*_):
        raise TimeoutError(f"still running after {seconds} s: the evaluation loop does not end")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_an_image_with_corrupt_pixels_is_left_out_and_the_loop_ends(tiny_model, corrupt_folder):
    import signal
    import warnings

    from orl_gym.data import DataWarning
    from orl_gym.rewards import bicubic_upsample

    folder, bad = corrupt_folder
    kwargs = dict(model=tiny_model, data=str(folder), hr_size=32, num_inference_steps=4,
                  reward={"lpips_net": None, "lpips_weight": 0.0})
    names = PairDataset(DataConfig(source=str(folder), split="train", hr_size=32)).names
    _alarm(120)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            result = evaluate_method("No RL", constant_policy(encode_params(ActionConfig())), kwargs, split="train",
                                     num_envs=3, progress=False)
            upsampled = evaluate_upsampler("bicubic", lambda lr: bicubic_upsample(lr, (lr.shape[-2] * 4,
                                                                                     lr.shape[-1] * 4)),
                                           kwargs, split="train", batch_size=4, progress=False)
    finally:
        signal.alarm(0)
    good = [i for i, name in enumerate(names) if name not in bad]
    assert [row["image_index"] for row in result.rows] == good  # every readable image once, the bad ones left out
    # The one-shot upsampler leaves them out too (no stand-in rows), so the two pair up.
    assert [row["image_index"] for row in upsampled.rows] == good


def test_an_evaluation_that_cannot_finish_stops_with_an_error(env_kwargs, monkeypatch):
    import orl_gym.evaluation as evaluation

    class Stuck(evaluation.LDMSuperResolutionVectorEnv):
        """Reports every finished episode as the pool's first image: the others never finish."""

        def step(self, actions):
            out = super().step(actions)
            if "final_info" in out[-1]:
                out[-1]["final_info"]["image_index"][:] = int(self.params.image_pool[0])
            return out

    monkeypatch.setattr(evaluation, "LDMSuperResolutionVectorEnv", Stuck)
    _alarm(120)
    try:
        with pytest.raises(RuntimeError, match="never finished an episode"):
            evaluate_method("No RL", constant_policy(encode_params(ActionConfig())), env_kwargs, split="train",
                            num_envs=2, max_images=4, progress=False)
    finally:
        import signal

        signal.alarm(0)


def test_evaluate_method_closes_its_env(env_kwargs, monkeypatch):
    import orl_gym.evaluation as evaluation

    closed = []

    class Tracked(evaluation.LDMSuperResolutionVectorEnv):
        def close(self, **kwargs):
            closed.append(self)
            return super().close(**kwargs)

    monkeypatch.setattr(evaluation, "LDMSuperResolutionVectorEnv", Tracked)
    evaluate_method("No RL", constant_policy(encode_params(ActionConfig())), env_kwargs, split="train", num_envs=2,
                    max_images=2, progress=False)
    assert len(closed) == 1


def _rows(indices, psnr):
    return [{"image_index": i, "category": "c", "psnr": p, "ssim": 0.5, "bicubic_psnr": 20.0, "bicubic_ssim": 0.5,
             "unet_calls": 4.0, "seconds": 0.1, "reward": p / 10} for i, p in zip(indices, psnr, strict=True)]


def test_paired_intervals_pair_rows_by_image_index(tmp_path):
    from orl_gym.evaluation import MethodResult, paired_columns

    # Image k scores 20 + k for both methods: the paired difference is exactly 0, whatever the row order.
    base = MethodResult("No RL", _rows([0, 1, 2, 3], [20, 21, 22, 23]))
    rl = MethodResult("RL", _rows([3, 1, 0, 2], [23, 21, 20, 22]))
    a, b = paired_columns(rl, base, "psnr")
    np.testing.assert_array_equal(a, b)
    table = write_report([base, rl], tmp_path, baselines=("No RL",))["table"].read_text()
    assert "| No RL | all | 4 | +0.0000 [+0.0000, +0.0000]" in table
    # Shifted image sets cannot be paired: an error, not differences of different images.
    shifted = MethodResult("RL", _rows([1, 2, 3, 4], [21, 22, 23, 24]))
    with pytest.raises(ValueError, match="cover different images"):
        write_report([base, shifted], tmp_path / "shifted", baselines=("No RL",))


def test_bicubic_rows_hold_bicubic_metrics_not_the_reference_methods():
    from orl_gym.evaluation import MethodResult, bicubic_result

    row = {"image_index": 3, "category": "c", "name": "c/x.png", "label": 0.0, "psnr": 25.0, "ssim": 0.8,
           "lr_consistency": 30.0, "bicubic_psnr": 20.0, "bicubic_ssim": 0.5, "bicubic_lr_consistency": 28.0,
           "efficiency": 0.5, "guidance_evals": 2.0, "term_psnr": 0.5, "term_efficiency": 0.5, "weighted_psnr": 0.2,
           "weighted_efficiency": 0.05, "unet_calls": 4.0, "nfe": 4.0, "seconds": 0.1, "reward": 0.25}
    (bicubic,) = bicubic_result(MethodResult("No RL", [row])).rows
    assert {k: bicubic[k] for k in ("image_index", "category", "name", "label")} == {
        "image_index": 3, "category": "c", "name": "c/x.png", "label": 0.0}
    assert (bicubic["psnr"], bicubic["ssim"], bicubic["lr_consistency"]) == (20.0, 0.5, 28.0)
    assert bicubic["reward"] == 0.0 and bicubic["unet_calls"] == 0.0 and bicubic["guidance_evals"] == 0.0
    # Every reward term is measured against bicubic: all 0 for bicubic itself, summing to its reward 0.
    assert all(bicubic[k] == 0.0 for k in ("term_psnr", "term_efficiency", "weighted_psnr", "weighted_efficiency"))
    assert "efficiency" not in bicubic


def test_named_grids_reach_the_actions_max_stride():
    from orl_gym.evaluation import GRIDS, grid_for_actions

    assert grid_for_actions("full", ActionConfig()) == ({k: tuple(v) for k, v in GRIDS["full"].items()}, [])
    grid, notes = grid_for_actions("quick", ActionConfig(max_stride=10))
    assert grid["stride"] == (1, 2, 4, 8, 10) and grid["eta"] == GRIDS["quick"]["eta"]
    assert notes == ["stride: added 8, 10 to reach the actions' max_stride 10"]
    assert grid_for_actions("quick", ActionConfig(max_stride=8))[0]["stride"] == (1, 2, 4, 8)
    assert grid_for_actions("quick", ActionConfig(max_stride=5))[0]["stride"] == (1, 2, 4, 5)
    grid, notes = grid_for_actions("quick", ActionConfig(max_stride=2))  # shorter: left out, as fit_grid does
    assert grid["stride"] == (1, 2) and len(notes) == 1 and "stride" in notes[0]
    # Without a stride action, the grid is left as it is (the stride is not searched).
    assert grid_for_actions("quick", ActionConfig(parameters=("eta",)))[0]["stride"] == GRIDS["quick"]["stride"]
    with pytest.raises(ValueError, match="unknown grid 'huge'"):
        grid_for_actions("huge", ActionConfig())


def test_grid_values_outside_the_actions_are_caught_before_anything_runs(env_kwargs, monkeypatch):
    import orl_gym.evaluation as evaluation
    from orl_gym.evaluation import GRIDS, fit_grid

    actions = ActionConfig(max_stride=2)
    fitted, left_out = fit_grid(GRIDS["quick"], actions)
    assert fitted["stride"] == (1, 2) and len(left_out) == 1 and "stride" in left_out[0]
    with pytest.raises(ValueError, match="none of the eta values"):
        fit_grid({"eta": (0.0, 1.0)}, ActionConfig(eta_range=(0.2, 0.5), defaults={"eta": 0.3}))

    ran = []
    monkeypatch.setattr(evaluation, "evaluate_method", lambda *a, **k: ran.append(a))
    with pytest.raises(ValueError, match="stride: 4.0 is outside"):
        grid_search_constant_action({**env_kwargs, "actions": {"max_stride": 2}}, actions, grid=GRIDS["quick"],
                                    split="train", num_envs=2, max_images=2)
    assert not ran  # nothing was evaluated before the error
