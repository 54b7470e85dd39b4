"""The installed library works outside the book's checkout: the wheel, installed without dependencies into a
folder of its own, runs ``datasets``, a tiny ``train`` and ``reproduce --dry-plan`` from another folder, with its
data and results under that working folder (never under the installed package's folder)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybridkd_lib.base.results import REPO_ROOT
from hybridkd_lib.book.plan import plan

TINY = ["--student-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}', "--T", "2", "--batch-size", "32",
        "--epochs", "1", "--max-steps-per-epoch", "2", "--device", "cpu", "--no-progress"]


def _pip(*args, cwd):
    p = subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                       capture_output=True, text=True, cwd=cwd, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(site, work, env)``: the wheel installed into ``site`` (``pip install --no-deps --target``), an empty
    working folder, and an environment whose only copy of the package is the installed one.

    The wheel is built from a copy of the sources, so the build leaves no ``build/`` or ``*.egg-info`` in the
    checkout. The checkout's editable install stays in the venv, but it cannot win: setuptools' editable finder
    sits at the end of ``sys.meta_path``, after the path finder, which finds ``PYTHONPATH`` (``site``) first; the
    working folder (``sys.path[0]`` under ``-m``) holds no package (the first test checks)."""
    tmp = tmp_path_factory.mktemp("install")
    src, site, work = tmp / "src", tmp / "site", tmp / "work"
    shutil.copytree(REPO_ROOT / "hybridkd_lib", src / "hybridkd_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src), cwd=tmp)
    wheels = list((tmp / "dist").glob("hybridkd_lib-*.whl"))
    assert len(wheels) == 1, wheels
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheels[0]), cwd=tmp)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HYBRIDKD_DATA", "HYBRIDKD_RESULTS", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    return site, work, env


def _run(installed, *args):
    site, work, env = installed
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=work, env=env, timeout=600)


def _cli(installed, *args):
    return _run(installed, "-m", "hybridkd_lib", *args)


def test_only_the_installed_copy_is_imported_and_its_folders_are_the_working_folders(installed):
    site, work, _ = installed
    p = _run(installed, "-c", "import hybridkd_lib; print(hybridkd_lib.__file__)")
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).parent == site / "hybridkd_lib"
    p = _run(installed, "-c", "from hybridkd_lib.base.results import IN_CHECKOUT, default_results_root as r; "
                              "from hybridkd_lib.data.catalog import default_data_root as d; print(IN_CHECKOUT, r(), d())")
    assert p.stdout.split() == ["False", str(work / "results"), str(work / "data")], p.stderr


def test_datasets_expects_the_data_under_the_working_folder(installed):
    site, work, _ = installed
    p = _cli(installed, "datasets")
    assert p.returncode == 0, p.stderr
    assert f"MISSING  {work / 'data' / 'cifar-10-batches-py'}" in p.stdout
    assert str(site) not in p.stdout, p.stdout   # nothing (dataset or checkpoint) is looked for in site-packages
    assert not (work / "data").exists()          # listing creates nothing


def test_a_tiny_train_writes_its_run_where_out_says(installed):
    site, work, _ = installed
    before = sorted(q.name for q in site.iterdir())
    p = _cli(installed, "train", "--method", "ratebp", "--out", "runs/tiny", *TINY)
    assert p.returncode == 0, p.stderr
    for name in ("result.json", "model.pt", "settings.json"):
        assert (work / "runs" / "tiny" / name).is_file(), name
    assert sorted(q.name for q in site.iterdir()) == before   # nothing written beside the installed package


def test_reproduce_lists_the_plan_and_refuses_to_run_it_in_one_line(installed):
    site, work, _ = installed
    p = _cli(installed, "reproduce", "--profile", "smoke", "--dry-plan")
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split()[1] for line in p.stdout.splitlines() if line and not line.startswith("(")}
    assert rows == {r.name: "new" for r in plan("smoke")}
    assert "outside the book's checkout" in p.stdout
    p = _cli(installed, "reproduce", "--profile", "smoke")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "book's checkout" in p.stderr, p.stderr
    assert not (work / "results").exists() and not (site / "results").exists()
