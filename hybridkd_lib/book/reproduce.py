"""Run a profile of the plan through papermill, in dependency order, with caching.

Each run executes its notebook from ``notebooks/`` into a staging folder
``results/<profile>/.staging/<run>/`` and, once it finished, replaces
``results/<profile>/<run>/`` (an old result stays where it was until then;
an interrupted run resumes in its staging folder). The executed copy is kept, with
the kernel's own log (``kernel.log``: what the kernel itself says, never on the console),
and an HTML rendering goes to ``results/_site/runs/<profile>/<run>.html``.

A run is up to date when its recorded key (``.run_key``) equals its key now and
every file its dependents read is there (``DONE_FILES``) and readable (a trained model). The key hashes the
run's parameters, its notebook and the library code a result can depend on
(``code_files``: not this sub-package), and the keys of the runs it reads (a teacher's key is part of its students', a trained model's part of
the Grad-CAM run's), so a changed teacher re-runs its students. ``status`` says
for each run why it would run (``reproduce --dry-plan``). A failed run does not
stop the others (its dependents wait); failures are listed, exit status non-zero.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from tqdm import tqdm

from hybridkd_lib.base import children
from hybridkd_lib.book.plan import Run, plan
from hybridkd_lib.base.results import (IN_CHECKOUT, REPO_ROOT, UnreadableFile, atomic_write_text, check_writable_folder,
                                       default_results_root, read_result, write_json)

KERNEL = os.environ.get("HYBRIDKD_KERNEL", "hybridkd")
PACKAGE = REPO_ROOT / "hybridkd_lib"
TRAIN_NOTEBOOKS = ("train_teacher", "train_student")
KERNEL_LOG = "kernel.log"   # a run's notebook kernel's own stderr (its log), kept beside the executed notebook
# what a finished run leaves that its dependents (or the book) read
DONE_FILES = {"train_teacher": ("result.json", "model.pt"), "train_student": ("result.json", "model.pt"),
              "cam": ("result.json", "cam.png", "cam.npz"), "efficiency": ("result.json", "bench.json"),
              "export": ("result.json", "model.nir")}


BOOK_MACHINERY = Path(__file__).resolve().parent   # this sub-package: it plans, runs and draws; no run executes it
# an installed copy has no notebooks (they are the book's, beside the package in its checkout): it lists a plan only
NEEDS_CHECKOUT = ("reproduce runs the book's notebooks (notebooks/*.ipynb), which an installed hybridkd_lib does not "
                  "have: run it in the book's checkout (git clone, then pip install -e '.[book]'); --dry-plan works anywhere")


def notebook_file(name: str) -> Path:
    """The book's notebook ``name`` (in the checkout's ``notebooks/``)."""
    return REPO_ROOT / "notebooks" / f"{name}.ipynb"


def notebook_hash(name: str) -> str:
    """The sha256 of notebook ``name``; outside the checkout, where there is none, a stand-in (a plan is only listed
    there, never run)."""
    if not IN_CHECKOUT:
        return "no notebook: outside the book's checkout"
    return hashlib.sha256(notebook_file(name).read_bytes()).hexdigest()


def code_files() -> list[Path]:
    """The library code a run's result can depend on: every code and data file of the package outside the book's
    machinery (``hybridkd_lib/book/``: plan, reproduce, cluster, dry run, report, which the method's modules never
    import). An edit of a caption or a table leaves every run up to date; an edit of the loss, the learner or a
    model makes them stale. A run's parameters, its notebook and the keys of the runs it reads are hashed
    beside (``run_keys``)."""
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".json")
                  and "__pycache__" not in p.parts and BOOK_MACHINERY not in p.resolve().parents)


def code_version() -> str:
    h = hashlib.sha256()
    for path in code_files():
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def run_keys(runs: list[Run], profile: str) -> dict[str, dict]:
    """Per run: ``own`` (parameters, notebook, code), ``deps`` (the keys of the runs it reads) and
    ``key`` (both). ``runs`` in dependency order; a dependency outside ``runs`` counts by its name."""
    code, keys = code_version(), {}
    for run in runs:
        own = _hash(json.dumps({"profile": profile, "notebook": run.notebook, "params": run.params}, sort_keys=True),
                    notebook_hash(run.notebook), code)
        deps = {d: keys[d]["key"] if d in keys else d for d in run.needs}
        keys[run.name] = {"own": own, "deps": deps, "key": _hash(own, json.dumps(deps, sort_keys=True))}
    return keys


def resolve(params: dict, profile_dir: Path) -> dict:
    """``"@NAME"`` -> the folder of run NAME."""
    return {k: str(profile_dir / v[1:]) if isinstance(v, str) and v.startswith("@") else v
            for k, v in params.items()}


def _recorded(folder: Path) -> dict:
    """The key recorded in ``folder/.run_key`` ({} where there is none); a damaged one is an error naming
    the file and the way back."""
    f = folder / ".run_key"
    if not f.is_file():
        return {}
    try:
        text = f.read_text().strip()
        rec = json.loads(text)
    except UnicodeDecodeError as exc:
        rec, why = None, str(exc)
    except json.JSONDecodeError as exc:
        rec, why = ({"key": text}, "") if re.fullmatch(r"[0-9a-f]{16}", text) else (None, str(exc))  # an older plain key
    else:
        why = "not a recorded key"
    if isinstance(rec, dict) and isinstance(rec.get("key"), str):
        return rec
    raise UnreadableFile(f"run key {f} is unreadable ({why}): the run's model and result there are kept; delete that "
                         f"file and run the same command again to re-run it (the old result is replaced only once the "
                         f"new one finished)")


def status(run: Run, key: dict, profile_dir: Path) -> tuple[str, str]:
    """``(state, why)``: ``up to date``, ``new``, ``settings changed``, ``dependency changed``, ``files
    missing`` or ``files damaged``. A damaged ``result.json`` or ``model.pt`` makes the run stale."""
    d = profile_dir / run.name
    staged = (profile_dir / ".staging" / run.name).is_dir()
    rec = _recorded(d)
    if not (d / "result.json").is_file() or not rec:
        return "new", "interrupted earlier: resumes" if staged else "never finished"
    try:
        read_result(d)
    except UnreadableFile:
        return "new", "its result.json is unreadable: runs again"
    if rec.get("key") == key["key"]:
        missing = [f for f in DONE_FILES[run.notebook] if not (d / f).is_file()]
        if missing:
            return "files missing", ", ".join(missing)
        damaged = _damaged_model(d) if "model.pt" in DONE_FILES[run.notebook] else None
        return ("files damaged", f"{damaged}: runs again") if damaged else ("up to date", "")
    if rec.get("own") != key["own"]:
        return "settings changed", "its parameters, notebook or the library's code"
    changed = [dep for dep, k in key["deps"].items() if rec.get("deps", {}).get(dep) != k]
    return "dependency changed", ", ".join(changed)


def _damaged_model(folder: Path) -> str | None:
    """Why ``folder/model.pt`` cannot be used (truncated, random bytes, no model in it), or None."""
    from hybridkd_lib.base import checkpoint   # torch: only for a run that is otherwise up to date

    return checkpoint.model_file_damage(folder / "model.pt")


def export_html(executed: Path, target: Path):
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    atomic_write_text(target, body)


def ipc_kernel_manager(log: Path | None = None):
    """A kernel manager whose kernels talk over local IPC sockets instead of TCP ports: no network
    port is opened (and ipykernel has no reason to warn about unencrypted TCP). ``log``: the file the
    kernel's own stderr goes to (its log, never a cell's output, which goes to the notebook), so that a
    kernel stopped mid-cell by Ctrl-C writes its socket errors there, not over the clean message."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            # the socket files in a folder of this process's own: concurrent reproduce processes (cluster
            # jobs on one machine) would otherwise pick the same kernel-ipc-N names in the working directory
            folder = tempfile.mkdtemp(prefix="hybridkd_kernel_")
            kw.setdefault("ip", str(Path(folder) / "kernel-ipc"))
            super().__init__(**kw)
            weakref.finalize(self, shutil.rmtree, folder, True)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            # the kernel ends with this process (ipykernel's own parent poller also exits within a second)
            kw = {**kw, **children.preexec()}
            if log is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(log, "ab") as f:   # the kernel holds its own copy of the file
                return await super()._async_launch_kernel(kernel_cmd, **kw, stderr=f)

    return IPCKernelManager


