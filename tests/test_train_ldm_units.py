"""experiments/train_ldm.py's pieces without a training run: option parsing and what a resume
keeps, the EMA's resume, the learning-rate schedule and stage clock, the mid-attention flags, the
UNet's target and x0 prediction per prediction type, and input perturbation (the runs
themselves: tests/test_train_ldm.py).
"""

from __future__ import annotations

import json

import pytest
import torch


def test_abbreviated_options_are_refused(train_ldm, tmp_path):
    # resolve_config reads the option names from argv: an abbreviation would be reset on resume.
    with pytest.raises(SystemExit):
        train_ldm.parse_args(["--out", str(tmp_path), "--unet-chan", "16,16,32"])
    assert train_ldm.parse_args(["--out", str(tmp_path), "--unet-channels", "16,16,32"]).unet_channels == (16, 16, 32)


def test_resume_keeps_the_saved_prediction_type(train_ldm, tmp_path):
    """A run that inherited v_prediction (e.g. from --init-from bundled) resumes as v_prediction."""
    from dataclasses import asdict

    out = tmp_path / "run"
    out.mkdir()
    saved = asdict(train_ldm.TrainConfig(out=str(out), prediction_type="v_prediction"))
    (out / "run_config.json").write_text(json.dumps({"config": saved}))
    argv = ["--out", str(out)]
    assert train_ldm.resolve_config(train_ldm.parse_args(argv), argv).prediction_type == "v_prediction"
    # No UNet yet: an explicit other type starts a new UNet of that type.
    argv = ["--out", str(out), "--prediction-type", "epsilon"]
    assert train_ldm.resolve_config(train_ldm.parse_args(argv), argv).prediction_type == "epsilon"
    # With a UNet checkpoint it is refused before any stage runs.
    (out / "unet").mkdir()
    (out / "unet" / "checkpoint.pt").touch()
    with pytest.raises(SystemExit, match="--prediction-type v_prediction"):
        train_ldm.resolve_config(train_ldm.parse_args(argv), argv)


def test_resume_keeps_the_runs_settings_not_the_defaults(train_ldm, tmp_path, capsys):
    """`train_ldm.py --out RUN` continues RUN as started: a left-out option is not reset to its
    default (the stage would end at the default step count, the card would show defaults)."""
    from dataclasses import asdict

    out = tmp_path / "run"
    out.mkdir()
    saved = asdict(train_ldm.TrainConfig(
        out=str(out), unet_steps=30000, unet_lr=2e-4, unet_batch_size=32, stages="unet",
        unet_lowfreq_weight=10.0, device="cuda", threads=16, max_minutes=5.0, export="/elsewhere",
        init_from="relative/source", init_stages="vq,unet"))
    (out / "run_config.json").write_text(json.dumps({"config": saved}))
    argv = ["--out", str(out), "--unet-lr", "1e-4"]
    cfg = train_ldm.resolve_config(train_ldm.parse_args(argv), argv)
    assert (cfg.unet_steps, cfg.unet_batch_size, cfg.stages, cfg.unet_lowfreq_weight) == (30000, 32, "unet", 10.0)
    assert cfg.unet_lr == 1e-4  # given: the new value wins
    # The invocation's own settings take the defaults.
    defaults = train_ldm.TrainConfig(out="")
    assert (cfg.device, cfg.threads, cfg.max_minutes, cfg.export, cfg.init_from, cfg.init_stages) == (
        defaults.device, defaults.threads, defaults.max_minutes, defaults.export, defaults.init_from,
        defaults.init_stages)  # --init-from acted once, at the start
    assert "--unet-steps 30000" in capsys.readouterr().err  # says what it kept
    # A value equal to the default can still be given explicitly to go back to it.
    argv = ["--out", str(out), "--unet-lowfreq-weight", "0"]
    assert train_ldm.resolve_config(train_ldm.parse_args(argv), argv).unet_lowfreq_weight == 0.0


def test_unet_ema_resume_takes_the_new_decay_and_the_device(train_ldm):
    from diffusers.training_utils import EMAModel

    net = torch.nn.Linear(3, 2)
    state = EMAModel(net.parameters(), decay=0.9).state_dict()
    cfg = train_ldm.TrainConfig(out="", ema_decay=0.99, device="meta")
    ema = train_ldm.load_ema(EMAModel(net.parameters(), decay=0.99), state, cfg)
    assert ema.decay == 0.99
    assert all(p.device.type == "meta" for p in ema.shadow_params)  # moved to cfg.device


def test_lr_schedule_warms_up_and_decays(train_ldm):
    lr = [train_ldm.lr_at(s, peak=1.0, warmup=10, progress=s / 100, min_ratio=0.1)
          for s in range(120)]
    assert lr[0] == pytest.approx(0.1, rel=0.01) and lr[9] > 0.95 and max(lr) == lr[9]
    assert lr[100] == pytest.approx(0.1) and lr[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))


def test_stage_clock_ends_at_steps_or_minutes(train_ldm):
    clock = train_ldm.StageClock(max_steps=100, minutes=0.0)
    assert clock.progress(50) == 0.5 and not clock.done(99) and clock.done(100)
    clock = train_ldm.StageClock(max_steps=100, minutes=1.0, seconds_before=45.0)
    assert 0.75 <= clock.progress(10) < 0.8 and not clock.done(10)
    assert train_ldm.StageClock(max_steps=100, minutes=1.0, seconds_before=60.0).done(1)


