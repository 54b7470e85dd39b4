"""Trust in the files a run needs (#38, items 1, 3, 4 and Ctrl-C on ``reproduce``): no export writes over a file
the library needs, a damaged model or checkpoint is named in one line (never with advice to load it unsafely) and
a damaged model is restored or rebuilt, an export meets a full disk with one line and no temporary file, and
Ctrl-C on ``reproduce`` prints only the clean message. Each case as a new user meets it, on a tiny digits run."""
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from hybridkd_lib.base import checkpoint
from hybridkd_lib.base.results import REPO_ROOT, UnreadableFile
from hybridkd_lib.book import reproduce
from hybridkd_lib.book.plan import plan
from hybridkd_lib.tools import nirexport
from processes import alive, cmdline

TINY = ["--student-kw", '{"width": 4}', "--teacher-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}',
        "--T", "2", "--batch-size", "32", "--max-steps-per-epoch", "2", "--no-progress"]
DAMAGES = {"random bytes": lambda data: os.urandom(len(data)), "truncated": lambda data: data[:len(data) // 2]}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600, **kw)


def _one_line(proc, fragment: str):
    """Exit status 2 and exactly one line on stderr, ``error: ...`` holding ``fragment``, no traceback and no
    advice to load a file unsafely."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "weights_only" not in proc.stderr


def _train(out, *extra, epochs=2):
    return _cli("train", "--method", "ratebp", "--epochs", str(epochs), "--out", str(out), *TINY, *extra)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust_files") / "run"
    p = _train(out)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run that a test may damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# ----------------------------------------------------------------------------- 1. no export over a needed file
def test_export_never_writes_over_a_file_the_library_needs(run_copy, tmp_path):
    """#38.1: ``export --to RUN/model.pt`` used to replace the trained student and say ``wrote``."""
    before = _files(run_copy)
    p = _cli("export", "--run", str(run_copy), "--to", str(run_copy / "model.pt"))
    _one_line(p, f"cannot export to {run_copy / 'model.pt'}: it is the run's trained model")
    assert "which the library needs; choose another file" in p.stderr
    for name, what in [("result.json", "the run's result"), ("settings.json", "the run's settings"),
                       ("metrics.csv", "the run's metrics"),
                       ("checkpoints/epoch_0001.pt", "a file of the run's checkpoints"),
                       ("checkpoints/index.json", "the index of the run's checkpoints")]:
        with pytest.raises(ValueError, match=re.escape(f"cannot export to {run_copy / name}: it is {what}")):
            nirexport.export_run(run_copy, run_copy / name)
    assert _files(run_copy) == before
    # a reproduced run's files (its .run_key), an existing file that is no NIR file, a folder
    done = tmp_path / "results" / "quick" / "cam"
    done.mkdir(parents=True)
    (done / ".run_key").write_text("{}")
    (done / "cam.npz").write_bytes(b"maps")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for target, fragment in [(done / "cam.npz", "that reproduce wrote"), (notes, "is not a NIR (HDF5) file"),
                             (tmp_path, "it is a folder")]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            nirexport.check_target(target)
    assert notes.read_text() == "mine" and (done / "cam.npz").read_bytes() == b"maps"


def test_a_deleted_model_cannot_be_replaced_by_an_export_and_an_earlier_export_can_be(run_copy):
    (run_copy / "model.pt").unlink()
    with pytest.raises(ValueError, match="it is the run's trained model"):
        nirexport.check_target(run_copy / "model.pt")
    own = run_copy / "student.nir"   # the user's own export in the run folder: written again
    own.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 8)
    assert nirexport.check_target(own) == own


# ----------------------------------------------------------------------------- 2. dt (finite, > 0) for every caller
def test_export_refuses_a_timestep_that_is_not_a_finite_positive_number(finished_run, tmp_path):
    """#38: ``export --dt nan`` wrote a graph whose every LIF had NaN time constants and said ``wrote``."""
    p = _cli("export", "--run", str(finished_run), "--to", str(tmp_path / "x.nir"), "--dt", "nan")
    _one_line(p, "dt=nan")
    for dt in (float("nan"), float("inf"), -float("inf"), 0, -1e-4, True, "1e-4"):
        with pytest.raises(ValueError, match="not allowed; the timestep is a finite number of seconds > 0"):
            nirexport.export_run(finished_run, tmp_path / "x.nir", dt=dt)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 3. a full disk during export
def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_export_to_a_full_disk_is_one_line_and_leaves_no_temporary_file(finished_run, tmp_path):
    """#38.3: a full disk crashed the export (segmentation fault, 693 lines of h5py) and left a temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(2):
        p = _cli("export", "--run", str(finished_run), "--to", str(out / "s.nir"), "--soft-reset", "exact",
                 preexec_fn=_file_size_limit(32 * 1024))
        _one_line(p, f"could not write {out / 's.nir'}: File too large")
        assert "MB free on that disk" in p.stderr
        assert list(out.iterdir()) == []


def test_a_full_disk_in_the_export_writer_keeps_the_old_file_and_no_temporary_one(finished_run, tmp_path,
                                                                                    monkeypatch):
    model, _ = nirexport.load_student(finished_run)
    graph = nirexport.to_nir(model, (1, 8, 8), soft_reset="exact")
    target = tmp_path / "s.nir"
    nirexport.write(graph, target)
    old = target.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match=re.escape(f"could not write {target}: No space left on device (") + r"\d+ MB free"):
        nirexport.write(graph, target)
    monkeypatch.undo()
    assert target.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["s.nir"]


# ----------------------------------------------------------------------------- 4. damaged models and checkpoints
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_exporting_a_damaged_model_is_one_line_naming_it(run_copy, tmp_path, damage):
    """#38.4: random bytes gave a 29-line traceback ending with advice to load with ``weights_only=False``."""
    model = run_copy / "model.pt"
    model.write_bytes(DAMAGES[damage](model.read_bytes()))
    p = _cli("export", "--run", str(run_copy), "--to", str(tmp_path / "s.nir"))
    _one_line(p, f"model file {model} is unreadable (")
    assert "run that run's `train` command again to restore it" in p.stderr
    assert not (tmp_path / "s.nir").exists()


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_finished_run_whose_model_is_damaged_gets_it_back(run_copy, damage):
    """#38.1: a truncated ``model.pt`` counted as finished; it is restored as a deleted one is."""
    model, result = (run_copy / "model.pt").read_bytes(), (run_copy / "result.json").read_bytes()
    (run_copy / "model.pt").write_bytes(DAMAGES[damage](model))
    p = _train(run_copy)
    assert p.returncode == 0, p.stderr
    assert "restored" in p.stdout and (run_copy / "model.pt").read_bytes() == model
    assert (run_copy / "result.json").read_bytes() == result


def test_a_damaged_model_without_its_last_checkpoint_is_refused_clearly(run_copy):
    model = run_copy / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    (run_copy / "checkpoints" / "epoch_0001.pt").unlink()
    damaged = model.read_bytes()
    p = _train(run_copy)
    _one_line(p, f"model file {model} is unreadable (truncated or damaged: its zip archive cannot be read), and no "
                 f"checkpoint of the last epoch is left to restore it from; pass --overwrite")
    assert model.read_bytes() == damaged


class _Marker:
    """Unpickling this creates a file: the proof that a pickle was read."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_damaged_or_crafted_checkpoint_is_named_in_one_line_and_never_unpickled(finished_run, tmp_path):
    good = (finished_run / "checkpoints" / "epoch_0001.pt").read_bytes()
    marker = tmp_path / "PWNED"
    cases = {"random.pt": (os.urandom(4096), "not a PyTorch zip file"),
             "truncated.pt": (good[:len(good) // 3], "truncated or damaged"),
             "empty.pt": (b"", "the file is empty")}
    for name, (data, why) in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"epoch": 0, "x": _Marker(str(marker))}, tmp_path / "crafted.pt")
    cases["crafted.pt"] = (None, "holds objects other than tensors, numbers and strings, which are never loaded")
    for name, (_, why) in cases.items():
        with pytest.raises(UnreadableFile) as info:
            checkpoint.load(tmp_path / name)
        text = str(info.value)
        assert text.startswith(f"checkpoint {tmp_path / name} is unreadable (") and why in text, text
        assert "\n" not in text and "weights_only" not in text
    assert not marker.exists(), "a pickle was unpickled"


def test_a_resumed_run_names_its_damaged_checkpoint_and_resumes_from_the_one_before(run_copy):
    for name in ("result.json", "model.pt"):   # the run was stopped before its end
        (run_copy / name).unlink()
    newest = run_copy / "checkpoints" / "epoch_0001.pt"
    newest.write_bytes(os.urandom(2000))
    p = _train(run_copy)
    assert p.returncode == 0, p.stderr
    assert (f"checkpoint {newest} is unreadable (not a PyTorch zip file: random bytes or another format); trying the "
            f"previous one") in p.stdout
    assert "resuming from" in p.stdout and "epoch_0000.pt" in p.stdout and "Traceback" not in p.stderr
    assert checkpoint.load_model_file(run_copy / "model.pt")["arch"]


def test_reproduce_rebuilds_a_run_whose_model_is_damaged(finished_run, tmp_path):
    """#38.1: ``reproduce --dry-plan`` said "up to date" for a run with a truncated ``model.pt``."""
    runs = plan("smoke")
    run = next(r for r in runs if r.name == "teacher_r18")
    key = reproduce.run_keys(runs, "smoke")[run.name]
    d = tmp_path / "smoke" / run.name
    d.mkdir(parents=True)
    (d / ".run_key").write_text(json.dumps(key))
    (d / "result.json").write_text(json.dumps({"top1": 90.0}))
    shutil.copy(finished_run / "model.pt", d / "model.pt")
    assert reproduce.status(run, key, tmp_path / "smoke") == ("up to date", "")
    (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:5000])
    state, why = reproduce.status(run, key, tmp_path / "smoke")
    assert state == "files damaged", (state, why)
    assert why == f"model file {d / 'model.pt'} is unreadable (truncated or damaged: its zip archive cannot be " \
                  f"read): runs again"
    p = _cli("reproduce", "--profile", "smoke", "--dry-plan", "--results", str(tmp_path))
    assert p.returncode == 0, p.stderr
    line = next(line for line in p.stdout.splitlines() if line.startswith("teacher_r18 "))
    assert "files damaged" in line and "runs again" in line


