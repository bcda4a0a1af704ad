"""``--init-from``: starting a run from another run's checkpoints (copied) or from a diffusers
LDM-SR folder's weights (imported as step-0 checkpoints without optimizer state), with the
architecture each source implies."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from orl_gym.io import atomic_save, atomic_write_text
from orl_gym.models import LDMSR, bundled_model_path, load_ldmsr
from orl_gym.training.card import TRAIN_BEGIN, TRAIN_END
from orl_gym.training.config import INIT_FILES, PREDICTION_TYPES, TrainConfig


def diffusers_source(init_from: str) -> Path | None:
    """The diffusers LDM-SR folder that ``--init-from`` names ("bundled": the shipped model), or
    None when it names a train_ldm.py run folder."""
    if init_from == "bundled":
        return bundled_model_path()
    path = Path(init_from)
    return path if (path / "model_index.json").exists() else None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def diffusers_architecture(model: LDMSR, source: Path) -> dict:
    """The architecture fields (and ``prediction_type``) with which train_ldm.py rebuilds
    ``model``'s networks, checked: the rebuilt networks must have the same configs and weight
    shapes, and the noise schedule must be the one train_ldm.py trains with. Anything else
    (another block layout, another beta schedule) is refused with a SystemExit that names it.
    """
    if model.latent_target.anchor == "network":
        raise SystemExit(f"--init-from: {source} anchors its residual on a network; importing a diffusers "
                         "folder with an anchor network is not supported: --init-from the training run "
                         "folder that made it (its anchor/checkpoint.pt is copied with the VQ)")
    vq, unet = model.vqvae.config, model.unet.config
    vq_state, unet_state = model.vqvae.state_dict(), model.unet.state_dict()
    fields = {
        "latent_channels": vq.latent_channels, "vq_channels": tuple(vq.block_out_channels),
        "vq_layers_per_block": vq.layers_per_block, "codebook_size": vq.num_vq_embeddings,
        "unet_channels": tuple(unet.block_out_channels), "unet_layers_per_block": unet.layers_per_block,
        "attention_levels": tuple(t.startswith("Attn") for t in unet.down_block_types),
        # From the weights: configs written before 2026-11-26 say "no attention" for networks
        # that have it (see build_model).
        "vq_mid_attention": any(".mid_block.attentions." in k for k in vq_state),
        "unet_mid_attention": any(k.startswith("mid_block.attentions.") for k in unet_state),
        "norm_num_groups": vq.norm_num_groups,
        "prediction_type": model.scheduler.config.prediction_type,
        "latent_target": model.latent_target.kind,
        "residual_scale": (model.latent_target.residual_scale if model.latent_target.is_residual
                           else TrainConfig.residual_scale),
    }
    if fields["prediction_type"] not in PREDICTION_TYPES:
        raise SystemExit(f"--init-from: {source} predicts {fields['prediction_type']!r}; train_ldm.py "
                         f"trains {PREDICTION_TYPES}")
    rebuilt = TrainConfig(out="", **fields).architecture.build()
    problems = []
    for what, theirs, ours in (("vqvae", model.vqvae, rebuilt.vqvae), ("unet", model.unet, rebuilt.unet)):
        ignore = {"mid_block_add_attention", "add_attention"}  # checked from the weights above
        for key, value in ours.config.items():
            if not key.startswith("_") and key not in ignore and _plain(theirs.config.get(key)) != _plain(value):
                problems.append(f"{what} {key} = {theirs.config.get(key)!r} (train_ldm.py: {value!r})")
        shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        if not problems and shapes != {k: tuple(v.shape) for k, v in ours.state_dict().items()}:
            problems.append(f"{what} weights of other names or shapes")
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
        if model.scheduler.config[key] != rebuilt.scheduler.config[key]:
            problems.append(f"scheduler {key} = {model.scheduler.config[key]!r} "
                            f"(train_ldm.py: {rebuilt.scheduler.config[key]!r})")
    if problems:
        raise SystemExit(f"--init-from: {source} is not a network train_ldm.py can build: "
                         + "; ".join(problems[:5]))
    return fields


def _card_training_section(folder: Path) -> str | None:
    card = folder / "README.md"
    text = card.read_text() if card.exists() else ""
    if TRAIN_BEGIN not in text or TRAIN_END not in text:
        return None
    return text.split(TRAIN_BEGIN, 1)[1].split(TRAIN_END, 1)[0].strip()


def import_diffusers_folder(cfg: TrainConfig, source: Path, stages: list[str]) -> None:
    """Start a run from a diffusers folder's weights: checkpoints at step 0 that hold the
    weights and no optimizer state, so each stage trained here starts its warm-up and schedule
    afresh (fine-tuning), with its EMA starting at the imported weights. The VQ checkpoint
    carries the folder's decoder (stage 1b is already in it). card_notes.md records the origin
    and the source card's training section."""
    out = Path(cfg.out)
    model = load_ldmsr(source, dtype=torch.float32)
    fields = diffusers_architecture(model, source)
    config = {**asdict(cfg), **{k: _plain(v) for k, v in fields.items()}}
    common = {"optimizer": None, "step": 0, "history": [], "best_val": None, "generator": None,
              "seconds": 0.0, "config": config, "imported_from": str(source.resolve())}
    atomic_save({"model": model.vqvae.state_dict(), **common,
                 "last_used": torch.zeros(fields["codebook_size"], dtype=torch.long)},
                out / "vq" / "checkpoint.pt")
    if "unet" in stages:
        atomic_save({"model": model.unet.state_dict(), **common, "ema": None, "vq_step": 0,
                     "objective_changes": None}, out / "unet" / "checkpoint.pt")
    imported = "the VQ autoencoder (with its decoder)" + (" and the UNet" if "unet" in stages else "")
    notes = [f"This run started from the weights of {imported} of `{source.resolve()}` "
             "(`--init-from`); step counts and wall times above count from there."]
    section = _card_training_section(source)
    if section:
        notes += ["", "The source's card said of its training:", "",
                  *(f"> {line}".rstrip() for line in section.splitlines())]
    atomic_write_text(out / "card_notes.md", "\n".join(notes) + "\n")
    print(f"init: imported {imported} from {source}", file=sys.stderr)


