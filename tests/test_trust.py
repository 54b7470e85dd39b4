"""Trust under faults: no child outlives its parent or runs unbounded, no command loses a run, no code is
read from a results folder, damaged metadata is named and never trusted, and bad input or a fault is one
line, not a traceback. The probe's case numbers (#N) are in the test names' docstrings."""
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hybridkd_lib.base import checkpoint, children
from hybridkd_lib.book import cluster, reproduce
from hybridkd_lib.book.plan import plan
from hybridkd_lib.base.results import REPO_ROOT
from processes import alive, cmdline

TINY = ["--student-kw", '{"width": 4}', "--teacher-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}',
        "--T", "2", "--batch-size", "32", "--max-steps-per-epoch", "2", "--no-progress"]


def _cli(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, timeout=600, **kw)


def _one_line(proc, fragment: str):
    """Exit status 2 and exactly one line on stderr, ``error: ...`` holding ``fragment``, no traceback."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


def _train(out, *extra, epochs=2):
    return _cli("train", "--method", "ratebp", "--epochs", str(epochs), "--out", str(out), *TINY, *extra)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _all_gone(procs, timeout=30):
    deadline = time.time() + timeout
    running = procs
    while time.time() < deadline:
        running = [p for p in procs if alive(p)]
        if not running:
            return []
        time.sleep(0.2)
    return [cmdline(p) for p in running]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "run"
    p = _train(out)
    assert p.returncode == 0, p.stderr
    return out


# ----------------------------------------------------------------------------- 2. nothing hangs unseen
def test_sigterm_of_train_prints_the_resume_line(tmp_path):
    """#50: SIGTERM (kill, a scheduler) stops a run as Ctrl-C does, with the same resume line."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hybridkd_lib", "train", "--method", "ratebp", "--epochs", "500",
                             "--out", str(out), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: checkpoint.written(out / "checkpoints") or proc.poll() is not None, 120, "a checkpoint")
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (f"interrupted: run the same command again to resume {out} "
                                            f"from its last checkpoint")


