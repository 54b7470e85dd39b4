"""The tutorials' drawing and measuring helpers, so that a tutorial's cells show what a student types.

- ``draw_two_passes``: BPTT's unrolled graph beside RateBP's two passes (Tutorial 2);
- ``saved_for_backward_mb``, ``bptt_memory_fit``: the bytes autograd keeps for backward against T, and the
  straight line through BPTT's (Tutorial 2);
- ``peak_extra_mb``, ``spike_pass_costs``, ``plot_spike_pass_costs``: the spike pass's time and a step's peak
  resident memory against T (Tutorial 2);
- ``ablation_rows``, ``ablation_settings``, ``hybrid_accuracies``: the committed ablation's rows and settings
  the tutorials read (Tutorials 2, 3);
- ``draw_hybrids``: the SNN, its hybrids M_k and the teacher, block by block (Tutorial 3);
- ``run_dir``, ``train_or_reuse``: a tutorial's training runs, one folder per settings, so that a re-run with
  the same settings reads the finished run and one with other settings trains into a new folder (Tutorial 3);
- ``energy_estimates``, ``energy_table``, ``energy_counts``, ``memory_sensitivity``: a trained student's and its
  teacher's energy per image from two counters on the same test images, the library's (``spike_costs``,
  compute only) and spikingjelly's (``memory_aware_energy``, compute and memory), each read within itself
  (Tutorial 3).
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
def _saved_mb(model, x: torch.Tensor, method: str) -> float:
    """MB of the activations autograd saves for backward in one forward + backward (parameters not counted)."""
    from hybridkd_lib.snn import ratebp

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ratebp.rate_forward(model, x) if method == "ratebp" else model(x)
    out.sum().backward()
    return sum(seen.values()) / 2**20


def saved_for_backward_mb(model, x: torch.Tensor, Ts) -> pd.DataFrame:
    """Per T of ``Ts``: the MB of activations autograd keeps for backward (counted with
    ``torch.autograd.graph.saved_tensors_hooks``, each storage once, parameters left out) in one forward +
    backward of the spiking ``model`` on the static batch ``x``, with BPTT and with RateBP. ``model.T`` is left
    at the last T."""
    rows = []
    for T in Ts:
        model.T = T
        rows.append({"T": T, "BPTT (MB)": _saved_mb(model, x, "bptt"), "RateBP (MB)": _saved_mb(model, x, "ratebp")})
    return pd.DataFrame(rows).set_index("T")


def bptt_memory_fit(mem: pd.DataFrame) -> tuple[float, float] | None:
    """The least-squares line through ``saved_for_backward_mb``'s BPTT column: ``(fixed MB, MB per step)``
    (the part that does not grow with T, and the slope); None with fewer than two T."""
    import numpy as np

    if len(mem) < 2:
        return None
    slope, fixed = np.polyfit(mem.index.to_numpy(dtype=float), mem["BPTT (MB)"].to_numpy(), 1)
    return float(fixed), float(slope)


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


def ablation_settings(run_varied: str) -> dict:
    """The settings the ablation trains the variants of ``run_varied`` with (``hybridkd_lib.book.plan``'s
    ``ablation`` profile: the quick run it varies, at the ablation's seeds and epochs), as its first variant's
    run: dataset and image size, student and teacher with their options, T, optimizer, learning rate, batch,
    epochs, and the seeds. The loss options each variant changes are ``ablation_rows``' column."""
    from hybridkd_lib.book import plan

    variants = [v for v, (base, _) in plan.ABLATIONS.items() if base == run_varied]
    if not variants:
        raise ValueError(f"run_varied={run_varied!r}: the ablation varies "
                         f"{', '.join(sorted({base for base, _ in plan.ABLATIONS.values()}))}")
    runs = {r.name: r for r in plan.plan("ablation")}
    params = dict(runs[plan.ablation_run_name(variants[0], plan.ABLATION_SEEDS[0])].params)
    for key in ("seed", "loss", "device", "teacher_ckpt", "max_steps_per_epoch", "precise_bn"):
        params.pop(key, None)
    return dict(params, seeds=list(plan.ABLATION_SEEDS))


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


def _test_images(result: dict, images: int | None) -> torch.Tensor:
    from hybridkd_lib.data import datasets

    test_set = datasets.get_datasets(result["dataset"], result.get("data_root"), **result.get("data_kw", {}))[1]
    n = len(test_set) if images is None else min(images, len(test_set))
    return torch.stack([test_set[i][0] for i in range(n)])


def energy_estimates(student_run: str | Path, teacher_run: str | Path, images: int | None = None) -> dict:
    """A trained student's and its teacher's operations and energy per image, counted on the **same** test
    images (the first ``images``; None: the whole test set, as the run's own spike-cost record) by two counters:

    - ``library``: ``spikecosts.spike_costs`` (student: the accumulates its spikes trigger in conv, linear and
      attention layers, and the MACs of the layers fed by non-spikes) and ``spikecosts.ann_macs`` (teacher),
      at ``EnergyModel``'s pJ per operation: compute only;
    - ``spikingjelly``: ``spikecosts.memory_aware_energy`` at ``SRAM_PJ_PER_BYTE``: its accumulates count every
      elementwise add as well (each neuron's charge and reset per step, residual adds), so its compute is not
      the library's; its memory part is per byte moved (``memory_bytes``).

    Returns ``images`` and, per ``"student"`` and ``"teacher"``: ``library`` (``acs``, ``macs``, ``uj``),
    ``spikingjelly`` (``memory_aware_energy``'s dict) and ``parameters``."""
    from hybridkd_lib.base.results import read_result
    from hybridkd_lib.snn.spikecosts import EnergyModel, ann_macs, memory_aware_energy, spike_costs

    x = _test_images(read_result(student_run), images)
    student, teacher, energy = _load(student_run), _load(teacher_run), EnergyModel()
    costs = spike_costs(student, [x])
    teacher_macs = ann_macs(teacher, x)
    out = {"images": len(x)}
    for name, model, acs, macs in (("student", student, costs["synops_per_image"], costs["macs_per_image"]),
                                   ("teacher", teacher, 0.0, teacher_macs)):
        out[name] = {"library": {"acs": acs, "macs": macs, "uj": energy.microjoules(acs, macs)},
                     "spikingjelly": memory_aware_energy(model, x),
                     "parameters": sum(p.numel() for p in model.parameters())}
    return out


def energy_table(est: dict) -> pd.DataFrame:
    """``energy_estimates``' energy per image (µJ) of the student and the teacher, and the ratio student /
    teacher, in three columns, each within one counter: the library's compute only, spikingjelly's compute,
    and spikingjelly's compute + memory. Compare the ratios along a row, never one counter's µJ with another's."""
    rows = {}
    for name, label in (("student", "SNN student"), ("teacher", "ANN teacher")):
        sj = est[name]["spikingjelly"]
        rows[label] = {"library: compute only": est[name]["library"]["uj"], "spikingjelly: compute": sj["compute_uj"],
                       "spikingjelly: compute + memory": sj["total_uj"]}
    table = pd.DataFrame(rows).T
    table.loc["student / teacher"] = table.loc["SNN student"] / table.loc["ANN teacher"]
    return table


def energy_counts(est: dict) -> pd.DataFrame:
    """``energy_estimates``' counts per image behind ``energy_table``: each counter's accumulates and MACs, the
    bytes spikingjelly's memory model moves, and each network's parameters and their float32 size (kB)."""
    rows = {}
    for name, label in (("student", "SNN student"), ("teacher", "ANN teacher")):
        lib, sj, n = est[name]["library"], est[name]["spikingjelly"], est[name]["parameters"]
        rows[label] = {"accumulates, library": lib["acs"], "accumulates, spikingjelly": sj["acs"],
                       "MACs, library": lib["macs"], "MACs, spikingjelly": sj["macs"],
                       "bytes moved, spikingjelly": sj["memory_bytes"], "parameters": n,
                       "weights (kB, float32)": 4 * n / 1000}
    return pd.DataFrame(rows).T


def memory_costs() -> dict[str, float]:
    """pJ per byte of memory traffic for ``memory_sensitivity``, from the most optimistic up: a 64-bit read from an
    8 kB SRAM (about 10 pJ at 45 nm, Horowitz ISSCC 2014: ``SRAM_PJ_PER_BYTE``), from a 1 MB SRAM (about 100 pJ,
    the same source), and spikingjelly 2.0.0's default (``SimpleEnergyCostConfig``). DRAM costs 1.3-2.6 nJ per
    64-bit read (the same source), another order of magnitude."""
    from spikingjelly.activation_based.op_counter import SimpleEnergyCostConfig

    from hybridkd_lib.snn.spikecosts import SRAM_PJ_PER_BYTE

    return {"8 kB SRAM": SRAM_PJ_PER_BYTE, "1 MB SRAM": 100.0 / 8,
            "spikingjelly's default": float(SimpleEnergyCostConfig().e_memory_pj_per_byte)}


def memory_sensitivity(est: dict, pj_per_byte: dict[str, float] | None = None) -> pd.DataFrame:
    """Per memory cost (``memory_costs()`` unless given, name -> pJ per byte): spikingjelly's compute + memory
    per image (µJ) of the student and the teacher, their ratio, and the memory's share of the student's total.
    spikingjelly's memory energy is its bytes moved times the cost per byte, so each row rescales
    ``energy_estimates``' ``memory_bytes`` (no new count)."""
    rows = {}
    for label, pj in (pj_per_byte or memory_costs()).items():
        total = {name: est[name]["spikingjelly"]["compute_uj"] + est[name]["spikingjelly"]["memory_bytes"] * pj * 1e-6
                 for name in ("student", "teacher")}
        rows[f"{label} ({pj:g} pJ/byte)"] = {
            "SNN student (µJ)": total["student"], "ANN teacher (µJ)": total["teacher"],
            "student / teacher": total["student"] / total["teacher"],
            "memory's share of the student's total": 1 - est["student"]["spikingjelly"]["compute_uj"] / total["student"]}
    return pd.DataFrame(rows).T
