"""Read results and draw: the only module the book's pages import.

Measured values come from ``results/<profile>/<run>/result.json`` (profile:
``$HYBRIDKD_BOOK_PROFILE``, default ``quick``); reported values from the one
data file ``reported.json``, always labelled "reported". A cell whose run has
no result says "not run".
"""
from __future__ import annotations

import functools
import json
import warnings
import os
from functools import lru_cache
from pathlib import Path
from string import Template

import pandas as pd

from hybridkd_lib.data.catalog import DATASETS
from hybridkd_lib.method.methods import get_method, methods_where
from hybridkd_lib.models import list_models, model_facts
from hybridkd_lib.book.evidence import (CONVERGENCE_TOLERANCE, CONVERGENCE_WINDOW, converged,  # noqa: F401
                                         ablation_records_or_file, last_epochs_spread)
from hybridkd_lib.book.plan import Run, plan
from hybridkd_lib.base.results import REPO_ROOT, UnreadableFile, default_results_root, read_result

NOT_RUN = "not run"
REPORTED_FILE = Path(__file__).with_name("reported.json")
OPEN_CHOICES_FILE = Path(__file__).with_name("open_choices.json")   # the prose of ``open_choices``' table
# committed benchmark files: GPU runs (not reproducible on CPU machines) and the reference CPU run
BENCH_DATA_DIRS = {"GPU": REPO_ROOT / "book" / "data" / "gpu", "CPU": REPO_ROOT / "book" / "data" / "cpu"}
DATASET_NAMES = {name: info.display or name for name, info in DATASETS.items()}
NICE = {**{name: model_facts(name).display for name in list_models()}, **DATASET_NAMES}   # display names


def book_profile() -> str:
    return os.environ.get("HYBRIDKD_BOOK_PROFILE", "quick")


@lru_cache(maxsize=1)
def reported() -> dict:
    return json.loads(REPORTED_FILE.read_text())


def result(name: str, profile: str | None = None) -> dict | None:
    """Run ``name``'s result, None where it was not run; a damaged ``result.json`` is named and shown as not run."""
    try:
        return read_result(default_results_root() / (profile or book_profile()) / name)
    except UnreadableFile as exc:
        warnings.warn(f"{exc}; shown as not run")
        return None


def runs(profile: str | None = None) -> list[Run]:
    return plan(profile or book_profile())


def provenance(res: dict | None) -> str:
    """One line: where a measured number came from."""
    if res is None:
        return NOT_RUN
    seeds = res.get("seed", "-")
    return (f"{NICE.get(res.get('dataset'), res.get('dataset'))}, {res.get('epochs')} epochs, seed {seeds}, "
            f"{res.get('device')}, commit {res.get('git_commit')}, {str(res.get('finished_at', ''))[:10]}")


def _short(arch: str) -> str:
    """ResNet-18 -> R18, as the paper's tables write it."""
    return NICE[arch].replace("ResNet-", "R")


def _fmt(acc, ref=None) -> str:
    if acc is None:
        return NOT_RUN
    return f"{acc:.2f}" + (f" ({acc - ref:+.2f})" if ref is not None else "")


ACCURACY = "final-epoch test top-1"   # what every measured accuracy of the book is (the reference logs the best)
NOT_CONVERGED = "not converged"


def _measured(res: dict | None, ref=None) -> str:
    """A measured cell: the final-epoch top-1 (and gap), marked when the run had not converged."""
    if res is None:
        return NOT_RUN
    return _fmt(res["top1"], ref) + ("" if converged(res) else f" {NOT_CONVERGED}")


@functools.lru_cache(maxsize=None)
def scale_facts(profile: str = "quick") -> dict:
    """The scale facts the pages state about a CPU profile, each read off the plan (never retyped): the digits
    split, the students' and teachers' epochs (and the full profile's CIFAR student epochs they replace),
    the training batches of an epoch, the precise-BN batches, the widths, and the ablation's seeds and epochs."""
    from hybridkd_lib.data import datasets
    from hybridkd_lib.book.plan import ABLATION_EPOCHS, ABLATION_SEEDS, SCALE

    import inspect

    from hybridkd_lib.models import resnet

    s = SCALE[profile]
    default = lambda fn, name: inspect.signature(fn).parameters[name].default
    full_sf = [r.params for r in plan("full") if r.params.get("student") == "spikingformer_4_256"]
    train, test = datasets.digits_datasets(**{k: v for k, v in s["data_kw"].items() if k == "image_size"})
    students = [r.params for r in plan(profile) if r.notebook == "train_student"]
    full_cifar = {r.params["epochs"] for r in plan("full") if r.notebook == "train_student"
                  and r.params["dataset"].startswith("cifar1") and r.params.get("student") != "spikingformer_4_256"}
    batch = students[0]["batch_size"]
    return {"profile": profile, "image_size": s["data_kw"].get("image_size", 8), "n_train": len(train),
            "n_test": len(test), "batch_size": batch, "batches_per_epoch": len(train) // batch,
            "student_epochs": s["student_epochs"], "teacher_epochs": s["teacher_epochs"],
            "full_student_epochs": max(full_cifar), "precise_bn": s["precise_bn"], "width": s["width"],
            "sf_dim": s["sf_dim"], "ablation_seeds": len(ABLATION_SEEDS), "ablation_epochs": ABLATION_EPOCHS,
            "full_widths": sorted({default(resnet.resnet18_cifar, "width"), default(resnet.resnet19_cifar, "width")}),
            "full_sf_dim": _full_size("spikingformer_4_256").feature_info[-1]["num_chs"],
            "full_sf_lr": full_sf[0]["lr"]}


def _full_size(name: str):
    """Model ``name`` at its full (default) size, built on the meta device (no memory)."""
    import torch

    from hybridkd_lib.models import create_model

    with torch.device("meta"):
        return create_model(name)


def page_facts() -> dict:
    """The numbers the pages' prose states (as ``{glue:text}`NAME```), each read off the plan or the report's
    constants, never retyped."""
    from hybridkd_lib.book.plan import SCALE

    full = plan("full")
    vit = next(r.params for r in full if r.name == "cifar10_teacher_vit")
    epochs = [r.params["epochs"] for r in full if "epochs" in r.params]
    return {"quick_width": SCALE["quick"]["width"], "convergence_window": CONVERGENCE_WINDOW,
            "convergence_tolerance": CONVERGENCE_TOLERANCE, "full_vit_epochs": vit["epochs"],
            "full_vit_lr": vit["lr"], "full_vit_batch": vit["batch_size"], "full_runs": len(full),
            "full_min_epochs": min(epochs), "full_max_epochs": max(epochs)}


def glue_facts() -> None:
    """Glue every ``page_facts`` value for the page's prose (nothing is displayed)."""
    from myst_nb import glue

    for name, value in page_facts().items():
        glue(name, value, display=False)


def cpu_reading_note(profile: str | None = None) -> str:
    """How to read the measured rows of a CPU profile (Table A's page), from the plan (the book's profile, or
    the quick one where the book shows the full profile)."""
    from hybridkd_lib.book.plan import SCALE

    profile = profile or book_profile()
    f = scale_facts(profile if profile in SCALE else "quick")
    return (f"How to read the measured rows of the CPU profiles: the {profile} profile's students train "
            f"{f['student_epochs']} epochs instead of {f['full_student_epochs']}, so they drop the RateBP reference's "
            f"1/T gradient scale (`loss={{\"ratebp_grad_scale\": false}}`; with it the same learning rate is a "
            f"T-times smaller step, see [What the paper leaves open](open_choices.md)). Only the `full` profile, "
            f"which keeps the reference's scale, is comparable with the paper's numbers.")


def ablation_note() -> str:
    """What the ablation profile trains and how long (the open-choices page), from the plan."""
    f = scale_facts("quick")
    return (f"{f['ablation_seeds']} seeds each, {f['ablation_epochs']} student epochs (the quick profile trains "
            f"{f['student_epochs']}: at {f['ablation_epochs']}, the slowest students still moved by about a point "
            f"between their last epochs, as the column of runs not converged shows); the table gives the "
            f"final-epoch top-1's mean and sample standard deviation over the seeds.")


def profile_note(profile: str | None = None) -> str:
    from hybridkd_lib.book.plan import SCALE

    p = profile or book_profile()
    if p == "full":
        return "Profile **full**: the paper's settings (Table C)."
    if p == EVIDENCE_PROFILE:
        return evidence_scale_note(p)
    s, f = SCALE[p], scale_facts(p)
    return (f"Profile **{p}** (scaled down to run on a 2-core CPU): dataset scikit-learn digits "
            f"({f['image_size']}x{f['image_size']}, {f['n_train']:,} train / {f['n_test']:,} test "
            f"images) instead of CIFAR/ImageNet; ResNet widths {s['width']} instead of "
            f"{'/'.join(map(str, f['full_widths']))} (Spikingformer dim {s['sf_dim']} instead of {f['full_sf_dim']}); teachers {s['teacher_epochs']} epochs, students "
            f"{s['student_epochs']} instead of {f['full_student_epochs']}, without the RateBP reference's 1/T gradient scale, Spikingformer "
            f"at learning rate {s['sf_lr']:g} instead of {f['full_sf_lr']:g}, students' BN statistics recomputed from "
            f"{s['precise_bn']} fixed training batches before each evaluation; seeds {list(s['seeds'])}. "
            f"Absolute accuracies are therefore "
            f"not comparable with the reported ones; the trends are.")


