"""torchrun and DistributedDataParallel on the CPU (gloo): the same code path as 8 GPUs over NCCL."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from hybridkd_lib.base import checkpoint
from hybridkd_lib.training.config import TrainConfig
from hybridkd_lib.training.launch import launch
from hybridkd_lib.training.trainer import train

REPORT = Path(os.environ.get("HYBRIDKD_TEST_REPORT", "/tmp/hybridkd_test_report"))


def _cfg(out, method, **kw):
    base = dict(method=method, dataset="digits", data_kw={"image_size": 8}, student_kw={"width": 4},
                teacher="cifar_resnet18", teacher_kw={"width": 4}, T=2, epochs=3, batch_size=16,
                max_steps_per_epoch=2, lr=0.05, progress=False, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _weights(run_dir):
    state = checkpoint.load(Path(run_dir) / "model.pt")
    return {**state["model"], **{f"aligns.{k}": v for k, v in state.get("aligns", {}).items()}}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each method trained by 1 process (batch 16) and by 2 torchrun processes (global batch 16)."""
    tmp = tmp_path_factory.mktemp("ddp")
    quiet = lambda *_: None
    train(_cfg(tmp / "teacher", "ann"), log=quiet)
    out = {}
    for method in ("bptt", "ratebp", "hybrid"):
        kw = dict(teacher_ckpt=str(tmp / "teacher")) if method == "hybrid" else {}
        one = train(_cfg(tmp / f"{method}_1", method, **kw), log=quiet)
        two = launch(_cfg(tmp / f"{method}_2", method, **kw), nproc=2, log=quiet)
        out[method] = (tmp / f"{method}_1", tmp / f"{method}_2", one, two)
    return tmp, out


@pytest.mark.parametrize("method", ["bptt", "ratebp", "hybrid"])
def test_two_processes_equal_one_process_with_the_same_global_batch(runs, method):
    _, out = runs
    d1, d2, one, two = out[method]
    assert two["world_size"] == 2 and two["batch_size"] == 16 and two["batch_size_per_process"] == 8
    diff = _max_diff(_weights(d1), _weights(d2))
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / f"ddp_1v2_{method}.json").write_text(json.dumps({"method": method, "max_abs_weight_diff": diff}))
    print(f"{method}: max |w(1 process) - w(2 processes)| = {diff:.3g}")
    assert diff < 1e-4, diff
    # the (sharded, all-reduced) evaluation counts the whole test set on both
    assert abs(one["top1"] - two["top1"]) <= 100 / 450 + 1e-9


def test_two_process_run_killed_after_first_checkpoint_resumes_to_the_same_weights(runs):
    tmp, out = runs
    cfg = _cfg(tmp / "killed", "hybrid", teacher_ckpt=str(tmp / "teacher"))
    with open(tmp / "killed.json", "w") as f:
        json.dump(cfg.__dict__, f)
    first = Path(cfg.out) / "checkpoints" / "epoch_0000.pt"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "hybridkd_lib", "train", "--config", str(tmp / "killed.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in tree:  # torchrun and both workers (they run in process groups of their own), mid-run
        p.kill()
    proc.wait()
    assert first.exists() and not (Path(cfg.out) / "result.json").exists()
    logs = []
    launch(cfg, nproc=2, log=logs.append)
    assert any("resuming from" in line for line in logs), logs
    assert _max_diff(_weights(cfg.out), _weights(out["hybrid"][1])) == 0.0


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", "train", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), cwd=cwd)


def test_bad_distributed_input_stops_before_training(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "run", "ratebp", batch_size=15)
    with pytest.raises(ValueError, match=r"batch_size=15 \(the global batch\) does not divide across 2 processes"):
        launch(cfg, nproc=2)
    # a process started as one of several without torchrun's LOCAL_RANK
    p = _cli("--method", "ratebp", "--out", str(tmp_path / "run"), "--student-kw", '{"width": 4}',
             env={"WORLD_SIZE": "2", "RANK": "0"})
    assert p.returncode != 0
    assert "error: WORLD_SIZE=2 but LOCAL_RANK is not set: start several processes with torchrun" in p.stderr
    # more processes than GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"nproc=2 but 1 visible GPU\(s\) here"):
        launch(_cfg(tmp_path / "run", "ratebp", device="cuda"), nproc=2)
    assert not (tmp_path / "run").exists()


def test_teacher_checkpoint_of_another_architecture_or_class_count_named(tmp_path):
    from hybridkd_lib.book.tinydata import write_timm_checkpoint

    train(_cfg(tmp_path / "t4", "ann", epochs=1, max_steps_per_epoch=1), log=lambda *_: None)
    p = _cli("--method", "kd", "--teacher-ckpt", str(tmp_path / "t4"), "--teacher-kw", '{"width": 8}',
             "--student-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}', "--out", str(tmp_path / "a"))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "does not fit ResNet: encoder.0.module.weight has shape [4, 1, 3, 3] in the checkpoint, " \
           "the model expects [8, 1, 3, 3]" in p.stderr
    ckpt = write_timm_checkpoint("resnet34", tmp_path / "r34.safetensors")
    p = _cli("--method", "kd", "--teacher", "resnet34", "--teacher-ckpt", str(ckpt), "--student-kw", '{"width": 4}',
             "--data-kw", '{"image_size": 32, "channels": 3}', "--out", str(tmp_path / "b"))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "fc.weight has shape [1000, 512] in the checkpoint, the model expects [10, 512]" in p.stderr
    for d in ("a", "b"):
        assert not (tmp_path / d / "result.json").exists() and not (tmp_path / d / "checkpoints").exists()
