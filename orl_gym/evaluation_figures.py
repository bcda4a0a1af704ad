"""The figures of an evaluation: the comparison grid of images, what a policy chose along the
schedule, and the training curves of several runs (PNG, written atomically).

Importable from :mod:`orl_gym.evaluation`; matplotlib is imported on first use, on its
file-only Agg backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn.functional as F

from orl_gym.actions import PARAMETERS
from orl_gym.data import upsample_bicubic
from orl_gym.io import save_figure

if TYPE_CHECKING:
    from orl_gym.evaluation import MethodResult

__all__ = ["comparison_grid", "plot_policy_trace", "plot_training_curves"]


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparison_grid(results: Sequence[MethodResult], path: Path, *, count: int = 4) -> Path | None:
    """PNG rows of LR | bicubic | each method | HR for the first images every method kept."""
    plt = _pyplot()
    shared = sorted(set.intersection(*(set(r.images) for r in results)))[:count] if results else []
    if not shared:
        return None
    columns = ["LR", "bicubic", *[r.name for r in results], "HR"]
    fig, axes = plt.subplots(len(shared), len(columns), figsize=(2.2 * len(columns), 2.3 * len(shared)), squeeze=False)
    for i, index in enumerate(shared):
        first = results[0].images[index]
        hr, lr = first["hr"], first["lr"]
        bicubic = upsample_bicubic(lr[None], hr.shape[-2:])[0]
        lr_big = F.interpolate(lr[None], size=hr.shape[-2:], mode="nearest")[0]
        panels = [lr_big, bicubic, *[r.images[index]["sr"] for r in results], hr]
        for j, (title, image) in enumerate(zip(columns, panels, strict=True)):
            ax = axes[i, j]
            ax.imshow(image.permute(1, 2, 0).float().clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
        axes[i, 0].set_ylabel(results[0].rows[[r["image_index"] for r in results[0].rows].index(index)]["category"],
                              fontsize=8)
    save_figure(fig, path)
    return path


def plot_policy_trace(trace: Sequence[Mapping[str, float]], path: Path, *, title: str = "What the policy chose",
                      bins: int = 10, num_train_timesteps: int = 1000) -> Path:
    """PNG: each sampler parameter the policy chose against the timestep t it acted at (mean and
    10-90% band over all images' steps in bins of t), and how often each t was visited."""
    plt = _pyplot()

    if not trace:
        raise ValueError("plot_policy_trace: the trace is empty (was the policy ever called?)")
    t = np.array([row["t"] for row in trace])
    edges = np.linspace(0, num_train_timesteps, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    which = np.clip(np.digitize(t, edges) - 1, 0, bins - 1)
    fig, axes = plt.subplots(1, len(PARAMETERS) + 1, figsize=(3.2 * (len(PARAMETERS) + 1), 3.0))
    for ax, name in zip(axes, PARAMETERS, strict=False):
        values = np.array([row[name] for row in trace])
        stats_ = [(values[which == b].mean(), *np.percentile(values[which == b], [10, 90]))
                  if (which == b).any() else (np.nan, np.nan, np.nan) for b in range(bins)]
        mean, low, high = (np.array(v) for v in zip(*stats_, strict=True))
        ax.fill_between(centers, low, high, alpha=0.25, color="tab:blue", label="10-90%")
        ax.plot(centers, mean, "o-", color="tab:blue", markersize=3, label="mean")
        ax.set_xlabel("timestep t (noisy -> clean: right to left)")
        ax.set_title(name)
        ax.set_xlim(num_train_timesteps, 0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[-1].hist(t, bins=edges, color="tab:gray")
    axes[-1].set_xlim(num_train_timesteps, 0)
    axes[-1].set_title("steps taken at t")
    axes[-1].set_xlabel("timestep t")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return path


def plot_training_curves(runs: Mapping[str, Path], path: Path, *, title: str = "Training reward") -> Path:
    """PNG: the running-mean episode reward and the validation reward of several runs (their
    ``reward_curve.csv`` / ``validation.csv``) against timesteps, on shared axes."""
    plt = _pyplot()

    def read(csv_path: Path) -> np.ndarray:
        if not csv_path.is_file():
            return np.zeros((0, 2))
        lines = [line.split(",") for line in csv_path.read_text().splitlines()[1:] if line]
        return np.array([[float(a), float(b)] for a, b in lines]).reshape(-1, 2)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (name, run_dir), color in zip(runs.items(), itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"]),
                                      strict=False):
        episodes, validation = read(Path(run_dir) / "reward_curve.csv"), read(Path(run_dir) / "validation.csv")
        if len(episodes):
            window = max(1, len(episodes) // 50)
            running = np.convolve(episodes[:, 1], np.ones(window) / window, mode="valid")
            axes[0].plot(episodes[window - 1:, 0], running, color=color, label=f"{name} ({window}-episode mean)")
        if len(validation):
            axes[1].plot(validation[:, 0], validation[:, 1], "o-", color=color, label=name)
    for ax, subtitle in zip(axes, ("episode reward (training, stochastic)", "validation reward (deterministic)"),
                            strict=True):
        ax.set_xlabel("timesteps")
        ax.set_ylabel("reward")
        ax.set_title(subtitle, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return path
