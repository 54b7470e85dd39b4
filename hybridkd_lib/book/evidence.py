"""The committed records of a measured profile: what ``reproduce --profile fashion`` writes under
``book/data/fashion/`` and the book reads where ``results/fashion`` is absent.

One record per run of the plan: its settings (the plan's parameters), seed, final and best top-1, teacher and
hybrid top-1, convergence, spike costs, commit, machine; the file also names the command and the machine.
``stale_runs`` compares the file's settings with today's plan (stale evidence is caught, not shown).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

from hybridkd_lib.book.plan import Run, plan
from hybridkd_lib.base.results import REPO_ROOT, default_results_root, read_result, write_json

EVIDENCE_DIR = REPO_ROOT / "book" / "data"
COMMAND = "python -m hybridkd_lib reproduce --profile {profile}"
CONVERGENCE_WINDOW, CONVERGENCE_TOLERANCE = 3, 1.0   # epochs, percentage points (the book's criterion)


def evidence_file(profile: str = "fashion") -> Path:
    return EVIDENCE_DIR / profile / f"{profile}_runs.json"


def cam_figure(profile: str = "fashion") -> Path:
    return EVIDENCE_DIR / profile / "cam.png"


def last_epochs_spread(res: dict) -> float | None:
    """How far the test top-1 moved over the run's last ``CONVERGENCE_WINDOW`` epochs (max - min)."""
    accs = [h["top1"] for h in res.get("history", [])][-CONVERGENCE_WINDOW:]
    return max(accs) - min(accs) if len(accs) == CONVERGENCE_WINDOW else None


def converged(res: dict) -> bool:
    """False when the test top-1 still moved by more than ``CONVERGENCE_TOLERANCE`` points over the
    last ``CONVERGENCE_WINDOW`` epochs."""
    spread = last_epochs_spread(res)
    return spread is None or spread <= CONVERGENCE_TOLERANCE


def at_chance(res: dict) -> bool:
    """Whether a trained network's final test top-1 is within 1 point of guessing (100 / classes): its training
    diverged or died, which says nothing of the claim its cell tests."""
    from hybridkd_lib.data.catalog import dataset_info

    return res["top1"] <= 100.0 / dataset_info(res["dataset"]).num_classes + 1.0


