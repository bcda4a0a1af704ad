"""Log rollouts of the batched env once, as a Minari dataset, for offline RL.

Diffusion rollouts are the expensive part of ORL-LDM; collected once, they serve every offline
policy trained on them (``orl_gym.offline``)::

    orl-gym collect --env tiny-x4 --policy random --episodes 2048 --out data/minari
    MINARI_DATASETS_PATH=data/minari python -c "import minari; minari.load_dataset('orl_gym/tiny-x4/random-v0')"

A behaviour policy (``random``, ``constant``, ``grid`` or a trained run folder) drives
``LDMSuperResolutionVectorEnv``. Every finished image becomes one Minari episode: its T + 1
Dict observations (the last one is what the same-step autoreset left in ``info["final_obs"]``),
T actions, the sparse reward, terminations and truncations, step infos (T + 1 rows: image index,
label, UNet calls, clipped coordinates) and, in the episode's metadata, every raw metric the env
scored the image with (psnr, ssim, lpips, nfe, seconds, bicubic_*, reward, ...).

Storage: Minari's arrow format without JPEG encoding, so observations and actions round-trip
exactly, at ``ROOT/<dataset id>/data`` where ROOT is ``--out`` or Minari's own root
(``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``). The dataset's metadata holds, under
``orl_gym``, the env kwargs and collection settings that ``train-offline`` and ``evaluate``
check against; Minari's ``eval_env_spec`` is ``orl_gym/LDMSR-v0`` with those kwargs, so
``dataset.recover_environment(eval_env=True)`` makes the env the data came from.

Resumable and atomic: episodes are collected in chunks. A chunk is its own seeded run of the
batched env (``reset(seed=seed + chunk * num_envs)``, so row r of chunk c has seed
``seed + c * num_envs + r``) that stops once it has its episodes, and it is saved atomically as
``ROOT/.orl_gym-partial/<id>/chunk-NNNNN.npz``. A rerun of the same command skips the saved
chunks, so an interrupted collection and an uninterrupted one write the same dataset. Once every
chunk is in, the dataset is built beside them with ``minari.create_dataset_from_buffers`` and
moved into place with one rename. Images still in flight when a chunk stops are not stored:
their env steps count in ``env_steps`` (what the collection cost) but not in ``transitions``
(what the dataset holds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from orl_gym import ENV_ID, __version__
from orl_gym.io import atomic_open, atomic_write_text

__all__ = [
    "DATA_ONLY_KEYS",
    "METADATA_KEY",
    "CollectSettings",
    "GridMixPolicy",
    "RandomPolicy",
    "collect",
    "default_dataset_id",
    "env_differences",
    "load_collected_dataset",
    "minari_root",
]

METADATA_KEY = "orl_gym"  # the dataset metadata key of the collection's settings
FORMAT_VERSION = 1
PARTIAL_DIR = ".orl_gym-partial"
BEHAVIOURS = ("random", "constant", "grid")  # or the path of a trained run folder
STEP_INFO_KEYS = ("image_index", "label", "unet_calls", "action_clipped")
# Env arguments that choose which images are used and where the env runs, not what a policy sees,
# does or is paid: a policy trained on a dataset may be evaluated with other values of these.
DATA_ONLY_KEYS = ("data", "split", "categories", "crop", "image_order", "max_images", "device", "dtype")


@dataclass(frozen=True)
class CollectSettings:
    """What ``orl-gym collect`` runs: the env, the behaviour policy and how many episodes.

    Attributes:
        dataset_id: Minari id, ``(namespace/)name-vN`` (see :func:`default_dataset_id`).
        env_kwargs: the env's arguments (JSON types only: a model path, not an object).
        policy: ``"random"`` (uniform actions in [-1, 1] at every step), ``"constant"`` (the
            sampler parameters of ``action`` at every step), ``"grid"`` (one setting of the
            ``grid`` drawn per episode, kept for the whole image) or a trained run folder.
        action: sampler parameters of the constant policy (``{"stride": 2, "eta": 0.5}``; the
            others keep ``ActionConfig.defaults``).
        grid: name of the grid in ``orl_gym.evaluation.GRIDS`` for ``policy="grid"``.
        episodes: episodes (images) the dataset holds.
        num_envs: images per batch.
        seed: seed of the env rows and of the behaviour policy.
        chunk_episodes: episodes per saved chunk (what an interruption can lose).
        env: the env preset's name, recorded so ``train-offline`` finds its hyperparameter entry.
    """

    dataset_id: str
    env_kwargs: Mapping[str, Any]
    policy: str = "random"
    action: Mapping[str, float] = field(default_factory=dict)
    grid: str = "quick"
    episodes: int = 1024
    num_envs: int = 64
    seed: int = 0
    chunk_episodes: int = 256
    env: str | None = None

    def __post_init__(self) -> None:
        try:
            _minari().dataset.minari_dataset.parse_dataset_id(self.dataset_id)
        except ValueError:
            raise ValueError(f"--dataset-id: {self.dataset_id!r} is not a Minari dataset id; use "
                             "(namespace/)name-vN, e.g. orl_gym/tiny-x4/random-v0") from None
        for name in ("episodes", "num_envs", "chunk_episodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.policy not in BEHAVIOURS and not Path(self.policy).is_dir():
            raise ValueError(f"--policy: {self.policy!r} is none of {', '.join(BEHAVIOURS)} and no run folder")
        if self.action and self.policy != "constant":
            raise ValueError("--action: only --policy constant takes sampler parameters")
        try:
            object.__setattr__(self, "env_kwargs", json.loads(json.dumps(dict(self.env_kwargs))))
        except TypeError as error:
            raise ValueError(f"env_kwargs: a dataset records its env as JSON, and {error}; pass a model or "
                             "dataset by its path or name") from None

    def record(self) -> dict[str, Any]:
        """The settings as the dataset (and a partial collection) records them (JSON types)."""
        record = dataclasses.asdict(self)
        record["policy"] = self.policy if self.policy in BEHAVIOURS else str(Path(self.policy).resolve())
        return json.loads(json.dumps(record))


def default_dataset_id(env: str, policy: str, grid: str = "quick") -> str:
    """``orl_gym/<env preset>/<policy>-v0`` (a run folder's name for a run's policy)."""
    name = {"grid": f"grid-{grid}"}.get(policy, policy if policy in BEHAVIOURS else Path(policy).name)
    clean = lambda text: re.sub(r"[^-\w]+", "_", text).strip("_") or "dataset"  # noqa: E731
    return f"orl_gym/{clean(Path(env).stem)}/{clean(name)}-v0"


def _minari() -> Any:
    """minari, or a RuntimeError that says how to install it (an optional dependency)."""
    try:
        import minari
    except ImportError as error:
        raise RuntimeError(f"offline datasets need minari ({error}); install the offline extra: "
                           "pip install -e '.[offline]'") from error
    return minari


def minari_root(out: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``out``, else Minari's own root (``$MINARI_DATASETS_PATH`` or
    ``~/.minari/datasets``)."""
    if out is not None:
        return Path(out)
    return _minari().storage.datasets_root_dir.get_dataset_path()


