"""The tutorials' drawing and measuring helpers, so that a tutorial's cells show what a student types.

- ``draw_two_passes``: BPTT's unrolled graph beside RateBP's two passes (Tutorial 2);
- ``peak_extra_mb``, ``spike_pass_costs``, ``plot_spike_pass_costs``: the spike pass's time and a step's peak
  resident memory against T (Tutorial 2);
- ``ablation_rows``, ``hybrid_accuracies``: the committed ablation's rows the tutorials read (Tutorials 2, 3);
- ``draw_hybrids``: the SNN, its hybrids M_k and the teacher, block by block (Tutorial 3);
- ``run_dir``, ``train_or_reuse``: a tutorial's training runs, one folder per settings, so that a re-run with
  the same settings reads the finished run and one with other settings trains into a new folder (Tutorial 3);
- ``energy_table``: the compute-only energy of a run's spike-cost records beside a memory-aware estimate
  (``hybridkd_lib.snn.spikecosts.memory_aware_energy``), for the student and its teacher (Tutorial 3).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch


# ----------------------------------------------------------------------------------------------- drawing
def _box(ax, x, y, text, colour, w=1.5, h=0.6):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03", fc=colour, ec="k"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, a, b, colour="k"):
    ax.annotate("", b, a, arrowprops={"arrowstyle": "->", "lw": 1, "color": colour})


def _draw_bptt(ax):
    ax.set_title("BPTT: one graph over all T steps", fontsize=10)
    for i, t in enumerate(("1", "2", "...", "T")):
        _box(ax, 1 + 2 * i, 2.4, f"LIF step t = {t}\nkeeps $u_t, s_t$" if t != "..." else "...", "#c6dbef")
        _box(ax, 1 + 2 * i, 0.8, f"$x_{t}$" if t != "..." else "...", "#f0f0f0", w=0.8)
        _arrow(ax, (1 + 2 * i, 1.1), (1 + 2 * i, 2.1))
        if i:
            _arrow(ax, (2 * i - 0.25, 2.4), (2 * i + 0.25, 2.4))
    ax.text(4, 3.35, r"$\partial L/\partial x_t = \sum_{t'\geq t}\,\partial L/\partial s_{t'}\;"
            r"\sigma'(u_{t'}-\theta)\;\lambda^{t'-t}$", ha="center", fontsize=9, color="tab:red")
    ax.text(4, 0.05, "memory: every step's activations, grows with T", ha="center", fontsize=8)


def _draw_ratebp(ax):
    ax.set_title("RateBP: spike pass (no graph), then one rate pass", fontsize=10)
    for i, t in enumerate(("1", "...", "T")):
        _box(ax, 0.9 + 1.8 * i, 2.6, f"LIF step t = {t}" if t != "..." else "...", "#e5f5e0", w=1.3)
        if i:
            _arrow(ax, (1.8 * i - 0.25, 2.6), (1.8 * i + 0.25, 2.6))
    _box(ax, 6.6, 2.6, "records per neuron\n$r = \\frac{1}{T}\\sum_t s_t$,  $e$", "#fdae6b", w=2.2)
    _arrow(ax, (5.17, 2.6), (5.48, 2.6))
    _box(ax, 1.5, 0.9, r"$\bar x = \frac{1}{T}\sum_t x_t$", "#f0f0f0", w=1.6)
    _box(ax, 4.2, 0.9, "LIF (rate pass)\nvalue $r$, slope $e$", "#c6dbef", w=2.0)
    _box(ax, 6.9, 0.9, "loss $L(r)$", "#f0f0f0", w=1.2)
    _arrow(ax, (2.3, 0.9), (3.2, 0.9))
    _arrow(ax, (5.2, 0.9), (6.3, 0.9))
    _arrow(ax, (6.6, 2.3), (4.6, 1.2), colour="tab:orange")
    ax.text(4.2, 0.05, r"$\partial L/\partial \bar x = \partial L/\partial r \cdot e$: graph of one batch-sized pass",
            ha="center", fontsize=9, color="tab:red")


def draw_two_passes():
    """The figure of Tutorial 2: BPTT (left) keeps the unrolled graph and gives each step's input its own
    gradient; RateBP (right) runs T steps without a graph, records ``r`` and ``e``, and backpropagates once."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax in (left, right):
        ax.set(xlim=(-0.5, 8.5), ylim=(-0.2, 3.6))
        ax.axis("off")
    _draw_bptt(left)
    _draw_ratebp(right)
    fig.tight_layout()
    return fig


