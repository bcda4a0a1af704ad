"""The batched sampler: equals diffusers' pipeline, batch equals singles, guidance, seeding, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from orl_gym import sampler
from orl_gym.sampler import Schedule, StepParams

LR_SIZE = 8  # latent side = LR side; the decoder gives 32x32 images


def _lr(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, LR_SIZE, LR_SIZE, generator=torch.Generator().manual_seed(seed))


def _run(model, schedule, state, params_per_step, noises=None):
    for i, params in enumerate(params_per_step):
        if bool(state.done(schedule).all()):
            break
        out = sampler.step(model, schedule, state, params, noise=None if noises is None else noises[i])
        state = out.state
    return state


def _sample_params(params: StepParams, i: int) -> StepParams:
    """Sample i's parameters of a batched StepParams (scalars stay scalars)."""
    fields = {}
    for name in ("stride", "eta", "noise_scale", "guidance"):
        value = getattr(params, name)
        fields[name] = value[i:i + 1] if isinstance(value, torch.Tensor) and value.dim() else value
    return StepParams(**fields)


def _pipeline_images(model, lr, steps, eta, latent_seed, noise_seed):
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(noise_seed)  # the pipeline draws its eta > 0 noise from the global RNG
    return pipe(lr * 2 - 1, num_inference_steps=steps, eta=eta, output_type="pt",
                generator=torch.Generator().manual_seed(latent_seed)).images


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_uniform_parameters_equal_ldm_superresolution_pipeline(tiny_model, eta, prediction_type):
    # Every parameterisation the scheduler config can name (the bundled UNet's is v_prediction):
    # the pipeline's DDIMScheduler.step converts each to x_0 and epsilon, and so must ours.
    from diffusers import DDIMScheduler

    if prediction_type != tiny_model.scheduler.config.prediction_type:
        tiny_model = dataclasses.replace(
            tiny_model, scheduler=DDIMScheduler.from_config(tiny_model.scheduler.config,
                                                            prediction_type=prediction_type))
    assert tiny_model.scheduler.config.prediction_type == prediction_type
    steps, lr = 6, _lr(1)
    expected = _pipeline_images(tiny_model, lr, steps, eta, latent_seed=3, noise_seed=11)

    # Reproduce the pipeline's draws: z_T from its generator, step noise from the global RNG.
    torch.manual_seed(11)
    noises = [torch.randn(1, 3, LR_SIZE, LR_SIZE) if eta > 0 else None for _ in range(steps)]
    schedule = Schedule.from_model(tiny_model, steps)
    state = sampler.init_state(tiny_model, schedule, lr, sampler.make_generators([3]))
    state = _run(tiny_model, schedule, state, [StepParams(eta=eta)] * steps,
                 noises=noises if eta > 0 else None)
    assert bool(state.done(schedule).all()) and state.nfe.tolist() == [steps]
    ours = sampler.decode(tiny_model, state)
    assert ours.shape == expected.shape == (1, 3, 4 * LR_SIZE, 4 * LR_SIZE)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


# The batch size picks the CPU convolution kernels (their blocking and vector width), so a sample
# computed in another batch agrees to float32 rounding, amplified over the chained steps, not bit
# for bit: up to 1.4e-5 after 10 steps on an Intel Xeon, under 1e-5 on an AMD EPYC. A sample mixed
# up with another or a parameter applied to the wrong sample moves values by 1e-2 and more.
BATCH_ROUNDING = {"atol": 1e-4, "rtol": 1e-4}


def test_batch_with_mixed_parameters_equals_each_sample_alone(tiny_model):
    schedule = Schedule.from_model(tiny_model, 10)
    lr = _lr(4, seed=1)
    seeds = [5, 6, 7, 8]
    # Per-step, per-sample parameters: different strides (samples finish at different steps),
    # eta, noise scale and guidance.
    plan = [
        StepParams(stride=torch.tensor([1, 2, 3, 1]), eta=torch.tensor([0.0, 0.5, 1.0, 0.2]),
                   noise_scale=torch.tensor([1.0, 0.8, 1.2, 1.0]), guidance=torch.tensor([0.0, 0.3, 0.0, 0.5])),
        StepParams(stride=torch.tensor([2, 4, 1, 3]), eta=torch.tensor([0.3, 0.0, 1.0, 0.7]),
                   noise_scale=torch.tensor([0.5, 1.0, 1.0, 0.0]), guidance=torch.tensor([0.2, 0.0, 0.0, 1.0])),
    ] + [StepParams(stride=torch.tensor([3, 2, 4, 5]), eta=torch.tensor([1.0, 0.1, 0.0, 0.4]))] * 8

    batch = _run(tiny_model, schedule, sampler.init_state(tiny_model, schedule, lr, sampler.make_generators(seeds)), plan)
    assert bool(batch.done(schedule).all())
    assert len(set(batch.nfe.tolist())) > 1, "samples should finish after different numbers of steps"
    for i, seed in enumerate(seeds):
        single_plan = [_sample_params(p, i) for p in plan]
        alone = _run(tiny_model, schedule,
                     sampler.init_state(tiny_model, schedule, lr[i:i + 1], sampler.make_generators([seed])), single_plan)
        torch.testing.assert_close(alone.latents[0], batch.latents[i], **BATCH_ROUNDING)
        assert alone.nfe.item() == batch.nfe[i].item()
        assert alone.guidance_evals.item() == batch.guidance_evals[i].item()