# --- behaviour policies: policy(obs, episode_start) -> actions, as orl_gym.evaluation's ---------


class RandomPolicy:
    """Uniform actions in [-1, 1] for every row at every step, from one seeded generator."""

    def __init__(self, size: int, seed: int | Sequence[int] | None = None) -> None:
        self.size, self.rng = int(size), np.random.default_rng(seed)

    def __call__(self, obs: Mapping[str, np.ndarray], episode_start: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, (len(episode_start), self.size)).astype(np.float32)


class GridMixPolicy:
    """For each episode, one constant action of a grid, drawn uniformly when the episode starts
    and kept for the whole image: data from many fixed samplers at once."""

    def __init__(self, actions: Any, grid: Mapping[str, Sequence[float]], seed: int | Sequence[int] | None = None
                 ) -> None:
        from orl_gym.actions import encode_params
        from orl_gym.evaluation import fit_grid

        fitted, _ = fit_grid(grid, actions)
        names = [p for p in actions.parameters if p in fitted]
        self.settings = [dict(zip(names, values, strict=True)) for values in itertools.product(*(fitted[n] for n in names))]
        self.table = np.stack([encode_params(actions, **setting) for setting in self.settings]).astype(np.float32)
        self.rng = np.random.default_rng(seed)
        self.current: np.ndarray | None = None

    def __call__(self, obs: Mapping[str, np.ndarray], episode_start: np.ndarray) -> np.ndarray:
        episode_start = np.asarray(episode_start, dtype=bool)
        if self.current is None or len(self.current) != len(episode_start):
            self.current, episode_start = np.zeros(len(episode_start), dtype=np.int64), np.ones_like(episode_start)
        starting = np.flatnonzero(episode_start)
        self.current[starting] = self.rng.integers(len(self.table), size=len(starting))
        return self.table[self.current]


