"""The batched, per-sample-controllable DDIM reverse step of an LDM-SR model.

diffusers' ``DDIMScheduler.step`` takes one scalar timestep and one eta for the whole batch. Here
every sample of the batch carries its own position on the schedule, its own stride (how far it
skips ahead), eta, noise scale and LR-consistency guidance strength, and one UNet call serves the
whole batch. With uniform parameters (stride 1, noise scale 1, guidance 0) the result equals
``LDMSuperResolutionPipeline`` step for step (``tests/test_sampler.py`` checks it) for the
schedulers' default ``timestep_spacing="leading"``, and for ``"trailing"`` when the step count
divides ``num_train_timesteps``. Otherwise the two differ on purpose: alpha_prev here is that of
the next timestep of the schedule, as DDIM defines it, while ``DDIMScheduler.step`` takes
``t - num_train_timesteps // num_inference_steps``, which is off the schedule for "linspace" and
uneven "trailing" grids (huggingface/diffusers#12633).

Notation (Song et al. 2020, "Denoising Diffusion Implicit Models", eq. 12), per sample:

    z_t          current latent,            alpha_t = alphas_cumprod[t]
    t_prev       next timestep on the schedule after skipping ``stride - 1`` entries
                 (the sampler's "previous" timestep: it runs backwards in t)
    eps          UNet(concat(z_t, LR), t)
    x0_hat       predicted original latent  (z_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)
    sigma_t      eta * sqrt((1 - alpha_prev) / (1 - alpha_t)) * sqrt(1 - alpha_t / alpha_prev)
    z_prev       sqrt(alpha_prev) x0_hat + sqrt(1 - alpha_prev - sigma_t^2) eps + s * sigma_t * noise

where ``s`` is the noise scale (1 = DDIM; < 1 a lower-temperature sample). LR-consistency
guidance moves x0_hat before step 5 (see ``guide_x0``). All functions are pure over
``SamplerState`` except that the per-sample ``torch.Generator`` objects advance when they draw.

On CUDA, PyTorch's default lets float32 convolutions run as TF32, and a sample's result then
depends (~1e-3) on which other samples share its batch; the env calls these functions under
``precision.ieee_float32`` so that a batch equals its samples run alone. Direct callers who need
that property do the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from orl_gym.data import downsample_bicubic
from orl_gym.models import LDMSR

__all__ = [
    "Schedule",
    "SamplerState",
    "StepParams",
    "SamplerStepOutput",
    "init_state",
    "step",
    "guide_x0",
    "guidance_cost_in_unet_calls",
    "decode",
    "vq_decode",
    "lr_consistency_error",
    "make_generators",
]


@dataclass(frozen=True)
class Schedule:
    """The grid of timesteps a sample may visit, largest first, and the noise levels.

    ``timesteps`` is the default schedule of ``num_inference_steps`` DDIM steps (the scheduler's
    own ``set_timesteps``); a stride of k jumps k entries ahead. Index ``len(timesteps)`` is the
    end (t = 0 reached: alpha_prev = ``final_alpha_cumprod``).
    """

    timesteps: torch.Tensor  # (K,) int64, descending
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float32
    final_alpha_cumprod: float

    @classmethod
    def from_model(cls, model: LDMSR, num_inference_steps: int) -> Schedule:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected an int >= 1, got {num_inference_steps!r}")
        if num_inference_steps > model.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps: {num_inference_steps} exceeds the model's "
                f"{model.num_train_timesteps} training timesteps"
            )
        config = model.scheduler.config
        if config.get("prediction_type", "epsilon") not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"model: unsupported prediction_type {config.prediction_type!r}")
        if config.get("thresholding", False):
            raise ValueError("model: dynamic thresholding is not supported by the batched sampler")
        # A private copy: set_timesteps mutates the scheduler, which the model may share.
        scheduler = type(model.scheduler).from_config(model.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=model.device)
        return cls(
            timesteps=scheduler.timesteps.to(device=model.device, dtype=torch.long),
            alphas_cumprod=scheduler.alphas_cumprod.to(device=model.device, dtype=torch.float32),
            final_alpha_cumprod=float(scheduler.final_alpha_cumprod),
        )

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def index_of(self, timesteps: torch.Tensor, *, argument: str = "timesteps") -> torch.Tensor:
        """Position of each timestep on the grid; ValueError for one that is not on it."""
        timesteps = torch.as_tensor(timesteps, device=self.timesteps.device).long().reshape(-1)
        matches = timesteps[:, None] == self.timesteps[None, :]
        off = ~matches.any(dim=1)
        if off.any():
            bad = timesteps[off].tolist()
            raise ValueError(
                f"{argument}: {bad} not on the schedule of {len(self)} steps "
                f"({self.timesteps[:5].tolist()}...{self.timesteps[-2:].tolist()})"
            )
        return matches.float().argmax(dim=1)

    def alpha_at_index(self, index: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at grid positions; the end position gives final_alpha_cumprod."""
        at_end = index >= len(self)
        t = self.timesteps[index.clamp(max=len(self) - 1)]
        alpha = self.alphas_cumprod[t]
        return torch.where(at_end, torch.full_like(alpha, self.final_alpha_cumprod), alpha)


