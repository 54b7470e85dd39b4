"""A result always belongs to its settings, and every bad input stops with one sentence before work starts."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm
import pytest
import torch

from hybridkd_lib.base.results import REPO_ROOT

TINY = ["--student-kw", '{"width": 4}', "--teacher-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}',
        "--T", "2", "--batch-size", "32", "--max-steps-per-epoch", "2", "--no-progress"]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", *args], capture_output=True, text=True, cwd=cwd)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ratebp"
    p = _cli("train", "--method", "ratebp", "--epochs", "2", "--out", str(out), *TINY)
    assert p.returncode == 0, p.stderr
    return out


def test_rerun_of_a_finished_run_says_where_the_result_is_and_touches_nothing(finished):
    before = _files(finished)
    p = _cli("train", "--method", "ratebp", "--epochs", "2", "--out", str(finished), *TINY)
    assert p.returncode == 0, p.stderr
    assert f"already finished with these settings: {finished / 'result.json'} (nothing was changed)" in p.stdout
    assert _files(finished) == before


@pytest.mark.parametrize("change, message", [
    (["--lr", "0.05"], "lr: 0.1 there, 0.05 now"),
    (["--seed", "1"], "seed: 0 there, 1 now"),
    (["--epochs", "3"], "epochs: 2 there, 3 now"),
])
def test_rerun_with_other_settings_stops_naming_them(finished, change, message):
    before = _files(finished)
    args = ["train", "--method", "ratebp", "--out", str(finished), *TINY]
    p = _cli(*(args + (["--epochs", "2"] if "--epochs" not in change else []) + change))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"out={str(finished)!r} holds a run with other settings ({message})" in p.stderr
    assert "choose another --out to keep it, or pass --overwrite to start over there" in p.stderr
    assert _files(finished) == before


def test_interrupted_run_with_other_settings_stops_and_overwrite_starts_over(tmp_path):
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.trainer import train

    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    cfg = dict(method="ratebp", student_kw={"width": 4}, data_kw={"image_size": 8}, T=2, batch_size=32,
               max_steps_per_epoch=2, epochs=3, progress=False, out=str(tmp_path / "run"))
    with pytest.raises(Killed):
        train(TrainConfig(**cfg), on_epoch_end=kill, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"holds a run with other settings \(lr: 0.1 there, 0.2 now\)"):
        train(TrainConfig(**dict(cfg, lr=0.2)), log=lambda *_: None)
    logs = []
    res = train(TrainConfig(**dict(cfg, lr=0.2)), log=logs.append, overwrite=True)
    assert res["lr"] == 0.2 and not any("resuming" in line for line in logs)
    recorded = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert recorded["settings"]["lr"] == 0.2


@pytest.mark.parametrize("args, message", [
    (["--student-kw", '{"widht": 4}'], "student_kw key(s) ['widht'] are not options of spiking_resnet18; "
                                        "options: width, in_chans, T, neuron_cfg"),
    (["--student-kw", '{"width": "4"}'], "student_kw={'width': '4'} not accepted by spiking_resnet18"),
    (["--data-kw", '{"size": 8}'], "data_kw key(s) ['size'] are not options of dataset 'digits'; options: "
                                   "image_size, channels, test_fraction, seed, augment"),
    (["--data-kw", '{"image_size": "8"}'], "data_kw image_size='8' not allowed for dataset 'digits': expected int"),
    (["--loss", '{"kd_weight": 1}'], "unknown loss option(s) ['kd_weight']; valid: ce, kd, hybrid_ce"),
    (["--loss", '{"temperature": "4"}'], "loss option temperature='4' not allowed: expected a number > 0"),
    (["--max-steps-per-epoch", "0"], "max_steps_per_epoch=0 not allowed; max_steps_per_epoch must be > 0"),
    (["--lr", "-1"], "lr=-1.0 not allowed; lr must be > 0"),
    (["--batch-size", "0"], "batch_size=0 not allowed; batch_size must be > 0"),
])
def test_bad_options_are_named_before_any_work(tmp_path, args, message):
    out = tmp_path / "run"
    base = ["train", "--method", "ratebp", "--out", str(out), "--epochs", "1", "--data-kw", '{"image_size": 8}',
            "--student-kw", '{"width": 4}']
    p = _cli(*base, *args)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert message in p.stderr, p.stderr
    assert not out.exists()


def test_out_that_is_a_file_or_cannot_be_made_is_named(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    p = _cli("train", "--method", "ratebp", "--out", str(f), *TINY)
    assert p.returncode == 2 and f"out={str(f)!r} is a file; expected a folder" in p.stderr
    p = _cli("train", "--method", "ratebp", "--out", str(f / "run"), *TINY)
    assert p.returncode == 2 and f"out={str(f / 'run')!r} cannot be written" in p.stderr


def test_files_that_are_no_checkpoints(tmp_path):
    torch.save({"weights": [1, 2]}, tmp_path / "teacher.pt")
    p = _cli("train", "--method", "kd", "--teacher-ckpt", str(tmp_path / "teacher.pt"), "--out",
             str(tmp_path / "a"), *TINY)
    assert p.returncode == 2 and "holds no state dict of tensors" in p.stderr
    # a loadable file in a run's checkpoints/ that is not an epoch checkpoint: named, and skipped
    from hybridkd_lib.base import checkpoint
    (tmp_path / "c").mkdir()
    torch.save({"epoch": 0}, tmp_path / "c" / "epoch_0000.pt")
    logs = []
    with pytest.warns(UserWarning, match="not an epoch checkpoint of this library"):
        assert checkpoint.load_latest(tmp_path / "c", log=logs.append) == (None, None)


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])   # #20: a batch, and the meta file
def test_truncated_cifar_batch_is_named(tmp_path, name):
    from hybridkd_lib.data import datasets
    from hybridkd_lib.book import tinydata

    tinydata.write_cifar(tmp_path, "cifar10", n_images=8)
    bad = tmp_path / "cifar-10-batches-py" / name
    bad.write_bytes(bad.read_bytes()[:min(100, bad.stat().st_size // 2)])
    with pytest.raises(ValueError, match=f"cifar10: {bad} is corrupt or truncated"):
        datasets.get_datasets("cifar10", root=tmp_path, verify_md5=False)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def test_ctrl_c_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hybridkd_lib", "train", "--method", "ratebp", "--epochs", "500",
                             "--out", str(out), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's Ctrl-C, whatever SIGINT disposition the test process has inherited
                            preexec_fn=_default_sigint)
    deadline = time.time() + 120
    # any checkpoint: only the last two are kept, so a fixed epoch's file can come and go between two looks
    while not list((out / "checkpoints").glob("epoch_*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (f"interrupted: run the same command again to resume {out} "
                                            f"from its last checkpoint")


def test_bench_checks_its_input_first_and_keeps_every_measured_record(tmp_path, monkeypatch):
    p = _cli("bench", "--T", "0")
    assert p.returncode == 2 and "T=[0] not allowed; integers >= 1" in p.stderr
    p = _cli("bench", "--out", str(tmp_path))
    assert p.returncode == 2 and f"--out {str(tmp_path)!r} is a folder; expected a JSON file path" in p.stderr
    from hybridkd_lib.tools import efficiency

    calls = []

    def flaky(**spec):
        calls.append(spec)
        if len(calls) == 2:
            raise RuntimeError("the second configuration broke")
        return {"method": spec["method"], "T": spec["T"], "step_time_s": 1.0, "peak_mem_mb": 1.0,
                "images_per_s": 1.0}

    monkeypatch.setattr(efficiency, "run_one", flaky)
    out = tmp_path / "b.json"
    with pytest.raises(RuntimeError, match="second configuration"):
        efficiency.bench(["ratebp", "hybrid"], [1], out=out, fresh_process=False, log=lambda *_: None)
    assert [r["method"] for r in json.loads(out.read_text())["records"]] == ["ratebp"]


@pytest.mark.parametrize("params, message", [
    ({"student_kw": '{"width": 4}'}, "student_kw='{\"width\": 4}' not allowed: expected dict"),
    ({"lr": "abc"}, "lr='abc' not allowed: expected float"),
])
def test_papermill_string_parameters_fail_in_the_validation_cell(tmp_path, params, message):
    out = tmp_path / "bad.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(REPO_ROOT / "notebooks" / "train_student.ipynb"), str(out),
                            parameters={"config": dict(params, method="ratebp", out=str(tmp_path / "run"))},
                            kernel_name="hybridkd", progress_bar=False, cwd=str(REPO_ROOT))
    assert message in str(info.value)
    cells = json.loads(out.read_text())["cells"]
    failed = [i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    injected = [c["metadata"].get("tags", []) for c in cells].index(["injected-parameters"])
    validation = next(i for i in range(injected + 1, len(cells)) if cells[i]["cell_type"] == "code")
    assert failed == [validation]
    assert not (tmp_path / "run").exists()


def test_the_run_cache_key_covers_every_file_of_the_method_and_none_of_the_book():
    """#22: the key covers every code file a run can execute (the package outside ``book/``), and not the
    book's machinery (plan, reproduce, cluster, dry run, report, reported.json)."""
    from hybridkd_lib.book import reproduce

    names = {str(p.relative_to(reproduce.PACKAGE)) for p in reproduce.code_files()}
    assert {"models/registry.py", "base/results.py", "training/trainer.py", "method/losses.py", "training/learner.py",
            "method/methods.py", "training/step.py"} <= names
    every = {str(p.relative_to(reproduce.PACKAGE)) for p in reproduce.PACKAGE.rglob("*.py")
             if "__pycache__" not in p.parts}
    assert every - names == {n for n in every if n.startswith("book/")}
    assert not any(n.startswith("book/") for n in names)