def behaviour_policy(settings: CollectSettings, observation_space: gym.Space, action_space: gym.spaces.Box
                     ) -> Callable[[int], Callable]:
    """A factory: chunk index -> a fresh behaviour policy seeded for that chunk (so a resumed
    collection draws what an uninterrupted one would have). A run folder's policy is loaded once
    and checked against the env's spaces here, before anything runs."""
    from orl_gym.actions import ActionConfig, encode_params

    actions = ActionConfig(**settings.env_kwargs.get("actions", {}))
    if settings.policy == "random":
        return lambda chunk: RandomPolicy(action_space.shape[0], seed=[settings.seed, chunk])
    if settings.policy == "constant":
        from orl_gym.evaluation import constant_policy

        action = encode_params(actions, **settings.action)
        return lambda chunk: constant_policy(action)
    if settings.policy == "grid":
        from orl_gym.evaluation import GRIDS, grid_for_actions

        if settings.grid not in GRIDS:
            raise ValueError(f"--grid: unknown {settings.grid!r}; grids: {', '.join(GRIDS)}")
        grid = grid_for_actions(settings.grid, actions)[0]  # the strides reach the actions' max_stride
        return lambda chunk: GridMixPolicy(actions, grid, seed=[settings.seed, chunk])
    from orl_gym.configs import load_yaml_mapping
    from orl_gym.run_policies import load_run_policy

    run_dir = Path(settings.policy)
    config = load_yaml_mapping(run_dir / "config.yaml", "a run's settings") if (run_dir / "config.yaml").is_file() else {}
    if "algo" not in config or "env_kwargs" not in config:
        raise ValueError(f"--policy: {run_dir} is not a run folder (no config.yaml with algo and env_kwargs)")
    policy, _ = load_run_policy(run_dir, config)
    policy.check_spaces(observation_space, action_space)
    return lambda chunk: policy


# --- collection ------------------------------------------------------------------------------


class _EpisodeRecorder:
    """One row's episode in progress: observations, actions, rewards, flags and step infos."""

    def __init__(self, obs: Mapping[str, np.ndarray], row: int, image_index: int, label: int) -> None:
        self.row, self.image_index, self.label = row, int(image_index), int(label)
        self.observations = {k: [v[row]] for k, v in obs.items()}
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminations: list[bool] = []
        self.truncations: list[bool] = []
        self.infos: dict[str, list[int]] = {"image_index": [self.image_index], "label": [self.label],
                                            "unet_calls": [0], "action_clipped": [0]}

    def add(self, next_obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float, terminated: bool,
            truncated: bool, unet_calls: int, action_clipped: int) -> None:
        for key, value in next_obs.items():
            self.observations[key].append(value)
        self.actions.append(action)
        self.rewards.append(float(reward))
        self.terminations.append(bool(terminated))
        self.truncations.append(bool(truncated))
        for key, value in (("image_index", self.image_index), ("label", self.label), ("unet_calls", unet_calls),
                           ("action_clipped", action_clipped)):
            self.infos[key].append(int(value))


def _final_metrics(final_info: Mapping[str, np.ndarray], row: int) -> dict[str, Any]:
    """The raw metrics of a finished row (``info["final_info"]``) as JSON types."""
    return {key: value[row].item() for key, value in final_info.items() if not key.startswith("_")}