def _hybrid_rows(learner) -> list:
    """``(label, [(block, kind), ...])`` per network: the SNN, every M_k, the teacher."""
    snn, ann, d = learner.student, learner.teacher, learner.distiller
    K = snn.num_stages
    rows = [("SNN", [("stem", "snn")] + [(f"S{i + 1}", "snn") for i in range(K)] + [("head", "snn")])]
    for k in range(d.num_hybrids):
        rows.append((f"$M_{k}$", [("stem", "snn")] + [(f"S{i + 1}", "snn") for i in range(k + 1)]
                     + [(f"$A_{k}$", "align")] + [(f"T{i + 1}", "ann") for i in range(d.pairs[k] + 1, ann.num_stages)]
                     + [("head", "ann")]))
    rows.append(("ANN", [("stem", "ann")] + [(f"T{i + 1}", "ann") for i in range(ann.num_stages)] + [("head", "ann")]))
    return rows


def draw_hybrids(learner):
    """The figure of Tutorial 3: the SNN, its hybrids M_k and the teacher of a ``hybrid`` learner, block by block
    (S: SNN stages, T: teacher stages; blue spiking, orange alignment A_k, grey frozen teacher)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    rows = _hybrid_rows(learner)
    longest = max(len(blocks) for _, blocks in rows)
    colour = {"snn": "#9ecae1", "align": "#fdae6b", "ann": "#d9d9d9"}
    fig, ax = plt.subplots(figsize=(1.0 * (longest + 1.5), 0.6 * len(rows) + 0.8))
    for r, (label, blocks) in enumerate(rows):
        yy = len(rows) - 1 - r
        ax.text(-0.3, yy, label, ha="right", va="center", fontsize=11)
        for c, (name, kind) in enumerate(blocks):
            ax.add_patch(FancyBboxPatch((c + 0.08, yy - 0.3), 0.84, 0.6, boxstyle="round,pad=0.02",
                                        fc=colour[kind], ec="k"))
            ax.text(c + 0.5, yy, name, ha="center", va="center", fontsize=9)
            if c:
                _arrow(ax, (c - 0.08, yy), (c + 0.08, yy))
    ax.set(xlim=(-1.2, longest + 0.2), ylim=(-0.8, len(rows) - 0.3))
    ax.axis("off")
    for kind, text in (("snn", "spiking (trained, RateBP)"), ("align", "alignment A_k (trained)"),
                       ("ann", "teacher (frozen)")):
        ax.add_patch(FancyBboxPatch((0, -10), 0.1, 0.1, fc=colour[kind], ec="k", label=text))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.25), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- measuring
def peak_extra_mb(step) -> float:
    """Peak resident memory (MB) of this process above its level before ``step()``, sampled every millisecond
    while ``step()`` runs (memory freed before is first returned to the system)."""
    import psutil

    from hybridkd_lib.training.memory import release_freed_memory

    release_freed_memory(torch.device("cpu"))
    proc = psutil.Process()
    base, peak, done = proc.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        step()
    finally:
        done.set()
        thread.join()
    return max(peak[0] - base, 0) / 2**20


def spike_pass_costs(Ts, width: int = 16, batch: int = 32, student: str = "spiking_resnet18") -> pd.DataFrame:
    """Per T: the time of RateBP's spike pass alone (fastest of 3) and the peak memory (``peak_extra_mb``) of one
    forward + backward with BPTT, RateBP, and RateBP with the spike pass writing temporaries over each other
    (``ratebp.set_spike_pass(in_place=True)``), for ``student`` of ``width`` on a random CIFAR-sized ``batch``."""
    import copy

    from hybridkd_lib.models import create_model
    from hybridkd_lib.snn import ratebp

    big = create_model(student, width=width).train()
    fast = copy.deepcopy(big)
    ratebp.set_spike_pass(fast, in_place=True)
    xb = torch.randn(batch, 3, 32, 32)
    steps = {"BPTT": lambda: big(xb).sum().backward(),
             "RateBP": lambda: ratebp.rate_forward(big, xb).sum().backward(),
             "RateBP in place": lambda: ratebp.rate_forward(fast, xb).sum().backward()}
    rows = []
    for T in Ts:
        big.T = fast.T = T
        ratebp.spike_pass(big, xb)                       # warm-up
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            ratebp.spike_pass(big, xb)
            runs.append(time.perf_counter() - t0)
        ratebp.set_mode(big, "bptt")
        row = {"T": T, "spike pass (s)": min(runs)}
        for name, step in steps.items():
            big.zero_grad(set_to_none=True)
            fast.zero_grad(set_to_none=True)
            row[f"peak MB above baseline, {name}"] = peak_extra_mb(step)
        rows.append(row)
    return pd.DataFrame(rows).set_index("T")


def plot_spike_pass_costs(cost: pd.DataFrame):
    """``spike_pass_costs``'s table as two panels: the spike pass's time, and the peak memories, against T."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
    cost["spike pass (s)"].plot(ax=a, marker="o", title="spike pass time")
    cost[[c for c in cost.columns if c.startswith("peak")]].plot(ax=b, marker="o",
                                                               title="peak memory of a forward + backward")
    a.set(ylabel="s")
    b.set(ylabel="MB above the level before")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- the book's records