def execute(run: Run, key: dict, profile_dir: Path, site_dir: Path, kernel: str = KERNEL,
            keep_checkpoints: bool = True):
    """Run ``run``'s notebook in its staging folder, then put the finished run in place; with
    ``keep_checkpoints=False`` its epoch checkpoints (the resume state) are removed first."""
    import papermill as pm

    final, stage = profile_dir / run.name, profile_dir / ".staging" / run.name
    try:
        staged_key = _recorded(stage).get("key")
    except UnreadableFile:
        staged_key = None
    if staged_key != key["key"]:  # another configuration's leftovers (or a damaged key): never resume them
        shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage / ".run_key", json.dumps(key) + "\n")
    (stage / "result.json").unlink(missing_ok=True)
    params = dict(resolve(run.params, profile_dir), out=str(stage))
    if run.notebook in TRAIN_NOTEBOOKS:   # a training notebook takes its settings as one TrainConfig dict
        params = {"config": params, "nproc": run.nproc}
    executed = stage / f"{run.notebook}.ipynb"
    pm.execute_notebook(str(notebook_file(run.notebook)), str(executed),
                        parameters=params, kernel_name=kernel, cwd=str(REPO_ROOT), progress_bar=False,
                        log_output=False, kernel_manager_class=ipc_kernel_manager(stage / KERNEL_LOG))
    missing = [f for f in DONE_FILES[run.notebook] if not (stage / f).is_file()]
    if missing:
        raise RuntimeError(f"notebook finished without writing {', '.join(missing)} in {stage}")
    res = read_result(stage)
    if "out" in res:  # the folder the result now lives in
        write_json(stage / "result.json", dict(res, out=str(final)))
    if not keep_checkpoints:
        shutil.rmtree(stage / "checkpoints", ignore_errors=True)
    trash = profile_dir / ".trash" / run.name
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        trash.parent.mkdir(parents=True, exist_ok=True)
        final.rename(trash)
    stage.rename(final)
    shutil.rmtree(trash, ignore_errors=True)
    export_html(final / f"{run.notebook}.ipynb", site_dir / "runs" / profile_dir.name / f"{run.name}.html")