# ----------------------------------------------------------------------------- 6. Ctrl-C on reproduce
def test_ctrl_c_on_reproduce_prints_only_the_clean_message(tmp_path):
    """#38.6: Ctrl-C printed the notebook kernel's 20-line ZMQ traceback before the clean message. The terminal
    sends SIGINT to the whole foreground process group: ``reproduce``, its kernel and the kernel's children."""
    proc = subprocess.Popen([sys.executable, "-m", "hybridkd_lib", "reproduce", "--profile", "smoke", "--only",
                             "efficiency", "--results", str(tmp_path)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    me = psutil.Process(proc.pid)
    bench_child = lambda: [c for c in me.children(recursive=True) if "hybridkd_lib.tools.efficiency" in cmdline(c)]
    deadline = time.time() + 300
    while not (bench_child() or proc.poll() is not None) and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and bench_child(), "the kernel's bench child never started"
    descendants = me.children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "ZMQError" not in err and "IPKernelApp" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted: run the same command again: finished runs are kept"
    assert "stopped efficiency (its notebook kernel" in out + err
    assert (tmp_path / "smoke" / ".staging" / "efficiency" / reproduce.KERNEL_LOG).is_file()
    deadline = time.time() + 30
    while any(alive(c) for c in descendants) and time.time() < deadline:
        time.sleep(0.2)
    assert [cmdline(c) for c in descendants if alive(c)] == []
