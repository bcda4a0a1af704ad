"""Loading LDM-SR checkpoints: local folders, the hub code path (offline, from a cache), errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orl_gym.models import (
    LDMSRArchitecture,
    ModelLoadError,
    load_ldmsr,
    resolve_dtype,
)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_then_load_gives_the_same_model(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model_index.json").is_file()
    loaded = load_ldmsr(tmp_path / "ckpt")
    assert _same_weights(loaded.unet, tiny_model.unet) and _same_weights(loaded.vqvae, tiny_model.vqvae)
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"
    assert loaded.scale_factor == 4 and loaded.latent_channels == 3
    assert not any(p.requires_grad for p in loaded.unet.parameters())  # frozen


def test_random_builds_are_seeded():
    arch = LDMSRArchitecture.tiny()
    assert _same_weights(arch.build(seed=1).unet, arch.build(seed=1).unet)
    assert not _same_weights(arch.build(seed=1).unet, arch.build(seed=2).unet)


def test_missing_pieces_are_named(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    shutil.rmtree(ckpt / "scheduler")
    (ckpt / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"unet/diffusion_pytorch_model.*scheduler/scheduler_config.json"):
        load_ldmsr(ckpt)
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_ldmsr(tmp_path / "does-not-exist")


def test_malformed_weights_give_a_clear_error(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    (ckpt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_ldmsr(ckpt)


def test_a_non_ldmsr_unet_is_rejected(tmp_path):
    arch = LDMSRArchitecture.tiny()
    model = arch.build()
    from diffusers import UNet2DModel

    model.unet = UNet2DModel(in_channels=3, out_channels=3, block_out_channels=(16, 16, 32),
                             down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                             norm_num_groups=8)
    with pytest.raises(ModelLoadError, match="in_channels"):
        type(model)(vqvae=model.vqvae, unet=model.unet, scheduler=model.scheduler)


def test_with_scheduler_config_changes_only_the_scheduler(tiny_model):
    from orl_gym.sampler import Schedule

    trailing = tiny_model.with_scheduler_config(timestep_spacing="trailing")
    assert trailing.unet is tiny_model.unet and trailing.vqvae is tiny_model.vqvae  # shared weights
    assert tiny_model.scheduler.config.timestep_spacing == "leading"  # the original is untouched
    assert Schedule.from_model(tiny_model, 10).timesteps[0] == 900
    assert Schedule.from_model(trailing, 10).timesteps[0] == 999
    with pytest.raises(ValueError, match="unknown keys \\['spacing'\\]"):
        tiny_model.with_scheduler_config(spacing="trailing")
    with pytest.raises(ValueError, match="trained on"):
        tiny_model.with_scheduler_config(prediction_type="v_prediction")


def test_dtype_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bf16", cuda) == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)


def _hub_snapshot(tiny_model, hub_cache: Path, repo_id: str) -> None:
    """Lay a checkpoint out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/)."""
    commit = "0" * 40
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    tiny_model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def _load_offline(hf_home: Path, repo_id: str) -> subprocess.CompletedProcess:
    # huggingface_hub reads HF_HUB_OFFLINE at import time: a fresh interpreter.
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    code = ("import sys; from orl_gym.models import load_ldmsr\n"
            "m = load_ldmsr(sys.argv[1]); print('loaded', m.scale_factor, m.source)")
    return subprocess.run([sys.executable, "-c", code, repo_id], env=env, capture_output=True, text=True, timeout=120)


def test_hub_id_code_path_loads_from_the_hub_cache_offline(tiny_model, tmp_path):
    repo_id = "CompVis/ldm-super-resolution-4x-openimages"
    _hub_snapshot(tiny_model, tmp_path / "hf" / "hub", repo_id)
    done = _load_offline(tmp_path / "hf", repo_id)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"loaded 4 {repo_id}" in done.stdout
    missing = _load_offline(tmp_path / "hf", "someone/not-cached")
    assert missing.returncode != 0
    assert "ModelLoadError" in missing.stderr and "someone/not-cached" in missing.stderr



def test_vq_and_unet_on_different_dtypes_or_devices_are_rejected():
    for placement in ({"dtype": torch.bfloat16}, {"device": "meta"}):
        model = LDMSRArchitecture.tiny().build()
        model.vqvae.to(**placement)
        with pytest.raises(ModelLoadError, match=r"share one device and dtype.*call \.to\(device, dtype\)"):
            type(model)(vqvae=model.vqvae, unet=model.unet, scheduler=model.scheduler)


def test_to_casts_each_module_by_its_own_dtype():
    model = LDMSRArchitecture.tiny().build()
    reference = LDMSRArchitecture.tiny().build()
    model.vqvae.to(torch.bfloat16)  # cast on its own after the model was built
    model.to(dtype="float32")  # the UNet is float32 already: the VQ must still be cast back
    assert next(model.vqvae.parameters()).dtype == torch.float32
    assert next(model.unet.parameters()).dtype == torch.float32
    assert _same_weights(model.unet, reference.unet)


def test_sharded_checkpoints_load(tiny_model, tmp_path):
    ckpt = tmp_path / "sharded"
    tiny_model.unet.save_pretrained(ckpt / "unet", max_shard_size="50KB")
    tiny_model.vqvae.save_pretrained(ckpt / "vqvae", max_shard_size="50KB")
    tiny_model.scheduler.save_pretrained(ckpt / "scheduler")
    assert (ckpt / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert not (ckpt / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_ldmsr(ckpt)
    assert _same_weights(loaded.unet, tiny_model.unet) and _same_weights(loaded.vqvae, tiny_model.vqvae)


def test_a_folder_with_only_variant_weights_says_so(tiny_model, tmp_path):
    ckpt = tmp_path / "fp16"
    tiny_model.save_pretrained(ckpt)
    for component in ("unet", "vqvae"):
        weights = ckpt / component / "diffusion_pytorch_model.safetensors"
        weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    with pytest.raises(ModelLoadError, match=r"vqvae/diffusion_pytorch_model\.safetensors \(weights; only variant "
                                             r"weights are there \(diffusion_pytorch_model\.fp16\.safetensors\)"):
        load_ldmsr(ckpt)


def test_a_config_that_does_not_match_its_weights_names_the_component(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    config_path = ckpt / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    # Other shapes: torch's load_state_dict raises (it escaped as a bare RuntimeError).
    config_path.write_text(json.dumps({**config, "block_out_channels": [16, 16, 64]}))
    with pytest.raises(ModelLoadError, match="unet/config.json does not match its weights.*size mismatch"):
        load_ldmsr(ckpt)
    # Layers the weights lack: diffusers only warned and left them random.
    config_path.write_text(json.dumps(config))
    vq_config_path = ckpt / "vqvae" / "config.json"
    vq_config = json.loads(vq_config_path.read_text())
    weights = LDMSRArchitecture(**{**LDMSRArchitecture.tiny().__dict__, "vq_mid_attention": False}).build()
    weights.vqvae.save_pretrained(ckpt / "vqvae")
    vq_config_path.write_text(json.dumps({**vq_config, "mid_block_add_attention": True}))
    with pytest.raises(ModelLoadError, match="vqvae/config.json does not match its weights.*lack decoder.mid_block.attentions"):
        load_ldmsr(ckpt)


def test_a_cuda_device_the_machine_lacks_is_a_clear_error(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda': CUDA is not available"):
        load_ldmsr(tmp_path / "ckpt", device="cuda")
    # A machine with one GPU asked for the fourth (checked before anything touches CUDA).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3': this machine has 1 CUDA device\(s\), cuda:0\.\.cuda:0"):
        load_ldmsr(tmp_path / "ckpt", device="cuda:3")


def test_a_stated_default_sampler_round_trips_and_sets_the_env_schedule(tiny_model, tmp_path, image_folder,
                                                                       lpips_home):
    """sampler_defaults.json: saved with the model, read back, and the env's K when it is given none;
    an explicit num_inference_steps still wins, and a model that states nothing gets the env's 20."""
    import dataclasses

    import gymnasium as gym

    import orl_gym
    from orl_gym.env import DEFAULT_NUM_INFERENCE_STEPS

    dataclasses.replace(tiny_model, default_num_inference_steps=3).save_pretrained(tmp_path / "three")
    assert json.loads((tmp_path / "three" / "sampler_defaults.json").read_text()) == {"num_inference_steps": 3}
    tiny_model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "sampler_defaults.json").exists()
    assert load_ldmsr(tmp_path / "three").default_num_inference_steps == 3
    kwargs = dict(data=str(image_folder), hr_size=32, device="cpu")
    lengths = {}
    for name, model, steps in (("stated", tmp_path / "three", None), ("explicit", tmp_path / "three", 5),
                               ("unstated", tmp_path / "plain", None)):
        env = gym.make(orl_gym.ENV_ID, model=str(model), num_inference_steps=steps, **kwargs)
        lengths[name] = len(env.unwrapped.params.schedule)
    assert lengths == {"stated": 3, "explicit": 5, "unstated": DEFAULT_NUM_INFERENCE_STEPS}


@pytest.mark.parametrize("content, problem", [
    ('{"num_inference_steps": 0}', "an int >= 1"),
    ('{"num_inference_steps": 2.5}', "an int >= 1"),
    ('{"steps": 2}', "exactly the key"),
    ("not json", "not a valid sampler default"),
])
def test_a_broken_sampler_defaults_file_is_named(tiny_model, tmp_path, content, problem):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "sampler_defaults.json").write_text(content)
    with pytest.raises(ModelLoadError, match=f"sampler_defaults.json.*{problem}"):
        load_ldmsr(tmp_path / "ckpt")


def test_num_inference_steps_must_be_a_positive_int_or_none():
    from orl_gym.env import EnvConfig

    for bad in (0, -2, 2.5, True, "20"):
        with pytest.raises(ValueError, match="num_inference_steps: expected an int >= 1 or None"):
            EnvConfig(num_inference_steps=bad)
    assert EnvConfig().num_inference_steps is None and EnvConfig(num_inference_steps=4).num_inference_steps == 4
