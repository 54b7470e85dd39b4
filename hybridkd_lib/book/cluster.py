"""The plan on a cluster: every run that is not up to date as its own scheduler job, through submitit.

``submit`` sends each such run as one job (Slurm through ``submitit.SlurmExecutor``, or
``submitit.LocalExecutor``'s real job processes on this machine), with the resources the plan
states for it (``Run.nproc`` GPUs on one node, ``Run.time_h``) and a dependency on the runs it
reads: Slurm's ``afterok`` (teachers finish before their students, the Grad-CAM run after the
model it draws); submitit's local executor (``--launcher local-jobs``: job processes on this machine,
the cluster path without a cluster) has no dependencies of its own, so such a job first waits
for the run folders it reads (and fails when one of their jobs failed). Inside a job the run
executes exactly as ``reproduce`` runs it on one machine (its notebook; a multi-GPU run starts
one process per GPU under torchrun), so a job that the scheduler stopped resumes from its
checkpoint when it runs again: submitit requeues a preempted or timed-out Slurm job
(``RunJob.checkpoint``), and ``reproduce`` again resubmits whatever is not done.

``results/<profile>/jobs.json`` lists every submitted job (run, launcher, job id, job folder);
``job_states`` reads it and the run folders for ``reproduce --status``. A job records how it ended in
a plain-text state file of its own (``.jobs/state/<run>``), so the status never unpickles anything
(submitit's result pickles stay unread), and an entry of ``jobs.json`` whose job id or folder is not
one this library writes for that profile is named and ignored.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from hybridkd_lib.base import children
from hybridkd_lib.book.plan import Run, plan
from hybridkd_lib.base.results import default_results_root
from hybridkd_lib.book.reproduce import KERNEL, reproduce, run_keys, status, with_nproc
from hybridkd_lib.base.results import UnreadableFile, read_json_file, write_json

LAUNCHERS = ("local-jobs", "slurm")   # "local" (reproduce's own, in this process) is not a job launcher
JOBS_FILE = "jobs.json"
JOB_DIR = ".jobs"            # submitit's folder (pickles, logs) inside results/<profile>/
DEPENDENCY_POLL_S = 2.0


@dataclasses.dataclass
class SlurmOptions:
    """What every Slurm job asks for beyond the plan's GPUs and time (``--partition`` ...)."""

    partition: str | None = None
    account: str | None = None
    gpus_per_node: int = 8
    cpus_per_gpu: int = 8
    time_h: float | None = None     # None: each run's ``Run.time_h``
    qos: str | None = None
    constraint: str | None = None


