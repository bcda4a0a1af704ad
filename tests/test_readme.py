"""The README opens with the two commands, and CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_main_job_and_test_commands():
    commands = _readme_commands()
    assert len(commands) >= 2
    main_job, tests = commands[0], commands[1]
    assert "orl-gym demo" in main_job and "pip install" in main_job
    assert "pytest" in tests and "pip install" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines


def test_readme_python_snippets_run(data_root, lpips_home, monkeypatch):
    """The "Using it" snippets as a user pastes them (bundled model, real images, real LPIPS
    weights); only the PPO training budget is left out (50,000 steps are minutes, not a test)."""
    from stable_baselines3 import PPO

    monkeypatch.setenv("ORL_GYM_DATA", str(data_root))
    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    exec(blocks[0], namespace)  # noqa: S102 - the README's own code
    assert namespace["reward"] is not None and namespace["obs"]["latent"].dtype.name == "float32"
    assert namespace["venv"].num_envs == 64
    namespace["venv"].close()
    training = "model.learn(50_000)"
    assert training in blocks[1]
    exec(blocks[1].replace(training, ""), namespace)  # noqa: S102
    assert isinstance(namespace["model"], PPO) and namespace["venv"].num_envs == 64
    namespace["venv"].close()
    namespace["env"].close()


def test_readme_is_short_and_its_links_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    assert "experiments/results/anchored/comparison.png" in targets and "docs/index.md" in targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing


def test_readme_result_table_is_the_reports():
    """The headline table is the Targets table report_results.py wrote (and the docs show)."""
    readme = (ROOT / "README.md").read_text()
    tables = re.findall(r"\n(\| Target .+?)\n\n", readme, flags=re.S)
    assert len(tables) == 1 and tables[0].count("\n") >= 6
    assert tables[0] in (ROOT / "experiments" / "results" / "README.md").read_text()
    assert tables[0] in (ROOT / "docs" / "results.md").read_text()
    command = "python experiments/report_results.py --threads 2 --notes experiments/results/notes.md"
    assert command in readme