def check_can_run(runs: list[Run]) -> None:
    """Refuse, before any run starts, what cannot run on this machine: runs on CUDA without (enough)
    GPUs, datasets and checkpoint files that are not where the runs read them. One line says it all."""
    import torch

    from hybridkd_lib.data import datasets

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    short = [r for r in runs if r.gpus and r.nproc > gpus]
    missing = {}   # what -> the runs that read it
    for r in runs:
        p = r.params
        name = p.get("dataset")
        if name and not datasets.is_present(name, p.get("data_root")):
            missing.setdefault(f"dataset {name} (expected at {datasets.expected_path(name, p.get('data_root'))})",
                               []).append(r.name)
        for key, path in {**p, **p.get("teacher_kw", {})}.items():
            if (key in ("checkpoint_path", "init_checkpoint", "teacher_ckpt") and isinstance(path, str)
                    and not path.startswith("@") and not Path(REPO_ROOT, path).exists()):
                missing.setdefault(f"checkpoint {path}", []).append(r.name)
    problems = []
    if short:
        problems.append(f"{len(short)} run(s) need up to {max(r.nproc for r in short)} GPU(s) each and this machine "
                        f"has {gpus} (e.g. {short[0].name})")
    problems += [f"{what} is missing ({len(names)} run(s), e.g. {names[0]})" for what, names in missing.items()]
    if problems:
        raise ValueError(f"before any run starts: {'; '.join(problems)}. See `python -m hybridkd_lib datasets` and "
                         f"data/README.md; `reproduce --profile full --dry-run` runs the whole plan on tiny data on the CPU")


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
              nproc: int | None = None, runs: list[Run] | None = None, dry_plan: bool = False,
              keep_checkpoints: bool = True) -> dict:
    """Execute the profile (or the given ``runs`` of it); returns ``{"ran": [...], "skipped": [...],
    "failed": {name: reason}, "seconds": {name: wall time}, "plan": [(run, state, why), ...]}``.
    ``dry_plan``: only say what would run and why (also outside the book's checkout; running needs it).
    ``keep_checkpoints=False``: a finished run keeps its model and results but not its epoch checkpoints (the dry
    run's choice: it never resumes a finished run). The whole ``ablation`` profile, once every run finished, also
    rewrites the committed records the book shows (``evidence.write_ablation_file``); so does the whole ``fashion``
    profile (``evidence.write_evidence``)."""
    if not (dry_plan or IN_CHECKOUT):
        raise ValueError(NEEDS_CHECKOUT)
    whole_plan = runs is None and not only
    runs = with_nproc(plan(profile) if runs is None else runs, nproc, log)
    keys = run_keys(runs, profile)
    by_name = {r.name: r for r in runs}
    runs = _chosen(runs, only, profile)
    root = Path(results_root or default_results_root())
    profile_dir, site_dir = root / profile, root / "_site"
    report = {"ran": [], "skipped": [], "failed": {}, "seconds": {}, "plan": _states(runs, keys, profile_dir)}
    if dry_plan:
        _print_plan(report["plan"], max(len(n) for n in by_name), log)
        return report
    todo = [r for r, (_, state, _) in zip(runs, report["plan"]) if state != "up to date"]
    check_can_run(todo)
    for folder in (profile_dir, site_dir):
        check_writable_folder(folder, "the results folder")
    bar = tqdm(runs, desc=f"reproduce {profile}", unit="run")
    for run in bar:
        bar.set_postfix_str(run.name)
        if status(run, keys[run.name], profile_dir)[0] == "up to date":
            report["skipped"].append(run.name)
            continue
        waiting = [d for d in run.needs if d in report["failed"]
                   or status(by_name[d], keys[d], profile_dir)[0] != "up to date"]
        if waiting:
            report["failed"][run.name] = f"needs {', '.join(waiting)}, which is not up to date (kept its old result)"
            log(f"SKIPPED {run.name}: {report['failed'][run.name]}")
            continue
        _execute_into(report, run, keys[run.name], profile_dir, site_dir, kernel, keep_checkpoints, log)
    _finish(profile, profile_dir, report, whole_plan, log)
    return report