# ----------------------------------------------------------------------------- what runs in a job
class RunJob:
    """The callable a job executes: wait for the runs ``name`` reads, then ``reproduce`` it alone.
    ``slots``: at most this many such jobs execute at once on this machine (local jobs share it;
    None: no limit, a cluster job has its node's resources)."""

    def __init__(self, profile: str, name: str, results_root: str, nproc: int | None, kernel: str = KERNEL,
                 slots: int | None = None):
        self.profile, self.name, self.results_root, self.nproc, self.kernel = profile, name, results_root, nproc, kernel
        self.slots = slots

    def __call__(self) -> str:
        if self.slots is not None:   # a local job: its worker ends with the job process (whose pid is the job id)
            children.end_with_parent()
        runs = with_nproc(plan(self.profile), self.nproc, log=lambda *_: None)
        by_name = {r.name: r for r in runs}
        keys = run_keys(runs, self.profile)
        profile_dir = Path(self.results_root) / self.profile
        _write_state(profile_dir, self.name, "queued")
        for dep in by_name[self.name].needs:   # the local executor's dependencies (Slurm's afterok already held)
            while status(by_name[dep], keys[dep], profile_dir)[0] != "up to date":
                state = _job_state(profile_dir, dep, _jobs(profile_dir).get(dep))["state"]
                if state not in ("queued", "running"):
                    message = f"{self.name} needs {dep}, which is not up to date and whose job is {state}"
                    _write_state(profile_dir, self.name, "failed", message)
                    raise RuntimeError(message)
                time.sleep(DEPENDENCY_POLL_S)
        try:
            with _slot(profile_dir, self.slots):
                _write_state(profile_dir, self.name, "running")
                report = reproduce(self.profile, only=[self.name], results_root=self.results_root,
                                   nproc=self.nproc, kernel=self.kernel)
            if report["failed"]:
                raise RuntimeError(f"{self.name}: {report['failed'][self.name]}")
        except Exception as exc:
            _write_state(profile_dir, self.name, "failed", str(exc).strip().splitlines()[-1][:300] if str(exc) else
                         type(exc).__name__)
            raise
        outcome = "up to date" if self.name in report["skipped"] else "finished"
        _write_state(profile_dir, self.name, "finished", outcome)
        return outcome

    def checkpoint(self):
        """Preemption or time limit (Slurm): requeue the same job; the run resumes from its checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(self.profile, self.name, self.results_root, self.nproc,
                                                         self.kernel, self.slots))


@contextlib.contextmanager
def _slot(profile_dir: Path, slots: int | None):
    """Hold one of ``slots`` lock files (``fcntl``: released when the process ends, however it ends)."""
    if slots is None:
        yield
        return
    import fcntl

    folder = profile_dir / JOB_DIR / "slots"
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(slots):
            f = open(folder / str(i), "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield
            finally:
                f.close()
            return
        time.sleep(DEPENDENCY_POLL_S)


def _write_state(profile_dir: Path, name: str, state: str, detail: str = "") -> None:
    """The job's state (queued, running, finished, failed) and a one-line detail, as plain text."""
    folder = profile_dir / JOB_DIR / "state"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"{state}\n{detail}\n" if detail else f"{state}\n")


def _read_state(profile_dir: Path, name: str) -> tuple[str, str]:
    f = profile_dir / JOB_DIR / "state" / name
    lines = f.read_text(errors="replace").splitlines() if f.is_file() else []
    state = lines[0].strip() if lines else "queued"
    return (state if state in ("queued", "running", "finished", "failed") else "queued"), " ".join(lines[1:])[:300]


