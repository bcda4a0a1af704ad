"""experiments/train_ldm.py end to end on a tiny architecture: train, resume, export, load.

Synthetic images in a class-folder dataset under tmp_path keep it fast and independent of
ORL_GYM_DATA (the real data is for the real run). conftest's ``train_ldm`` fixture loads the
script; its pieces without a run: tests/test_train_ldm_units.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from orl_gym.models import load_ldmsr


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    """Two classes of smooth random 64x64 RGB images (enough for train and validation splits)."""
    root = tmp_path_factory.mktemp("synth") / "synth"
    gen = torch.Generator().manual_seed(0)
    for cls in ("fields", "roads"):
        (root / cls).mkdir(parents=True)
        for i in range(30):
            coarse = torch.rand(1, 3, 8, 8, generator=gen)
            image = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bicubic").clamp(0, 1)
            pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{cls}{i:02d}.png")
    return root


def _args(out: Path, data: Path, vq_steps: int, unet_steps: int, *extra: str) -> list[str]:
    return [
        "--out", str(out), "--data", str(data), "--threads", "1", "--no-progress",
        "--vq-channels", "8,16,16", "--codebook-size", "64", "--unet-channels", "16,16,32",
        "--vq-steps", str(vq_steps), "--unet-steps", str(unet_steps), "--vq-batch-size", "4",
        "--vq-crop", "16", "--unet-batch-size", "4", "--unet-crop", "32", "--val-crop", "32",
        "--val-images", "2", "--val-every", "100", "--checkpoint-every", "100", "--vq-warmup", "1",
        "--unet-warmup", "1", "--vq-restart-every", "2", *extra,
    ]


def test_train_resume_export_and_load(train_ldm, synthetic_data, tmp_path):
    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 3, 2)) == 0
    vq = torch.load(out / "vq" / "checkpoint.pt", weights_only=False)
    unet = torch.load(out / "unet" / "checkpoint.pt", weights_only=False)
    assert vq["step"] == 3 and unet["step"] == 2 and unet["vq_step"] == 3
    assert unet["ema"] is not None and vq["optimizer"]["state"]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files behind
    record = json.loads((out / "run_config.json").read_text())
    assert record["config"]["vq_channels"] == [8, 16, 16] and "--vq-steps" in record["command"]
    assert (out / "loss_vq.png").stat().st_size > 0 and (out / "loss_unet.png").stat().st_size > 0
    assert any((out / "tb").iterdir())

    model = load_ldmsr(out / "export")  # fp16 on disk, float32 in memory
    assert model.dtype == torch.float32 and model.scale_factor == 4
    stored = next((out / "export" / "unet").glob("*.safetensors"))
    from safetensors.torch import load_file

    assert next(iter(load_file(stored).values())).dtype == torch.float16

    # Resume the UNet further: continues from step 2, keeps the optimizer state.
    assert train_ldm.main(_args(out, synthetic_data, 3, 4, "--stages", "unet", "--no-export")) == 0
    assert torch.load(out / "unet" / "checkpoint.pt", weights_only=False)["step"] == 4
    # Resume the VQ further; the UNet then refuses to continue on latents that changed.
    assert train_ldm.main(_args(out, synthetic_data, 5, 4, "--stages", "vq", "--no-export")) == 0
    assert torch.load(out / "vq" / "checkpoint.pt", weights_only=False)["step"] == 5
    with pytest.raises(RuntimeError, match="latents changed"):
        train_ldm.main(_args(out, synthetic_data, 5, 6, "--stages", "unet"))
    # A different architecture for an existing run is refused.
    with pytest.raises(SystemExit, match="vq-channels"):
        train_ldm.main([*_args(out, synthetic_data, 5, 6), "--vq-channels", "8,8,16"])


def test_residual_target_trains_exports_and_resumes_as_residual(train_ldm, synthetic_data, tmp_path):
    from orl_gym.models import LatentTarget

    out = tmp_path / "run"
    args = _args(out, synthetic_data, 3, 2, "--latent-target", "residual", "--residual-scale", "4",
                 "--stages", "vq,decoder,unet", "--decoder-steps", "2", "--decoder-crop", "32")
    assert train_ldm.main(args) == 0
    model = load_ldmsr(out / "export")
    assert model.latent_target == LatentTarget(kind="residual", residual_scale=4.0)
    card = (out / "export" / "README.md").read_text()
    assert "LR-anchored (residual)" in card and "s = 4" in card and "residuals HR - bicubic(LR)" in card
    # The cached UNet latents are the VQ's encodings of the scaled residuals, not of the images.
    from orl_gym.data import DataConfig, PairDataset

    cache = torch.load(out / "unet" / "latents.pt", weights_only=False)
    ds = PairDataset(DataConfig(source=str(synthetic_data), split="train", hr_size=32, scale=4, crop="full"))
    pair = ds.pairs(torch.tensor([0]))
    with torch.no_grad():
        expected = model.vqvae.encode(model.latent_target.vq_input(pair.hr, pair.lr)).latents
    torch.testing.assert_close(cache["train"][0][0], expected[0], atol=5e-3, rtol=0)  # fp16 export
    # A resume keeps the target; another one on the command line is refused.
    assert train_ldm.main(_args(out, synthetic_data, 3, 3, "--stages", "unet", "--no-export")) == 0
    assert json.loads((out / "run_config.json").read_text())["config"]["latent_target"] == "residual"
    with pytest.raises(SystemExit, match="latent-target"):
        train_ldm.main(_args(out, synthetic_data, 3, 3, "--latent-target", "image"))


def test_a_network_anchor_trains_first_and_the_vq_encodes_residuals_over_it(train_ldm, synthetic_data, tmp_path):
    from orl_gym.models import AnchorNet, LatentTarget

    out = tmp_path / "run"
    args = _args(out, synthetic_data, 3, 2, "--latent-target", "residual", "--latent-anchor", "network",
                 "--anchor-channels", "8", "--anchor-blocks", "1", "--anchor-steps", "4", "--anchor-crop", "32",
                 "--anchor-batch-size", "2", "--anchor-warmup", "1", "--stages", "anchor,vq,unet")
    assert train_ldm.main(args) == 0
    anchor_ckpt = torch.load(out / "anchor" / "checkpoint.pt", weights_only=False)
    assert anchor_ckpt["step"] == 4 and anchor_ckpt["best_val"] >= anchor_ckpt["history"][0]["val"]
    assert torch.load(out / "vq" / "checkpoint.pt", weights_only=False)["anchor_step"] == 4
    model = load_ldmsr(out / "export")
    assert model.latent_target == LatentTarget(kind="residual", residual_scale=5.0, anchor="network")
    network = model.latent_target.network
    assert isinstance(network, AnchorNet) and network.config.channels == 8
    for name, weight in network.state_dict().items():  # the exported anchor is the best one (fp16)
        torch.testing.assert_close(weight, anchor_ckpt["best"][name], atol=2e-3, rtol=1e-2)
    card = (out / "export" / "README.md").read_text()
    assert "Stage 0, anchor network" in card and "residuals HR - A(LR)" in card
    # The cached UNet latents are encodings of the residuals over the network's prediction.
    from orl_gym.data import DataConfig, PairDataset

    cache = torch.load(out / "unet" / "latents.pt", weights_only=False)
    ds = PairDataset(DataConfig(source=str(synthetic_data), split="train", hr_size=32, scale=4, crop="full"))
    pair = ds.pairs(torch.tensor([0]))
    with torch.no_grad():
        expected = model.vqvae.encode(model.latent_target.vq_input(pair.hr, pair.lr)).latents
    torch.testing.assert_close(cache["train"][0][0], expected[0], atol=5e-3, rtol=0)
    # Training the anchor further makes the VQ's residuals stale: its stages are refused.
    assert train_ldm.main(_args(out, synthetic_data, 3, 2, "--anchor-steps", "5", "--stages", "anchor",
                                "--no-export")) == 0
    # An anchor stage alone has nothing to export yet.
    first = tmp_path / "anchor_only"
    assert train_ldm.main(_args(first, synthetic_data, 3, 2, "--latent-target", "residual", "--latent-anchor",
                                "network", "--anchor-channels", "8", "--anchor-blocks", "1", "--anchor-steps", "2",
                                "--anchor-crop", "32", "--anchor-batch-size", "2", "--stages", "anchor")) == 0
    assert (first / "anchor" / "checkpoint.pt").exists() and not (first / "export").exists()
    with pytest.raises(RuntimeError, match="anchor network at step 4, but the anchor is now at step 5"):
        train_ldm.main(_args(out, synthetic_data, 3, 3, "--stages", "unet", "--no-export"))
    # A bicubic run has no anchor to train, and a network run cannot skip training one.
    with pytest.raises(SystemExit, match="nothing to train"):
        train_ldm.main(_args(tmp_path / "bicubic", synthetic_data, 3, 2, "--latent-target", "residual",
                             "--stages", "anchor"))
    with pytest.raises(FileNotFoundError, match="run the anchor stage first"):
        train_ldm.main(_args(tmp_path / "untrained", synthetic_data, 3, 2, "--latent-target", "residual",
                             "--latent-anchor", "network", "--stages", "vq"))


def test_stop_checkpoints_and_exits_without_export(train_ldm, synthetic_data, tmp_path, capsys):
    out = tmp_path / "run"
    # --max-minutes already past: the VQ stops before its first step, checkpoints, no export.
    assert train_ldm.main(_args(out, synthetic_data, 3, 2, "--max-minutes", "1e-9")) == 0
    assert torch.load(out / "vq" / "checkpoint.pt", weights_only=False)["step"] == 0
    assert not (out / "export").exists() and not (out / "unet").exists()
    assert "export: skipped, training stopped (--max-minutes)" in capsys.readouterr().err
    # A STOP file stops a running invocation; one left over refuses the next, untouched.
    stop = train_ldm.StopFlag(out, 0.0)
    try:
        assert not stop
        (out / "STOP").touch()
        assert stop and stop.reason == "STOP file"
    finally:
        stop.close()
    with pytest.raises(SystemExit, match="STOP exists"):
        train_ldm.main(_args(out, synthetic_data, 3, 2, "--stages", "vq"))
    assert (out / "STOP").exists() and not (out / "export").exists()
    assert torch.load(out / "vq" / "checkpoint.pt", weights_only=False)["step"] == 0


def test_export_refuses_a_unet_of_another_vq_step(train_ldm, synthetic_data, tmp_path):
    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 2, 1, "--no-export")) == 0
    unet_path = out / "unet" / "checkpoint.pt"
    unet = torch.load(unet_path, weights_only=False)
    train_ldm.atomic_save({**unet, "vq_step": 1}, unet_path)
    with pytest.raises(SystemExit, match="VQ at step 1, but the VQ .* is at step 2"):
        train_ldm.main(_args(out, synthetic_data, 2, 1, "--export-only"))
    assert not (out / "export").exists()


def test_an_export_keeps_the_evaluation_only_of_the_same_weights(train_ldm, synthetic_data, tmp_path):
    from orl_gym.models import checkpoint_digest

    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 2, 1)) == 0
    export = out / "export"
    assert "Not measured for these weights yet" in (export / "README.md").read_text()
    # The card names the data and validation crops of this run (not the bundled model's).
    assert f"Data: the `train` split of `{synthetic_data}`" in (export / "README.md").read_text()
    assert "2 center 32x32 crops" in (export / "README.md").read_text()
    # What eval_base_model.py writes: a table in the card, the digest of the weights it measured.
    card = (export / "README.md").read_text()
    start, end = card.index(train_ldm.EVAL_BEGIN), card.index(train_ldm.EVAL_END)
    (export / "README.md").write_text(card[:start] + train_ldm.EVAL_BEGIN + "\nPSNR 99 dB\n" + card[end:])
    (export / "eval_results.json").write_text(json.dumps({"setup": {"weights_sha256": checkpoint_digest(export)}}))
    assert train_ldm.main(_args(out, synthetic_data, 2, 1, "--export-only")) == 0  # the same weights
    assert "PSNR 99 dB" in (export / "README.md").read_text() and (export / "eval_results.json").exists()
    # More training, new weights: the old evaluation is not theirs.
    assert train_ldm.main(_args(out, synthetic_data, 2, 2, "--stages", "unet")) == 0
    assert "PSNR 99 dB" not in (export / "README.md").read_text()
    assert "Not measured for these weights yet" in (export / "README.md").read_text()
    assert not (export / "eval_results.json").exists()


def test_an_interrupted_vq_stage_resumes_to_the_same_weights(train_ldm, synthetic_data, tmp_path, monkeypatch):
    # Codebook seeding and dead-code restarts (every 2 steps here) draw from the checkpointed
    # generator, so a run stopped after 2 of its 4 steps and resumed ends where one in one go does.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ("--stages", "vq", "--no-export")
    assert train_ldm.main(_args(straight, synthetic_data, 4, 0, *args)) == 0
    done = train_ldm.StageClock.done
    with monkeypatch.context() as patch:  # an interruption after step 2 (same 4-step schedule)
        patch.setattr(train_ldm.StageClock, "done", lambda self, step: step >= 2 or done(self, step))
        assert train_ldm.main(_args(resumed, synthetic_data, 4, 0, *args)) == 0
    assert torch.load(resumed / "vq" / "checkpoint.pt", weights_only=False)["step"] == 2
    assert train_ldm.main(_args(resumed, synthetic_data, 4, 0, *args)) == 0
    a, b = (torch.load(run / "vq" / "checkpoint.pt", weights_only=False)["model"] for run in (straight, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_an_interrupted_init_from_copy_is_redone(train_ldm, synthetic_data, tmp_path, monkeypatch):
    source = tmp_path / "source"
    assert train_ldm.main(_args(source, synthetic_data, 2, 1, "--no-export")) == 0
    run = tmp_path / "run"
    args = [*_args(run, synthetic_data, 2, 2, "--stages", "unet", "--no-export"), "--init-from", str(source),
            "--init-stages", "vq,unet"]
    copy = train_ldm.shutil.copy2
    calls = []

    def copy_then_fail(*copy_args, **kwargs):  # the copy stops after its first file
        calls.append(copy_args)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return copy(*copy_args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_ldm.shutil, "copy2", copy_then_fail)
        with pytest.raises(KeyboardInterrupt):
            train_ldm.main(args)
    assert json.loads((run / "init_from.json").read_text())["complete"] is False
    assert train_ldm.main(args) == 0  # copied again, then trained (it was refused: "already holds")
    assert json.loads((run / "init_from.json").read_text())["complete"] is True
    assert torch.load(run / "unet" / "checkpoint.pt", weights_only=False)["step"] == 2


def test_a_relative_data_path_is_recorded_absolute_for_resumes_elsewhere(train_ldm, synthetic_data, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(synthetic_data.parent)
    assert train_ldm.main(_args(out, Path(synthetic_data.name), 1, 1, "--no-export")) == 0
    recorded = json.loads((out / "run_config.json").read_text())["config"]["data"]
    assert recorded == str(synthetic_data.resolve())
    monkeypatch.chdir(tmp_path)  # a resume from elsewhere, --data left out: the same images
    argv = ["--out", str(out)]
    assert train_ldm.resolve_config(train_ldm.parse_args(argv), argv).data == recorded
    # The card names the training invocation's device, not that of a later --export-only.
    record = json.loads((out / "run_config.json").read_text())
    record["config"]["device"] = "cuda:0"  # as if trained on a GPU
    (out / "run_config.json").write_text(json.dumps(record))
    assert train_ldm.main(["--out", str(out), "--export-only"]) == 0
    assert "Machine: cuda:0" in (out / "export" / "README.md").read_text()


def test_latent_cache_follows_data_crop_and_val_images(train_ldm, synthetic_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 1, 1, "--no-export")) == 0
    cache = torch.load(out / "unet" / "latents.pt", weights_only=False)
    assert len(cache["val"][0]) == 2 and cache["key"]["unet_crop"] == 32
    capsys.readouterr()
    assert train_ldm.main(_args(out, synthetic_data, 1, 2, "--stages", "unet", "--val-images", "3",
                                "--no-export")) == 0
    assert "encoding again" in capsys.readouterr().err
    cache = torch.load(out / "unet" / "latents.pt", weights_only=False)
    assert len(cache["val"][0]) == 3 and cache["key"]["val_images"] == 3
    # An image smaller than the crop: a clear error, not torch's random_ message.
    with pytest.raises(SystemExit, match="--unet-crop 32: an image of 16x16 px"):
        train_ldm.crop_batch([torch.zeros(3, 4, 4)], [torch.zeros(3, 4, 4, dtype=torch.uint8)], 1, 8,
                             torch.Generator().manual_seed(0))


def test_stage_clocks_exclude_the_preload(train_ldm, synthetic_data, tmp_path, monkeypatch):
    """An hour spent preloading the data (a fake clock) is not charged to the VQ / decoder."""
    real_monotonic, real_preload, offset = train_ldm.time.monotonic, train_ldm.PairDataset.preload, [0.0]

    def slow_preload(self, *args, **kwargs):
        offset[0] += 3600.0
        return real_preload(self, *args, **kwargs)

    monkeypatch.setattr(train_ldm.time, "monotonic", lambda: real_monotonic() + offset[0])
    monkeypatch.setattr(train_ldm.PairDataset, "preload", slow_preload)
    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 1, 1, "--stages", "vq,decoder", "--decoder-steps", "1",
                                "--decoder-crop", "32", "--decoder-batch-size", "2", "--no-export")) == 0
    assert offset[0] == 7200.0
    for stage in ("vq", "decoder"):
        assert torch.load(out / stage / "checkpoint.pt", weights_only=False)["seconds"] < 600


def test_decoder_stage_keeps_latents_and_exports_best_weights(train_ldm, synthetic_data, tmp_path):
    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 3, 2, "--no-export")) == 0
    decoder_args = ("--stages", "decoder", "--decoder-crop", "32", "--decoder-batch-size", "2",
                    "--decoder-warmup", "1", "--val-every", "1")
    assert train_ldm.main(_args(out, synthetic_data, 3, 2, *decoder_args, "--decoder-steps", "2",
                                "--no-export")) == 0
    # Resumed: one more step on the saved optimizer state and history.
    assert train_ldm.main(_args(out, synthetic_data, 3, 2, *decoder_args, "--decoder-steps", "3")) == 0
    vq = torch.load(out / "vq" / "checkpoint.pt", weights_only=False)
    dec = torch.load(out / "decoder" / "checkpoint.pt", weights_only=False)
    assert dec["step"] == 3 and dec["vq_step"] == 3
    vals = [h["val"] for h in dec["history"] if "val" in h]
    assert len(vals) == 4 and dec["best_val"] == max(vals)  # stage-1 decoder + 3 validations
    assert set(dec["best"]) == {k for k in vq["model"] if k.startswith(("decoder.", "post_quant_conv."))}
    assert any(not torch.equal(dec["model"][k], vq["model"][k]) for k in dec["model"])

    # The export carries the frozen encoder / codebook and the best decoder weights.
    exported = load_ldmsr(out / "export").vqvae.state_dict()
    for key, value in vq["model"].items():
        expected = dec["best"].get(key, value)
        torch.testing.assert_close(exported[key], expected.half().float(), rtol=0, atol=0)
    card = (out / "export" / "README.md").read_text()
    assert "Stage 1b, decoder fine-tuning" in card and f"-> {dec['best_val']:.2f} dB" in card

    # The latents are unchanged, so the UNet keeps training on them.
    assert train_ldm.main(_args(out, synthetic_data, 3, 3, "--stages", "unet", "--no-export")) == 0
    # A VQ trained further invalidates the fine-tuned decoder: the export refuses it.
    assert train_ldm.main(_args(out, synthetic_data, 4, 3, "--stages", "vq", "--no-export")) == 0
    with pytest.raises(RuntimeError, match="fine-tune again"):
        train_ldm.main(_args(out, synthetic_data, 4, 3, "--export-only"))


def test_init_from_trains_a_new_unet_on_another_runs_autoencoder(train_ldm, synthetic_data, tmp_path):
    source = tmp_path / "source"
    assert train_ldm.main(_args(source, synthetic_data, 3, 2, "--vq-mid-attention", "--no-export")) == 0
    (source / "card_notes.md").write_text("The VQ stage was interrupted once.\n")
    common = ["--data", str(synthetic_data), "--threads", "1", "--no-progress", "--unet-batch-size", "4",
              "--unet-crop", "32", "--val-images", "2", "--val-crop", "32", "--unet-warmup", "1",
              "--checkpoint-every", "100", "--val-every", "100"]
    wide = tmp_path / "wide"
    args = ["--out", str(wide), "--init-from", str(source), "--stages", "unet",
            "--unet-channels", "32,32,64", "--unet-steps", "2", *common]
    assert train_ldm.main(args) == 0

    # The autoencoder and its cached latents are the source's, byte for byte.
    for name in ("vq/checkpoint.pt", "unet/latents.pt"):
        assert (wide / name).read_bytes() == (source / name).read_bytes()
    config = json.loads((wide / "run_config.json").read_text())["config"]
    # Architecture not given on the command line comes from the source; the UNet's is new.
    assert config["vq_channels"] == [8, 16, 16] and config["codebook_size"] == 64
    assert config["vq_mid_attention"] is True and config["unet_channels"] == [32, 32, 64]
    unet, source_unet = (torch.load(r / "unet" / "checkpoint.pt", weights_only=False) for r in (wide, source))
    assert unet["step"] == 2 and unet["vq_step"] == 3
    assert unet["model"]["conv_in.weight"].shape[0] == 32 != source_unet["model"]["conv_in.weight"].shape[0]
    # The lineage: the source's invocations, then this one, in the log and in the card.
    source_lines = (source / "commands.log").read_text().splitlines()
    lines = (wide / "commands.log").read_text().splitlines()
    assert lines[:-1] == source_lines and "--init-from" in lines[-1]
    card = (wide / "export" / "README.md").read_text()
    assert source_lines[0].split(" ", 1)[1] in card and "--init-from" in card
    assert "The VQ stage was interrupted once." in card  # the source's remarks came along
    assert list(load_ldmsr(wide / "export").unet.config.block_out_channels) == [32, 32, 64]

    # The same command again resumes the run; nothing is copied again.
    assert train_ldm.main([*args[:-len(common) - 2], "--unet-steps", "3", *common]) == 0
    assert torch.load(wide / "unet" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert len((wide / "commands.log").read_text().splitlines()) == len(lines) + 1
    # A copied stage's architecture cannot be changed; another source for the same run is refused.
    with pytest.raises(SystemExit, match="vq-channels"):
        train_ldm.main(["--out", str(tmp_path / "other"), "--init-from", str(source),
                        "--vq-channels", "8,8,16", *common])
    with pytest.raises(SystemExit, match="initialised from"):
        train_ldm.main(["--out", str(wide), "--init-from", str(wide), *common])

    # --init-stages vq,unet continues the source's UNet (a fine-tuning run of its own).
    tuned = tmp_path / "tuned"
    assert train_ldm.main(["--out", str(tuned), "--init-from", str(source), "--init-stages", "vq,unet",
                           "--stages", "unet", "--unet-steps", "3", "--no-export", *common]) == 0
    tuned_unet = torch.load(tuned / "unet" / "checkpoint.pt", weights_only=False)
    assert tuned_unet["step"] == 3 and tuned_unet["history"][:2] == source_unet["history"][:2]
    with pytest.raises(SystemExit, match="include vq"):
        train_ldm.main(["--out", str(tmp_path / "bad"), "--init-from", str(source),
                        "--init-stages", "unet", *common])


def test_v_prediction_run_exports_its_scheduler_and_refuses_a_switch(train_ldm, synthetic_data,
                                                                      tmp_path):
    out = tmp_path / "run"
    assert train_ldm.main(_args(out, synthetic_data, 2, 2, "--prediction-type", "v_prediction")) == 0
    unet = torch.load(out / "unet" / "checkpoint.pt", weights_only=False)
    assert unet["config"]["prediction_type"] == "v_prediction"
    assert any(h.get("val_name") == "validation v-MSE (EMA)" for h in unet["history"])
    # The exported scheduler tells both samplers what the UNet predicts.
    assert load_ldmsr(out / "export").scheduler.config.prediction_type == "v_prediction"
    config = json.loads((out / "export" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert "v-prediction MSE" in (out / "export" / "README.md").read_text()
    # Export with the default (epsilon) on the command line still writes what the UNet predicts.
    assert train_ldm.main(_args(out, synthetic_data, 2, 2, "--export-only")) == 0
    assert load_ldmsr(out / "export").scheduler.config.prediction_type == "v_prediction"
    # Resuming the UNet for another target is refused with what to do.
    with pytest.raises(SystemExit, match="--prediction-type v_prediction"):
        train_ldm.main(_args(out, synthetic_data, 2, 4, "--stages", "unet", "--prediction-type", "epsilon"))
    # Nothing said: the scheduler's leading spacing and no stated default sampler.
    assert load_ldmsr(out / "export").scheduler.config.timestep_spacing == "leading"
    assert not (out / "export" / "sampler_defaults.json").exists()
    # The sampler settings of an export, by command (the anchored asset's trailing spacing and 2 steps).
    assert train_ldm.main(_args(out, synthetic_data, 2, 2, "--export-only", "--timestep-spacing", "trailing",
                                "--export-inference-steps", "2")) == 0
    exported = load_ldmsr(out / "export")
    assert exported.scheduler.config.timestep_spacing == "trailing" and exported.default_num_inference_steps == 2
    assert exported.scheduler.config.prediction_type == "v_prediction"  # the trained keys untouched
    with pytest.raises(SystemExit, match="--export-inference-steps: expected 0"):
        train_ldm.main(_args(out, synthetic_data, 2, 2, "--export-only", "--export-inference-steps", "-1"))


def test_lowfreq_term_changes_training_and_is_recorded_from_its_step(train_ldm, synthetic_data, tmp_path):
    """The low-frequency weight reaches the optimizer, a resume with another weight is recorded
    with its step and stated in the card, and a pool that does not divide the crop is refused."""
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    assert train_ldm.main(_args(plain, synthetic_data, 2, 2, "--no-export")) == 0
    assert train_ldm.main(_args(weighted, synthetic_data, 2, 2, "--no-export",
                                "--unet-lowfreq-weight", "10")) == 0
    a = torch.load(plain / "unet" / "checkpoint.pt", weights_only=False)
    b = torch.load(weighted / "unet" / "checkpoint.pt", weights_only=False)
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["objective_changes"] == [{"step": 0, "lowfreq_weight": 0.0, "lowfreq_pool": 4,
                                       "input_perturbation": 0.0}]
    assert all("val_lowfreq" in h for h in a["history"] if "val" in h)
    # Resume the plain run with the term on: recorded from step 2, and in the card.
    assert train_ldm.main(_args(plain, synthetic_data, 2, 4, "--unet-lowfreq-weight", "10")) == 0
    resumed = torch.load(plain / "unet" / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 4
    assert resumed["objective_changes"][-1] == {"step": 2, "lowfreq_weight": 10.0, "lowfreq_pool": 4,
                                                "input_perturbation": 0.0}
    card = (plain / "export" / "README.md").read_text()
    assert "from step 2: + 10 x MSE of the 4x4-latent-cell average-pooled z0 estimate" in card
    assert "from step 0: plain" in card
    with pytest.raises(SystemExit, match="divisor of the latent crop side 8"):
        train_ldm.main(_args(tmp_path / "bad", synthetic_data, 2, 2, "--unet-lowfreq-pool", "3"))


def test_input_perturbation_trains_differently_and_is_recorded(train_ldm, synthetic_data, tmp_path):
    plain, perturbed = tmp_path / "plain", tmp_path / "perturbed"
    assert train_ldm.main(_args(plain, synthetic_data, 2, 2, "--no-export")) == 0
    assert train_ldm.main(_args(perturbed, synthetic_data, 2, 2, "--unet-input-perturbation", "0.1")) == 0
    a, b = (torch.load(r / "unet" / "checkpoint.pt", weights_only=False) for r in (plain, perturbed))
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["objective_changes"] == [{"step": 0, "lowfreq_weight": 0.0, "lowfreq_pool": 4,
                                       "input_perturbation": 0.1}]
    card = (perturbed / "export" / "README.md").read_text()
    assert "from step 0: input perturbation gamma 0.1" in card
    for bad in ("-0.1", "nan", "1.5"):
        with pytest.raises(SystemExit, match="--unet-input-perturbation"):
            train_ldm.main(_args(tmp_path / "bad", synthetic_data, 2, 2, "--unet-input-perturbation", bad))


def test_init_from_a_diffusers_folder_fine_tunes_its_weights(train_ldm, synthetic_data, tmp_path):
    """--init-from an exported (diffusers) folder: the run starts from its weights at step 0 with
    a fresh optimizer; its architecture and prediction type come from the folder's configs."""
    source = tmp_path / "source"
    assert train_ldm.main(_args(source, synthetic_data, 3, 2, "--vq-mid-attention",
                                "--prediction-type", "v_prediction")) == 0
    folder = source / "export"
    exported = load_ldmsr(folder)
    common = ["--data", str(synthetic_data), "--threads", "1", "--no-progress", "--unet-batch-size", "4",
              "--unet-crop", "32", "--val-images", "2", "--val-crop", "32", "--unet-warmup", "1",
              "--checkpoint-every", "100", "--val-every", "100"]
    tuned = tmp_path / "tuned"
    assert train_ldm.main(["--out", str(tuned), "--init-from", str(folder), "--init-stages", "vq,unet",
                           "--stages", "unet", "--unet-steps", "2", *common]) == 0
    config = json.loads((tuned / "run_config.json").read_text())["config"]
    assert config["vq_channels"] == [8, 16, 16] and config["unet_channels"] == [16, 16, 32]
    assert config["vq_mid_attention"] is True and config["prediction_type"] == "v_prediction"
    # The VQ is the folder's, untouched; the UNet started from the folder's and trained 2 steps.
    vq = torch.load(tuned / "vq" / "checkpoint.pt", weights_only=False)
    assert vq["step"] == 0 and vq["imported_from"] == str(folder.resolve())
    for key, value in exported.vqvae.state_dict().items():
        assert torch.equal(vq["model"][key], value)
    unet = torch.load(tuned / "unet" / "checkpoint.pt", weights_only=False)
    assert unet["step"] == 2 and unet["optimizer"]["state"]
    first = [h for h in unet["history"] if "loss" in h][0]
    # The schedule starts afresh at step 0 (a continued one would be at its cosine tail).
    assert first["step"] == 1 and first["lr"] == train_ldm.lr_at(
        0, peak=1e-3, warmup=1, progress=0.0, min_ratio=train_ldm.TrainConfig.unet_min_lr_ratio)
    moved = [k for k, v in exported.unet.state_dict().items() if not torch.equal(unet["model"][k], v)]
    assert moved and all((unet["model"][k] - exported.unet.state_dict()[k]).abs().max() < 0.1 for k in moved)
    card = (tuned / "export" / "README.md").read_text()
    assert f"started from the weights of the VQ autoencoder (with its decoder) and the UNet of `{folder.resolve()}`" in card
    assert "| steps | imported (--init-from), not trained in this run | 2 |" in card
    assert "> | | VQ autoencoder (stage 1) | conditional UNet (stage 2) |" in card  # the source's card
    # A later --export-only (default --unet-crop 64) states the crop the UNet was trained on.
    assert train_ldm.main(["--out", str(tuned), "--export-only"]) == 0
    assert "8x8 latent (32x32 HR), batch 4" in (tuned / "export" / "README.md").read_text()

    # Only the VQ imported: a new UNet of another width on the folder's autoencoder.
    fresh = tmp_path / "fresh"
    assert train_ldm.main(["--out", str(fresh), "--init-from", str(folder), "--stages", "unet",
                           "--unet-channels", "16,16,16", "--unet-steps", "1", "--no-export", *common]) == 0
    assert torch.load(fresh / "unet" / "checkpoint.pt", weights_only=False)["model"]["conv_in.weight"].shape[0] == 16
    # Fine-tuning the imported VQ keeps its codebook (no re-seeding from random crops).
    vq_tuned = tmp_path / "vq_tuned"
    assert train_ldm.main(["--out", str(vq_tuned), "--init-from", str(folder), "--stages", "vq",
                           "--vq-steps", "1", "--vq-batch-size", "4", "--vq-crop", "16", "--vq-warmup", "1",
                           "--vq-lr", "1e-4", "--vq-restart-every", "0", "--no-export", *common]) == 0
    codebook = torch.load(vq_tuned / "vq" / "checkpoint.pt", weights_only=False)["model"]["quantize.embedding.weight"]
    imported_codebook = exported.vqvae.state_dict()["quantize.embedding.weight"]
    change = float((codebook - imported_codebook).abs().max())
    assert 1e-6 < change < 0.01  # trained one small step, not re-seeded
    # A folder whose noise schedule train_ldm.py does not train with is refused, by name.
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    scheduler_json = other / "scheduler" / "scheduler_config.json"
    scheduler_json.write_text(scheduler_json.read_text().replace('"scaled_linear"', '"linear"'))
    with pytest.raises(SystemExit, match="scheduler beta_schedule = 'linear'"):
        train_ldm.main(["--out", str(tmp_path / "bad"), "--init-from", str(other), *common])


def test_a_dataset_lost_to_the_crop_size_stops_the_stage(train_ldm, synthetic_data, tmp_path):
    """A data root whose second dataset has only 24 px images: a 16 px VQ crop keeps both, a 32 px
    UNet crop would drop every image of it; that stage stops and names the dataset."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_data, root / "big")
    for cls in ("fields", "roads"):
        (root / "small" / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (24, 24), (10 * i, 80, 160)).save(root / "small" / cls / f"{cls}{i:02d}.png")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="side shorter than hr_size=32"):
        with pytest.raises(SystemExit, match=r"--unet-crop 32: no training image of small has both sides"):
            train_ldm.main(_args(out, root, 1, 1))
    assert torch.load(out / "vq" / "checkpoint.pt", weights_only=False)["step"] == 1  # the VQ stage kept both
    # Without the small dataset the same command trains.
    shutil.rmtree(root / "small")
    assert train_ldm.main(_args(tmp_path / "run2", root, 1, 1, "--no-export")) == 0