@pytest.mark.parametrize("vq_attention,unet_attention", [(False, False), (True, False), (False, True)])
def test_mid_attention_flags_reach_the_networks(train_ldm, vq_attention, unet_attention):
    # Until 2026-11-26 the flags were applied with from_config, which diffusers ignores for keys
    # left at their default: every run got attention whatever it asked for.
    cfg = train_ldm.TrainConfig(out="", vq_channels=(8, 16, 16), unet_channels=(16, 16, 16),
                                codebook_size=32, vq_mid_attention=vq_attention, unet_mid_attention=unet_attention)
    model = train_ldm.build_model(cfg)

    def has_attention(module):
        return any(".attentions." in k for k in module.state_dict())

    assert has_attention(model.vqvae) == vq_attention and model.vqvae.config.mid_block_add_attention == vq_attention
    assert has_attention(model.unet) == unet_attention and model.unet.config.add_attention == unet_attention
    expected = "self-attention in the encoder mid-block, decoder mid-block" if vq_attention else "no self-attention"
    assert train_ldm.attention_description(model.vqvae.state_dict()).startswith(expected)

    # A checkpoint of the other kind is refused with the flag to change, not torch's key dump.
    other = train_ldm.build_model(train_ldm.TrainConfig(**{**cfg.__dict__, "vq_mid_attention": not vq_attention}))
    with pytest.raises(RuntimeError, match="vq_mid_attention / unet_mid_attention"):
        train_ldm.load_vq_weights(model, {"model": other.vqvae.state_dict()})
    train_ldm.load_vq_weights(model, {"model": model.vqvae.state_dict()})  # the matching one loads


def test_unet_target_follows_the_prediction_type(train_ldm):
    """epsilon -> the noise, v_prediction -> sqrt(abar) eps - sqrt(1 - abar) z0, sample -> z0."""
    from diffusers import DDPMScheduler

    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([0, 250, 600, 999])
    base = train_ldm.build_model(train_ldm.TrainConfig(out="")).scheduler.config
    abar = DDPMScheduler.from_config(base).alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": noise, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * z0,
                "sample": z0}
    for kind, want in expected.items():
        scheduler = DDPMScheduler.from_config(base, prediction_type=kind)
        torch.testing.assert_close(train_ldm.unet_target(scheduler, z0, noise, t), want)


def test_predicted_z0_equals_the_ddim_step_for_every_prediction_type(train_ldm):
    """Our z_0 estimate (the low-frequency term's input) is diffusers' pred_original_sample, and
    the exact target maps back to z_0."""
    from diffusers import DDIMScheduler, DDPMScheduler

    gen = torch.Generator().manual_seed(1)
    z0, noise = torch.randn(1, 3, 8, 8, generator=gen), torch.randn(1, 3, 8, 8, generator=gen)
    output = torch.randn(1, 3, 8, 8, generator=gen)
    base = train_ldm.build_model(train_ldm.TrainConfig(out="")).scheduler.config
    for kind in train_ldm.PREDICTION_TYPES:
        ddpm = DDPMScheduler.from_config(base, prediction_type=kind)
        ddim = DDIMScheduler.from_config(base, prediction_type=kind)
        ddim.set_timesteps(10)
        for t in ddim.timesteps[[0, 4, 9]]:
            t_batch = t.view(1)
            z_t = ddpm.add_noise(z0, noise, t_batch)
            ours = train_ldm.predicted_z0(ddpm, z_t, output, t_batch)
            theirs = ddim.step(output, int(t), z_t, eta=0.0).pred_original_sample
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
            exact = train_ldm.predicted_z0(ddpm, z_t, train_ldm.unet_target(ddpm, z0, noise, t_batch), t_batch)
            torch.testing.assert_close(exact, z0, rtol=1e-3, atol=1e-3)


def test_input_perturbation_moves_the_input_not_the_target(train_ldm):
    """DDPM-IP: z_t is built from the perturbed noise, the target from the clean one."""
    from diffusers import DDPMScheduler

    gen = torch.Generator().manual_seed(2)
    z0, noise, xi = (torch.randn(3, 3, 8, 8, generator=gen) for _ in range(3))
    lr = torch.rand(3, 3, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 990])
    base = train_ldm.build_model(train_ldm.TrainConfig(out="")).scheduler.config
    scheduler = DDPMScheduler.from_config(base, prediction_type="v_prediction")
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, timesteps):
            seen.append(x[:, :3].clone())
            return type("Out", (), {"sample": x[:, :3] * 0.5})()

    perturbed = noise + 0.1 * xi
    target_mse, _ = train_ldm.unet_loss_terms(Recorder(), scheduler, z0, lr, noise, t, input_noise=perturbed)
    z_t = scheduler.add_noise(z0, perturbed, t)
    torch.testing.assert_close(seen[-1], z_t)
    want = torch.nn.functional.mse_loss(z_t * 0.5, scheduler.get_velocity(z0, noise, t))
    torch.testing.assert_close(target_mse, want)
    # Without it, the input is built from the target's own noise.
    train_ldm.unet_loss_terms(Recorder(), scheduler, z0, lr, noise, t)
    torch.testing.assert_close(seen[-1], scheduler.add_noise(z0, noise, t))