@dataclass(frozen=True)
class SamplerState:
    """The batched state of B reverse-diffusion runs (batch first, one device).

    Attributes:
        latents: z_t, (B, c, h, w).
        lr: the low-resolution conditioning image in [0, 1], (B, 3, h, w).
        step_index: (B,) position on ``Schedule.timesteps``; ``len(schedule)`` once finished.
        nfe: (B,) UNet evaluations used.
        guidance_evals: (B,) decoder vector-Jacobian products spent on LR guidance.
        pred_original: the last x0_hat, (B, c, h, w) (zeros before the first step).
        generators: one ``torch.Generator`` per sample: all of its noise.
    """

    latents: torch.Tensor
    lr: torch.Tensor
    step_index: torch.Tensor
    nfe: torch.Tensor
    guidance_evals: torch.Tensor
    pred_original: torch.Tensor
    generators: tuple[torch.Generator, ...]

    @property
    def batch_size(self) -> int:
        return int(self.latents.shape[0])

    def done(self, schedule: Schedule) -> torch.Tensor:
        """(B,) bool: the sample has reached t = 0."""
        return self.step_index >= len(schedule)

    def timestep(self, schedule: Schedule) -> torch.Tensor:
        """(B,) current timestep t; -1 for finished samples."""
        t = schedule.timesteps[self.step_index.clamp(max=len(schedule) - 1)]
        return torch.where(self.done(schedule), torch.full_like(t, -1), t)


@dataclass(frozen=True)
class StepParams:
    """Per-sample parameters of one reverse step, each a (B,) tensor (or a scalar, broadcast).

    stride: schedule entries to advance, >= 1 (1 = the default schedule; k skips k - 1 UNet calls).
    eta: DDIM stochasticity in [0, 1] (0 deterministic DDIM, 1 DDPM-like).
    noise_scale: multiplier >= 0 of the fresh noise (1 = DDIM's own).
    guidance: LR-consistency guidance strength >= 0 (0 = none; 1 = the full linearised step).
    """

    stride: torch.Tensor | int = 1
    eta: torch.Tensor | float = 0.0
    noise_scale: torch.Tensor | float = 1.0
    guidance: torch.Tensor | float = 0.0

    def broadcast(self, batch_size: int, device: torch.device) -> StepParams:
        """Validated (B,) tensors on ``device``; ValueError naming the bad argument."""
        out = {}
        for name in ("stride", "eta", "noise_scale", "guidance"):
            value = torch.as_tensor(getattr(self, name), device=device)
            if value.dim() == 0:
                value = value.expand(batch_size)
            if value.shape != (batch_size,):
                raise ValueError(f"{name}: expected a scalar or shape ({batch_size},), got {tuple(value.shape)}")
            if name == "stride":
                if value.is_floating_point() or value.is_complex():
                    raise ValueError(f"stride: expected integers >= 1, got dtype {value.dtype}")
                value = value.long()
                if bool((value < 1).any()):
                    raise ValueError(f"stride: expected integers >= 1, got {value.tolist()}")
            else:
                value = value.float()
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"{name}: NaN or inf in {value.tolist()}")
                high = 1.0 if name == "eta" else float("inf")
                if bool((value < 0).any() or (value > high).any()):
                    raise ValueError(f"{name}: expected values in [0, {high}], got {value.tolist()}")
            out[name] = value
        return StepParams(**out)