def init_stages(cfg: TrainConfig) -> list[str]:
    """``--init-stages`` as a list, checked (known stages, the VQ among them)."""
    stages = [s.strip() for s in cfg.init_stages.split(",") if s.strip()]
    unknown = set(stages) - set(INIT_FILES)
    if unknown or not stages:
        raise SystemExit(f"--init-stages: expected a comma list of {', '.join(INIT_FILES)}, got "
                         f"{cfg.init_stages!r}")
    if "vq" not in stages:
        raise SystemExit("--init-stages: a copied decoder or UNet belongs to its VQ; include vq")
    return stages


def init_run_from(cfg: TrainConfig) -> None:
    """Copy the source run's checkpoints of --init-stages, its commands.log and card_notes.md
    into a new run.

    Repeating the command (to resume) copies nothing again; a run folder that already holds
    checkpoints from elsewhere is refused rather than overwritten.
    """
    out, source = Path(cfg.out), Path(cfg.init_from)
    stages = init_stages(cfg)
    folder = diffusers_source(cfg.init_from)
    if folder is not None:
        source = folder
    record_path = out / "init_from.json"
    record = {"source": str(source.resolve()), "stages": stages}
    if record_path.exists():
        previous = json.loads(record_path.read_text())
        if {key: previous.get(key) for key in record} != record:
            raise SystemExit(f"--init-from: {out} was initialised from {previous['source']} "
                             f"(stages {previous['stages']}), not {record['source']} ({stages})")
        if previous.get("complete", True):  # (records from before this key were written complete)
            return
        print(f"init: the copy from {source} was interrupted; copying again", file=sys.stderr)
    else:
        existing = [p for p in INIT_FILES["vq"] + INIT_FILES["decoder"] + INIT_FILES["unet"] if (out / p).exists()]
        if existing:
            raise SystemExit(f"--init-from: {out} already holds {existing}; use a new --out")
    # Recorded before anything is copied, so that an interrupted copy is redone, not refused.
    atomic_write_text(record_path, json.dumps({**record, "complete": False}, indent=2) + "\n")
    if folder is not None:
        import_diffusers_folder(cfg, folder, stages)
        atomic_write_text(record_path, json.dumps({**record, "complete": True}, indent=2) + "\n")
        return
    names = [name for stage in stages for name in INIT_FILES[stage]]
    # The decoder checkpoint and the latents cache are optional (the UNet stage re-encodes).
    missing = [n for n in names if n in ("vq/checkpoint.pt", "unet/checkpoint.pt") and not (source / n).exists()]
    if missing:
        raise SystemExit(f"--init-from: {source} has no {missing}; train those stages there first "
                         "or leave them out of --init-stages")
    for name in names:
        if (source / name).exists():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            tmp = out / (name + ".tmp")
            shutil.copy2(source / name, tmp)
            os.replace(tmp, out / name)
            print(f"init: copied {source / name}", file=sys.stderr)
    # The lineage goes with the weights: the source's invocations and its remarks for the card.
    for name in ("commands.log", "card_notes.md"):
        if (source / name).exists():
            atomic_write_text(out / name, (source / name).read_text())
    atomic_write_text(record_path, json.dumps({**record, "complete": True}, indent=2) + "\n")
