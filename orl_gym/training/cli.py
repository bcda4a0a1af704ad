"""The training command (``experiments/train_ldm.py`` is a thin script over :func:`main`):
resolving an invocation's configuration against the run it resumes or starts from, and running
the stages."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from orl_gym.io import atomic_write_text
from orl_gym.models import load_ldmsr
from orl_gym.training.anchor import train_anchor
from orl_gym.training.checkpoints import build_model
from orl_gym.training.config import (
    ARCH_FIELDS,
    PER_INVOCATION_FIELDS,
    UNET_ARCH_FIELDS,
    VQ_ARCH_FIELDS,
    TrainConfig,
    data_source,
    parse_args,
    saved_config,
)
from orl_gym.training.decoder import train_decoder
from orl_gym.training.export import export
from orl_gym.training.init_from import (
    diffusers_architecture,
    diffusers_source,
    init_run_from,
    init_stages,
)
from orl_gym.training.loop import StopFlag
from orl_gym.training.unet import train_unet
from orl_gym.training.vq import train_vq


def _explicit(argv: list[str]) -> set[str]:
    """Config fields given on the command line."""
    return {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}


def _plain_text(value: Any) -> str:
    """A config value as it would be typed on the command line."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def resolve_config(cfg: TrainConfig, argv: list[str]) -> TrainConfig:
    """On resume the saved architecture wins; a conflicting one on the command line is an error.
    Every other setting left off the command line keeps the run's saved value (the last
    invocation's), not the CLI default, except those of ``PER_INVOCATION_FIELDS``.

    A new run with ``--init-from`` takes the source run's architecture for the fields not given;
    a given field that a copied stage fixes must equal the source's.
    """
    explicit = _explicit(argv)
    saved = saved_config(Path(cfg.out))
    if saved is not None:
        # Without this, `train_ldm.py --out RUN` after a run with --unet-steps 30000 would stop
        # the stage at the default 8000 and restart its learning rate at the default. (The card
        # reads each stage's settings from its checkpoint, so it was right either way.)
        restored = []
        for f in fields(TrainConfig):
            name = f.name
            if (name in ARCH_FIELDS or name == "prediction_type" or name in PER_INVOCATION_FIELDS
                    or name in explicit or name not in saved):
                continue
            value = saved[name]
            value = tuple(value) if isinstance(value, list) else value
            if value != getattr(cfg, name):
                restored.append(f"--{name.replace('_', '-')} {_plain_text(value)}")
                setattr(cfg, name, value)
        if restored:
            print(f"resume: settings of the run in {cfg.out} kept (not the defaults): "
                  f"{', '.join(restored)}", file=sys.stderr)
        for name in ARCH_FIELDS:
            # Runs from before a field existed were built with its default (latent_target: image).
            value = saved.get(name, getattr(TrainConfig, name))
            value = tuple(value) if isinstance(value, list) else value
            if name in explicit and getattr(cfg, name) != value:
                raise SystemExit(f"--{name.replace('_', '-')}: the run in {cfg.out} was built with "
                                 f"{value}, not {getattr(cfg, name)}; use a new --out")
            setattr(cfg, name, value)
        # The prediction type is fixed per UNet: restored like the architecture (a run that
        # inherited v_prediction from --init-from must not resume as the CLI default). A
        # different one given explicitly is refused while a UNet checkpoint exists; without
        # one it starts a new UNet of that type.
        saved_type = saved.get("prediction_type")
        if saved_type is not None:
            unet_path = Path(cfg.out) / "unet" / "checkpoint.pt"
            if "prediction_type" not in explicit:
                cfg.prediction_type = saved_type
            elif cfg.prediction_type != saved_type and unet_path.exists():
                raise SystemExit(
                    f"--prediction-type: the UNet in {unet_path} was trained for {saved_type!r}, not "
                    f"{cfg.prediction_type!r}; pass --prediction-type {saved_type} (or leave it out) "
                    "to resume it, or move the checkpoint away to train a new UNet")
        return cfg
    if cfg.init_from is None:
        return cfg
    source = Path(cfg.init_from)
    folder = diffusers_source(cfg.init_from)
    if folder is not None:
        source_config = diffusers_architecture(load_ldmsr(folder, dtype=torch.float32), folder)
    else:
        source_config = saved_config(source)
    if source_config is None:
        raise SystemExit(f"--init-from: {source} has neither run_config.json nor model_index.json; "
                         "name a train_ldm.py run folder, a diffusers LDM-SR folder or 'bundled'")
    stages = init_stages(cfg)
    fixed = set(VQ_ARCH_FIELDS) | (set(UNET_ARCH_FIELDS) if "unet" in stages else set())
    for name in (*ARCH_FIELDS, "prediction_type"):
        value = source_config.get(name, getattr(TrainConfig, name, None))
        value = tuple(value) if isinstance(value, list) else value
        if name not in explicit:
            setattr(cfg, name, value)
        elif name in fixed and getattr(cfg, name) != value:
            raise SystemExit(f"--{name.replace('_', '-')}: the copied stages of {source} were built "
                             f"with {value}, not {getattr(cfg, name)}; leave it out or train that "
                             "stage anew (--init-stages)")
    return cfg