@dataclass(frozen=True)
class SamplerStepOutput:
    """What one reverse step produced (as diffusers' DDIMSchedulerOutput, plus the new state).

    prev_sample: z_{t_prev} (finished samples keep their latents).
    pred_original_sample: x0_hat after guidance.
    state: the advanced SamplerState.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    state: SamplerState


def make_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> tuple[torch.Generator, ...]:
    """One seeded generator per sample."""
    return tuple(torch.Generator(device=device).manual_seed(int(s)) for s in seeds)


def _checked_tensor(name: str, value, shape: tuple[int, ...], *, device, dtype) -> torch.Tensor:
    """A caller's latents / noise: a finite tensor of ``shape``, moved to the model's device and dtype."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {shape}, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: expected finite floating-point values (got {value.dtype}, or NaN / inf)")
    return value.to(device=device, dtype=dtype)


def _randn(generators: Sequence[torch.Generator], shape: tuple[int, ...], *, device, dtype) -> torch.Tensor:
    # One draw per sample from its own generator: this is what makes a batch of N equal N runs
    # alone, whatever order the samples were batched in. B tiny launches, no host sync.
    return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators])


def init_state(
    model: LDMSR,
    schedule: Schedule,
    lr: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    start_timesteps: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
) -> SamplerState:
    """Start B reverse runs from z_T ~ N(0, I) drawn with each sample's generator.

    Args:
        lr: (B, 3, h, w) float in [0, 1]; h, w are the latent size (the UNet runs at LR size).
        generators: one per sample.
        start_timesteps: optional (B,) timesteps on the schedule to start from (default: the first).
        latents: optional initial z_T (B, c, h, w) instead of drawing it.
    """
    if not isinstance(lr, torch.Tensor) or lr.dim() != 4 or lr.shape[1] != 3:
        shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
        raise ValueError(f"lr: expected a float tensor (B, 3, h, w), got {shape}")
    if not lr.is_floating_point():
        raise ValueError(f"lr: expected a float tensor in [0, 1], got dtype {lr.dtype} (divide uint8 by 255)")
    batch, _, height, width = lr.shape
    if batch == 0:
        raise ValueError("lr: an empty batch (0 images); pass at least one LR image")
    multiple = model.hr_multiple // model.scale_factor  # the UNet halves the latent this often
    if height % multiple or width % multiple:
        raise ValueError(
            f"lr: {height}x{width} is not a multiple of {multiple} on each side, which this UNet's "
            f"down/up-sampling needs; crop the HR image to a multiple of model.hr_multiple = "
            f"{model.hr_multiple} px (DataConfig(crop='full', full_multiple=model.hr_multiple) does)"
        )
    if len(generators) != batch:
        raise ValueError(f"generators: expected {batch} (one per sample), got {len(generators)}")
    if not bool(torch.isfinite(lr).all()) or float(lr.min()) < 0.0 or float(lr.max()) > 1.0:
        raise ValueError("lr: values must be finite and in [0, 1]")
    device, dtype = model.device, model.dtype
    lr = lr.to(device=device, dtype=dtype)
    shape = (model.latent_channels, height, width)
    if latents is None:
        # z_T * init_noise_sigma (1.0 for DDIM), as the pipeline does.
        latents = _randn(generators, shape, device=device, dtype=dtype) * model.scheduler.init_noise_sigma
    else:
        latents = _checked_tensor("latents", latents, (batch, *shape), device=device, dtype=dtype)
    if start_timesteps is None:
        step_index = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        step_index = schedule.index_of(start_timesteps, argument="start_timesteps")
        if step_index.shape != (batch,):
            raise ValueError(f"start_timesteps: expected shape ({batch},), got {tuple(step_index.shape)}")
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    return SamplerState(
        latents=latents.to(device=device, dtype=dtype), lr=lr, step_index=step_index, nfe=zeros,
        guidance_evals=zeros.clone(), pred_original=torch.zeros_like(latents, device=device, dtype=dtype),
        generators=tuple(generators),
    )