def test_sigterm_of_reproduce_leaves_no_orphan(tmp_path):
    """#49: the notebook kernel and the bench children it started end with ``reproduce``."""
    proc = subprocess.Popen([sys.executable, "-m", "hybridkd_lib", "reproduce", "--profile", "smoke", "--only",
                             "efficiency", "--results", str(tmp_path)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    me = psutil.Process(proc.pid)
    bench_child = lambda: [c for c in me.children(recursive=True) if "hybridkd_lib.tools.efficiency" in cmdline(c)]
    _wait_for(lambda: bench_child() or proc.poll() is not None, 300, "a bench child of the kernel")
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    descendants = me.children(recursive=True)
    assert len(descendants) >= 2   # the kernel and its bench child at least
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped efficiency (its notebook kernel" in out + err
    assert _all_gone(descendants) == []


def test_killing_the_parent_of_torchrun_ends_torchrun_and_its_workers(tmp_path):
    """``launch``'s torchrun (and so its workers) ends with the process that started it, even on SIGKILL."""
    script = (
        "from hybridkd_lib.training.config import TrainConfig; from hybridkd_lib.training.launch import launch; "
        f"launch(TrainConfig(method='ratebp', dataset='digits', data_kw={{'image_size': 8}}, student_kw={{'width': 4}}, "
        f"T=2, epochs=500, batch_size=16, progress=False, out={str(tmp_path / 'run')!r}), nproc=2, log=lambda *_: None)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    me = psutil.Process(proc.pid)
    workers = lambda: [c for c in me.children(recursive=True) if " train " in f" {cmdline(c)} "
                       and " --config " in f" {cmdline(c)} " and "torch.distributed.run" not in cmdline(c)]
    _wait_for(lambda: len(workers()) == 2 or proc.poll() is not None, 180, "two torchrun workers")
    assert proc.poll() is None
    descendants = me.children(recursive=True)
    proc.kill()
    proc.wait()
    assert _all_gone(descendants, timeout=60) == []


def test_a_bench_child_past_its_time_is_stopped_and_named():
    from hybridkd_lib.tools.efficiency import bench

    t0 = time.time()
    with pytest.raises(children.ChildTimeout, match=r"bench configuration ratebp T=1 ran past its 0.5 s limit and "
                                                    r"was stopped \(pid \d+: .*hybridkd_lib.tools.efficiency"):
        bench(["ratebp"], [1], student_kw={"width": 4}, batch_size=4, steps=1, warmup=0, log=lambda *_: None,
              timeout_s=0.5)
    assert time.time() - t0 < 30


# ----------------------------------------------------------------------------- 4. no command loses a run
def test_config_file_with_another_out_trains_there_and_overwrite_spares_the_files_folder(finished_run, tmp_path):
    """#71: ``--config F --out NEW --overwrite`` trains in NEW; the finished run named in F is untouched."""
    before = _files(finished_run)
    cfg = json.loads((finished_run / "result.json").read_text())
    config = tmp_path / "f.json"
    config.write_text(json.dumps({k: cfg[k] for k in ("method", "dataset", "student", "student_kw", "data_kw", "T",
                                                      "epochs", "batch_size", "max_steps_per_epoch", "out")}))
    new = tmp_path / "new"
    p = _cli("train", "--config", str(config), "--out", str(new), "--epochs", "1", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert _files(finished_run) == before
    assert json.loads((new / "result.json").read_text())["epochs"] == 1   # the command line wins


def test_retention_counts_only_this_runs_checkpoints(tmp_path):
    """#61: files someone put in checkpoints/ never push a real checkpoint out, and are never deleted."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("epoch_9998.pt", "epoch_9999.pt"):
        (out / "checkpoints" / name).write_bytes(b"not a checkpoint")
    p = _train(out, epochs=3)
    assert p.returncode == 0, p.stderr
    names = sorted(f.name for f in (out / "checkpoints").iterdir())
    assert names == ["epoch_0001.pt", "epoch_0002.pt", "epoch_9998.pt", "epoch_9999.pt", "index.json"]
    assert [c.name for c in checkpoint.written(out / "checkpoints")] == ["epoch_0001.pt", "epoch_0002.pt"]


def test_overwrite_removes_only_the_files_the_library_wrote(finished_run, tmp_path):
    """#77: a user's files in the run folder and in checkpoints/ survive ``--overwrite``."""
    out = tmp_path / "run"
    assert _train(out).returncode == 0
    (out / "checkpoints" / "notes.txt").write_text("mine")
    (out / "mine.txt").write_text("mine")
    p = _train(out, "--overwrite", "--seed", "3")
    assert p.returncode == 0, p.stderr
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine" and (out / "mine.txt").read_text() == "mine"
    assert json.loads((out / "result.json").read_text())["seed"] == 3


def test_a_finished_run_whose_model_was_deleted_gets_it_back(finished_run):
    """#31: the last epoch's checkpoint holds the final weights; the result is kept."""
    model, result = (finished_run / "model.pt").read_bytes(), (finished_run / "result.json").read_bytes()
    (finished_run / "model.pt").unlink()
    p = _train(finished_run)
    assert p.returncode == 0, p.stderr
    assert "restored" in p.stdout and (finished_run / "model.pt").read_bytes() == model
    assert (finished_run / "result.json").read_bytes() == result


def test_a_run_refused_during_set_up_leaves_its_folder_free(tmp_path):
    """#46: the settings are recorded only once the set-up succeeded."""
    out = tmp_path / "run"
    _one_line(_train(out, "--batch-size", "4096"), "is larger than the")
    assert not (out / "settings.json").exists()
    p = _train(out, epochs=1)
    assert p.returncode == 0, p.stderr


# ----------------------------------------------------------------------------- 5. no code from a results folder
class _Marker:
    """Unpickling this creates a file: the proof that a pickle was read."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_status_never_unpickles_and_names_a_crafted_jobs_file(tmp_path):
    """#70: a jobs.json pointing at a pickle elsewhere (or with a foreign job id) runs no code."""
    profile_dir = tmp_path / "smoke"
    evil = tmp_path / "evil"
    marker = tmp_path / "PWNED"
    for folder in (evil / "4242", profile_dir / cluster.JOB_DIR / "4242"):
        folder.mkdir(parents=True)
        (folder / "4242_0_result.pkl").write_bytes(pickle.dumps(("success", _Marker(str(marker)))))
    jobs = {"teacher_r18": {"run": "teacher_r18", "launcher": "local-jobs", "job_id": "4242", "folder": str(evil)},
            "teacher_r34": {"run": "teacher_r34", "launcher": "local-jobs", "job_id": "../../x",
                            "folder": str(profile_dir / cluster.JOB_DIR)},
            "teacher_vit": {"run": "teacher_vit", "launcher": "local-jobs", "job_id": "4242",   # ours, spelt otherwise
                            "folder": os.path.join(str(profile_dir), ".", cluster.JOB_DIR)}}
    (profile_dir / "jobs.json").write_text(json.dumps(jobs))
    p = _cli("reproduce", "--profile", "smoke", "--status", "--results", str(tmp_path))
    assert not marker.exists(), "a pickle was unpickled"
    assert "ignored the entry 'teacher_r18'" in p.stdout and "ignored the entry 'teacher_r34'" in p.stdout
    rows = {r["run"]: r for r in cluster.job_states("smoke", tmp_path)}
    assert rows["teacher_r18"]["state"] == rows["teacher_r34"]["state"] == "not submitted"
    assert rows["teacher_vit"]["state"] == "failed"   # our folder, no such process, no state file: never read
    assert not marker.exists()


# ----------------------------------------------------------------------------- 6. corrupt metadata
def _smoke_run_folder(tmp_path, name="teacher_r18"):
    runs = plan("smoke")
    key = reproduce.run_keys(runs, "smoke")[name]
    d = tmp_path / "smoke" / name
    d.mkdir(parents=True)
    (d / ".run_key").write_text(json.dumps(key))
    (d / "result.json").write_text(json.dumps({"top1": 90.0}))
    checkpoint.atomic_save({"arch": "cifar_resnet18", "model_kw": {}, "num_classes": 10, "model": {}}, d / "model.pt")
    return next(r for r in runs if r.name == name), key, d


def test_a_truncated_result_makes_its_run_stale(tmp_path):
    """#52."""
    run, key, d = _smoke_run_folder(tmp_path)
    assert reproduce.status(run, key, tmp_path / "smoke")[0] == "up to date"
    (d / "result.json").write_text('{"top1": 9')
    assert reproduce.status(run, key, tmp_path / "smoke") == ("new", "its result.json is unreadable: runs again")


def test_a_damaged_run_key_is_one_line_naming_it_and_the_model_stays(tmp_path):
    """#54."""
    _, _, d = _smoke_run_folder(tmp_path)
    (d / ".run_key").write_bytes(b"\xff\xfe garbage")
    p = _cli("reproduce", "--profile", "smoke", "--dry-plan", "--results", str(tmp_path))
    _one_line(p, f"run key {d / '.run_key'} is unreadable")
    assert "delete that file" in p.stderr and checkpoint.load_model_file(d / "model.pt")["arch"] == "cifar_resnet18"


def test_a_damaged_settings_file_is_one_line_and_the_run_comes_back_without_retraining(finished_run):
    """#53: named with the way back; deleting it re-reads the settings from the result (model kept)."""
    model = (finished_run / "model.pt").read_bytes()
    (finished_run / "settings.json").write_text('{"hash": "ab')
    p = _train(finished_run)
    _one_line(p, f"settings file {finished_run / 'settings.json'} is unreadable")
    assert "delete it and run the same command again" in p.stderr
    (finished_run / "settings.json").unlink()
    p = _train(finished_run)
    assert p.returncode == 0 and "already finished with these settings" in p.stdout, p.stderr
    assert (finished_run / "model.pt").read_bytes() == model and (finished_run / "settings.json").is_file()


def test_config_file_errors_name_the_key_or_the_file(tmp_path):
    """#72 a misspelt key, #73 a JSON error."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "ratebp", "epoch": 3}))
    _one_line(_cli("train", "--config", str(bad), "--out", str(tmp_path / "x")),
              f"config file {bad}: unknown setting(s) ['epoch']; valid: method,")
    bad.write_text('{"method": ')
    _one_line(_cli("train", "--config", str(bad), "--out", str(tmp_path / "x")), f"config file {bad} is unreadable")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- 7. one line, not a traceback
def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_write_that_fails_names_the_file_and_keeps_the_old_one(tmp_path):
    """#56, #57: a checkpoint that does not fit (here: a file size limit, the same failed write as a full
    disk) is one line naming the path and the free space, and no half-written file is left."""
    out = tmp_path / "run"
    p = _cli("train", "--method", "ratebp", "--epochs", "1", "--out", str(out), *TINY,
             preexec_fn=_file_size_limit(32 * 1024))
    _one_line(p, f"could not write {out / 'checkpoints' / 'epoch_0000.pt'}")
    assert "MB free on that disk" in p.stderr
    assert not [f for f in (out / "checkpoints").iterdir() if f.name.endswith(".tmp")]


def test_a_bench_child_out_of_memory_is_one_line():
    """#64."""
    _one_line(_cli("bench", "--methods", "ratebp", "--T", "1", "--batch-size", "100000", "--input-size", "1024",
                   "--steps", "1", "--warmup", "0"), "bench ratebp T=1 ran out of memory")


def test_an_ann_as_the_bench_student_is_one_line():
    """#65."""
    _one_line(_cli("bench", "--student", "cifar_resnet18", "--T", "1"), "unknown student model 'cifar_resnet18'")


def test_a_read_only_results_folder_is_one_line(tmp_path):
    """#81 (a folder of the read-only sysfs stands for it: root writes through a chmod)."""
    target = Path("/sys/hybridkd_results")
    if os.access("/sys", os.W_OK) and not subprocess.run(["mkdir", str(target)], capture_output=True).returncode:
        target.rmdir()
        pytest.skip("/sys is writable here")
    _one_line(_cli("reproduce", "--profile", "smoke", "--only", "teacher_r18", "--results", str(target)),
              f"the results folder='{target / 'smoke'}' cannot be written")


@pytest.mark.parametrize("kw", ['{"width": 0}', '{"width": -2}'])
def test_a_width_below_one_is_one_line(tmp_path, kw):
    """#84."""
    p = _cli("train", "--method", "ratebp", "--student-kw", kw, "--out", str(tmp_path / "run"))
    _one_line(p, f"student_kw: width={json.loads(kw)['width']} not allowed for spiking_resnet18")
    assert not (tmp_path / "run").exists()


def test_a_closed_stdout_is_no_traceback(tmp_path):
    """#86: a reader that went away (``| head``) and a closed stdout (``>&-``)."""
    proc = subprocess.Popen([sys.executable, "-m", "hybridkd_lib", "datasets"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and "Traceback" not in err, err
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "train", "--method", "ratebp", "--epochs", "1",
                        "--out", str(out), *TINY], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: os.close(1), timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert (out / "result.json").is_file()


def test_the_full_profile_without_gpu_or_data_is_refused_in_seconds(tmp_path):
    """#39: one line naming what is missing, before any notebook starts."""
    import torch

    from hybridkd_lib.data import datasets

    if torch.cuda.is_available() and datasets.is_present("cifar10"):
        pytest.skip("this machine has a GPU and the data")
    t0 = time.time()
    p = _cli("reproduce", "--profile", "full", "--results", str(tmp_path))
    _one_line(p, "before any run starts:")
    assert ("GPU(s) each and this machine has 0" in p.stderr) != torch.cuda.is_available()
    assert (f"dataset cifar10 (expected at {datasets.expected_path('cifar10')}) is missing" in p.stderr) != \
        datasets.is_present("cifar10")
    assert time.time() - t0 < 60 and not (tmp_path / "full" / ".staging").exists()


def test_every_test_is_bounded_and_a_hanging_one_is_stopped(tmp_path):
    """pytest-timeout bounds the suite (pyproject.toml); a test stuck past its bound is ended, not waited for."""
    import tomllib

    ini = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["timeout"] > 0 and ini["timeout_method"] == "thread"
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(600)\n")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "2",
                        str(tmp_path / "test_hang.py")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "Timeout" in p.stdout + p.stderr and time.time() - t0 < 60