def _chosen(runs: list[Run], only, profile: str) -> list[Run]:
    """``runs`` narrowed to the names in ``only`` (all of them without it); an unknown name is an error."""
    if not only:
        return runs
    names = [r.name for r in runs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; valid for profile {profile!r}: {', '.join(names)}")
    return [r for r in runs if r.name in only]


def _states(runs: list[Run], keys: dict, profile_dir: Path) -> list[tuple[str, str, str]]:
    """``(run, state, why)`` per run; a damaged run key is a ``ValueError`` naming it."""
    try:
        return [(r.name, *status(r, keys[r.name], profile_dir)) for r in runs]
    except UnreadableFile as exc:
        raise ValueError(str(exc)) from None


def _print_plan(states: list[tuple[str, str, str]], width: int, log) -> None:
    for name, state, why in states:
        log(f"{name:<{width}}  {state:<18} {why}")
    if not IN_CHECKOUT:
        log("(outside the book's checkout: the plan only; running it needs the checkout's notebooks)")


def _execute_into(report: dict, run: Run, key: dict, profile_dir: Path, site_dir: Path, kernel: str,
                  keep_checkpoints: bool, log) -> None:
    """``execute`` one run and record it in ``report``: ``ran`` and ``seconds``, or ``failed`` with the last line
    of its error (the other runs go on). Ctrl-C says where it resumes and stops everything."""
    t0 = time.perf_counter()
    try:
        execute(run, key, profile_dir, site_dir, kernel, keep_checkpoints)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM (cli): the kernel and its children end with this process
        log(f"stopped {run.name} (its notebook kernel, {run.notebook}.ipynb, and what it started); it resumes "
            f"from {profile_dir / '.staging' / run.name} when the same command runs again")
        raise
    except Exception as exc:  # keep going; list it at the end
        reason = str(exc).strip().splitlines()
        report["failed"][run.name] = (reason[-1] if reason else type(exc).__name__)[:500]
        log(f"FAILED {run.name}: {report['failed'][run.name]}")
        return
    report["ran"].append(run.name)
    report["seconds"][run.name] = round(time.perf_counter() - t0, 1)
    log(f"ran {run.name} in {time.perf_counter() - t0:.0f} s")


def _finish(profile: str, profile_dir: Path, report: dict, whole_plan: bool, log) -> None:
    """Say what ran; after a whole ``ablation`` or evidence profile with no failure, rewrite its committed records."""
    log(f"{profile}: {len(report['ran'])} ran, {len(report['skipped'])} up to date, "
        f"{len(report['failed'])} failed" + (f": {', '.join(report['failed'])}" if report["failed"] else ""))
    if report["failed"] or not whole_plan:
        return
    if profile == "ablation":
        from hybridkd_lib.book.evidence import write_ablation_file

        log(f"wrote {write_ablation_file(profile_dir)} (the records the book shows where results/ablation is absent)")
    if profile in EVIDENCE_PROFILES:
        from hybridkd_lib.book.evidence import write_evidence

        wall = sum(report["seconds"].values()) if not report["skipped"] else None   # one uninterrupted invocation
        log(f"wrote {write_evidence(profile, profile_dir, wall)} (the committed records the book shows)")


EVIDENCE_PROFILES = ("fashion",)   # profiles whose records are committed (book/data/<profile>/)
