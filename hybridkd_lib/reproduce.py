"""Run a profile of the plan through papermill, in dependency order, with caching.

Each run executes its notebook from ``notebooks/`` into
``results/<profile>/<run>/`` (the executed copy is kept, and an HTML rendering
goes to ``results/_site/runs/<profile>/<run>.html`` for the book's run index).
A run whose ``result.json`` exists with the same parameters and code version
(``.run_key``) is skipped: rendering never retrains. A failed run does not stop
the others; the failures are listed and the exit status is non-zero.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from hybridkd_lib.plan import Run, plan
from hybridkd_lib.results import REPO_ROOT, atomic_write_text

KERNEL = os.environ.get("HYBRIDKD_KERNEL", "hybridkd")
# the code a training result depends on (rendering code is deliberately not part of it)
CODE_FILES = ("checkpoint.py", "cam.py", "data.py", "efficiency.py", "hybrid.py", "layers.py", "losses.py",
              "memory.py", "neurons.py", "ratebp.py", "trainer.py", "models/resnet.py", "models/spikingformer.py",
              "models/stages.py", "models/timm_teachers.py", "models/zoo.py", "models/registry.py", "results.py")
TRAIN_NOTEBOOKS = ("train_teacher", "train_student")


def default_results_root() -> Path:
    return Path(os.environ.get("HYBRIDKD_RESULTS", REPO_ROOT / "results"))


def code_version() -> str:
    h = hashlib.sha256()
    lib = REPO_ROOT / "hybridkd_lib"
    for rel in CODE_FILES:
        h.update(rel.encode())
        h.update((lib / rel).read_bytes())
    return h.hexdigest()[:16]


def run_key(run: Run, profile: str) -> str:
    nb = (REPO_ROOT / "notebooks" / f"{run.notebook}.ipynb").read_bytes()
    payload = json.dumps({"profile": profile, "notebook": run.notebook, "params": run.params}, sort_keys=True)
    return hashlib.sha256(payload.encode() + nb + code_version().encode()).hexdigest()[:16]


def resolve(params: dict, profile_dir: Path) -> dict:
    """``"@NAME"`` -> the folder of run NAME."""
    return {k: str(profile_dir / v[1:]) if isinstance(v, str) and v.startswith("@") else v
            for k, v in params.items()}


def is_current(run: Run, profile: str, profile_dir: Path) -> bool:
    d = profile_dir / run.name
    key = d / ".run_key"
    return (d / "result.json").is_file() and key.is_file() and key.read_text().strip() == run_key(run, profile)


def export_html(executed: Path, target: Path):
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    atomic_write_text(target, body)


def execute(run: Run, profile: str, profile_dir: Path, site_dir: Path, kernel: str = KERNEL, log=print):
    import papermill as pm

    out = profile_dir / run.name
    if out.exists() and not is_current(run, profile, profile_dir):
        # different parameters or code: never resume another configuration's checkpoints
        if (out / ".run_key").exists() or (out / "result.json").exists():
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for dep in run.needs:
        if not (profile_dir / dep / "result.json").is_file():
            raise RuntimeError(f"needs run {dep!r}, which has no result")
    params = dict(resolve(run.params, profile_dir), out=str(out))
    if run.notebook in TRAIN_NOTEBOOKS:
        params["nproc"] = run.nproc
    executed = out / f"{run.notebook}.ipynb"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / f"{run.notebook}.ipynb"), str(executed),
                        parameters=params, kernel_name=kernel, cwd=str(REPO_ROOT), progress_bar=False,
                        log_output=False)
    if not (out / "result.json").is_file():
        raise RuntimeError(f"notebook finished without writing {out / 'result.json'}")
    atomic_write_text(out / ".run_key", run_key(run, profile) + "\n")
    export_html(executed, site_dir / "runs" / profile / f"{run.name}.html")


def with_nproc(runs: list[Run], nproc: int | None, log=print) -> list[Run]:
    """The runs with ``nproc`` processes instead of the plan's for every multi-process run (the global
    batch is kept, so each process's batch grows or shrinks); says what it changed."""
    if nproc is None:
        return runs
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc={nproc!r} not allowed; an integer >= 1")
    out = []
    for r in runs:
        if r.nproc > 1 and r.nproc != nproc:
            batch = r.params.get("batch_size")
            if batch % nproc:
                raise ValueError(f"--nproc {nproc}: run {r.name!r} has global batch {batch}, which does not "
                                 f"divide across {nproc} processes")
            log(f"{r.name}: {r.nproc} -> {nproc} processes; global batch {batch} kept, per-process batch "
                f"{batch // r.nproc} -> {batch // nproc}")
            r = dataclasses.replace(r, nproc=nproc)
        out.append(r)
    return out


def reproduce(profile: str, only=None, results_root=None, kernel: str = KERNEL, log=print,
              nproc: int | None = None, runs: list[Run] | None = None) -> dict:
    """Execute the profile (or the given ``runs`` of it); returns ``{"ran": [...], "skipped": [...],
    "failed": {name: reason}, "seconds": {name: wall time}}``."""
    runs = with_nproc(plan(profile) if runs is None else runs, nproc, log)
    names = [r.name for r in runs]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown run(s) {unknown}; valid for profile {profile!r}: {', '.join(names)}")
        runs = [r for r in runs if r.name in only]
    root = Path(results_root or default_results_root())
    profile_dir, site_dir = root / profile, root / "_site"
    site_dir.mkdir(parents=True, exist_ok=True)
    report = {"ran": [], "skipped": [], "failed": {}, "seconds": {}}
    bar = tqdm(runs, desc=f"reproduce {profile}", unit="run")
    for run in bar:
        bar.set_postfix_str(run.name)
        if is_current(run, profile, profile_dir):
            report["skipped"].append(run.name)
            continue
        t0 = time.perf_counter()
        try:
            execute(run, profile, profile_dir, site_dir, kernel, log)
        except Exception as exc:  # keep going; list it at the end
            reason = str(exc).strip().splitlines()
            report["failed"][run.name] = (reason[-1] if reason else type(exc).__name__)[:500]
            log(f"FAILED {run.name}: {report['failed'][run.name]}")
            continue
        report["ran"].append(run.name)
        report["seconds"][run.name] = round(time.perf_counter() - t0, 1)
        log(f"ran {run.name} in {time.perf_counter() - t0:.0f} s")
    log(f"{profile}: {len(report['ran'])} ran, {len(report['skipped'])} up to date, "
        f"{len(report['failed'])} failed" + (f": {', '.join(report['failed'])}" if report["failed"] else ""))
    return report