# ----------------------------------------------------------------------------- submitting
def check_slurm(options: SlurmOptions, runs: list[Run]) -> None:
    """Refuse before anything is submitted: no ``sbatch``, a run asking for more GPUs than
    ``gpus_per_node``, or a partition/account the scheduler rejects (``sbatch --test-only``)."""
    if shutil.which("sbatch") is None:
        raise ValueError("--launcher slurm needs Slurm's sbatch on the PATH (none found); on a machine without "
                         "Slurm use --launcher local")
    too_big = [f"{r.name} ({r.nproc})" for r in runs if r.nproc > options.gpus_per_node]
    if too_big:
        raise ValueError(f"--gpus-per-node {options.gpus_per_node} is less than these runs ask for: "
                         f"{', '.join(too_big)}; raise --gpus-per-node or pass --nproc {options.gpus_per_node}")
    cmd = ["sbatch", "--test-only", "--nodes", "1", "--gpus-per-node", "1", "--time", "1",
           *(["--partition", options.partition] if options.partition else []),
           *(["--account", options.account] if options.account else []),
           *(["--qos", options.qos] if options.qos else []), "--wrap", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        said = " ".join((proc.stderr or proc.stdout).split())
        raise ValueError(f"the scheduler rejects these options (partition={options.partition!r}, "
                         f"account={options.account!r}): {said}")


def _executor(launcher: str, folder: Path, run: Run, options: SlurmOptions, deps: list[str]):
    import submitit

    if launcher == "local-jobs":
        ex = submitit.LocalExecutor(folder)
        ex.update_parameters(timeout_min=int(60 * (options.time_h or run.time_h)))
        return ex
    ex = submitit.SlurmExecutor(folder, max_num_timeout=3)
    gpus = run.nproc if run.gpus else 0
    ex.update_parameters(
        job_name=f"hybridkd_{run.name}", nodes=1, ntasks_per_node=1, time=int(60 * (options.time_h or run.time_h)),
        cpus_per_task=max(1, gpus) * options.cpus_per_gpu, signal_delay_s=120,
        **({"gpus_per_node": gpus} if gpus else {}),
        **{k: v for k, v in (("partition", options.partition), ("account", options.account), ("qos", options.qos),
                             ("constraint", options.constraint)) if v},
        **({"dependency": "afterok:" + ":".join(deps)} if deps else {}),
        additional_parameters={"kill-on-invalid-dep": "yes"})   # a failed dependency ends its dependents
    return ex


def submit(profile: str, launcher: str = "slurm", options: SlurmOptions | None = None, only=None,
           results_root=None, nproc: int | None = None, kernel: str = KERNEL, log=print) -> list[dict]:
    """Submit every run of ``profile`` that is not up to date and has no live job, in dependency order;
    write ``jobs.json`` and return its rows (run, job id, state)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    options = options or SlurmOptions()
    runs = with_nproc(plan(profile), nproc, log)
    keys = run_keys(runs, profile)
    if only:
        unknown = [n for n in only if n not in keys]
        if unknown:
            raise ValueError(f"unknown run(s) {unknown}; valid for profile {profile!r}: {', '.join(keys)}")
    root = Path(results_root or default_results_root())
    profile_dir = root / profile
    todo = [r for r in runs if (not only or r.name in only) and status(r, keys[r.name], profile_dir)[0] != "up to date"]
    if launcher == "slurm":
        check_slurm(options, todo)
    jobs = _jobs(profile_dir)
    folder = profile_dir / JOB_DIR / "%j"
    for run in todo:
        old = jobs.get(run.name)
        old_state = _job_state(profile_dir, run.name, old)["state"]
        if old_state in ("queued", "running"):
            log(f"{run.name}: job {old['job_id']} is still {old_state}; not resubmitted")
            continue
        deps = [jobs[d]["job_id"] for d in run.needs
                if d in jobs and _job_state(profile_dir, d, jobs[d])["state"] in ("queued", "running")]
        ex = _executor(launcher, folder, run, options, deps)
        _write_state(profile_dir, run.name, "queued")
        slots = local_slots() if launcher == "local-jobs" else None
        job = ex.submit(RunJob(profile, run.name, str(root), nproc, kernel, slots))
        jobs[run.name] = {"run": run.name, "launcher": launcher, "job_id": str(job.job_id),
                          "folder": str(profile_dir / JOB_DIR), "after": deps, "gpus": run.nproc if run.gpus else 0,
                          "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(profile_dir / JOBS_FILE, jobs)   # after each submission: a crash loses no job id
    rows = job_states(profile, root)
    print_states(rows, log)
    return rows


def local_slots() -> int:
    """Local jobs that execute at once: one per two CPU cores (each run's notebook uses two threads)."""
    return max(1, (os.cpu_count() or 2) // 2)


# ----------------------------------------------------------------------------- states
_JOB_ID = {"local-jobs": re.compile(r"[1-9]\d*"), "slurm": re.compile(r"\d+(_\d+)?")}


def _jobs(profile_dir: Path, log=print) -> dict:
    """``jobs.json``'s entries that are jobs this library submitted for this profile: run name, launcher,
    job id of that launcher's form, and the profile's own job folder. Any other entry is named and ignored."""
    f = profile_dir / JOBS_FILE
    if not f.is_file():
        return {}
    try:
        jobs = read_json_file(f, "jobs file")
    except UnreadableFile as exc:
        raise ValueError(f"{exc}; delete it to submit again (runs already finished stay up to date)") from None
    folder = (profile_dir / JOB_DIR).resolve()   # however the results folder was spelt at submission
    kept = {}
    for name, job in jobs.items():
        ok = (isinstance(job, dict) and job.get("run") == name and job.get("launcher") in LAUNCHERS
              and isinstance(job.get("job_id"), str) and _JOB_ID[job["launcher"]].fullmatch(job["job_id"])
              and isinstance(job.get("folder"), str) and Path(job["folder"]).resolve() == folder)
        if ok:
            kept[name] = job
        else:
            log(f"ignored the entry {name!r} of {f}: not a job this library submitted for this profile "
                f"(expected launcher {' or '.join(LAUNCHERS)}, a job id of digits and folder {folder})")
    return kept


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (exited, not yet reaped by the process that started it) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _log_tail(folder: Path, job_id: str, n: int = 5) -> str:
    lines = []
    for suffix in ("_0_log.err", "_0_log.out"):
        f = folder / job_id / f"{job_id}{suffix}"
        if f.is_file():
            lines += [line for line in f.read_text(errors="replace").replace("\r", "\n").splitlines()
                      if line.strip() and "%|" not in line]   # progress bars are not what went wrong
    return " | ".join(lines[-n:])


def _job_state(profile_dir: Path, name: str, job: dict | None) -> dict:
    """``{"state": queued | running | finished | failed | not submitted, "detail": ...}`` of one job."""
    if not job:
        return {"state": "not submitted", "detail": ""}
    folder, job_id = profile_dir / JOB_DIR, job["job_id"]   # entries checked by _jobs
    recorded, detail = _read_state(profile_dir, name)
    if recorded in ("finished", "failed"):
        return {"state": recorded, "detail": detail}
    if job["launcher"] == "local-jobs":
        if _pid_alive(int(job_id)):
            return {"state": recorded, "detail": ""}
        return {"state": "failed", "detail": f"job process ended without a result: {_log_tail(folder, job_id)}"}
    import submitit

    slurm = submitit.SlurmJob(folder / "%j", job_id).state   # PENDING, RUNNING, COMPLETED, FAILED, ...
    if slurm in ("PENDING", "REQUEUED", "CONFIGURING", "UNKNOWN"):   # UNKNOWN: sacct has no record yet
        return {"state": "queued", "detail": slurm}
    if slurm in ("RUNNING", "COMPLETING"):
        return {"state": "running", "detail": slurm}
    return {"state": "failed", "detail": f"{slurm}: {_log_tail(folder, job_id)}"}


def job_states(profile: str, results_root=None) -> list[dict]:
    """Every run of ``profile``: its job (from ``jobs.json``) and state; a run whose folder is up to
    date reads "up to date" whatever its job did."""
    root = Path(results_root or default_results_root())
    profile_dir = root / profile
    runs = plan(profile)
    keys, jobs = run_keys(runs, profile), _jobs(profile_dir)
    rows = []
    for run in runs:
        job = jobs.get(run.name)
        st = _job_state(profile_dir, run.name, job)
        if status(run, keys[run.name], profile_dir)[0] == "up to date":
            st = {"state": "up to date", "detail": ""}
        rows.append({"run": run.name, "job_id": job["job_id"] if job else "-", "state": st["state"],
                     "detail": st["detail"]})
    return rows


def print_states(rows: list[dict], log=print) -> None:
    width = max(len(r["run"]) for r in rows)
    log(f"{'run':<{width}}  {'job id':>10}  state")
    for r in rows:
        log(f"{r['run']:<{width}}  {r['job_id']:>10}  {r['state']}" + (f": {r['detail']}" if r["detail"] else ""))


def resource_table(profile: str = "full", options: SlurmOptions | None = None) -> list[dict]:
    """What each run asks of the scheduler: GPUs, nodes, time, the runs it waits for."""
    options = options or SlurmOptions()
    return [{"run": r.name, "GPUs": r.nproc if r.gpus else 0, "nodes": 1,
             "time (h)": options.time_h or r.time_h, "after": ", ".join(r.needs) or "-"} for r in plan(profile)]
