"""A dry run of a whole profile on the CPU: every run of the plan, at its real network sizes, on tiny data.

``reproduce --profile full --dry-run [--out DIR]`` writes tiny datasets in the real
on-disk formats and timm checkpoints in timm's formats under ``DIR`` (``tinydata``),
then executes every run of the plan through its papermill notebook exactly as
``reproduce`` does, with only these changes (``dry_run_params``): CPU in fp32, one
epoch of two training steps, tiny batches, a handful of test images, ImageNet and
CIFAR10-DVS at T=2, the bench at T=2 with one step, and the multi-process runs as
2 processes under torchrun (gloo). Everything else (architectures, input sizes,
optimisers, losses, the DDP code) is the full profile's. A finished run keeps its
model and results but not its epoch checkpoints (at the real sizes they would be
two thirds of the dry run's 7 GB). Finally the book is built from those results
(``HYBRIDKD_RESULTS=DIR/results``, ``HYBRIDKD_BOOK_PROFILE=full``).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybridkd_lib.book import tinydata
from hybridkd_lib.book.plan import CHECKPOINTS, Run, plan
from hybridkd_lib.book.reproduce import reproduce
from hybridkd_lib.base.results import REPO_ROOT

DRY_STEPS = 2
DRY_BATCH = {"imagenet": 4, "cifar10dvs": 4}  # 2 per process for the 2-process ImageNet runs
DRY_T = {"imagenet": 2, "cifar10dvs": 2}
DRY_NPROC = 2


def write_inputs(root: Path, log=print) -> dict:
    """Tiny datasets and the timm checkpoints the full plan reads; returns the checkpoint paths by key."""
    data = root / "data"
    t0 = time.perf_counter()
    tinydata.write_cifar(data, "cifar10", n_images=8)
    tinydata.write_cifar(data, "cifar100", n_images=8)
    tinydata.write_imagenet(data, per_class=4)
    tinydata.write_cifar10dvs(data, per_class=10, events=200)
    ckpt = root / "checkpoints"
    paths = {
        "resnet34": tinydata.write_timm_checkpoint("resnet34", ckpt / "resnet34.safetensors", "safetensors"),
        "resnet50": tinydata.write_timm_checkpoint("resnet50", ckpt / "resnet50_ddp.pth", "ddp"),
        "vit_imagenet": tinydata.write_timm_checkpoint("vit_small_patch16_224", ckpt / "vit_s16_imagenet.pth",
                                                       "timm_train"),
    }
    log(f"dry run: wrote tiny datasets and checkpoints under {root} in {time.perf_counter() - t0:.0f} s")
    return {CHECKPOINTS[k]: str(v) for k, v in paths.items()}


def dry_run_params(run: Run, data_root: Path, checkpoints: dict) -> Run:
    """``run`` as the dry run executes it (see the module docstring)."""
    p = {k: (checkpoints.get(v, v) if isinstance(v, str) else v) for k, v in run.params.items()}
    if "teacher_kw" in p:
        p["teacher_kw"] = {k: checkpoints.get(v, v) if isinstance(v, str) else v for k, v in p["teacher_kw"].items()}
    if "device" in p:
        p["device"] = "cpu"
    nproc = run.nproc
    if run.notebook in ("train_teacher", "train_student"):
        ds = p["dataset"]
        nproc = min(run.nproc, DRY_NPROC)
        p.update(epochs=1, max_steps_per_epoch=DRY_STEPS, data_root=str(data_root),
                 batch_size=DRY_BATCH.get(ds, 4), num_workers=1 if ds == "imagenet" else 0)
        if ds in DRY_T:
            p["T"] = DRY_T[ds]
        if ds in ("cifar10", "cifar100"):
            p["data_kw"] = dict(p.get("data_kw", {}), verify_md5=False)  # tiny files: not the release's md5
    elif run.notebook == "cam":
        p["n_images"] = 1
    elif run.notebook == "efficiency":
        p.update(Ts=[2], steps=1, batch_size=2)
    return dataclasses.replace(run, params=p, nproc=nproc)


def dry_run(profile: str = "full", out: str | Path | None = None, only=None, build_book: bool = True,
            log=print) -> dict:
    """Write the inputs, execute every run of ``profile`` on the CPU, build the book; returns
    ``reproduce``'s report plus ``root`` and ``book`` (the built HTML folder, or None)."""
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="hybridkd_dryrun_"))
    root.mkdir(parents=True, exist_ok=True)
    checkpoints = write_inputs(root, log)
    runs = [dry_run_params(r, root / "data", checkpoints) for r in plan(profile)]
    report = reproduce(profile, only=only, results_root=root / "results", runs=runs, log=log,
                       keep_checkpoints=False)
    report.update(root=str(root), book=None, processes={r.name: r.nproc for r in runs})
    if build_book and not report["failed"]:
        t0 = time.perf_counter()
        env = dict(os.environ, HYBRIDKD_RESULTS=str(root / "results"), HYBRIDKD_BOOK_PROFILE=profile)
        jb = Path(sys.executable).with_name("jupyter-book")
        p = subprocess.run([str(jb), "build", str(REPO_ROOT), "--path-output", str(root / "book")], env=env,
                           capture_output=True, text=True)
        (root / "book_build.log").write_text(p.stdout + p.stderr)
        report["book_warnings"] = [line for line in (p.stdout + p.stderr).splitlines()
                                   if "WARNING" in line and "[IPKernelApp]" not in line]
        if p.returncode != 0:
            report["failed"]["book"] = (p.stdout + p.stderr)[-2000:]
        else:
            report["book"] = str(root / "book" / "_build" / "html")
        report["seconds"]["book"] = round(time.perf_counter() - t0, 1)
        log(f"dry run: book built in {report['seconds']['book']:.0f} s -> {report['book']}")
    return report
