"""What every stage's training loop shares: the learning-rate schedule, the stage clock, the
stop flag (signals, a STOP file, a wall-time limit), image PSNR, augmentation, loss curves, and
the check that every dataset of a data root still has training images."""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from orl_gym.data import PairDataset
from orl_gym.io import save_figure
from orl_gym.models import LatentTarget


def lr_at(step: int, *, peak: float, warmup: int, progress: float, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps times a cosine decay from ``peak`` (progress 0) to
    ``peak * min_ratio`` (progress 1); ``progress`` is the stage's fraction done (StageClock)."""
    progress = min(1.0, max(0.0, progress))
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return peak * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class StageClock:
    """How far a stage is: steps and training wall time summed over all resumes.

    A stage ends at ``max_steps`` or, when ``minutes`` > 0, after that much training time,
    whichever comes first; the learning-rate decay follows the same fraction. A time budget
    suits shared CPUs, whose speed changes with the load: the schedule still ends decayed.
    """

    def __init__(self, max_steps: int, minutes: float, seconds_before: float = 0.0) -> None:
        self.max_steps, self.minutes, self.seconds_before = max_steps, minutes, seconds_before
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def progress(self, step: int) -> float:
        by_steps = step / max(1, self.max_steps)
        by_time = self.seconds / (self.minutes * 60) if self.minutes > 0 else 0.0
        return max(by_steps, by_time)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


class StopFlag:
    """Set by SIGTERM / SIGINT / an ``<out>/STOP`` file / the wall-time limit: save and exit."""

    def __init__(self, out: Path, max_minutes: float) -> None:
        self.out, self.reason = out, ""
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes > 0 else math.inf
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def close(self) -> None:
        """Put the previous signal handlers back (main() may run inside another program)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name

    def __bool__(self) -> bool:
        if not self.reason and (self.out / "STOP").exists():
            self.reason = "STOP file"
        if not self.reason and time.monotonic() > self.deadline:
            self.reason = "--max-minutes"
        return bool(self.reason)


class StageProgress:
    """A stage's tqdm bar (``enabled``: not --no-progress); :meth:`step` advances it and, every
    10 steps, shows the given values and the seconds per step since the last time."""

    def __init__(self, name: str, *, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=name, disable=not enabled,
                        dynamic_ncols=True, mininterval=5)
        self._last = time.monotonic()

    def step(self, step: int, **postfix: str) -> None:
        self.bar.update(1)
        if postfix and step % 10 == 0:
            now = time.monotonic()
            self.bar.set_postfix(**postfix, s_per_step=f"{(now - self._last) / 10:.2f}")
            self._last = now


def end_stage(name: str, step: int, *, progress: StageProgress, save: Callable[[], None],
              writer: Any, stop: StopFlag) -> None:
    """The end of a stage's loop: close its progress bar, save the last checkpoint, flush
    TensorBoard, and say so when the stop flag ended it."""
    progress.bar.close()
    save()
    writer.flush()
    if stop:
        print(f"{name}: stopped at step {step} ({stop.reason}); checkpoint saved", file=sys.stderr)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of images in [0, 1]."""
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def reconstructed_image(target: LatentTarget, rec: torch.Tensor, hr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The HR image a reconstruction ``rec`` of the VQ input ``x`` stands for, in [0, 1]. For the
    residual target the anchor is recovered from the batch itself (``hr - x / s``: the
    augmented crops' own bicubic upsampling), so no LR image has to travel with the batch."""
    if not target.is_residual:
        return target.image(rec, None)
    anchor = hr.to(rec.device) - x.to(rec.device) / target.residual_scale
    return (anchor + rec / target.residual_scale).clamp(0.0, 1.0)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Any, grad_clip: float) -> None:
    """One update: gradients of ``loss``, clipped to norm ``grad_clip`` (0: not clipped), applied."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (the 8 symmetries; aerial scenes have no up)."""
    return augment_alike((images,), generator)[0]


def augment_alike(images: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One random symmetry of ``augment`` (the same draws) applied to several batches alike, e.g.
    HR crops and their LR images: the LR image of a rotated crop is the rotated LR image."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    turned = tuple(torch.rot90(x, k, dims=(-2, -1)) for x in images)
    return tuple(x.flip(-1) for x in turned) if flip % 2 else turned


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Loss (and validation) curves as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h) for h in history if "val" in h]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        steps, losses = zip(*train, strict=True)
        axes[0].plot(steps, losses, lw=0.5, alpha=0.4, label="train loss")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        axes[0].plot(steps, smooth, lw=1.2, label=f"mean of {window}")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].legend()
    if val:
        steps, entries = zip(*val, strict=True)
        axes[1].plot(steps, [e["val"] for e in entries], marker="o")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel(val[0][1].get("val_name", "validation"))
    fig.suptitle(title)
    save_figure(fig, path, dpi=90)


def require_every_dataset(ds: PairDataset, option: str) -> PairDataset:
    """Refuse to train on a data root when one of its datasets lost every image to the crop size
    (PairDataset drops images smaller than ``hr_size`` with a warning, which a long run buries):
    the run would go on without that dataset while its card names it as training data."""
    if not all("/" in name for name in ds.classes):  # one dataset, not a root of several
        return ds
    datasets = {name.split("/", 1)[0] for name in ds.classes}
    kept = {ds.classes[label].split("/", 1)[0] for label in ds.labels.unique().tolist()}
    if datasets - kept:
        crop = ds.config.hr_size
        raise SystemExit(f"{option} {crop}: no training image of {', '.join(sorted(datasets - kept))} "
                         f"has both sides >= {crop} px, so this stage would train without it; lower "
                         f"{option} or point --data at the datasets to train on")
    return ds
