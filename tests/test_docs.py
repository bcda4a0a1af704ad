"""The documentation site builds without a warning, and its pages say what the README says.

`mkdocs build --strict` fails on any warning: a nav entry or a link to a missing page or
anchor, a page left out of the nav, a docstring mkdocstrings cannot read. CI installs mkdocs
with the dev extra, so a missing mkdocs fails here rather than skipping.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.+?)\n```", path.read_text(), flags=re.S)


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner, not a warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # mkdocstrings rendered the docstrings, not just the page's own text.
    assert "LDMSuperResolutionEnv" in api and "PairDataset" in api


def test_docs_home_has_the_readme_commands():
    readme = _blocks(ROOT / "README.md", "bash")[:2]
    assert _blocks(ROOT / "docs" / "index.md", "bash")[:2] == readme


def test_using_page_shows_the_tested_readme_snippets():
    # tests/test_readme.py runs the README's snippets: the docs page shows the same code.
    assert _blocks(ROOT / "docs" / "using.md", "python") == _blocks(ROOT / "README.md", "python")
