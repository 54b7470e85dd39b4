"""The plan as scheduler jobs through submitit: the local executor for real, Slurm through a stand-in sbatch."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hybridkd_lib.book import cluster
from hybridkd_lib.book.plan import plan
from hybridkd_lib.base.results import REPO_ROOT
from processes import alive, cmdline

SETTLED = ("up to date", "finished", "failed", "not submitted")


def _cli(*args, env=None, out: Path | None = None):
    """``python -m hybridkd_lib ...``; output to a file (local jobs keep a pipe open until they end)."""
    out = out or Path(os.environ.get("TMPDIR", "/tmp")) / f"hybridkd_cli_{os.getpid()}.txt"
    with open(out, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "hybridkd_lib", *args], stdout=f, stderr=subprocess.STDOUT,
                             cwd=REPO_ROOT, env=env)
    return rc, out.read_text()


def _wait(results, until, timeout=900):
    t0 = time.time()
    while time.time() - t0 < timeout:
        rows = {r["run"]: r for r in cluster.job_states("smoke", results)}
        if until(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting; states: { {k: v['state'] for k, v in rows.items()} }")


def _kill_tree(pid: int):
    proc = psutil.Process(pid)
    for p in proc.children(recursive=True) + [proc]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _with_dependents(name: str, profile: str = "smoke") -> set[str]:
    """``name`` and every run of the profile that needs it, directly or through another run."""
    runs = plan(profile)
    lost = {name}
    while True:
        more = {r.name for r in runs if set(r.needs) & lost} - lost
        if not more:
            return lost
        lost |= more


@pytest.mark.slow
@pytest.mark.timeout(2400)   # the whole smoke profile as jobs, twice
def test_smoke_profile_as_local_jobs_survives_a_killed_job(tmp_path):
    """Real job processes (submitit's LocalExecutor), real dependencies, a real jobs.json: a job killed
    mid-run is reported failed (with its dependents), and a second reproduce finishes exactly those."""
    results = tmp_path / "results"
    rc, out = _cli("reproduce", "--profile", "smoke", "--launcher", "local-jobs", "--results", str(results))
    assert rc == 0, out
    jobs = json.loads((results / "smoke" / "jobs.json").read_text())
    names = [r.name for r in plan("smoke")]
    assert sorted(jobs) == sorted(names) and all(j["launcher"] == "local-jobs" for j in jobs.values())
    victim = "teacher_r34"   # read by hybrid_r19_r34_T2
    _wait(results, lambda rows: rows[victim]["state"] == "running")
    _kill_tree(int(jobs[victim]["job_id"]))
    rows = _wait(results, lambda rows: all(r["state"] in SETTLED for r in rows.values()))
    assert rows[victim]["state"] == "failed" and "ended without a result" in rows[victim]["detail"]
    assert rows["hybrid_r19_r34_T2"]["state"] == "failed" and "needs teacher_r34" in rows["hybrid_r19_r34_T2"]["detail"]
    lost = _with_dependents(victim)   # the student, its hard-reset twin, their NIR exports
    assert {"hybrid_r19_r34_T2", "nir_r19_r34"} <= lost
    assert all(rows[n]["state"] == "failed" for n in lost)
    done = {n for n, r in rows.items() if r["state"] == "up to date"}
    assert done == set(names) - lost

    rc, out = _cli("reproduce", "--profile", "smoke", "--status", "--results", str(results))
    print(out)
    assert rc == 1 and f"{victim}" in out and "failed: job process ended without a result" in out

    rc, out = _cli("reproduce", "--profile", "smoke", "--launcher", "local-jobs", "--results", str(results))
    assert rc == 0, out
    again = json.loads((results / "smoke" / "jobs.json").read_text())
    resubmitted = {n for n in names if again[n]["job_id"] != jobs[n]["job_id"]}
    assert resubmitted == lost
    rows = _wait(results, lambda rows: all(r["state"] in SETTLED for r in rows.values()))
    assert all(r["state"] == "up to date" for r in rows.values()), rows
    rc, out = _cli("reproduce", "--profile", "smoke", "--status", "--results", str(results))
    print(out)
    assert rc == 0 and out.count("up to date") == len(names)


@pytest.fixture
def fake_slurm(tmp_path):
    """A stand-in ``sbatch`` on the PATH: ``--test-only`` refuses partition "nope"; a submission
    records its script and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch_calls"
    log.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"""#!/bin/bash
if [[ " $* " == *" --test-only "* ]]; then
  if [[ " $* " == *" --partition nope "* ]]; then
    echo "sbatch: error: invalid partition specified: nope" >&2; exit 1
  fi
  echo "sbatch: Job 1 to start at now"; exit 0
fi
n=$(ls {log} | wc -l); id=$((1000 + n))
cp "${{@: -1}}" {log}/$id.sh
echo "Submitted batch job $id"
""")
    sbatch.chmod(0o755)
    for tool in ("srun", "sacct"):   # submitit looks for srun; the job states ask sacct (nothing known yet)
        (bin_dir / tool).write_text("#!/bin/bash\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, log


def test_slurm_jobs_ask_for_the_plans_resources_and_wait_for_their_teachers(tmp_path, fake_slurm):
    env, calls = fake_slurm
    results = tmp_path / "results"
    rc, out = _cli("reproduce", "--profile", "full", "--launcher", "slurm", "--partition", "gpu", "--account", "lab",
                   "--results", str(results), env=env)
    assert rc == 0, out
    jobs = json.loads((results / "full" / "jobs.json").read_text())
    runs = {r.name: r for r in plan("full")}
    assert sorted(jobs) == sorted(runs)
    scripts = {json.loads((results / "full" / "jobs.json").read_text())[n]["job_id"]: n for n in runs}
    for job_id, name in scripts.items():
        text = (calls / f"{job_id}.sh").read_text()
        run = runs[name]
        assert "#SBATCH --partition=gpu" in text and "#SBATCH --account=lab" in text
        assert f"#SBATCH --time={int(60 * run.time_h)}" in text
        if run.gpus:
            assert f"#SBATCH --gpus-per-node={run.nproc}" in text
        want = [jobs[d]["job_id"] for d in run.needs]
        if want:
            assert f"#SBATCH --dependency=afterok:{':'.join(want)}" in text
        else:
            assert "--dependency" not in text
    imagenet = (calls / f"{jobs['imagenet_hybrid_sew_resnet34_resnet34']['job_id']}.sh").read_text()
    assert "#SBATCH --gpus-per-node=8" in imagenet and "#SBATCH --nodes=1" in imagenet


def test_slurm_bad_input_submits_nothing(tmp_path, fake_slurm):
    env, calls = fake_slurm
    results = tmp_path / "results"
    no_sbatch = dict(os.environ, PATH="/usr/bin:/bin")
    rc, out = _cli("reproduce", "--profile", "full", "--launcher", "slurm", "--results", str(results),
                   env=dict(no_sbatch, PATH=str(Path(sys.executable).parent) + ":/usr/bin:/bin"))
    assert rc == 2 and "needs Slurm's sbatch on the PATH" in out
    rc, out = _cli("reproduce", "--profile", "full", "--launcher", "slurm", "--partition", "nope", "--results",
                   str(results), env=env)
    assert rc == 2 and "rejects these options (partition='nope'" in out and "invalid partition" in out
    rc, out = _cli("reproduce", "--profile", "full", "--launcher", "slurm", "--gpus-per-node", "4", "--results",
                   str(results), env=env)
    assert rc == 2 and "--gpus-per-node 4 is less than" in out and "imagenet_hybrid_sew_resnet34_resnet34 (8)" in out
    assert not (results / "full" / "jobs.json").exists() and not list(calls.iterdir())
    assert len(out.strip().splitlines()) == 1   # one line


def test_resource_table_of_the_full_plan():
    rows = {r["run"]: r for r in cluster.resource_table("full")}
    assert rows["imagenet_hybrid_preact_resnet34_resnet50"]["GPUs"] == 8
    assert rows["cifar10_hybrid_r18_r18_T4"]["after"] == "cifar10_teacher_resnet18"
    assert rows["cam"]["after"] == "imagenet_hybrid_sew_resnet34_resnet34"
    assert all(r["nodes"] == 1 for r in rows.values())


def test_a_killed_local_job_leaves_no_orphan_and_reads_failed(tmp_path):
    """#79: kill -9 of a local job's own pid (not its tree): the reproduce inside it, its notebook kernel and
    the kernel's bench children end with it, and the run reads failed, never "up to date"."""
    results = tmp_path / "results"
    rc, out = _cli("reproduce", "--profile", "smoke", "--launcher", "local-jobs", "--only", "efficiency",
                   "--results", str(results))
    assert rc == 0, out
    job_pid = int(json.loads((results / "smoke" / "jobs.json").read_text())["efficiency"]["job_id"])
    job = psutil.Process(job_pid)
    deadline = time.time() + 300
    while time.time() < deadline and not any("hybridkd_lib.tools.efficiency" in cmdline(c)
                                             for c in job.children(recursive=True)):
        time.sleep(0.2)
    descendants = job.children(recursive=True)
    assert len(descendants) >= 2, "no kernel with a bench child appeared"
    job.kill()
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(p) for p in descendants):
        time.sleep(0.2)
    running = [cmdline(p) for p in descendants if alive(p)]
    assert running == []
    time.sleep(3)   # an orphan would have had time to finish the run here
    rows = {r["run"]: r for r in cluster.job_states("smoke", results)}
    assert rows["efficiency"]["state"] == "failed" and "ended without a result" in rows["efficiency"]["detail"]
