"""The agent starts with the device install the README documents, and nothing else (issue 30): every package
of this environment outside that line's dependency closure is made unimportable, then `mbsearch agent` runs."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mbsearch.device.agent import start_local_agent

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def documented_install() -> list[str]:
    """The packages of the device install line (`pip install --no-deps mbsearch && pip install ...`), which
    the README and docs/latency.md both give: they must give the same one."""
    lines = []
    for page in (REPO / "README.md", REPO / "docs" / "latency.md"):
        found = re.search(r"pip install --no-deps mbsearch && pip install ([^\n`]+)", page.read_text())
        assert found, f"{page.name} has no device install line"
        lines.append(found.group(1).split())
    assert lines[0] == lines[1], lines
    return lines[0]


def closure(names: list[str]) -> set[str]:
    """The distributions pip would install for `names`: theirs and their requirements', recursively."""
    seen: set[str] = set()
    todo = [Requirement(name) for name in names]
    while todo:
        requirement = todo.pop()
        key = requirement.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(requirement.name) or []:
            nested = Requirement(text)
            if nested.marker is None or nested.marker.evaluate({"extra": ""}):
                todo.append(nested)
    return seen


def blocked_modules(allowed: set[str]) -> set[str]:
    """Top-level modules of every installed distribution outside `allowed` (mbsearch itself aside)."""
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        if module.startswith("_") and module != "_yaml":
            continue
        names = {d.lower().replace("_", "-") for d in dists}
        if names & (allowed | {"mbsearch", "pip", "setuptools"}):
            continue
        blocked.add(module)
    return blocked


def test_the_documented_device_install_starts_the_agent(tmp_path) -> None:
    packages = documented_install()
    allowed = closure(packages)
    assert "pyyaml" in allowed  # the CLI reads YAML (files.py): the line must install it
    blocker = tmp_path / "not-installed"
    for module in blocked_modules(allowed):
        (blocker / module).mkdir(parents=True)
        (blocker / module / "__init__.py").write_text(f"raise ImportError('{module} is not on this device')\n")
    assert (blocker / "torch").is_dir() and (blocker / "optuna").is_dir()  # the line really leaves them out
    env = os.environ | {"PYTHONPATH": f"{blocker}:{REPO}"}
    agent = start_local_agent(env=env)
    try:
        assert agent.url.startswith("http://127.0.0.1:")
    finally:
        agent.stop()
