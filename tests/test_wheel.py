"""scalinglab as a package: built into a wheel, installed (not editable) into a fresh virtual
environment, run from another directory. The sweep's Ray workers import the installed
packages; a folder named like one of them in the working directory is refused, not used.

The fresh environment borrows the dependencies (torch, Ray, DeepSpeed, …) of the test
environment through a ``.pth`` line instead of downloading them again; scalinglab itself comes
from the wheel alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from analysis.records import TRIALS, Status
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SOURCES = ("cluster", "experiments", "models", "analysis", "pyproject.toml", "README.md")


def _run(*args, cwd, env=None, timeout=600):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh venv holding scalinglab from a wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: a build/ folder left in the checkout could carry stale modules
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (REPO / name).is_dir() else {}))
    build = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
                 src, cwd=tmp)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("scalinglab-*.whl")
    venv = tmp / "venv"
    assert _run(sys.executable, "-m", "venv", venv, cwd=tmp).returncode == 0
    site = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp).stdout.strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    return {**env, "RAY_AUTH_MODE": "disabled"}


def test_the_installed_package_runs_a_sweep_from_another_directory(installed, tmp_path):
    where = _run(installed / "python", "-c", "import cluster, models; print(cluster.__file__, models.__file__)",
                 cwd=tmp_path, env=_env())
    assert where.returncode == 0 and str(REPO) not in where.stdout, where.stdout + where.stderr
    assert all(str(installed.parent) in path for path in where.stdout.split())
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""\
        name: wheel
        model:
          sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]
        budgets: {tokens: [4096]}
        training: {batch_size: 4, seq_len: 32}
        evaluation: {validation_tokens: 1024, points: 2}
        """))
    run = _run(installed / "scalinglab", "sweep", "tiny.yaml", "--storage", "out", "--no-fit", "--no-report",
               cwd=tmp_path, env=_env())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "out" / TRIALS.file)
    assert (trials[TRIALS.status] == Status.COMPLETED).all() and len(trials) == 1
    # the shipped sweeps come with the package: a name is enough
    dry = _run(installed / "scalinglab", "sweep", "quickstart", "--dry-run", cwd=tmp_path, env=_env())
    assert dry.returncode == 0 and "15 trials" in dry.stdout, dry.stderr[-2000:]


def test_a_folder_named_like_one_of_our_packages_is_refused(installed, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise SystemExit('the user models package was imported')\n")
    run = _run(installed / "scalinglab", "sweep", "quickstart", "--dry-run", cwd=tmp_path, env=_env())
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "a package named 'models'" in run.stderr and "shadows scalinglab's own" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_bare_folder_that_would_shadow_is_named_in_the_refusal(tmp_path):
    """Under ``python -m`` in an editable checkout, a ``models/`` folder without ``__init__.py``
    imports as a namespace package in place of ours. Where it does, the refusal names the folder
    (it once said "at None"); where it does not (ours on PYTHONPATH), the command runs."""
    (tmp_path / "models").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = _run(sys.executable, "-m", "cluster.cli", "sweep", "quickstart", "--dry-run", cwd=tmp_path, env=env)
    if run.returncode == 2:
        assert f"at {tmp_path / 'models'} shadows" in run.stderr, run.stderr
    else:
        assert run.returncode == 0 and "15 trials" in run.stdout, run.stderr[-2000:]