# ----------------------------------------------------------------------------- seed noise of the CPU profiles
WITHIN_NOISE = "within seed noise"


def seed_spreads() -> dict[str, float]:
    """The ablation's seed spread (sample std over its seeds of the final-epoch top-1) per variant that keeps
    the quick profile's settings (it does not change the 1/T gradient scale), from ``results/ablation`` or the
    committed file; {} when neither holds a variant with 2 or more seeds."""
    from hybridkd_lib.book.plan import ABLATIONS

    records, _ = ablation_records_or_file()
    by_variant: dict[str, list[float]] = {}
    for r in records:
        if r["variant"] in ABLATIONS and "ratebp_grad_scale" not in ABLATIONS[r["variant"]][1]:
            by_variant.setdefault(r["variant"], []).append(r["top1"])
    return {v: float(pd.Series(accs).std()) for v, accs in by_variant.items() if len(accs) >= 2}


def seed_spread_for(run_names: list[str]) -> tuple[float, str] | None:
    """The seed spread a CPU-profile cell of these runs is read against, and where it came from: the ablation's
    seeds of one of these runs with its own settings (variant loss ``{}``), else the largest spread the
    ablation measured (no ablation of these runs). None without ablation records."""
    from hybridkd_lib.book.plan import ABLATIONS

    spreads = seed_spreads()
    if not spreads:
        return None
    for variant, (base, loss) in ABLATIONS.items():
        if base in run_names and not loss and variant in spreads:
            return spreads[variant], f"ablation {variant!r}: {base}'s seeds"
    widest = max(spreads, key=spreads.get)
    return spreads[widest], f"largest of the ablation's variants ({widest!r}); no ablation of these runs"


def noise_labels(accs: dict[str, float], spread: float) -> dict[str, str]:
    """Per cell (``accs``: label -> top-1, cells not run left out): "best", "within seed noise of <best>" where
    its difference from the best is smaller than the seed ``spread``, else ""."""
    if len(accs) < 2:
        return {label: "" for label in accs}
    best = max(accs, key=accs.get)
    return {label: "best" if label == best else f"{WITHIN_NOISE} of {best}" if accs[best] - a < spread else ""
            for label, a in accs.items()}


def noise_marks(accs: dict[str, float], spread: float) -> str:
    """One row's cells read against the seed spread: which lie within it of the best one."""
    labels = noise_labels(accs, spread)
    if len(labels) < 2:
        return ""
    best = next(label for label, mark in labels.items() if mark == "best")
    close = [label for label, mark in labels.items() if mark.startswith(WITHIN_NOISE)]
    if not close:
        return f"every difference from {best} (best) exceeds the spread"
    return f"{', '.join(close)} {WITHIN_NOISE} of {best} (best)"


def scale_claims_note(profile: str | None = None) -> str:
    """One sentence for the CPU profiles: what this scale shows and what needs the full profile ('' for full)."""
    p = profile or book_profile()
    if p == "full":
        return ""
    return (f"At the {p} profile's scale the book demonstrates the pipeline, the efficiency (Fig. 4) and Fig. A; "
            f"the accuracy claims of Tables A and B need the `full` profile. Each measured row gives the seed "
            f"spread the committed ablation measured (the sample standard deviation of the final top-1 over "
            f"its seeds), and a difference between cells smaller than it is marked *{WITHIN_NOISE}*.")


def _spread_text(spread: tuple[float, str] | None) -> str:
    return MISSING if spread is None else f"±{spread[0]:.2f} ({spread[1]})"


# ----------------------------------------------------------------------------- Table A
RATE_A, ENERGY_A = "firing rate (T=2 / 4 / 6 / 8)", "energy vs teacher, compute only (T=2 / 4 / 6 / 8)"
MEMORY_A = "energy vs teacher, memory-aware (T=2 / 4 / 6 / 8)"
ENERGY, MEMORY = "energy vs teacher, compute only", "energy vs teacher, memory-aware"


def _params_of(run_name: str | None, p: str) -> dict:
    return next((r.params for r in runs(p) if r.name == run_name), {})


def table_a(profile: str | None = None) -> pd.DataFrame:
    """Rows: reported CIFAR rows and the measured rows of this profile; columns T=2..8, "acc (gap)"."""
    p = profile or book_profile()
    rows = []
    for r in reported()["table_a"]:
        rows.append({"source": "reported", "dataset": r["dataset"], "teacher": f"{r['teacher']} ({r['teacher_top1']:.2f})",
                     "student": r["student"],
                     **{f"T={T}": _fmt(r["T"][str(T)], r["teacher_top1"]) for T in (2, 4, 6, 8)},
                     RATE_A: NOT_REPORTED, ENERGY_A: NOT_REPORTED, MEMORY_A: NOT_REPORTED})
    by_pair = {}
    for run in table_a_runs(p):
        key = (run.params["dataset"], run.params["teacher"], run.params["student"])
        by_pair.setdefault(key, {})[run.params["T"]] = run.name
    for (ds, teacher, student), cells in by_pair.items():
        t_res = None
        row_cells = {}
        for T in (2, 4, 6, 8):
            res = result(cells[T], p) if T in cells else None
            if res is not None:
                t_res = t_res or res.get("teacher_top1")
            row_cells[T] = res
        t_acc = t_res
        row = {"source": f"measured ({p})", "dataset": NICE.get(ds, ds),
               "teacher": f"{_short(teacher)} ({_fmt(t_acc) if t_acc is not None else NOT_RUN})",
               "student": _short(student),
               **{f"T={T}": _measured(row_cells[T], t_acc) for T in (2, 4, 6, 8)},
               RATE_A: " / ".join(_rate_text(row_cells[T]) for T in (2, 4, 6, 8)),
               ENERGY_A: " / ".join(_energy_text(energy_vs_teacher(row_cells[T], _params_of(cells.get(T), p), p))
                                    for T in (2, 4, 6, 8)),
               MEMORY_A: " / ".join(_energy_text(memory_vs_teacher(row_cells[T], _params_of(cells.get(T), p), p))
                                    for T in (2, 4, 6, 8))}
        if p != "full":
            spread = seed_spread_for(list(cells.values()))
            row["seed spread"] = _spread_text(spread)
            accs = {f"T={T}": res["top1"] for T, res in row_cells.items() if res is not None}
            row["seed noise"] = noise_marks(accs, spread[0]) if spread else ""
        rows.append(row)
    rows += evidence_table_a_rows()
    return missing_as_dash(pd.DataFrame(rows))


TABLE_A_ACCURACY = ["source", "dataset", "teacher", "student", "T=2", "T=4", "T=6", "T=8"]


