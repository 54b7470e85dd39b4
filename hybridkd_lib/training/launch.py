"""Starting a run from Python (the notebooks, ``reproduce``): in this process, or as several processes per
machine under ``torchrun`` (one or several machines), each running ``python -m hybridkd_lib train``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from hybridkd_lib.base import children, results
from hybridkd_lib.training.config import TrainConfig, validate
from hybridkd_lib.training.trainer import train


def launch(cfg: TrainConfig, nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None,
           log=print) -> dict:
    """Train ``cfg`` in this process (``nproc * nnodes == 1``) or as ``nproc`` processes per machine
    under ``torchrun`` (``python -m hybridkd_lib train --config ...``); returns the result.

    Several machines: run the same call on each, with ``nnodes`` and the ``rdzv_endpoint``
    (``host:port`` of one of them). ``batch_size`` stays the global batch."""
    for name, v in (("nproc", nproc), ("nnodes", nnodes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} not allowed; an integer >= 1")
    world = nproc * nnodes
    if world == 1:
        return train(cfg, log=log)
    validate(cfg, world)
    if torch.device(cfg.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"nproc={nproc} but {torch.cuda.device_count()} visible GPU(s) here: use at most "
                         f"{torch.cuda.device_count()} (reproduce --nproc N)")
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint='host:port' of the first machine")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="hybridkd_cfg_", delete=False) as f:
        json.dump(asdict(cfg), f)
    log(f"launching {nproc * nnodes} processes: torchrun --nproc-per-node {nproc} --nnodes {nnodes} ...")
    try:
        rc, tail = _run_logged(_torchrun_command(f.name, cfg, nproc, nnodes, rdzv_endpoint), log)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if rc != 0:
        errors = [l for l in tail if l.startswith("error:")]
        raise RuntimeError(errors[0] if errors else f"torchrun exited with status {rc}: " + " | ".join(tail[-5:]))
    res = results.read_result(cfg.out)
    if res is None:
        raise RuntimeError(f"torchrun finished without writing {Path(cfg.out) / 'result.json'}")
    return res


def _torchrun_command(config_file: str, cfg: TrainConfig, nproc: int, nnodes: int, rdzv_endpoint: str | None) -> list:
    rdzv = (["--standalone"] if nnodes == 1 else
            ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", Path(cfg.out).name])
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", str(nnodes),
            *rdzv, "-m", "hybridkd_lib", "train", "--config", config_file]


def _run_logged(cmd: list, log) -> tuple[int, list]:
    """Run ``cmd`` (it ends with this process; an interrupt here stops it), passing each output line to
    ``log``; its exit status and last 30 lines."""
    proc = children.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    tail = []
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-30:]
            log(line.rstrip())
        return proc.wait(), tail
    except BaseException:
        log(f"stopping torchrun (pid {proc.pid}) and its workers: {children.command_text(cmd)}")
        children.stop(proc, grace_s=30.0)
        raise
