"""orl_gym: reinforcement learning that steers the sampler of a latent-diffusion SR model."""

__version__ = "0.1.0"