def table_a_views(profile: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table A as two tables that each fit the page: the accuracies, and the measured rows' costs and seed noise."""
    a = table_a(profile)
    measured = a[a["source"] != "reported"]
    extra = [c for c in a.columns if c not in TABLE_A_ACCURACY]
    return a[TABLE_A_ACCURACY], measured[["source", "dataset", "student"] + extra]


def misprint_notes() -> str:
    """The seed's Table A misprints, as a list (from ``reported.json``)."""
    return "\n".join(f"- {m['dataset']}, {m['student']} <- {m['teacher']}, T={m['T']}: reported {m['top1']:.2f}, "
                     f"the seed prints the gap {m['printed_gap']:+.2f}, but {m['note']}; this table shows "
                     f"{m['top1'] - _teacher_top1(m):+.2f}." for m in reported().get("table_a_misprints", []))


def _teacher_top1(m: dict) -> float:
    return next(r["teacher_top1"] for r in reported()["table_a"]
                if (r["dataset"], r["teacher"], r["student"]) == (m["dataset"], m["teacher"], m["student"]))


def table_a_provenance(profile: str | None = None) -> pd.DataFrame:
    p = profile or book_profile()
    rows = [{"run": run.name, "provenance": provenance(result(run.name, p))} for run in table_a_runs(p)]
    return pd.DataFrame(rows).set_index("run")


def provenance_table(cell: str, profile: str | None = None) -> pd.DataFrame:
    """Where each run feeding the book cells named ``cell...`` (e.g. ``"Table B"``) came from."""
    p = profile or book_profile()
    return pd.DataFrame([{"run": r.name, "provenance": provenance(result(r.name, p))} for r in runs(p)
                         if any(c.startswith(cell) for c in r.cells)])


def table_a_runs(profile: str | None = None) -> list[Run]:
    """The runs that feed Table A (the plan's cells say which)."""
    return [r for r in runs(profile) if any(c.startswith("Table A ") for c in r.cells)]


def table_a_plot(profile: str | None = None):
    """SNN - teacher top-1 against T, one line per dataset and student <- teacher pair (None if nothing ran)."""
    import matplotlib.pyplot as plt

    p = profile or book_profile()
    rows = []
    for run in table_a_runs(p):
        res, prm = result(run.name, p), run.params
        if res:
            rows.append({"pair": f"{NICE.get(prm['dataset'], prm['dataset'])}: {_short(prm['student'])} <- "
                                 f"{_short(prm['teacher'])}", "T": prm["T"],
                         "gap to teacher": res["top1"] - res["teacher_top1"]})
    if not rows:
        return None
    df = pd.DataFrame(rows).pivot(index="T", columns="pair", values="gap to teacher")
    fig, ax = plt.subplots(figsize=(5.5, 3))
    df.plot(ax=ax, marker="o", title=f"measured ({p}): SNN - teacher top-1")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("percentage points")
    ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------- Table B


def table_b(profile: str | None = None) -> pd.DataFrame:
    p = profile or book_profile()
    rows = []
    for r in reported()["table_b"]:
        t = f"{r['teacher']} ({r['teacher_top1']:.2f})" if r["teacher"] else "-"
        rows.append({"source": "reported", "dataset": r["dataset"], "method": r["method"], "teacher": t,
                     "student": r["student"], "T": r["T"],
                     "top-1 (%)": _fmt(r["top1"], r["teacher_top1"]) if r["teacher_top1"] else _fmt(r["top1"]),
                     "firing rate": NOT_REPORTED, ENERGY: NOT_REPORTED, MEMORY: NOT_REPORTED})
    for run in runs(p):
        prm = run.params
        if run.notebook == "train_student" and prm.get("student") == "spikingformer_4_256":
            res = result(run.name, p)
            t_acc = res.get("teacher_top1") if res else None
            with_teacher = prm["method"] in methods_where(teacher=True)
            teacher = (f"ViT-S/16 ({_fmt(t_acc)})" if with_teacher else "-")
            acc = _measured(res, t_acc if with_teacher else None)
            rows.append({"source": f"measured ({p})", "dataset": NICE.get(prm["dataset"], prm["dataset"]),
                         "method": get_method(prm["method"]).title, "teacher": teacher,
                         "student": "Spikingformer-4-256" + (f" (dim {prm['student_kw']['dim']})"
                                                             if prm.get("student_kw", {}).get("dim") else ""),
                         "T": prm["T"], "top-1 (%)": acc,
                         "firing rate": _rate_text(res) if res else NOT_RUN,
                         ENERGY: _energy_text(energy_vs_teacher(res, prm, p)) if res else NOT_RUN,
                         MEMORY: _energy_text(memory_vs_teacher(res, prm, p)) if res else NOT_RUN,
                         "_run": run.name, "_top1": res["top1"] if res else None})
    df = pd.DataFrame(rows + evidence_table_b_rows())
    measured = df["source"] == f"measured ({p})"
    if p != "full" and measured.any():   # the seed spread and noise marks of the measured rows, per dataset
        for _, group in df[measured].groupby("dataset"):
            spread = seed_spread_for(list(group["_run"]))
            accs = {m: a for m, a in zip(group["method"], group["_top1"]) if pd.notna(a)}
            labels = noise_labels(accs, spread[0]) if spread else {}
            for i, method in zip(group.index, group["method"]):
                df.loc[i, "seed spread"] = _spread_text(spread)
                df.loc[i, "seed noise"] = labels.get(method, "")
    return missing_as_dash(df.drop(columns=["_run", "_top1"], errors="ignore"))


TABLE_B_ACCURACY = ["source", "dataset", "method", "teacher", "student", "T", "top-1 (%)"]


def table_b_views(profile: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table B as two tables that each fit the page: the accuracies, and the measured rows' costs and seed noise."""
    b = table_b(profile)
    measured = b[b["source"] != "reported"]
    extra = [c for c in b.columns if c not in TABLE_B_ACCURACY]
    return b[TABLE_B_ACCURACY], measured[["source", "dataset", "method", "student"] + extra]


# ----------------------------------------------------------------------------- Table C
def table_c() -> pd.DataFrame:
    """Training settings rendered from the plan's ``full`` profile (never retyped)."""
    rep = {(r["dataset"], r["model"], r["teacher"]): r["teacher_top1"] for r in reported()["table_c"]}
    rows, seen = [], set()
    for run in plan("full"):
        prm = run.params
        if run.notebook != "train_student" or prm["method"] not in methods_where(hybrids=True) \
                or prm["student"] == "spikingformer_4_256":
            continue  # Table C lists the ResNet runs; Table B's settings are on its own page
        key = (NICE[prm["dataset"]], NICE[prm["student"]], NICE[prm["teacher"]])
        if key in seen:
            continue
        seen.add(key)
        rows.append({"Dataset": key[0], "Model": key[1], "Tea-Model": key[2],
                     "Tea-Acc (%) reported": rep.get(key, "-"), "Learning Rate": prm["lr"],
                     "Weight Decay": prm["weight_decay"], "Epochs": prm["epochs"], "Scheduler": "Cosine",
                     "Optimizer": {"sgd": "SGDM", "adamw": "AdamW"}[prm["optimizer"]],
                     "T": prm["T"], "Batch (global)": prm["batch_size"], "GPUs": run.nproc})
    return pd.DataFrame(rows)


def teacher_check(profile: str = "full") -> pd.DataFrame:
    """The ImageNet teachers: the pinned timm weights (``plan.TIMM_WEIGHTS``), the reported top-1 and the one the
    ``profile``'s student runs measured on the validation set, and whether they agree within
    ``plan.TEACHER_TOLERANCE`` points (a different figure means other weights or another evaluation transform)."""
    from hybridkd_lib.book.plan import TEACHER_TOLERANCE, TIMM_WEIGHTS

    rows, seen = [], set()
    for run in plan("full"):
        prm = run.params
        if prm.get("dataset") != "imagenet" or run.notebook != "train_student" or prm["teacher"] in seen:
            continue
        seen.add(prm["teacher"])
        reported_top1 = _reported_teacher_top1(NICE[prm["teacher"]])
        measured = (result(run.name, profile) or {}).get("teacher_top1")
        verdict = NOT_RUN if measured is None else (
            "agrees" if abs(measured - reported_top1) <= TEACHER_TOLERANCE else "differs")
        rows.append({"teacher": NICE[prm["teacher"]], "timm weights": TIMM_WEIGHTS[prm["teacher"]],
                     "top-1 (%) reported": reported_top1,
                     f"top-1 (%) measured ({profile})": NOT_RUN if measured is None else round(measured, 2),
                     f"within {TEACHER_TOLERANCE} points": verdict, "measured in": run.name})
    return pd.DataFrame(rows)


def table_b_settings() -> pd.DataFrame:
    """Table B's training settings, rendered from the plan's ``full`` profile (never retyped): the ViT-S/16
    teachers' fine-tuning and the Spikingformer students' recipe (project choices: the supplementary gives none)."""
    rows = []
    for run in plan("full"):
        prm = run.params
        if not any(c.startswith("Table B") for c in run.cells) or not run.notebook.startswith("train_"):
            continue
        rows.append({"Run": run.name, "Dataset": NICE[prm["dataset"]], "Method": prm.get("method", "ann"),
                     "Network": NICE.get(prm.get("student") if "method" in prm else prm["teacher"], "-"),
                     "Learning Rate": prm["lr"], "Weight Decay": prm["weight_decay"], "Epochs": prm["epochs"],
                     "Optimizer": {"sgd": "SGDM", "adamw": "AdamW"}[prm["optimizer"]],
                     "Batch (global)": prm["batch_size"], "T": prm.get("T", "-"),
                     "Input (teacher)": prm.get("teacher_input_size") or "-",
                     "Schedule steps": prm["lr_step"], "Precision": prm["precision"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig. A
def fig_a(profile: str | None = None):
    """(path to the CAM figure or None, the cam result dict or None)."""
    p = profile or book_profile()
    res = result("cam", p)
    path = default_results_root() / p / "cam" / "cam.png"
    return (path if res is not None and path.is_file() else None), res


# ----------------------------------------------------------------------------- Fig. 4
def bench_records(profile: str | None = None) -> list[dict]:
    """CPU records of this profile's efficiency run plus every committed bench file
    (``book/data/gpu/bench_*.json``, ``book/data/cpu/bench_*.json``); each record gets a ``source``."""
    p = profile or book_profile()
    recs = []
    f = default_results_root() / p / "efficiency" / "bench.json"
    if f.is_file():
        recs += [dict(r, source=f"measured ({p})") for r in json.loads(f.read_text())["records"]]
    for kind, folder in BENCH_DATA_DIRS.items():
        for g in sorted(folder.glob("bench_*.json")) if folder.is_dir() else []:
            recs += [dict(r, source=f"measured ({kind} file {g.name})")
                     for r in json.loads(g.read_text())["records"]]
    return recs


def _frame(records: list[dict]) -> pd.DataFrame:
    """Records as a table with a ``run`` column (the record's source, and its precision where not fp32, so that
    records of two precisions are never one run)."""
    df = pd.DataFrame(records)
    df["run"] = [r.get("source", "this run") + ("" if record_precision(r) == "fp32" else f", {record_precision(r)}")
                 for r in records]
    return df


def _label(r: dict) -> str:
    kw = r.get("student_kw") or {}
    size = f", width {kw['width']}" if "width" in kw else ""
    return f"{r.get('source', 'this run')}: {r['device']}, {record_precision(r)}, batch {r['batch_size']}{size}"


def record_precision(r: dict) -> str:
    """A bench record's compute precision; records from before ``precision`` existed: fp32 on the CPU, bf16 on
    CUDA (the autocast every CUDA step then ran under)."""
    return r.get("precision") or ("fp32" if str(r.get("device", "")).startswith("cpu") else "bf16")


def bench_table(records: list[dict]) -> pd.DataFrame:
    if not records:
        return pd.DataFrame({"status": [NOT_RUN]})
    values = ["step_time_s", "peak_mem_mb"] + (["floor_ratio"] if any("floor_ratio" in r for r in records) else [])
    df = _frame(records).pivot_table(index=["run", "method"], columns="T", values=values, aggfunc="first",
                                     sort=False, dropna=False)
    return missing_as_dash(df[values].round(3))


MISSING = "—"


def missing_as_dash(df: pd.DataFrame) -> pd.DataFrame:
    """Missing values shown as an em dash (a configuration that was not measured), never ``NaN``."""
    return df.astype(object).where(df.notna(), MISSING)


# the efficiency targets (issues "Efficiency: the Fig. 4 benchmark" and "Fast on every device"):
# (claim, numerator, denominator, limit); "floor": forward_only at the largest T plus bptt at T=1;
# "own conv floor": the numerator record's conv_floor_s (its step's dense products timed alone)
BENCH_TARGETS = (
    ("hybrid / bptt_kd peak memory, largest T", ("hybrid", "peak_mem_mb", "max"),
     ("bptt_kd", "peak_mem_mb", "max"), 0.35),
    ("hybrid / bptt_kd step time, largest T", ("hybrid", "step_time_s", "max"), ("bptt_kd", "step_time_s", "max"),
     0.6),
    ("ratebp / its conv floor, largest T", ("ratebp", "step_time_s", "max"), "own conv floor", 1.25),
    ("hybrid / its conv floor, largest T", ("hybrid", "step_time_s", "max"), "own conv floor", 1.4),
    ("ratebp / bptt step time, T=1", ("ratebp", "step_time_s", 1), ("bptt", "step_time_s", 1), 1.05),
    ("ratebp / bptt peak memory, largest T", ("ratebp", "peak_mem_mb", "max"), ("bptt", "peak_mem_mb", "max"), 0.45),
    # against the strongest public memory-saving BPTT (spikingjelly's memopt): the rate-based methods' claim is
    # to cost less memory and time than BPTT, so less than this one too
    ("hybrid / bptt_memopt peak memory, largest T", ("hybrid", "peak_mem_mb", "max"),
     ("bptt_memopt", "peak_mem_mb", "max"), 1.0),
    ("hybrid / bptt_memopt step time, largest T", ("hybrid", "step_time_s", "max"),
     ("bptt_memopt", "step_time_s", "max"), 1.0),
    ("ratebp / bptt_memopt peak memory, largest T", ("ratebp", "peak_mem_mb", "max"),
     ("bptt_memopt", "peak_mem_mb", "max"), 1.0),
    ("ratebp / bptt_memopt step time, largest T", ("ratebp", "step_time_s", "max"),
     ("bptt_memopt", "step_time_s", "max"), 1.0),
    ("ratebp / floor step time, largest T",
     ("ratebp", "step_time_s", "max"), "floor", 1.1),
    ("ratebp peak memory, largest T / T=2", ("ratebp", "peak_mem_mb", "max"), ("ratebp", "peak_mem_mb", 2), 1.3),
)


def _target_setting(r: dict) -> bool:
    """The setting the targets are stated for: full-width ResNet-18 <- ResNet-18, 32x32, batch 32, CPU."""
    kw = r.get("student_kw") or {}
    return (r.get("student") == "spiking_resnet18" and r.get("teacher") == "cifar_resnet18"
            and kw.get("width", 64) == 64 and r.get("batch_size") == 32 and r.get("input_size", 32) == 32
            and str(r.get("device", "")).startswith("cpu"))


def bench_claims(records: list[dict]) -> pd.DataFrame:
    """Every efficiency target as a measured ratio, per benchmark run (rows with a missing method are
    left out). ``met`` is judged only for runs in the targets' setting (``_target_setting``)."""
    if not records:
        return pd.DataFrame({"status": [NOT_RUN]})
    rows = []
    for run, sub in _frame(records).groupby("run", sort=False):
        t_max = int(sub["T"].max())
        judged = _target_setting(sub.iloc[0].to_dict())

        def value(method, field, T):
            T = t_max if T == "max" else T
            hit = sub[(sub["method"] == method) & (sub["T"] == T)]
            return float(hit.iloc[0][field]) if len(hit) else None

        for claim, num, den, limit in BENCH_TARGETS:
            n = value(*num)
            if den == "floor":
                parts = value("forward_only", "step_time_s", "max"), value("bptt", "step_time_s", 1)
                d = None if None in parts else sum(parts)
            elif den == "own conv floor":
                d = value(num[0], "conv_floor_s", num[2]) if "conv_floor_s" in sub else None
            else:
                d = value(*den)
            if n is None or not d or d != d or t_max < 2:
                continue
            met = ("yes" if n / d <= limit else "no") if judged else "n/a (other setting)"
            rows.append({"run": run, "T": t_max, "claim": claim, "ratio": round(n / d, 3),
                         "target": f"<= {limit}", "met": met})
    return pd.DataFrame(rows) if rows else pd.DataFrame({"status": [NOT_RUN]})


def bench_kernels(r: dict) -> str:
    """What ran in a bench record: BPTT's LIF implementation and the spike loop (older records: not recorded)."""
    lif = r.get("lif_implementation", "not recorded")
    loop = r.get("spike_loop", "fused")
    return f"LIF kernels `{lif}`, spike pass `{loop}`" + (f" (build {r['compile_s']} s)" if loop == "compiled" else "")


def fig4_plot(records: list[dict]):
    """Time and memory per training step vs T, one row of two panels per benchmark run."""
    import matplotlib.pyplot as plt

    if not records:
        return None
    df = pd.DataFrame(records)
    df["run"] = [_label(r) for r in records]
    runs = list(dict.fromkeys(df["run"]))
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    style = {"hybrid": ("tab:red", "o", "-"), "kd": ("tab:orange", "s", "-"), "ratebp": ("tab:green", "^", "-"),
             "bptt": ("tab:blue", "o", "--"), "bptt_kd": ("tab:purple", "s", "--"),
             "bptt_ckpt": ("tab:cyan", "v", "--"), "bptt_memopt": ("tab:olive", "D", "--"),
             "forward_only": ("gray", "x", ":"),
             "conv_floor": ("black", "_", ":")}
    for row, run in enumerate(runs):
        sub = df[df["run"] == run]
        for method, g in sub.groupby("method", sort=False):
            c, m, ls = style.get(method, ("black", ".", "-"))
            g = g.sort_values("T")
            axes[row, 0].plot(g["T"], g["step_time_s"], color=c, marker=m, ls=ls, label=method)
            if g["peak_mem_mb"].notna().any():   # the conv floor has no memory figure
                axes[row, 1].plot(g["T"], g["peak_mem_mb"], color=c, marker=m, ls=ls, label=method)
        cpu = str(sub["device"].iloc[0]).startswith("cpu")
        axes[row, 0].set(title=f"time per step\n{run}", xlabel="T", ylabel="s / step")
        axes[row, 1].set(title=f"peak memory\n{run}", xlabel="T",
                         ylabel="MB (peak RSS)" if cpu else "MB (max allocated)")
        axes[row, 0].title.set_fontsize(8)
        axes[row, 1].title.set_fontsize(8)
        axes[row, 0].legend(fontsize=8, ncol=2)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- what the paper leaves open
def open_choices() -> pd.DataFrame:
    """Every choice the paper does not state: the value this library uses (read from the code), why,
    and the parameter that changes it. The prose is the data file ``open_choices.json``'s; each ``${name}``
    in it is a value of ``_open_choice_facts``."""
    text = json.loads(OPEN_CHOICES_FILE.read_text())
    facts = _open_choice_facts(text)
    rows = [{col: Template(row[col]).substitute(facts) for col in text["columns"]} for row in text["rows"]]
    df = pd.DataFrame(rows, columns=text["columns"])
    return df.apply(lambda col: col.str.replace(r"`([^`]+)`", r"<code>\1</code>", regex=True))


def _open_choice_facts(text: dict) -> dict:
    """The values ``open_choices`` shows, each read from the code that uses it (``text``: the data file, whose
    ``neuron`` and ``hybrid_reduction`` entries word the neuron constants and the loss's reduction)."""
    from hybridkd_lib.method.losses import LossConfig
    from hybridkd_lib.models.spikingformer import SPIKINGFORMER_NEURON
    from hybridkd_lib.snn.neurons import DEFAULT_NEURON
    from hybridkd_lib.book.plan import SCALE

    from hybridkd_lib.tools.defaults import DEFAULT_DT
    from hybridkd_lib.snn.spikecosts import EnergyModel

    loss, facts, energy = LossConfig(), scale_facts("quick"), EnergyModel()
    return {"ce": loss.ce, "kd": loss.kd, "hybrid_ce": loss.hybrid_ce, "hybrid_kd": loss.hybrid_kd,
            "hybrid_reduction": text["hybrid_reduction"][loss.hybrid_reduction], "temperature": loss.temperature,
            "ratebp_grad_scale": loss.ratebp_grad_scale,
            "cpu_ratebp_grad_scale": SCALE["quick"]["student_loss"]["ratebp_grad_scale"],
            "student_epochs": facts["student_epochs"], "precise_bn": facts["precise_bn"],
            "batches_per_epoch": facts["batches_per_epoch"], "accuracy": ACCURACY,
            "resnet_neuron": _neuron_text(DEFAULT_NEURON, text["neuron"]),
            "spikingformer_neuron": _neuron_text(SPIKINGFORMER_NEURON, text["neuron"]),
            "pj_per_ac": energy.pj_per_ac, "pj_per_mac": energy.pj_per_mac, "energy_source": energy.source,
            "dt": DEFAULT_DT, **_full_profile_facts()}


OPTIMIZER_NAMES = {"sgd": "SGD with momentum", "adamw": "AdamW"}


def _reported_teacher_top1(teacher: str) -> float:
    """The ImageNet teacher's top-1 Table C reports."""
    return next(r["teacher_top1"] for r in reported()["table_c"] if r["dataset"] == "ImageNet" and r["teacher"] == teacher)


def _full_profile_facts() -> dict:
    """The full profile's settings the open-choices table names, read from its plan."""
    from hybridkd_lib.book.plan import IMAGENET_NPROC, plan
    from hybridkd_lib.training.config import TrainConfig

    runs = {r.name: r for r in plan("full")}
    sf, vit, imnet = (runs[n].params for n in ("cifar10_sf_hybrid", "cifar10_teacher_vit",
                                               "imagenet_hybrid_sew_resnet34_resnet34"))
    quick = next(r for r in plan("quick") if r.notebook == "train_student").params
    return {"lr_step_full": sf["lr_step"], "lr_step_cpu": quick.get("lr_step", TrainConfig.lr_step),
            "r34_top1": f"{_reported_teacher_top1('ResNet-34'):.2f}",
            "r50_top1": f"{_reported_teacher_top1('ResNet-50'):.2f}",
            "precision_full": sf["precision"], "imagenet_T": imnet["T"], "imagenet_batch": imnet["batch_size"],
            "imagenet_nproc": IMAGENET_NPROC, "dvs_T": runs["cifar10dvs_hybrid_r19_r19"].params["T"],
            "cifar_batch": runs["cifar10_hybrid_r18_r18_T4"].params["batch_size"], "vit_epochs": vit["epochs"],
            "vit_optimizer": OPTIMIZER_NAMES[vit["optimizer"]], "vit_lr": vit["lr"],
            "sf_optimizer": OPTIMIZER_NAMES[sf["optimizer"]],
            "sf_lr": sf["lr"], "sf_weight_decay": sf["weight_decay"], "sf_epochs": sf["epochs"],
            "sf_batch": sf["batch_size"], "bench_batch": runs["efficiency"].params["batch_size"],
            "bench_input": runs["efficiency"].params["input_size"], "bench_steps": runs["efficiency"].params["steps"]}


def _neuron_text(c, words: dict) -> str:
    """A neuron config's constants in ``words`` (``open_choices.json``'s ``neuron`` entry)."""
    reset = words["soft_reset"] if c.v_reset is None else Template(words["hard_reset"]).substitute(v_reset=c.v_reset)
    return Template(words["text"]).substitute(
        tau=c.tau, decay=f"{c.decay:.2f}", v_threshold=c.v_threshold, reset=reset,
        detached=words["detached"] if c.detach_reset else "", surrogate_alpha=c.surrogate_alpha,
        decay_input=c.decay_input)


def spikingformer_params() -> pd.DataFrame:
    """Spikingformer-4-256's parameter count: the Spikingformer paper's (reported) and this library's model
    (counted)."""
    import torch

    from hybridkd_lib.models import create_model

    with torch.device("meta"):
        n = sum(p.numel() for p in create_model("spikingformer_4_256", num_classes=10).parameters())
    return pd.DataFrame([
        {"source": "reported (the Spikingformer paper, Zhou et al. 2023)",
         "parameters": f"{reported()['spikingformer_params_m']['value']:.2f} M"},
        {"source": "measured (this library's spikingformer_4_256, 10 classes, counted)", "parameters": f"{n:,}"}])


def hybrid_accuracies_over_seeds(variant: str = "default") -> tuple[pd.DataFrame, str]:
    """Per seed of the ablation's ``variant`` runs: top-1 of the teacher, every M_k and the SNN."""
    records, source = ablation_records_or_file()
    rows = [{"seed": r["seed"], "ANN teacher": r["teacher_top1"],
             **{f"M_{k}": a for k, a in enumerate(r["hybrid_top1"])}, "SNN": r["top1"]}
            for r in records if r["variant"] == variant]
    return (pd.DataFrame(rows).set_index("seed") if rows else pd.DataFrame()), (source if rows else NOT_RUN)


def ablation_table(records: list[dict] | None = None) -> tuple[pd.DataFrame, str]:
    """Mean and spread (sample std over seeds) of the final-epoch top-1 per variant, and where the
    records came from: this machine's ``results/ablation`` runs, else the committed file."""
    source = "measured (given records)"
    if records is None:
        records, source = ablation_records_or_file()
    if not records:
        return pd.DataFrame({"status": [NOT_RUN]}), NOT_RUN
    df = pd.DataFrame(records)
    df["M_k mean"] = df["hybrid_top1"].apply(lambda a: sum(a) / len(a) if a else float("nan"))
    g = df.groupby("variant", sort=False)
    out = pd.DataFrame({"run varied": g["varies"].first(),
                        "loss options": g["loss"].first().apply(lambda d: json.dumps(d, sort_keys=True)),
                        "seeds": g["seed"].apply(lambda s: ", ".join(map(str, s))),
                        "epochs": g["epochs"].first(),
                        "SNN top-1 mean": g["top1"].mean().round(2), "SNN top-1 std": g["top1"].std().round(2),
                        "hybrids' mean top-1": g["M_k mean"].mean().round(2),
                        "runs not converged": g["converged"].apply(lambda c: int((~c).sum())),
                        "commit": g["git_commit"].first()}).reset_index()
    return missing_as_dash(out), source


# ----------------------------------------------------------------------------- one run
RUN_SUMMARY = ("method", "dataset", "T", "epochs", "seed", "top1", "best_top1", "best_epoch", "teacher_top1",
               "hybrid_top1", "train_time_s", "peak_mem_mb", "device", "git_commit")


def training_curves(res: dict):
    """A run's training loss and test top-1 per epoch (SNN or ANN, and every hybrid M_k), and its summary;
    the title says whether it converged (``converged``)."""
    import matplotlib.pyplot as plt

    history = pd.DataFrame(res["history"]).set_index("epoch")
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    history["train_loss"].plot(ax=a, marker="o", title="training loss")
    acc_cols = [c for c in history.columns if c.startswith(("top1", "hybrid_top1"))]
    spread = last_epochs_spread(res)
    state = "" if spread is None else (f"; moved {spread:.2f} over the last {CONVERGENCE_WINDOW} epochs"
                                       + ("" if converged(res) else f" ({NOT_CONVERGED})"))
    history[acc_cols].plot(ax=b, marker="o", title=f"test top-1 (%){state}")
    b.title.set_fontsize(9)
    fig.tight_layout()
    summary = pd.Series({k: res.get(k) for k in RUN_SUMMARY}, dtype=object).to_frame("value")
    return fig, summary


# ----------------------------------------------------------------------------- runs index
def runs_index(profile: str | None = None) -> pd.DataFrame:
    p = profile or book_profile()
    rows = []
    for run in runs(p):
        res = result(run.name, p)
        html = default_results_root() / "_site" / "runs" / p / f"{run.name}.html"
        link = f'<a href="../runs/{p}/{run.name}.html">{run.notebook}</a>' if html.is_file() else run.notebook
        acc = res.get("top1") if res else None
        trained = isinstance(acc, (int, float)) and bool(res.get("history"))
        spread = last_epochs_spread(res) if trained else None
        rows.append({"run": run.name, "notebook": link, "feeds": ", ".join(run.cells),
                     "status": "done" if res else NOT_RUN,
                     "final top-1 (%)": f"{acc:.2f}" if isinstance(acc, (int, float)) else "",
                     "best top-1 (%) [epoch]": (f"{res['best_top1']:.2f} [{res['best_epoch']}]"
                                                if trained and "best_top1" in res else ""),
                     f"moved over last {CONVERGENCE_WINDOW} epochs": (
                         "" if spread is None else f"{spread:.2f}" + ("" if converged(res) else f" ({NOT_CONVERGED})")),
                     "provenance": provenance(res) if res and "method" in res else
                     (f"{res.get('device')}, commit {res.get('git_commit')}" if res else NOT_RUN)})
    return pd.DataFrame(rows)


def html_table(df: pd.DataFrame):
    """Render a DataFrame as HTML in a notebook cell (links kept, no index)."""
    from IPython.display import HTML

    # a wide table scrolls sideways on a phone instead of being cut at the screen's edge
    return HTML('<div style="overflow-x: auto; max-width: 100%">'
                + df.to_html(index=False, escape=False, na_rep=NOT_RUN) + "</div>")


# ----------------------------------------------------------------------------- spike costs (firing rates, energy)
NOT_REPORTED = "not reported"
NOT_RECORDED = "not recorded"   # a committed record from before the measure existed


def spike_costs(res: dict | None) -> dict | None:
    """The ``spike_costs`` a finished run recorded (``spikecosts``), None where it has none."""
    return (res or {}).get("spike_costs")


def _teacher_run(prm: dict, p: str) -> dict | None:
    """The result of the plan's teacher run for a student's teacher and data set (its ANN's MACs)."""
    ref = prm.get("teacher_ckpt")
    if isinstance(ref, str) and ref.startswith("@"):
        return result(ref[1:], p)
    for run in runs(p):
        if run.notebook == "train_teacher" and run.params.get("teacher") == prm.get("teacher") \
                and run.params.get("dataset") == prm.get("dataset"):
            return result(run.name, p)
    return None


def energy_vs_teacher(res: dict | None, prm: dict, p: str) -> float | None:
    """A student's energy per image over its teacher's (the teacher's MACs at ``pj_per_mac``): the run's own
    figure where it had a teacher, else the plan's teacher run's MACs."""
    c = spike_costs(res)
    if not c:
        return None
    if c.get("energy_vs_teacher") is not None:
        return c["energy_vs_teacher"]
    t = spike_costs(_teacher_run(prm, p))
    return c["energy_uj_per_image"] / t["ann_energy_uj_per_image"] if t and t.get("ann_energy_uj_per_image") else None


def _memory(costs: dict | None) -> dict:
    """A run's memory-aware estimate (``spikecosts.memory_aware_costs``; empty where the run predates it)."""
    return (costs or {}).get("memory_aware") or {}


def memory_vs_teacher(res: dict | None, prm: dict, p: str) -> float | None:
    """A student's memory-aware energy per image over its teacher's (spikingjelly's estimator, compute and
    memory): the run's own figure where it had a teacher, else the plan's teacher run's estimate."""
    c = _memory(spike_costs(res))
    if not c:
        return None
    if c.get("vs_teacher") is not None:
        return c["vs_teacher"]
    t = _memory(spike_costs(_teacher_run(prm, p))).get("ann")
    return c["student"]["total_uj"] / t["total_uj"] if t and t.get("total_uj") else None


def _uj_text(value) -> str:
    return MISSING if value is None else f"{value:.4g}"


def _rate_text(res) -> str:
    c = spike_costs(res)
    return f"{c['firing_rate']:.3f}" if c else MISSING


def _energy_text(value) -> str:
    return MISSING if value is None else f"{value:.3f}x"


def student_costs(profile: str | None = None) -> pd.DataFrame:
    """Every trained student of the profile: accuracy, firing rate, operations and energy per image."""
    p = profile or book_profile()
    rows = []
    for run in runs(p):
        prm = run.params
        if run.notebook != "train_student":
            continue
        res = result(run.name, p)
        c = spike_costs(res)
        rows.append({"run": run.name, "student": _short(prm["student"]), "method": get_method(prm["method"]).title,
                     "T": prm["T"], "top-1 (%)": f"{res['top1']:.2f}" if res else NOT_RUN,
                     "firing rate": f"{c['firing_rate']:.3f}" if c else NOT_RUN,
                     "SynOps (ACs) / image": f"{c['synops_per_image']:.3g}" if c else NOT_RUN,
                     "MACs / image": f"{c['macs_per_image']:.3g}" if c else NOT_RUN,
                     "ANN MACs / image": f"{c['ann_macs_per_image']:.3g}" if c else NOT_RUN,
                     "compute only (µJ / image)": f"{c['energy_uj_per_image']:.4g}" if c else NOT_RUN,
                     "memory-aware (µJ / image)": _uj_text(_memory(c).get("student", {}).get("total_uj")) if c
                     else NOT_RUN,
                     "vs same ANN, compute only": _energy_text(c["energy_vs_ann"]) if c else NOT_RUN,
                     "vs same ANN, memory-aware": _energy_text(_memory(c).get("vs_ann")) if c else NOT_RUN,
                     "vs teacher, compute only": _energy_text(energy_vs_teacher(res, prm, p)) if c else NOT_RUN,
                     "vs teacher, memory-aware": _energy_text(memory_vs_teacher(res, prm, p)) if c else NOT_RUN})
    return pd.DataFrame(rows)


def energy_model_note(profile: str | None = None) -> str:
    """What the energy figures assume, from the runs' own records."""
    p = profile or book_profile()
    for run in runs(p):
        c = spike_costs(result(run.name, p))
        if c and "energy_model" in c and "bn" in c:
            e = c["energy_model"]
            m = _memory(c)
            memory = (f" Memory-aware: {m['estimator']}, the same pJ per operation and {m['pj_per_byte']} pJ per byte "
                      f"of memory traffic, on the first {m['images']} test images of each run." if m else
                      " No memory-aware estimate was recorded (runs from before it existed).")
            return (f"Compute only: energy = {e['pj_per_ac']} pJ per accumulate (a spike reaching a synapse) + "
                    f"{e['pj_per_mac']} pJ per multiply-accumulate ({e['source']}). BatchNorm is {c['bn']}. Counted "
                    f"over the {c['images']} test images of each run.{memory}")
    return "No run of this profile has recorded its spike costs yet (not run)."


def layer_rates_plot(profile: str | None = None):
    """Per student architecture: firing rate of every LIF layer (in network order), one line per run
    (method, T); None if no run recorded its rates."""
    import matplotlib.pyplot as plt

    p = profile or book_profile()
    by_student: dict[str, list] = {}
    for run in runs(p):
        if run.notebook == "train_student":
            c = spike_costs(result(run.name, p))
            if c and c.get("layers"):
                label = f"{get_method(run.params['method']).title}, T={run.params['T']}" + (
                    ", hard reset" if run.params.get("neuron") == {"v_reset": 0.0} else "")
                by_student.setdefault(_short(run.params["student"]), []).append((label, c["layers"]))
    if not by_student:
        return None
    fig, axes = plt.subplots(len(by_student), 1, figsize=(9, 2.8 * len(by_student)), squeeze=False)
    for ax, (student, lines) in zip(axes[:, 0], by_student.items()):
        for label, layers in lines:
            rates = [layer["rate"] for layer in layers]
            spread = [layer["rate_std"] for layer in layers]
            xs = range(len(rates))
            ax.plot(xs, rates, marker=".", label=label)
            ax.fill_between(xs, [r - s for r, s in zip(rates, spread)], [r + s for r, s in zip(rates, spread)],
                            alpha=0.12)
        names = [layer["name"] for layer in lines[0][1]]
        step = max(1, len(names) // 14)
        ax.set_xticks(range(0, len(names), step), names[::step], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("firing rate")
        ax.set_title(f"measured ({p}): {student}", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def costs_vs_T_plot(profile: str | None = None):
    """Table A's students against T: average firing rate, and energy relative to the teacher by each estimate
    (compute only; memory-aware), the two side by side on one scale (None if not run)."""
    import matplotlib.pyplot as plt

    p = profile or book_profile()
    rows = []
    for run in table_a_runs(p):
        res, prm = result(run.name, p), run.params
        if spike_costs(res):
            pair = f"{NICE.get(prm['dataset'], prm['dataset'])}: {_short(prm['student'])} <- {_short(prm['teacher'])}"
            rows.append({"pair": pair, "T": prm["T"], "firing rate": spike_costs(res)["firing_rate"],
                         ENERGY: energy_vs_teacher(res, prm, p), MEMORY: memory_vs_teacher(res, prm, p)})
    if not rows:
        return None
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, col in zip(axes, ("firing rate", ENERGY, MEMORY)):
        df.pivot(index="T", columns="pair", values=col).astype(float).plot(ax=ax, marker="o",
                                                                          title=f"measured ({p}):\n{col}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    top = max(1.05, float(df[[ENERGY, MEMORY]].astype(float).max().max()) * 1.1)
    for ax in axes[1:]:
        ax.axhline(1, color="k", lw=0.8)
        ax.set_ylim(0, top)
    fig.tight_layout()
    return fig


def nir_checks(profile: str | None = None) -> pd.DataFrame:
    """The NIR export runs: the student exported, read back (snnTorch, or nirtorch for an exact soft reset) and
    run beside it on the whole test set."""
    p = profile or book_profile()
    rows = []
    for run in runs(p):
        if run.notebook != "export":
            continue
        r = result(run.name, p)
        pct = lambda k: f"{100 * r[k]:.2f}" if r else NOT_RUN
        hard = run.params["run"].endswith("_hardreset")
        rows.append({"run": run.name, "student run": run.params["run"].lstrip("@"),
                     "student resets": "to 0 (NIR's LIF)" if hard else "by subtraction (the reference's)",
                     "written as": ("NIR's LIF (exact)" if hard else _SOFT_RESET_WRITTEN[run.params["soft_reset"]]),
                     "read by": r["framework"] if r else NOT_RUN,
                     "images": r["images"] if r else NOT_RUN, "T": r["T"] if r else NOT_RUN,
                     "dt (s)": f"{r['dt']:g}" if r else NOT_RUN,
                     "top-1 (%): student / graph": (f"{r['student_top1']:.2f} / {r['reader_top1']:.2f}"
                                                    if r and "student_top1" in r else NOT_RUN),
                     "same prediction (%)": pct("prediction_agreement"),
                     "equal spike counts (%)": pct("spike_count_agreement"),
                     "last LIF layer (%)": pct("last_lif_spike_count_agreement"),
                     "max logit difference": f"{r['max_logit_difference']:.3g}" if r else NOT_RUN,
                     "vs what the graph describes: same prediction (%)": pct("exact_prediction_agreement"),
                     "vs what the graph describes: equal spike counts (%)": pct("exact_spike_count_agreement")})
    return pd.DataFrame(rows)


_SOFT_RESET_WRITTEN = {"exact": "NIR's LI + Threshold + recurrent Scale (exact)",
                       "approximate": "NIR's LIF, reset to 0 (approximation)"}


# ----------------------------------------------------------------------------- the committed evidence (Fashion-MNIST)
EVIDENCE_PROFILE = "fashion"   # the profile whose committed records test the supplementary's claims


@lru_cache(maxsize=None)
def evidence(profile: str = EVIDENCE_PROFILE) -> dict | None:
    """The committed records of ``profile`` (``book/data/<profile>/``), None where there is no file or where its
    settings no longer match today's plan (stale evidence is not shown: ``stale_evidence`` says why)."""
    from hybridkd_lib.book.evidence import read_evidence

    ev = read_evidence(profile)
    return ev if ev is not None and not stale_evidence(profile) else None


@lru_cache(maxsize=None)
def stale_evidence(profile: str = EVIDENCE_PROFILE) -> tuple[str, ...]:
    """Why the committed records of ``profile`` are stale (runs whose settings differ from today's plan)."""
    from hybridkd_lib.book.evidence import read_evidence, stale_runs

    ev = read_evidence(profile)
    return tuple(stale_runs(ev)) if ev is not None else ()


def evidence_records(profile: str = EVIDENCE_PROFILE) -> list[dict]:
    ev = evidence(profile)
    return ev["records"] if ev else []


def evidence_source(profile: str = EVIDENCE_PROFILE) -> str:
    from hybridkd_lib.book.plan import SCALE

    return f"measured ({profile}, {len(SCALE[profile]['seeds'])} seeds)"


def _students(records: list[dict], **match) -> list[dict]:
    return [r for r in records if r.get("notebook") == "train_student" and all(r.get(k) == v for k, v in match.items())]


def _seed_cell(recs: list[dict], ref: float | None = None) -> str:
    """A cell over seeds: mean ± sample std of the final top-1 (and the mean's gap to ``ref``), marked where a
    seed's run had not converged."""
    from hybridkd_lib.book.claims import mean_std

    if not recs:
        return NOT_RUN
    alive = [r for r in recs if not r.get("at_chance")]
    dead = f" ({len(recs) - len(alive)} of {len(recs)} at chance, left out)" if len(alive) < len(recs) else ""
    if not alive:
        return f"{AT_CHANCE}{dead}"
    m, sd = mean_std(r["top1"] for r in alive)
    moving = sum(not r["converged"] for r in alive)
    return (f"{m:.2f} ± {sd:.2f}" + (f" ({m - ref:+.2f})" if ref is not None else "") + dead
            + (f" {NOT_CONVERGED} ({moving} of {len(alive)})" if moving else ""))


AT_CHANCE = "at chance (diverged)"


def _mean_of(recs: list[dict], key: str) -> float | None:
    values = [r[key] for r in recs if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _rate_of(recs: list[dict]) -> str:
    rate = _mean_of(recs, "firing_rate")
    return MISSING if rate is None else f"{rate:.3f}"


def evidence_table_a_rows(profile: str = EVIDENCE_PROFILE) -> list[dict]:
    """Table A's rows of the committed profile: per pair and T, the mean ± std over seeds (gap to the teacher)."""
    from hybridkd_lib.book.claims import TABLE_A_PAIRS

    rows, records = [], evidence_records(profile)
    for student, teacher in TABLE_A_PAIRS.values():
        ours = _students(records, method="hybrid", student=student, teacher=teacher)
        if not ours:
            continue
        t_acc = ours[0]["teacher_top1"]
        by_T = {T: [r for r in ours if r["T"] == T] for T in (2, 4, 6, 8)}
        rows.append({"source": evidence_source(profile), "dataset": NICE.get(ours[0]["dataset"]),
                     "teacher": f"{_short(teacher)} ({_fmt(t_acc)})", "student": _short(student),
                     **{f"T={T}": _seed_cell(recs, t_acc) for T, recs in by_T.items()},
                     RATE_A: " / ".join(_rate_of(r) for r in by_T.values()),
                     ENERGY_A: " / ".join(_energy_text(_mean_of(r, "energy_vs_teacher")) for r in by_T.values()),
                     MEMORY_A: NOT_RECORDED,
                     "seed spread": "± per cell (its own seeds)", "seed noise": CLAIMS_LINK})
    return rows


def evidence_table_b_rows(profile: str = EVIDENCE_PROFILE) -> list[dict]:
    """Table B's comparison on the committed profile: RateBP alone, Vanilla KD and ours at T = 4, mean ± std over
    the same seeds, for every student the profile compares them on."""
    rows, records = [], evidence_records(profile)
    students = dict.fromkeys(r["student"] for r in _students(records, T=4) if r["method"] == "kd")
    for student in students:
        for method in TABLE_B_METHODS_ORDER:
            recs = _students(records, student=student, method=method, T=4)
            if not recs:
                continue
            teacher = method in methods_where(teacher=True)
            t_acc = recs[0]["teacher_top1"] if teacher else None
            rows.append({"source": evidence_source(profile), "dataset": NICE.get(recs[0]["dataset"]),
                         "method": get_method(method).title,
                         "teacher": f"{_short(recs[0]['teacher'])} ({_fmt(t_acc)})" if teacher else "-",
                         "student": _short(student) + (f" (dim {recs[0]['settings']['student_kw']['dim']})"
                                                       if recs[0]["settings"].get("student_kw", {}).get("dim") else ""),
                         "T": 4, "top-1 (%)": _seed_cell(recs, t_acc),
                         "firing rate": _rate_of(recs),
                         ENERGY: _energy_text(_mean_of(recs, "energy_vs_teacher")), MEMORY: NOT_RECORDED,
                         "seed spread": "± per cell (its own seeds)", "seed noise": CLAIMS_LINK})
    return rows


CLAIMS_LINK = '<a href="claims.html">paired over seeds: What the measurements say</a>'
TABLE_B_METHODS_ORDER = ("ratebp", "kd", "hybrid")


def claims_table(profile: str = EVIDENCE_PROFILE) -> pd.DataFrame:
    """Every claim the committed profile and the committed CPU bench can test: the cells' means ± std, the
    paired difference with its 95 % interval, and the verdict (``claims``)."""
    from hybridkd_lib.book import claims

    rows = [claims.summary_row(c) for c in claims.accuracy_comparisons(evidence_records(profile), _short_any)]
    by_file: dict[str, list] = {}
    for r in bench_records():
        if r.get("source", "").startswith("measured (CPU file") and _target_setting(r):
            by_file.setdefault(r["source"].split("file ")[1].rstrip(")"), []).append(r)
    rows += [{"claim": row["claim"], "paper": row["paper"], "comparison": f"{row['comparison']} (CPU bench {name})",
              "seeds": "-", "runs not converged": "-", "left out (run at chance)": "-", "cells (mean ± std, %)": row["measured"],
              "paired difference [95 % CI]": "-", "verdict": row["verdict"]}
             for name, bench in by_file.items() for row in claims.bench_comparisons(bench)]
    return pd.DataFrame(rows) if rows else pd.DataFrame({"status": [NOT_RUN]})


def _short_any(arch: str) -> str:
    return _short(arch) if arch in NICE else arch


def teachers_table(profile: str = EVIDENCE_PROFILE) -> pd.DataFrame:
    """The committed profile's teachers: final and best top-1, epochs, seed."""
    rows = [{"teacher": NICE.get(r["teacher"], r["teacher"]), "run": r["run"], "epochs": r["epochs"], "seed": r["seed"],
             "final top-1 (%)": f"{r['top1']:.2f}", "best top-1 (%) [epoch]": f"{r['best_top1']:.2f} [{r['best_epoch']}]"}
            for r in evidence_records(profile) if r.get("notebook") == "train_teacher"]
    return pd.DataFrame(rows) if rows else pd.DataFrame({"status": [NOT_RUN]})


def evidence_runs_table(profile: str = EVIDENCE_PROFILE) -> pd.DataFrame:
    """Every committed student run: cell, seed, final and best top-1, how far it moved over its last epochs."""
    rows = [{"run": r["run"], "method": get_method(r["method"]).title, "student": _short(r["student"]), "T": r["T"],
             "seed": r["seed"], "final top-1 (%)": f"{r['top1']:.2f}",
             "best top-1 (%) [epoch]": f"{r['best_top1']:.2f} [{r['best_epoch']}]",
             f"moved over last {CONVERGENCE_WINDOW} epochs": (MISSING if r["last_epochs_spread"] is None else
                                                                f"{r['last_epochs_spread']:.2f}")
             + ("" if r["converged"] else f" ({NOT_CONVERGED})") + (f" ({AT_CHANCE})" if r.get("at_chance") else ""),
             "train time (s)": f"{r['train_time_s']:.0f}", "commit": r["git_commit"]}
            for r in _students(evidence_records(profile))]
    return pd.DataFrame(rows) if rows else pd.DataFrame({"status": [NOT_RUN]})


def evidence_note(profile: str = EVIDENCE_PROFILE) -> str:
    """When, where and with which command the committed records were measured, and how many students converged
    by the book's criterion; or why they are not shown."""
    from hybridkd_lib.book.evidence import evidence_file

    stale = stale_evidence(profile)
    if stale:
        return (f"**Stale evidence, not shown**: the committed records of profile {profile} no longer match today's "
                f"plan ({'; '.join(stale[:4])}{' ...' if len(stale) > 4 else ''}). Run `python -m hybridkd_lib "
                f"reproduce --profile {profile}` to measure them again.")
    ev = evidence(profile)
    if ev is None:
        return f"**not run**: no committed records of profile {profile} (`python -m hybridkd_lib reproduce --profile {profile}`)."
    days = sorted(r["finished_at"][:16].replace("T", " ") for r in ev["records"] if r.get("finished_at"))
    when = f"runs finished between {days[0]} and {days[-1]} UTC" if days else "finishing times not recorded"
    commits = ", ".join(sorted({str(r.get("git_commit")) for r in ev["records"]}))
    students = _students(ev["records"])
    m = ev["machine"]
    wall = f"; the whole profile took {ev['wall_s'] / 60:.0f} minutes of wall time" if ev.get("wall_s") else ""
    return (f"Measured on {m['cpu']} ({m['cores']} cores; torch {m['torch']}, {m['torch_threads']} threads by "
            f"default), {when}{wall}, with `{ev['command']}` at commit(s) {commits}; committed as "
            f"`{_repo_relative(evidence_file(profile))}`. "
            f"{sum(r['converged'] and not r.get('at_chance') for r in students)} of {len(students)} student runs "
            f"converged by the book's criterion (final top-1 moved by at most {CONVERGENCE_TOLERANCE:.0f} point over "
            f"the last {CONVERGENCE_WINDOW} epochs); {_at_chance_text(students)}.")


def _at_chance_text(students: list[dict]) -> str:
    dead = [r["run"] for r in students if r.get("at_chance")]
    return (f"{len(dead)} ended at chance, their training diverged ({', '.join(dead)}): each is left out of "
            f"its cells' means and of the comparisons it would enter" if dead else "none ended at chance")


def _repo_relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if REPO_ROOT in path.parents else str(path)


def evidence_scale_note(profile: str = EVIDENCE_PROFILE) -> str:
    """What the committed profile scaled down, read off the plan."""
    from hybridkd_lib.book.plan import SCALE

    s, f = SCALE[profile], scale_facts("quick")
    kw = s["data_kw"]
    return (f"Profile **{profile}**: Fashion-MNIST {kw['image_size']}x{kw['image_size']} (resized from 28x28), a fixed "
            f"class-balanced subset of {kw['n_train']:,} of the 60,000 training images and {kw['n_test']:,} of the "
            f"10,000 test images (the same for every run), instead of CIFAR/ImageNet; ResNet widths {s['width']} "
            f"instead of {'/'.join(map(str, f['full_widths']))}, Spikingformer dim {s['sf_dim']} instead of "
            f"{f['full_sf_dim']}; teachers {s['teacher_epochs']} epochs (ViT {s['vit_epochs']}), students "
            f"{s['student_epochs']} instead of {f['full_student_epochs']}, batch 64, without the RateBP reference's 1/T "
            f"gradient scale, Spikingformer at learning rate {s['sf_lr']:g}, students' BN statistics recomputed from "
            f"{s['precise_bn']} fixed training batches before each evaluation; seeds {list(s['seeds'])} for every "
            f"student cell (the same seeds for every method and T), one seed per teacher.")


def claims_plot(profile: str = EVIDENCE_PROFILE):
    """Every seed as a dot beside its cell's mean: Table A's accuracy against T per pair (the teacher dashed),
    and Table B's methods per student, each seed's runs joined (paired). None where nothing is committed."""
    import matplotlib.pyplot as plt
    from hybridkd_lib.book.claims import TABLE_A_PAIRS

    records = evidence_records(profile)
    if not records:
        return None
    b_students = list(dict.fromkeys(r["student"] for r in _students(records, T=4) if r["method"] == "kd"))
    panels = len(TABLE_A_PAIRS) + len(b_students)
    cols = 2
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9, 3.3 * rows), squeeze=False)
    axes = axes.flatten()
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax, (student, teacher) in zip(axes, TABLE_A_PAIRS.values()):
        _table_a_panel(ax, records, student, teacher)
    for ax, student in zip(axes[len(TABLE_A_PAIRS):], b_students):
        _table_b_panel(ax, records, student)
    for ax in axes[:panels]:
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"measured ({profile}): every seed a dot, its runs joined; black: the mean", fontsize=9)
    fig.tight_layout()
    return fig


def _left_out_note(everyone: list[dict]) -> str:
    """A panel title's line saying how many of its runs ended at chance and were left out (empty if none)."""
    n = sum(r.get("at_chance", False) for r in everyone)
    return f"\n({n} run at chance left out)" if n else ""


def _table_a_panel(ax, records: list[dict], student: str, teacher: str) -> None:
    """``claims_plot``'s Table A panel of one pair: our method's top-1 against T, a line per seed, the mean over
    seeds and the teacher (dashed)."""
    everyone = _students(records, method="hybrid", student=student, teacher=teacher)
    ours = [r for r in everyone if not r.get("at_chance")]
    Ts = sorted({r["T"] for r in ours})
    for seed in sorted({r["seed"] for r in ours}):
        pts = sorted((r["T"], r["top1"]) for r in ours if r["seed"] == seed)
        ax.plot(*zip(*pts), color="tab:blue", alpha=0.35, marker="o", ms=4, lw=0.8)
    means = [sum(r["top1"] for r in ours if r["T"] == T) / sum(r["T"] == T for r in ours) for T in Ts]
    ax.plot(Ts, means, color="k", marker="_", ms=16, lw=1.6, label="mean over seeds")
    if ours:
        ax.axhline(ours[0]["teacher_top1"], color="tab:red", ls="--", lw=1, label="teacher")
    ax.set(title=f"Tab. A: {_short(student)} <- {_short(teacher)}, ours{_left_out_note(everyone)}", xlabel="T",
           ylabel="test top-1 (%)", xticks=Ts)
    ax.legend(fontsize=7)


def _table_b_panel(ax, records: list[dict], student: str) -> None:
    """``claims_plot``'s Table B panel of one student at T=4: top-1 per method, each seed's runs joined, and the
    mean over seeds."""
    everyone = _students(records, student=student, T=4)
    recs = [r for r in everyone if not r.get("at_chance")]
    methods = [m for m in TABLE_B_METHODS_ORDER if any(r["method"] == m for r in recs)]
    for seed in sorted({r["seed"] for r in recs}):
        ys = [next((r["top1"] for r in recs if r["method"] == m and r["seed"] == seed), None) for m in methods]
        ax.plot(range(len(methods)), ys, color="tab:blue", alpha=0.35, marker="o", ms=4, lw=0.8)
    means = [sum(r["top1"] for r in recs if r["method"] == m) / sum(r["method"] == m for r in recs) for m in methods]
    ax.plot(range(len(methods)), means, color="k", marker="_", ms=16, lw=0, label="mean over seeds")
    ax.set_xticks(range(len(methods)), [get_method(m).title for m in methods], fontsize=8)
    ax.set(title=f"Tab. B: {_short(student)}, T=4{_left_out_note(everyone)}", ylabel="test top-1 (%)",
           xlim=(-0.4, len(methods) - 0.6))
    ax.legend(fontsize=7)


def fig_a_evidence(profile: str = EVIDENCE_PROFILE):
    """(path to the committed Grad-CAM figure of ``profile`` or None, its record or None)."""
    from hybridkd_lib.book.evidence import cam_figure

    rec = next((r for r in evidence_records(profile) if r.get("notebook") == "cam"), None)
    path = cam_figure(profile)
    return (path if rec is not None and path.is_file() else None), rec