def _collect_chunk(env: Any, policy: Callable, *, seed: int, count: int, chunk: int, bar: tqdm) -> dict[str, Any]:
    """Run the batched env until ``count`` episodes finished; the chunk's arrays (see _read_chunk)."""
    started = time.perf_counter()
    dataset = env.params.dataset
    n = env.num_envs
    obs, info = env.reset(seed=seed)
    rows = [_EpisodeRecorder(obs, r, info["image_index"][r], info["label"][r]) for r in range(n)]
    episode_start = np.ones(n, dtype=bool)
    finished: list[tuple[_EpisodeRecorder, dict[str, Any]]] = []
    env_steps = 0
    while len(finished) < count:
        actions = np.asarray(policy(obs, episode_start), dtype=np.float32)
        obs, rewards, terminated, truncated, info = env.step(actions)
        env_steps += n
        episode_start = terminated | truncated
        final = info.get("final_info", {})
        for r in range(n):
            if episode_start[r]:
                # The row's final observation and step info; the top level already holds its new episode.
                rows[r].add(info["final_obs"][r], actions[r], rewards[r], terminated[r], truncated[r],
                            final["unet_calls"][r], final["action_clipped"][r])
                if len(finished) < count:
                    metrics = _final_metrics(final, r)
                    metrics.update(category=dataset.classes[int(metrics["label"])],
                                   name=dataset.names[int(metrics["image_index"])], chunk=chunk, row=r)
                    finished.append((rows[r], metrics))
                    bar.update(1)
                rows[r] = _EpisodeRecorder(obs, r, info["image_index"][r], info["label"][r])
            else:
                rows[r].add({k: v[r] for k, v in obs.items()}, actions[r], rewards[r], False, False,
                            info["unet_calls"][r], info["action_clipped"][r])
    episodes = [episode for episode, _ in finished]
    return {
        **{f"obs/{k}": np.concatenate([np.stack(e.observations[k]) for e in episodes]) for k in obs},
        "actions": np.concatenate([np.stack(e.actions) for e in episodes]).astype(np.float32),
        "rewards": np.concatenate([np.asarray(e.rewards, dtype=np.float64) for e in episodes]),
        "terminations": np.concatenate([np.asarray(e.terminations, dtype=bool) for e in episodes]),
        "truncations": np.concatenate([np.asarray(e.truncations, dtype=bool) for e in episodes]),
        **{f"info/{k}": np.concatenate([np.asarray(e.infos[k], dtype=np.int64) for e in episodes])
           for k in STEP_INFO_KEYS},
        "lengths": np.asarray([len(e.rewards) for e in episodes], dtype=np.int64),
        "metadata": np.asarray(json.dumps([m for _, m in finished])),
        "env_steps": np.asarray(env_steps, dtype=np.int64),
        "seconds": np.asarray(time.perf_counter() - started),
    }


