"""The package works when installed from a wheel, outside the repository (spaces are package data)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_runs_a_search(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("mbsearch-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Dependencies come from this environment's site-packages (a plain path entry: the editable
    # install's finder there is not activated), the package itself only from the wheel.
    (target / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def mbsearch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), "-m", "mbsearch", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
        )

    where = subprocess.run(
        [str(python), "-c", "import mbsearch; print(mbsearch.__file__)"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr

    listed = mbsearch("spaces")
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in ("v1", "v2", "v3"))
    sampled = mbsearch("sample", "--space", "v3", "--seed", "1")
    assert sampled.returncode == 0, sampled.stderr
    assert '"format": "mbsearch.spec.arch/' in sampled.stdout
    searched = mbsearch(
        "run", "--space", "v3", "--trials", "1", "--train-size", "128", "--val-size", "128", "--epochs", "0.5",
        "--runs-dir", "runs",
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr
    assert (workdir / "runs" / "v3-cpu-fashion-mnist" / "pareto.csv").is_file()
