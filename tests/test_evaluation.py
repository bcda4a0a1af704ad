"""Per-category evaluation: each image once per method, paired intervals, report files."""

from __future__ import annotations

import numpy as np
import pytest

from orl_gym.actions import ActionConfig, encode_params
from orl_gym.data import DataConfig, PairDataset
from orl_gym.evaluation import (
    PolicyTrace,
    constant_policy,
    evaluate_method,
    evaluate_upsampler,
    grid_search_constant_action,
    paired_interval,
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
