"""Training the bundled LDM-SR model: (1) the VQ autoencoder, (2) the conditional UNet.

``experiments/train_ldm.py`` is the command (a thin script over :func:`orl_gym.training.cli.main`);
the modules, one job each: :mod:`~orl_gym.training.config` (TrainConfig, the command line),
:mod:`~orl_gym.training.loop` (what every stage's loop shares), :mod:`~orl_gym.training.checkpoints`,
:mod:`~orl_gym.training.anchor`, :mod:`~orl_gym.training.vq`, :mod:`~orl_gym.training.decoder`,
:mod:`~orl_gym.training.unet` (the stages), :mod:`~orl_gym.training.init_from`, :mod:`~orl_gym.training.card`,
:mod:`~orl_gym.training.export` and :mod:`~orl_gym.training.cli`.

Both stages use diffusers components in the layout of CompVis/ldm-super-resolution-4x-openimages
(``orl_gym.models.LDMSRArchitecture``) and a plain torch loop, so the result loads with
``orl_gym.models.load_ldmsr`` and with ``LDMSuperResolutionPipeline.from_pretrained``.

Stage 0 (``anchor``, only with ``--latent-anchor network``): the anchor network
(``orl_gym.models.AnchorNet``, an EDSR-style regression CNN, output bicubic(LR) + CNN(LR)) trained
with L1 to predict HR from LR; its best-validation weights are the anchor that the residual target
is taken over (``s * (HR - A(LR))``) by every later stage and the export. A VQ records the anchor
step it was trained over: training the anchor further makes the run's VQ (and what was built on
it) stale, which the later stages and the export refuse.

Stage 1 (``vq``): VQModel (f = 4, 3 latent channels) on random HR crops in [-1, 1], loss
``l1 * |x - x'| + mse * (x - x')^2 + codebook + beta * commitment``. The quantizer is computed
here rather than by diffusers' ``VectorQuantizer`` so that code usage can be counted: codes unused
for ``--vq-restart-every`` steps are re-seeded from encoder outputs of the current batch (dead-code
restart), which is what keeps a small-batch CPU run from collapsing onto a few codes. The decoder
sees the straight-through quantized latents, as ``vqvae.decode`` quantizes at inference.

Stage 1b (``decoder``, optional): fine-tunes ``post_quant_conv`` + decoder on larger crops with the
encoder, ``quant_conv`` and codebook frozen. The latents stay the same, so a UNet trained on them
stays valid and can be trained on concurrently; the best-validation decoder weights are exported.

Stage 2 (``unet``): UNet2DModel on ``concat(z_t, 2 * LR - 1)`` (6 channels), predicting
``--prediction-type``: ``epsilon`` (the reference model's), ``v_prediction``
(``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0``, Salimans & Ho 2022) or ``sample`` (``z_0``);
the choice is written to the exported scheduler config, which the pipeline's and orl_gym's DDIM
steps read. ``z_t = DDPMScheduler.add_noise(z_0, eps, t)`` with the reference schedule (scaled_linear
0.0015..0.0155, 1000 steps), ``z_0 = vqvae.encode(hr).latents`` of the frozen VQ (pre-quantization
latents: the pipeline's ``vqvae.decode`` quantizes). The frozen encoder runs once over whole
training images (convolutional; an optional mid-block attention then attends over the whole
image) and training takes aligned random crops of those
latents and of the LR image: encoding each batch again would cost more than the UNet step.

Output folder (``--out``)::

    run_config.json        resolved configuration of the latest invocation (+ commands.log: all)
    anchor/checkpoint.pt   stage 0: current and best-validation anchor-network weights
    vq/checkpoint.pt       model, optimizer, step, history, RNG state (atomic: temp + os.replace)
    decoder/checkpoint.pt  stage 1b: current and best-validation decoder weights, the VQ step
    unet/checkpoint.pt     the same for the UNet (+ EMA weights, the VQ step it was trained on)
    unet/latents.pt        cached latents of the training images (keyed by the VQ step)
    tb/                    TensorBoard scalars
    loss_vq.png, loss_unet.png
    export/                diffusers pipeline folder (weights fp16 by default)

A new run can start from another run's finished stages: ``--init-from RUN`` copies RUN's
checkpoints of ``--init-stages`` (default ``vq,decoder``: the autoencoder, its fine-tuned decoder
and the cached training latents) and its ``commands.log`` into ``--out``, and takes RUN's
architecture and UNet target (``--prediction-type``) for every field not given on the command
line (those of a copied stage must match).
So a wider UNet on the same autoencoder, or a fine-tuning of a UNet, is one command whose lineage
the model card lists, rather than a copied folder. ``--init-from`` also takes a diffusers LDM-SR
folder (an export, ``bundled`` for the shipped model, any model train_ldm.py can build): its VQ
(with its decoder) and, with ``--init-stages vq,unet``, its UNet become checkpoints at step 0
without optimizer state, so training them is fine-tuning with a fresh warm-up and schedule (the
UNet's EMA starts at the imported weights); its architecture and prediction type are read from
its configs and weights, and a network or noise schedule train_ldm.py cannot build is refused.

``--unet-input-perturbation GAMMA`` trains the UNet with DDPM-IP's input perturbation (Ning et al.
2023): z_t is made from ``eps + GAMMA * xi`` and the target from ``eps``, a regulariser against
the exposure bias of sampling (the UNet sees its own imperfect z_t at inference, never in
training).

Every invocation resumes from the checkpoints in ``--out`` with the run's saved settings: an
option left off the command line keeps its value from the last invocation, not the default
(``--device``, ``--threads``, ``--max-minutes``, ``--export``, ``--export-only``, ``--no-export``,
``--no-progress`` and ``--init-from`` / ``--init-stages``, which act once, are the invocation's
own), so ``train_ldm.py --out RUN`` continues RUN as it was started. Raising ``--vq-steps`` or
``--unet-steps`` continues a finished stage (the learning-rate schedule is a function of
(step, total steps), so it is recomputed for the new total). Ctrl-C, SIGTERM or a file
``<out>/STOP`` saves a checkpoint and exits cleanly, without the export (``--export-only``
writes one from those checkpoints); remove the STOP file before training again (an invocation
that finds one refuses to start). Options cannot be abbreviated.

``experiments/train_ldm.py``'s docstring has example invocations.
"""
