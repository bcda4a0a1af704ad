"""Atomic writes: an interrupted write leaves the old file whole and no temporary behind."""

from __future__ import annotations

import pytest
import torch

from orl_gym.io import atomic_open, atomic_save, atomic_write_text


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.md"
    atomic_write_text(path, "old\n")
    with pytest.raises(KeyboardInterrupt), atomic_open(path, "w") as handle:
        handle.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]


def test_atomic_save_round_trip(tmp_path):
    atomic_save({"step": 3, "w": torch.ones(2)}, tmp_path / "ckpt" / "state.pt")
    loaded = torch.load(tmp_path / "ckpt" / "state.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.ones(2))