def test_guidance_lowers_lr_consistency_error(tiny_model):
    schedule = Schedule.from_model(tiny_model, 5)
    # An LR image the model can agree with (the downsampled decode of some latent): uniform noise
    # as LR would be out of a random decoder's reach, guided or not.
    target = torch.randn(6, 3, LR_SIZE, LR_SIZE, generator=torch.Generator().manual_seed(9))
    lr = torch.nn.functional.interpolate(sampler.decode(tiny_model, target), size=(LR_SIZE, LR_SIZE),
                                         mode="bicubic", antialias=True).clamp(0, 1)
    errors = {}
    for strength in (0.0, 0.8):
        state = sampler.init_state(tiny_model, schedule, lr, sampler.make_generators(range(6)))
        state = _run(tiny_model, schedule, state, [StepParams(eta=0.0, guidance=strength)] * 5)
        errors[strength] = sampler.lr_consistency_error(sampler.decode(tiny_model, state), lr).mean().item()
        if strength > 0:
            assert state.guidance_evals.tolist() == [5] * 6  # its cost is counted
    assert errors[0.8] < 0.9 * errors[0.0], errors


def test_same_seed_same_result_different_seed_different_result(tiny_model):
    schedule = Schedule.from_model(tiny_model, 4)
    lr = _lr(2)

    def run(seeds):
        state = sampler.init_state(tiny_model, schedule, lr, sampler.make_generators(seeds))
        return _run(tiny_model, schedule, state, [StepParams(eta=1.0)] * 4).latents

    torch.testing.assert_close(run([1, 2]), run([1, 2]), atol=0, rtol=0)
    assert (run([1, 2]) - run([3, 4])).abs().max() > 1e-3


def test_stride_skips_unet_calls_and_start_timestep(tiny_model):
    schedule = Schedule.from_model(tiny_model, 10)
    state = sampler.init_state(tiny_model, schedule, _lr(2), sampler.make_generators([0, 1]),
                               start_timesteps=schedule.timesteps[[0, 5]])
    state = _run(tiny_model, schedule, state, [StepParams(stride=3)] * 10)
    assert state.nfe.tolist() == [4, 2]  # 10 entries by 3 from 0: 0,3,6,9 ; 5 entries from 5: 5,8
    assert state.timestep(schedule).tolist() == [-1, -1]


def test_bad_inputs_raise_value_errors_naming_the_argument(tiny_model):
    schedule = Schedule.from_model(tiny_model, 4)
    gens = sampler.make_generators([0])
    with pytest.raises(ValueError, match="lr"):
        sampler.init_state(tiny_model, schedule, torch.rand(1, 1, LR_SIZE, LR_SIZE), gens)
    with pytest.raises(ValueError, match="lr"):
        sampler.init_state(tiny_model, schedule, torch.zeros(1, 3, LR_SIZE, LR_SIZE, dtype=torch.uint8), gens)
    with pytest.raises(ValueError, match="lr"):
        sampler.init_state(tiny_model, schedule, torch.full((1, 3, LR_SIZE, LR_SIZE), 2.0), gens)
    with pytest.raises(ValueError, match="multiple of 4 .*hr_multiple = 16"):  # 3-level UNet: LR sides divide by 4
        sampler.init_state(tiny_model, schedule, torch.rand(1, 3, 9, 9), gens)
    with pytest.raises(ValueError, match="start_timesteps"):
        sampler.init_state(tiny_model, schedule, _lr(1), gens, start_timesteps=torch.tensor([537]))
    with pytest.raises(ValueError, match="generators"):
        sampler.init_state(tiny_model, schedule, _lr(1), sampler.make_generators([0, 1]))
    state = sampler.init_state(tiny_model, schedule, _lr(1), gens)
    for params, name in [
        (StepParams(eta=float("nan")), "eta"),
        (StepParams(eta=1.5), "eta"),
        (StepParams(eta=-0.1), "eta"),
        (StepParams(guidance=float("inf")), "guidance"),
        (StepParams(noise_scale=-1.0), "noise_scale"),
        (StepParams(stride=0), "stride"),
        (StepParams(stride=1.5), "stride"),
        (StepParams(eta=torch.zeros(3)), "eta"),
    ]:
        with pytest.raises(ValueError, match=name):
            sampler.step(tiny_model, schedule, state, params)
    with pytest.raises(ValueError, match="num_inference_steps"):
        Schedule.from_model(tiny_model, 0)
    with pytest.raises(ValueError, match="empty batch"):
        sampler.init_state(tiny_model, schedule, torch.rand(0, 3, LR_SIZE, LR_SIZE), ())
    latent_shape = (1, tiny_model.latent_channels, LR_SIZE, LR_SIZE)
    for bad in (torch.full(latent_shape, float("nan")), torch.zeros(latent_shape).numpy()):
        with pytest.raises(ValueError, match="latents"):
            sampler.init_state(tiny_model, schedule, _lr(1), gens, latents=bad)
    with pytest.raises(ValueError, match="noise"):
        sampler.step(tiny_model, schedule, state, StepParams(eta=1.0), noise=torch.full(latent_shape, float("nan")))