def ablation_rows(run_varied: str) -> tuple[pd.DataFrame | None, str]:
    """The ablation's variants of the run ``run_varied`` (``"hybrid_r18_r18_T4"``: the hybrid terms;
    ``"hybrid_r19_r34_T8"``: RateBP's 1/T gradient scale): per variant its loss options, seeds, epochs and the
    SNN's final test top-1 mean and std over the seeds; and where they came from (this machine's
    ``results/ablation``, else the committed file). ``(None, "not run")`` without records."""
    from hybridkd_lib.book import report

    table, source = report.ablation_table()
    if "variant" not in table:
        return None, source
    rows = table[table["run varied"] == run_varied]
    columns = ["variant", "loss options", "seeds", "epochs", "SNN top-1 mean", "SNN top-1 std"]
    return (rows[columns].set_index("variant") if len(rows) else None), source


def hybrid_accuracies() -> tuple[pd.DataFrame, str]:
    """Per seed of the ablation's default hybrid runs: test top-1 of the teacher, every M_k and the SNN, and
    where they came from (an empty table and "not run" without records)."""
    from hybridkd_lib.book import report

    return report.hybrid_accuracies_over_seeds()


# ----------------------------------------------------------------------------------------------- runs
def run_dir(root: str | Path, cfg) -> Path:
    """The folder of the run ``cfg`` (a ``TrainConfig``) under ``root``: its method and seed, and a short hash of
    every other setting, so that other settings never meet a finished run of these."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(root) / f"{cfg.method}_s{cfg.seed}_{digest}"


def train_or_reuse(cfg, root: str | Path) -> dict:
    """``train`` the run ``cfg`` in ``run_dir(root, cfg)``, quietly; a finished run with the same settings is
    read, not trained again. Returns the result dict (its ``out`` is the run folder)."""
    from hybridkd_lib.training.trainer import train

    folder = run_dir(root, cfg)
    return dict(train(replace(cfg, out=str(folder)), log=lambda *args, **kw: None), out=str(folder))


# ----------------------------------------------------------------------------------------------- energy
def _load(run: str | Path):
    """A finished run's trained network (student or teacher), in eval mode."""
    from hybridkd_lib.base import checkpoint
    from hybridkd_lib.models import create_model

    state = checkpoint.load(Path(run) / "model.pt")
    model = create_model(state["arch"], num_classes=state["num_classes"], **state["model_kw"])
    model.load_state_dict(state["model"])
    return model.eval()


def _test_images(result: dict, images: int) -> torch.Tensor:
    from hybridkd_lib.data import datasets

    test_set = datasets.get_datasets(result["dataset"], result.get("data_root"), **result.get("data_kw", {}))[1]
    return torch.stack([test_set[i][0] for i in range(min(images, len(test_set)))])


def energy_table(student_run: str | Path, teacher_run: str | Path, images: int = 32) -> pd.DataFrame:
    """Energy per test image (µJ) of a trained student and its teacher, two ways: **compute only** (the run's
    spike-cost records: ``EnergyModel``'s pJ per accumulate and per MAC; the teacher's counted the same way)
    and **memory-aware** (``spikecosts.memory_aware_energy`` on the first ``images`` test images: the same
    operations counted by spikingjelly, plus weight reads and neuron-state reads and writes)."""
    from hybridkd_lib.base.results import read_result
    from hybridkd_lib.snn.spikecosts import memory_aware_energy

    result = read_result(student_run)
    costs = result["spike_costs"]
    x = _test_images(result, images)
    rows = {}
    for name, run, compute in (("SNN student", student_run, costs["energy_uj_per_image"]),
                               ("ANN teacher", teacher_run, costs.get("teacher_energy_uj_per_image"))):
        est = memory_aware_energy(_load(run), x)
        rows[name] = {"compute only (µJ)": compute, "memory-aware: compute (µJ)": est["compute_uj"],
                      "memory-aware: memory (µJ)": est["memory_uj"], "memory-aware: total (µJ)": est["total_uj"],
                      "bytes read or written": est["memory_bytes"]}
    return pd.DataFrame(rows).T