QUANTIZE_BLOCK_ROWS = 256
"""Latent vectors per block of the codebook search in :func:`vq_decode` on CPU (one 64x64 HR
image: a 256 x 8192 distance block, 8 MiB). Other devices search all rows in one call."""


def vq_decode(model: LDMSR, latents: torch.Tensor) -> torch.Tensor:
    """``model.vqvae.decode(latents).sample`` (images in about [-1, 1]), the same values, faster
    on large batches.

    diffusers' VectorQuantizer takes one ``argmin(cdist(z, codebook))`` over all B * h * w latent
    vectors at once: a (16384, 8192) float32 matrix (0.5 GB) for 64 images of the bundled
    model, about a third of the whole decode on a CPU. The same ``cdist`` on blocks of rows gives
    the same codes (tests compare with ``vqvae.decode``) in half the time at B = 64 on a CPU; on
    a GPU one call is cheaper than many small ones, so only CPU batches are blocked. Then, as in
    diffusers, the straight-through ``z + (z_q - z).detach()`` (gradients reach ``latents``
    unchanged, which the guidance needs) and the decoder without a second quantization.
    """
    vqvae = model.vqvae
    if vqvae.config.lookup_from_codebook:  # decode(force_not_quantize=True) would read indices
        return vqvae.decode(latents).sample
    codebook = vqvae.quantize.embedding.weight
    z = latents.permute(0, 2, 3, 1).contiguous()
    rows = z.detach().view(-1, z.shape[-1])
    block_rows = QUANTIZE_BLOCK_ROWS if rows.device.type == "cpu" else len(rows)
    codes = torch.cat([torch.cdist(block, codebook).argmin(dim=1) for block in rows.split(block_rows)])
    z_q = z + (codebook[codes].view(z.shape) - z).detach()
    return vqvae.decode(z_q.permute(0, 3, 1, 2).contiguous(), force_not_quantize=True).sample


def decode(model: LDMSR, latents_or_state: torch.Tensor | SamplerState,
           lr: torch.Tensor | None = None) -> torch.Tensor:
    """VQ-decode latents (or a state's current latents) to images in [0, 1], (B, 3, H, W).

    A residual-format model (``model.latent_target``) adds the bicubic upsampling of the LR
    inputs: ``lr`` (B, 3, h, w) in [0, 1], taken from the state when a state is given."""
    if isinstance(latents_or_state, SamplerState):
        latents, lr = latents_or_state.latents, latents_or_state.lr if lr is None else lr
    else:
        latents = latents_or_state
    return model.latent_target.image(vq_decode(model, latents), lr)