def machine() -> dict:
    """The machine that measured: CPU model, cores, threads torch used, torch version."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "system": platform.platform()}


def run_record(run: Run, res: dict) -> dict:
    """What the book needs of one finished run (a training run or the Grad-CAM run)."""
    if run.notebook == "cam":
        return {"run": run.name, "notebook": run.notebook, "settings": run.params,
                "similarity_to_ANN": res.get("similarity_to_ANN"), "source_run": Path(res.get("run", "")).name,
                "git_commit": res.get("git_commit"), "finished_at": res.get("finished_at")}
    costs = res.get("spike_costs") or {}
    return {"run": run.name, "notebook": run.notebook, "settings": run.params, "method": res["method"],
            "dataset": res["dataset"], "student": res.get("student"), "teacher": res.get("teacher"),
            "T": res["T"], "seed": res["seed"], "epochs": res["epochs"], "top1": res["top1"],
            "best_top1": res.get("best_top1"), "best_epoch": res.get("best_epoch"),
            "teacher_top1": res.get("teacher_top1"), "hybrid_top1": res.get("hybrid_top1", []),
            "history_top1": [round(h["top1"], 4) for h in res.get("history", [])],
            "last_epochs_spread": last_epochs_spread(res), "converged": converged(res), "at_chance": at_chance(res),
            "firing_rate": costs.get("firing_rate"), "energy_vs_teacher": costs.get("energy_vs_teacher"),
            "energy_uj_per_image": costs.get("energy_uj_per_image"),
            "train_time_s": res.get("train_time_s"), "device": res.get("device"),
            "git_commit": res.get("git_commit"), "finished_at": res.get("finished_at")}


def write_evidence(profile: str, results_dir: Path, wall_s: float | None = None,
                   path: Path | None = None) -> Path:
    """Store every run of ``profile`` found finished in ``results_dir`` as the committed records (atomic), with
    the Grad-CAM figure beside them; an error naming the runs that have not finished."""
    runs = plan(profile)
    found = {r.name: read_result(Path(results_dir) / r.name) for r in runs}
    missing = [n for n, res in found.items() if res is None]
    if missing:
        raise ValueError(f"{len(missing)} run(s) of profile {profile!r} not finished in {results_dir}: "
                         f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; run "
                         f"`{COMMAND.format(profile=profile)}` first")
    path = Path(path or evidence_file(profile))
    path.parent.mkdir(parents=True, exist_ok=True)
    for run in runs:
        png = Path(results_dir) / run.name / "cam.png"
        if run.notebook == "cam" and png.is_file():
            tmp = path.parent / f".{png.name}.tmp"
            shutil.copyfile(png, tmp)
            os.replace(tmp, path.parent / cam_figure(profile).name)
    write_json(path, {"_source": f"measured: {COMMAND.format(profile=profile)}", "profile": profile,
                      "command": COMMAND.format(profile=profile), "machine": machine(), "wall_s": wall_s,
                      "records": [run_record(r, found[r.name]) for r in runs]})
    return path


def read_evidence(profile: str = "fashion", path: Path | None = None) -> dict | None:
    """The committed records of ``profile``, None where there is no file."""
    path = Path(path or evidence_file(profile))
    return json.loads(path.read_text()) if path.is_file() else None


def stale_runs(evidence: dict, profile: str | None = None) -> list[str]:
    """The runs whose committed settings differ from today's plan, or that one side lacks (name and why)."""
    today = {r.name: r.params for r in plan(profile or evidence["profile"])}
    stored = {r["run"]: r["settings"] for r in evidence["records"]}
    out = [f"{n}: not in today's plan" for n in stored if n not in today]
    out += [f"{n}: not in the committed file" for n in today if n not in stored]
    out += [f"{n}: settings differ" for n in stored if n in today
            and json.dumps(stored[n], sort_keys=True) != json.dumps(today[n], sort_keys=True)]
    return out


# ----------------------------------------------------------------------------- the ablation's records
ABLATION_FILE = REPO_ROOT / "book" / "data" / "ablation" / "ablation_quick.json"


def ablation_records(results_dir: Path | None = None) -> list[dict]:
    """One record per finished run of the ``ablation`` profile (variant, seed, accuracies, provenance)."""
    from hybridkd_lib.book.plan import ABLATION_SEEDS, ABLATIONS, ablation_run_name

    folder = Path(results_dir or default_results_root() / "ablation")
    recs = []
    for variant, (base, loss) in ABLATIONS.items():
        for seed in ABLATION_SEEDS:
            res = read_result(folder / ablation_run_name(variant, seed))
            if res is not None:
                recs.append({"variant": variant, "varies": base, "loss": res["loss"], "seed": seed,
                             "top1": res["top1"], "converged": converged(res),
                             "best_top1": res.get("best_top1"), "hybrid_top1": res["hybrid_top1"],
                             "teacher_top1": res["teacher_top1"], "epochs": res["epochs"],
                             "train_time_s": res["train_time_s"], "git_commit": res["git_commit"],
                             "finished_at": res["finished_at"]})
    return recs


def write_ablation_file(results_dir: Path | None = None, path: Path = ABLATION_FILE) -> Path:
    """Store the ablation profile's records as the committed file the book shows (atomic)."""
    from hybridkd_lib.base.results import write_json

    recs = ablation_records(results_dir)
    if not recs:
        raise ValueError("no finished ablation run: python -m hybridkd_lib reproduce --profile ablation first")
    write_json(path, {"_source": "measured: python -m hybridkd_lib reproduce --profile ablation (CPU, quick scale)",
                      "records": recs})
    return path


def ablation_records_or_file() -> tuple[list[dict], str]:
    records, source = ablation_records(), "measured (results/ablation)"
    if not records and ABLATION_FILE.is_file():
        records = json.loads(ABLATION_FILE.read_text())["records"]
        source = f"measured (committed file book/data/ablation/{ABLATION_FILE.name})"
    return records, source
