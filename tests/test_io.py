"""Atomic writes: an interrupted write leaves the old file whole and no temporary behind."""

from __future__ import annotations

import shlex

import pytest
import torch

from orl_gym.io import atomic_open, atomic_save, atomic_write_text, rerun_command, write_report


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


def test_rerun_command_quotes_arguments_and_names_the_data(monkeypatch):
    monkeypatch.delenv("ORL_GYM_DATA", raising=False)
    command = rerun_command("/somewhere/experiments/bench_env.py", ["--out", "my results/x.md", "--threads", "1"])
    assert command == "python experiments/bench_env.py --out 'my results/x.md' --threads 1"
    assert shlex.split(command)[3] == "my results/x.md"
    monkeypatch.setenv("ORL_GYM_DATA", "../my data")  # it decides which images a script reads
    command = rerun_command("/somewhere/experiments/bench_env.py", ["--threads", "1"])
    assert command == "ORL_GYM_DATA='../my data' python experiments/bench_env.py --threads 1"


def test_write_report_is_newline_terminated_and_printed(tmp_path, capsys):
    path = tmp_path / "out" / "report.md"
    text = write_report(path, ["# Title", "", "| a |", ""])
    assert path.read_text() == text == "# Title\n\n| a |\n"
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("mode", ["a", "r", "r+", "ab"])
def test_atomic_open_refuses_modes_that_would_replace_the_file_with_a_fragment(tmp_path, mode):
    path = tmp_path / "log.txt"
    path.write_text("line 1\n")
    with pytest.raises(ValueError, match="not a write mode"):
        with atomic_open(path, mode):
            pass
    assert path.read_text() == "line 1\n"