def test_non_leading_spacing_steps_to_the_next_timestep_of_the_schedule(tiny_model):
    """DDIM between consecutive schedule entries whatever the spacing (diffusers' DDIMScheduler.step
    takes t - T // n instead, off the "linspace" grid: huggingface/diffusers#12633)."""
    model = tiny_model.with_scheduler_config(timestep_spacing="linspace")
    schedule = Schedule.from_model(model, 6)
    timesteps = schedule.timesteps.tolist()
    assert timesteps[1] != timesteps[0] - model.num_train_timesteps // 6  # a grid diffusers steps off
    lr = _lr(1)
    state = sampler.init_state(model, schedule, lr, sampler.make_generators([0]))
    out = sampler.step(model, schedule, state, StepParams())
    alphas = model.scheduler.alphas_cumprod
    a_t, a_prev = alphas[timesteps[0]], alphas[timesteps[1]]
    with torch.no_grad():
        eps = model.unet(torch.cat([state.latents, lr * 2 - 1], dim=1), timesteps[0]).sample
    if model.scheduler.config.prediction_type == "v_prediction":
        x0, eps = a_t.sqrt() * state.latents - (1 - a_t).sqrt() * eps, a_t.sqrt() * eps + (1 - a_t).sqrt() * state.latents
    else:
        x0 = (state.latents - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if model.scheduler.config.clip_sample:
        x0 = x0.clamp(-model.scheduler.config.clip_sample_range, model.scheduler.config.clip_sample_range)
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # eta 0: DDIM eq. 12
    torch.testing.assert_close(out.state.latents, expected, rtol=1e-5, atol=1e-5)


def test_guidance_cost_counts_decoder_flops(tiny_model):
    cost = sampler.guidance_cost_in_unet_calls(tiny_model, (LR_SIZE, LR_SIZE))
    assert cost == sampler.guidance_cost_in_unet_calls(tiny_model, (LR_SIZE, LR_SIZE))  # deterministic
    assert 1.0 < cost < 100.0  # a full-resolution decoder pass and its backward: several UNet calls


def test_vq_decode_equals_diffusers_decode_values_and_gradients(tiny_model):
    # Blocks of 256 latent vectors: 6 images of 8x8 latents make 384 rows, a full and a partial block.
    latents = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.5
    with torch.no_grad():
        assert torch.equal(sampler.vq_decode(tiny_model, latents), tiny_model.vqvae.decode(latents).sample)
    grads = []
    for decode in (sampler.vq_decode, lambda m, z: m.vqvae.decode(z).sample):
        x = latents.clone().requires_grad_(True)
        (decode(tiny_model, x) * torch.linspace(-1, 1, 32)).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_guidance_in_cpu_chunks_equals_one_pass(tiny_model, monkeypatch):
    # Samples are independent: chunking (for cache locality on CPU) must not change any of them.
    x0 = torch.randn(5, 3, LR_SIZE, LR_SIZE, generator=torch.Generator().manual_seed(2))
    lr, strength = _lr(5), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    monkeypatch.setattr(sampler, "GUIDANCE_CPU_CHUNK_PIXELS", 10**9)
    one_pass = sampler.guide_x0(tiny_model, x0, lr, strength)
    monkeypatch.setattr(sampler, "GUIDANCE_CPU_CHUNK_PIXELS", 2 * (4 * LR_SIZE) ** 2)  # chunks of 2, 2, 1
    chunked = sampler.guide_x0(tiny_model, x0, lr, strength)
    torch.testing.assert_close(chunked, one_pass, **BATCH_ROUNDING)  # kernels differ by batch size
    assert torch.equal(chunked[0], x0[0]) and not torch.equal(chunked[4], x0[4])  # strength 0 leaves x0 as is