def main(argv: list[str] | None = None, *, script: str | os.PathLike) -> int:
    """Run ``experiments/train_ldm.py``: resolve the configuration, start or resume the run in
    ``--out``, train the stages, export. ``script`` is the program's file, recorded with the
    arguments in the run's commands.log (and so in the model card)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = resolve_config(parse_args(argv), argv)
    if cfg.export_inference_steps < 0:
        # Checked before training: the export, hours later, would refuse it.
        raise SystemExit(f"--export-inference-steps: expected 0 (not stated) or the DDIM steps of the model's "
                         f"default sampler, got {cfg.export_inference_steps}")
    if cfg.data is not None:
        # Recorded as an absolute path: a resume keeps --data (resolve_config) and may run from
        # another working directory.
        cfg.data = data_source(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.init_from is not None:
        init_run_from(cfg)
    command = [sys.executable, str(Path(script).resolve()), *argv]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out / "commands.log", "a") as log:
        log.write(f"{started} {' '.join(command)}\n")
    export_folder = Path(cfg.export) if cfg.export else out / "export"
    if cfg.export_only:
        # The record of the training invocation stays: an export changes no training setting.
        export(cfg, export_folder)
        return 0
    if (out / "STOP").exists():
        # Refused, not removed: it may be meant for another invocation still training in --out.
        raise SystemExit(f"{out / 'STOP'} exists (left by an earlier stop, or meant for a run still "
                         "training in this folder): remove it to train; nothing was done")
    record = {"config": asdict(cfg), "command": command, "started": started,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "niceness": os.nice(0), "host": os.uname().nodename}
    atomic_write_text(out / "run_config.json", json.dumps(record, indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    stop = StopFlag(out, cfg.max_minutes)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = set(stages) - {"anchor", "vq", "decoder", "unet"}
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; use anchor, vq, decoder, unet")
    with contextlib.closing(writer), contextlib.closing(stop):
        model = build_model(cfg)
        if "anchor" in stages:
            train_anchor(cfg, model, writer, stop)
        # A stopped anchor stage leaves the VQ untouched (a VQ checkpoint would record the anchor's
        # unfinished step and be refused once the anchor trains on).
        if "vq" in stages and not ("anchor" in stages and stop):
            train_vq(cfg, model, writer, stop)
        if "decoder" in stages and not stop:
            train_decoder(cfg, model, writer, stop)
        if "unet" in stages and not stop:
            train_unet(cfg, model, writer, stop)
    if stop.reason:
        # A stopped run is partly trained: do not overwrite the export (perhaps the bundled model).
        if not cfg.no_export:
            print(f"export: skipped, training stopped ({stop.reason}); run the same command again "
                  "to continue, or --export-only to export these checkpoints", file=sys.stderr)
    elif not cfg.no_export and not (out / "vq" / "checkpoint.pt").exists():
        # An anchor stage alone: there is no model to export yet.
        print("export: skipped, no VQ trained yet (--stages vq,... next)", file=sys.stderr)
    elif not cfg.no_export:
        export(cfg, export_folder)
    return 0