def lr_consistency_error(images: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error between the bicubic-downsampled images and the LR input, in [0, 1] units."""
    down = downsample_bicubic(images, lr.shape[-2:])
    return (down - lr).pow(2).flatten(1).mean(dim=1)


GUIDANCE_CPU_CHUNK_PIXELS = 16 * 64 * 64
"""Decoded pixels per chunk of :func:`guide_x0` on CPU (16 images of 64x64: 16x16 latents at x4)."""


def guide_x0(model: LDMSR, x0: torch.Tensor, lr: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Pull x0_hat toward agreement with the LR input: a damped Polyak step on the LR error.

    With E(x) = 1/2 || down(D(x)) - LR ||^2 per sample and g its gradient, the step
    x <- x - strength * E(x) / ||g||^2 * g would cancel E at strength 1 if E were linear in x (the
    Polyak step size for a zero-minimum objective; D is the decode to images, which for a
    residual-format model includes the bicubic anchor): ``strength`` sets the step as a fraction of
    that first-order estimate, independent of the decoder's gain. E is quadratic, not linear, so
    small strengths remove about that fraction of the error, and large ones can overshoot and
    raise E (when much of the residual lies outside what the decoder can change, ||g|| is small
    and the step long; a review found this for strength 1 on the bundled model). The agent learns
    which strengths pay. Costs one decoder forward and backward
    (one ``guidance_evals``) per guided sample; only samples with strength > 0 pay it.
    """
    chunk = len(x0)
    if x0.device.type == "cpu":
        # The samples are independent, so a CPU batch runs in chunks whose decoder activations
        # (kept for the backward pass) stay cache-sized: 1.3-1.6x faster at B = 64 on the 2-core
        # dev machine than one pass. One pass on other devices.
        scale = model.scale_factor
        chunk = max(1, GUIDANCE_CPU_CHUNK_PIXELS // (x0.shape[-2] * x0.shape[-1] * scale * scale))
    energies, grads = [], []
    for x0_part, lr_part in zip(x0.split(chunk), lr.split(chunk), strict=True):
        with torch.enable_grad():
            x = x0_part.detach().float().requires_grad_(True)
            images = model.latent_target.image(vq_decode(model, x.to(model.dtype)).float(), lr_part.float(),
                                               clamp=False)
            down = downsample_bicubic(images, lr_part.shape[-2:])
            residual = down - lr_part.float()
            energy = 0.5 * residual.pow(2).flatten(1).sum(dim=1)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        energies.append(energy.detach())
        grads.append(grad)
    energy, grad = torch.cat(energies), torch.cat(grads)
    grad_sq = grad.pow(2).flatten(1).sum(dim=1).clamp_min(1e-12)
    step_size = (strength.float() * energy / grad_sq).view(-1, 1, 1, 1)
    return (x0.detach().float() - step_size * grad).to(x0.dtype)


@torch.no_grad()
def guidance_cost_in_unet_calls(model: LDMSR, latent_size: tuple[int, int]) -> float:
    """Compute of one guided step's decoder forward + backward, in UNet calls, by FLOP count.

    The backward pass needs input gradients only (the weights are frozen), about the forward's
    FLOPs again, so the cost is 2 x FLOPs(decode) / FLOPs(UNet) for one sample at this size.
    Deterministic, unlike a timing. (Wall time on a CPU is higher still: the decoder works at
    full output resolution and is memory-bound.) A network-anchored residual model also runs its
    anchor network forward on the LR image (no backward: the anchor does not depend on x0).
    """
    from orl_gym.profiling import count_flops

    height, width = latent_size
    latents = torch.zeros(1, model.latent_channels, height, width, device=model.device, dtype=model.dtype)
    unet_input = torch.zeros(1, model.latent_channels + 3, height, width, device=model.device, dtype=model.dtype)
    unet_flops = count_flops(model.unet, unet_input, torch.zeros(1, dtype=torch.long, device=model.device))
    flops = 2.0 * count_flops(model.vqvae.decode, latents)
    if model.latent_target.anchor == "network":  # the LR image has the latent's side
        lr = torch.zeros(1, 3, height, width, device=model.device, dtype=model.dtype)
        flops += count_flops(model.latent_target.network, lr)
    return flops / max(unet_flops, 1)


@torch.no_grad()
def step(
    model: LDMSR,
    schedule: Schedule,
    state: SamplerState,
    params: StepParams,
    *,
    noise: torch.Tensor | None = None,
) -> SamplerStepOutput:
    """One reverse step for every unfinished sample of the batch (finished ones are unchanged).

    Args:
        params: per-sample StepParams (validated; a stride past the end finishes the sample).
        noise: optional (B, c, h, w) standard normal noise for the eta > 0 term instead of
            drawing it from the samples' generators (to reproduce another sampler's draws).
    """
    batch, device = state.batch_size, state.latents.device
    params = params.broadcast(batch, device)
    active = ~state.done(schedule)
    sample = state.latents

    # 1. current and next position on the schedule: t and t_prev (= t - stride grid entries)
    index = state.step_index.clamp(max=len(schedule) - 1)
    t = schedule.timesteps[index]
    prev_index = (state.step_index + params.stride).clamp(max=len(schedule))

    # 2. alpha_t, alpha_prev, beta_t (per sample, broadcast over the latent's C, H, W)
    alpha_prod_t = schedule.alpha_at_index(index).view(-1, 1, 1, 1)
    alpha_prod_t_prev = schedule.alpha_at_index(prev_index).view(-1, 1, 1, 1)
    beta_prod_t = 1.0 - alpha_prod_t

    # 3. eps = UNet(concat(z_t, LR), t): one call for the whole batch, per-sample t.
    #    The pipeline conditions on the LR image in [-1, 1].
    unet_input = torch.cat([sample, state.lr * 2.0 - 1.0], dim=1)
    unet_input = model.scheduler.scale_model_input(unet_input, t)
    model_output = model.unet(unet_input, t).sample

    # 4. predicted x_0 ("predicted x_0" of formula (12)) and epsilon, per the model's parameterisation
    prediction_type = model.scheduler.config.prediction_type
    if prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t.sqrt() * pred_original_sample) / beta_prod_t.sqrt()
    else:  # "v_prediction" (Schedule.from_model rejected anything else)
        pred_original_sample = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        pred_epsilon = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    if model.scheduler.config.clip_sample:
        limit = model.scheduler.config.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-limit, limit)

    # 5. LR-consistency guidance on x0_hat, only for the samples that ask for it
    guided = active & (params.guidance > 0)
    guided_rows = guided.nonzero().squeeze(1)  # one host sync, and only decode what is guided
    if guided_rows.numel() > 0:
        pred_original_sample = pred_original_sample.clone()
        pred_original_sample[guided_rows] = guide_x0(
            model, pred_original_sample[guided_rows], state.lr[guided_rows], params.guidance[guided_rows]
        )

    # 6. sigma_t(eta) of formula (16): std of the fresh noise
    variance = ((1.0 - alpha_prod_t_prev) / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = params.eta.view(-1, 1, 1, 1) * variance.sqrt()

    # 7. "direction pointing to x_t" of formula (12)
    pred_sample_direction = (1.0 - alpha_prod_t_prev - std_dev_t**2).clamp_min(0.0).sqrt() * pred_epsilon

    # 8. x_{t_prev} without noise, then the scaled stochastic term
    prev_sample = alpha_prod_t_prev.sqrt() * pred_original_sample + pred_sample_direction
    if noise is None:
        noise = _randn(state.generators, tuple(sample.shape[1:]), device=device, dtype=sample.dtype)
    else:
        noise = _checked_tensor("noise", noise, tuple(sample.shape), device=device, dtype=sample.dtype)
    prev_sample = prev_sample + params.noise_scale.view(-1, 1, 1, 1) * std_dev_t * noise

    # 9. finished samples stay as they are
    keep = active.view(-1, 1, 1, 1)
    prev_sample = torch.where(keep, prev_sample.to(sample.dtype), sample)
    pred_original_sample = torch.where(keep, pred_original_sample.to(sample.dtype), state.pred_original)
    new_state = replace(
        state,
        latents=prev_sample,
        step_index=torch.where(active, prev_index, state.step_index),
        nfe=state.nfe + active.long(),
        guidance_evals=state.guidance_evals + guided.long(),
        pred_original=pred_original_sample,
    )
    return SamplerStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample, state=new_state)