def _save_chunk(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _read_chunk(path: Path) -> tuple[list[Any], list[dict[str, Any]], dict[str, float]]:
    """(Minari EpisodeBuffers, per-episode metadata, {env_steps, seconds}) of a saved chunk."""
    EpisodeBuffer = _minari().data_collector.EpisodeBuffer  # noqa: N806

    with np.load(path, allow_pickle=False) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    lengths = data["lengths"]
    steps = np.concatenate([[0], np.cumsum(lengths)])  # transitions before each episode
    frames = steps + np.arange(len(steps))  # observations (T + 1 per episode) before each episode
    obs_keys = [key.removeprefix("obs/") for key in data if key.startswith("obs/")]
    buffers = []
    for e in range(len(lengths)):
        s, f = slice(steps[e], steps[e + 1]), slice(frames[e], frames[e + 1])
        buffers.append(EpisodeBuffer(
            observations={k: data[f"obs/{k}"][f] for k in obs_keys},
            actions=data["actions"][s], rewards=data["rewards"][s].tolist(),
            terminations=data["terminations"][s].tolist(), truncations=data["truncations"][s].tolist(),
            # Lists, not 1-D arrays: Minari 0.5.4's arrow storage writes a 1-D info array with an
            # empty shape tag that its own reader cannot parse back.
            infos={k: data[f"info/{k}"][f].tolist() for k in STEP_INFO_KEYS}))
    return buffers, json.loads(str(data["metadata"])), {"env_steps": int(data["env_steps"]),
                                                        "seconds": float(data["seconds"])}


@contextlib.contextmanager
def _datasets_root(root: Path) -> Iterator[None]:
    """Minari's datasets root set to ``root`` for this block (it reads ``$MINARI_DATASETS_PATH``)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _build_dataset(settings: CollectSettings, chunks: Sequence[Path], build_root: Path, spaces: tuple[Any, Any],
                   record: dict[str, Any]) -> Path:
    """The Minari dataset of the saved chunks, built under ``build_root``; returns its folder."""
    minari = _minari()

    if build_root.exists():
        shutil.rmtree(build_root)  # a build an interruption left half done
    build_root.mkdir(parents=True)
    eval_spec = dataclasses.replace(gym.spec(ENV_ID), kwargs=dict(settings.env_kwargs))
    behaviour = {"grid": f"grid ({settings.grid})", "constant": f"constant {dict(settings.action)}"}.get(
        settings.policy, settings.policy)
    dataset, totals = None, {"env_steps": 0, "collect_seconds": 0.0, "transitions": 0}
    with _datasets_root(build_root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\.")  # its advice on unset fields
        for path in chunks:
            buffers, metadata, stats = _read_chunk(path)
            first = 0 if dataset is None else dataset.total_episodes
            if dataset is None:
                dataset = minari.create_dataset_from_buffers(
                    settings.dataset_id, buffers, eval_env=eval_spec, algorithm_name=f"behaviour policy: {behaviour}",
                    author="orl-gym collect", code_permalink=f"orl_gym.collect (orl_gym {__version__})",
                    observation_space=spaces[0], action_space=spaces[1], data_format="arrow", jpeg_encoding=False,
                    description=f"Rollouts of {ENV_ID} ({settings.env or 'env kwargs in metadata'}) under the "
                                f"behaviour policy {behaviour}; raw metrics per episode in the episode metadata.")
            else:
                dataset.update_dataset_from_buffer(buffers)
            dataset.storage.update_episode_metadata(metadata, range(first, first + len(buffers)))
            totals["env_steps"] += stats["env_steps"]
            totals["collect_seconds"] += stats["seconds"]
            totals["transitions"] += sum(len(b) for b in buffers)
        dataset.storage.update_metadata({METADATA_KEY: {**record, **totals}})
    return build_root / settings.dataset_id


def _install(built: Path, build_root: Path, root: Path, dataset_id: str) -> Path:
    """Move a built dataset into ``root`` with one rename, with the Minari namespace metadata
    its id's namespaces have there (created when missing)."""
    target = root / dataset_id
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = Path(dataset_id).parts[:-1]
    for depth in range(1, len(parts) + 1):
        source = build_root.joinpath(*parts[:depth], "namespace_metadata.json")
        destination = root.joinpath(*parts[:depth], "namespace_metadata.json")
        if source.is_file() and not destination.exists():
            shutil.copyfile(source, destination)
    os.replace(built, target)
    return target


def _check_resumable(partial: Path, record: dict[str, Any]) -> None:
    """ValueError unless the partial collection in ``partial`` has the same settings (only the
    number of episodes may change: the chunks are the same either way)."""
    path = partial / "collect.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    changed = [key for key in record if key != "episodes" and saved.get(key) != record[key]]
    if changed:
        raise ValueError(f"{partial} holds a partial collection of {record['dataset_id']} with other "
                         f"{', '.join(changed)}; rerun it with its own settings (see {path}), pick another "
                         "--dataset-id, or delete that folder")


def collect(settings: CollectSettings, *, root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Collect ``settings.episodes`` episodes as a Minari dataset; returns its folder.

    A dataset that already exists with the same settings is returned as it is; one with other
    settings is an error. An interrupted collection continues from its saved chunks when run again.
    """
    from orl_gym.vector import LDMSuperResolutionVectorEnv

    # Absolute: Minari 0.5.4 sizes a dataset by joining os.walk's paths to its own, which doubles a relative one.
    root = minari_root(root).resolve()
    target = root / settings.dataset_id
    record = {"format": FORMAT_VERSION, "orl_gym_version": __version__, **settings.record()}
    if target.exists():
        existing = load_collected_dataset(target)[1]
        changed = [key for key in settings.record() if existing.get(key) != record[key]]
        if changed:
            raise ValueError(f"{target}: a dataset with this id exists, collected with other {', '.join(changed)}; "
                             "pick another --dataset-id or delete it")
        print(f"orl-gym: {target} holds this collection already ({existing['episodes']} episodes)", file=sys.stderr)
        return target
    partial = root / PARTIAL_DIR / settings.dataset_id.replace("/", "__")
    _check_resumable(partial, record)
    env = LDMSuperResolutionVectorEnv(num_envs=settings.num_envs, **settings.env_kwargs)
    spaces = (env.single_observation_space, env.single_action_space)
    try:
        make_policy = behaviour_policy(settings, *spaces)  # a run folder's is checked against the spaces here
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(partial / "collect.json", json.dumps(record, indent=2) + "\n")
        counts = [min(settings.chunk_episodes, settings.episodes - start)
                  for start in range(0, settings.episodes, settings.chunk_episodes)]
        paths = [partial / f"chunk-{c:05d}.npz" for c in range(len(counts))]
        done = [_chunk_episodes(path) == count for path, count in zip(paths, counts, strict=True)]
        bar = tqdm(total=settings.episodes, initial=sum(c for c, d in zip(counts, done, strict=True) if d),
                   desc="collect", unit="episode", disable=not progress)
        for chunk, (path, count) in enumerate(zip(paths, counts, strict=True)):
            if done[chunk]:
                continue
            try:
                arrays = _collect_chunk(env, make_policy(chunk), seed=settings.seed + chunk * settings.num_envs,
                                        count=count, chunk=chunk, bar=bar)
            except KeyboardInterrupt:
                bar.close()
                saved = sum(c for c, d in zip(counts, done, strict=True) if d)
                print(f"\norl-gym: interrupted; {saved} of {settings.episodes} episodes are saved in {partial}: "
                      "run the same command again to continue", file=sys.stderr)
                raise
            _save_chunk(path, arrays)
            done[chunk] = True
        bar.close()
    finally:
        env.close()
    build_root = partial / "build"
    built = _build_dataset(settings, paths, build_root, spaces, record)
    target = _install(built, build_root, root, settings.dataset_id)
    shutil.rmtree(partial)
    with contextlib.suppress(OSError):
        (root / PARTIAL_DIR).rmdir()  # when no other collection is in progress
    return target


def _chunk_episodes(path: Path) -> int:
    """Episodes in a saved chunk (0 when it is missing or unreadable: it is collected again)."""
    if not path.is_file():
        return 0
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return len(arrays["lengths"])
    except (OSError, ValueError, KeyError):
        return 0


# --- reading a collected dataset back ---------------------------------------------------------


def _data_path(dataset: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """The Minari storage folder (``.../data``) of a dataset folder, storage folder or id."""
    path = Path(dataset).resolve()
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").is_file():
            return candidate
    if path.exists():
        raise ValueError(f"--dataset: {path} is not a Minari dataset (no data/metadata.json); collect one with "
                         "orl-gym collect")
    by_id = minari_root(root).resolve() / str(dataset) / "data"
    if (by_id / "metadata.json").is_file():
        return by_id
    raise FileNotFoundError(f"--dataset: no dataset {str(dataset)!r} (neither a folder nor an id under "
                            f"{minari_root(root)}); collect it with orl-gym collect --dataset-id {dataset}")


def load_collected_dataset(dataset: str | os.PathLike, *, root: str | os.PathLike | None = None
                           ) -> tuple[Any, dict[str, Any]]:
    """(``minari.MinariDataset``, its ``orl_gym`` record) of a dataset folder or id.

    ValueError in one line when it is not a Minari dataset, was not written by ``orl-gym collect``
    (no env settings to check a policy against), holds no episodes, or has observations other
    than the env's Dict (lr, latent, progress) or actions other than a Box.
    """
    minari = _minari()

    path = _data_path(dataset, root)
    try:
        data = minari.MinariDataset(path)
    except Exception as error:  # noqa: BLE001 - a torn or foreign dataset, whichever library objects
        raise ValueError(f"--dataset: {path} is not a readable Minari dataset ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from error
    record = data.storage.metadata.get(METADATA_KEY)
    if not isinstance(record, dict) or "env_kwargs" not in record:
        raise ValueError(f"--dataset: {path.parent} was not collected by orl-gym collect (no '{METADATA_KEY}' "
                         "metadata with the env settings); collect the data with orl-gym collect")
    if data.total_episodes == 0 or data.total_steps == 0:
        raise ValueError(f"--dataset: {path.parent} holds no episodes; collect some with orl-gym collect")
    obs_space, act_space = data.observation_space, data.action_space
    if not isinstance(obs_space, gym.spaces.Dict) or set(obs_space.spaces) != {"lr", "latent", "progress"}:
        raise ValueError(f"--dataset: {path.parent} has observations {obs_space}, not the env's Dict of lr, latent "
                         "and progress")
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"--dataset: {path.parent} has actions {act_space}, not the env's Box(-1, 1, (k,))")
    return data, record


def env_differences(collected: Mapping[str, Any], env_kwargs: Mapping[str, Any]) -> list[str]:
    """The env arguments (other than :data:`DATA_ONLY_KEYS`) in which ``env_kwargs`` differs from
    those a dataset was ``collected`` with, compared as the env resolves them (a preset's explicit
    default equals an omitted one); ``reward.*`` / ``actions.*`` fields are named one by one."""
    from orl_gym.env import EnvConfig

    a, b = (EnvConfig.from_kwargs(**{k: v for k, v in kw.items() if k not in DATA_ONLY_KEYS})
            for kw in (collected, env_kwargs))
    differences = []
    for f in dataclasses.fields(EnvConfig):
        if f.name in DATA_ONLY_KEYS:
            continue
        left, right = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(left):
            left, right = (json.loads(json.dumps(dataclasses.asdict(x))) for x in (left, right))
            differences += [f"{f.name}.{k} ({left[k]!r} vs {right[k]!r})" for k in left if left[k] != right[k]]
        elif left != right:
            differences.append(f"{f.name} ({left!r} vs {right!r})")
    return differences
