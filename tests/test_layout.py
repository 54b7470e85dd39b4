"""The training layout on the CPU: no layout the oneDNN kernels get wrong (uxlfoundation/oneDNN#6035:
strided 1x1 backward-weights on channels_last input with fewer input channels than the ISA's block
writes past its workspace: wrong gradients, hangs, heap corruption). Every check runs in a child
process with a time limit, with 1 and 2 threads, on this machine's ISA and with oneDNN held to AVX2
(``ONEDNN_MAX_CPU_ISA``), where the bug shows on every machine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridkd_lib.training import speed
from hybridkd_lib.models import create_model

HERE = Path(__file__).parent
ISAS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}


def _child(cmd, threads, isa, timeout, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **ISAS[isa])
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish in {timeout} s ({threads} threads, {isa})")


def test_the_layout_avoids_strided_1x1_convs_with_few_input_channels():
    with torch.device("meta"):
        small = create_model("spiking_resnet18", width=4, T=2)
        full = create_model("spiking_resnet18", T=2)
    assert speed.unsafe_channels_last_convs(small) == ["stages.1.0.shortcut.0.module", "stages.2.0.shortcut.0.module"]
    assert speed.layout(small, "cpu") == torch.contiguous_format
    assert speed.unsafe_channels_last_convs(full) == [] and speed.layout(full, "cpu") == torch.channels_last
    assert speed.layout(small, "cuda") == torch.channels_last   # cuDNN has no such bug


@pytest.mark.parametrize("isa", sorted(ISAS))
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradients_of_every_student_match_float64(threads, isa):
    """One RateBP and one BPTT step of every registered student at its small test width (and ResNet-18 at
    width 4) in the trainer's layout: every weight gradient within 1e-4 (relative) of float64's."""
    proc = _child([sys.executable, str(HERE / "layout_gradcheck.py")], threads, isa, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["threads"] == threads
    for case, r in report["errors"].items():
        print(f"{isa} {threads} threads {case}: {r}")
        assert r["error"] is not None, f"{case}: every seed flipped a spike between float32 and float64"
        assert r["error"] <= 1e-4, (case, r)


@pytest.mark.parametrize("threads", [1, 2])
def test_two_identical_width_4_runs_give_byte_identical_models(tmp_path, threads):
    """The smoke profile's size, as ``train`` runs it, with oneDNN held to AVX2."""
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        proc = _child([sys.executable, "-m", "hybridkd_lib", "train", "--method", "ratebp", "--dataset", "digits",
                       "--data-kw", '{"image_size": 16}', "--student-kw", '{"width": 4}', "--T", "2", "--epochs", "1",
                       "--batch-size", "32", "--max-steps-per-epoch", "4", "--no-progress", "--out", str(out)],
                      threads, "avx2", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append((out / "model.pt").read_bytes())
    assert outs[0] == outs[1]


def test_a_width_4_torchrun_run_finishes_with_avx2_kernels(tmp_path):
    """Every torchrun worker runs with one thread (OMP_NUM_THREADS=1), where the bug corrupted the heap."""
    out = tmp_path / "run"
    proc = _child([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m",
                   "hybridkd_lib", "train", "--method", "ratebp", "--dataset", "digits", "--data-kw",
                   '{"image_size": 16}', "--student-kw", '{"width": 4}', "--T", "2", "--epochs", "1", "--batch-size",
                   "32", "--max-steps-per-epoch", "4", "--no-progress", "--out", str(out)], 1, "avx2", timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert json.loads((out / "result.json").read_text())["world_size"] == 2
