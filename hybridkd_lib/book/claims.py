"""The supplementary's claims, tested on the records of a measured profile (``evidence``) and the committed
Fig. 4 bench: paired differences over seeds, their 95 % confidence intervals, and a verdict in words.

A claim compares two sets of runs that share their seeds (the same seeds for every method and T), so each
seed gives one difference; the interval is Student's t over those differences. The verdict reads the interval
alone: above 0 *supported*, below 0 *contradicted*, across 0 *not resolved at this scale*. A seed whose run in
either cell ended at chance (its training diverged: ``at_chance`` in the records) is left out of that comparison
and named: it measures the training's stability, not the claim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SUPPORTED, CONTRADICTED, NOT_RESOLVED = "supported", "contradicted", "not resolved at this scale"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """Run groups ``a`` and ``b`` (each: the records of one cell over its seeds) and what ``a - b > 0`` means."""

    claim: str          # the paper's statement, in its words where it has them
    where: str          # where the paper makes it
    setting: str        # what this comparison is (pair, T, method)
    a: str              # label of the first cell
    b: str              # label of the second cell
    diffs: dict         # seed -> a - b (percentage points), seeds present in both cells only
    a_values: dict      # seed -> the first cell's value
    b_values: dict      # seed -> the second cell's value
    unit: str = "pp"
    not_converged: int = 0   # runs of the two cells (paired seeds) still moving by the book's criterion
    runs: int = 0            # runs of the two cells (paired seeds)
    left_out: tuple = ()     # runs at chance (diverged) whose seeds were left out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    m = sum(values) / len(values)
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)


def t_interval(diffs, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of ``diffs`` (needs 2 or more)."""
    from scipy import stats

    diffs = list(diffs)
    if len(diffs) < 2:
        raise ValueError(f"a confidence interval needs 2 or more paired differences, got {len(diffs)}")
    m, sd = mean_std(diffs)
    half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return m, m - half, m + half


def verdict(low: float, high: float) -> str:
    """What an interval of ``a - b`` says of the claim ``a > b``."""
    return SUPPORTED if low > 0 else CONTRADICTED if high < 0 else NOT_RESOLVED


def cell(records: list[dict], **match) -> dict[int, dict]:
    """The records of one cell, by seed: those whose fields equal ``match``."""
    return {r["seed"]: r for r in records if all(r.get(k) == v for k, v in match.items())}


def compare(claim: str, where: str, setting: str, a: tuple[str, dict], b: tuple[str, dict], value) -> Comparison:
    """Cells ``a`` and ``b`` (label, seed -> record) paired by seed; ``value(record)`` is what is compared."""
    (la, ra), (lb, rb) = a, b
    both = sorted(set(ra) & set(rb))
    dead = tuple(r["run"] for s in both for r in (ra[s], rb[s]) if r.get("at_chance"))
    seeds = [s for s in both if not (ra[s].get("at_chance") or rb[s].get("at_chance"))]
    runs = [ra[s] for s in seeds] + [rb[s] for s in seeds]
    return Comparison(claim, where, setting, la, lb, {s: value(ra[s]) - value(rb[s]) for s in seeds},
                      {s: value(ra[s]) for s in seeds}, {s: value(rb[s]) for s in seeds},
                      not_converged=sum(r.get("converged") is False for r in runs), runs=len(runs), left_out=dead)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y on x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


TABLE_A_PAIRS = {"r18_r18": ("spiking_resnet18", "cifar_resnet18"), "r19_r34": ("spiking_resnet19", "cifar_resnet34")}
LARGER_T = "A larger T improves performance"
GAP_SHRINKS = "The gap to the teacher shrinks as T grows"
OURS_VS_KD = "Ours outperforms Vanilla KD"
OURS_VS_RATEBP = "Ours outperforms RateBP alone"


def accuracy_comparisons(records: list[dict], nice=lambda name: name) -> list[Comparison]:
    """Every accuracy claim the records can test (students only; ``nice`` names architectures)."""
    top1 = lambda r: r["top1"]
    out = []
    students = [r for r in records if r.get("notebook") == "train_student"]
    for tag, (student, teacher) in TABLE_A_PAIRS.items():
        ours = [r for r in students if r["method"] == "hybrid" and r["student"] == student and r["teacher"] == teacher]
        Ts = sorted({r["T"] for r in ours})
        if len(Ts) < 2:
            continue
        pair = f"{nice(student)} <- {nice(teacher)}, ours"
        lo, hi = Ts[0], Ts[-1]
        out.append(compare(LARGER_T, "Tab. A, §1", f"{pair}: T={hi} vs T={lo}",
                           (f"T={hi}", cell(ours, T=hi)), (f"T={lo}", cell(ours, T=lo)), top1))
        by_seed: dict[int, list] = {}
        for r in ours:
            by_seed.setdefault(r["seed"], []).append(r)
        complete = {s: rs for s, rs in by_seed.items() if len({r["T"] for r in rs}) == len(Ts)}
        dead = tuple(r["run"] for rs in complete.values() for r in rs if r.get("at_chance"))
        complete = {s: rs for s, rs in complete.items() if not any(r.get("at_chance") for r in rs)}
        # the gap (student - teacher) is negative below the teacher: shrinking is a positive slope over T
        slopes = {s: slope([(r["T"], r["top1"] - r["teacher_top1"]) for r in rs]) for s, rs in complete.items()}
        runs = [r for rs in complete.values() for r in rs]
        out.append(Comparison(GAP_SHRINKS, "Tab. A (gaps in parentheses)",
                              f"{pair}: slope of (student - teacher) over T = {', '.join(map(str, Ts))}",
                              "slope", "0", slopes, slopes, {s: 0.0 for s in slopes}, unit="pp per timestep",
                              not_converged=sum(r.get("converged") is False for r in runs), runs=len(runs),
                              left_out=dead))
    for arch, teacher_arch in (("spikingformer_4_256", "vit_small_patch16_224"), ("spiking_resnet18", "cifar_resnet18")):
        at4 = [r for r in students if r["student"] == arch and r["T"] == 4]
        ours = cell(at4, method="hybrid", teacher=teacher_arch)
        for other, claim in (("kd", OURS_VS_KD), ("ratebp", OURS_VS_RATEBP)):
            theirs = cell(at4, method=other)
            if ours and theirs:
                out.append(compare(claim, "Tab. B, §2", f"{nice(arch)} <- {nice(teacher_arch)}, T=4",
                                   ("ours", ours), (other, theirs), top1))
    return out


def summary_row(c: Comparison) -> dict:
    """One row of the claims table: the two cells' mean +- std, the paired difference with its interval, the
    verdict (``not resolved`` with fewer than 2 seeds)."""
    row = {"claim": c.claim, "paper": c.where, "comparison": c.setting, "seeds": len(c.diffs),
           "runs not converged": f"{c.not_converged} of {c.runs}",
           "left out (run at chance)": ", ".join(c.left_out) or "none"}
    if c.unit == "pp":
        for label, values in ((c.a, c.a_values), (c.b, c.b_values)):
            m, sd = mean_std(values.values()) if values else (float("nan"), float("nan"))
            row.setdefault("cells (mean ± std, %)", [])
            row["cells (mean ± std, %)"].append(f"{label}: {m:.2f} ± {sd:.2f}")
        row["cells (mean ± std, %)"] = "; ".join(row["cells (mean ± std, %)"])
    else:
        row["cells (mean ± std, %)"] = "per seed: " + ", ".join(f"{v:+.2f}" for v in c.diffs.values())
    if len(c.diffs) >= 2:
        m, lo, hi = t_interval(c.diffs.values())
        row["paired difference [95 % CI]"] = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] {c.unit}"
        row["verdict"] = verdict(lo, hi)
    else:
        row["paired difference [95 % CI]"] = "needs 2 or more seeds"
        row["verdict"] = NOT_RESOLVED
    return row


def bench_comparisons(records: list[dict]) -> list[dict]:
    """Fig. 4's claim from a committed bench: ours (``hybrid``) against BPTT with the same teacher (``bptt_kd``),
    plain BPTT and BPTT under spikingjelly's memopt (``bptt_memopt``) at the largest T, peak memory and step time (``records``: one bench run). A step-time claim is
    supported when ours' slowest timed step beats BPTT's fastest (the bench times each configuration several
    times), contradicted when the reverse holds; memory is one peak figure per configuration, compared as it is."""
    rows = []
    t_max = max((r["T"] for r in records), default=None)
    get = lambda m: next((r for r in records if r["method"] == m and r["T"] == t_max), None)
    ours = get("hybrid")
    for other in ("bptt_kd", "bptt", "bptt_memopt"):   # memopt: the strongest public memory-saving BPTT
        theirs = get(other)
        if ours is None or theirs is None:
            continue
        a_times, b_times = ours.get("step_times_s") or [ours["step_time_s"]], theirs.get("step_times_s") or [theirs["step_time_s"]]
        time_verdict = SUPPORTED if max(a_times) < min(b_times) else CONTRADICTED if min(a_times) > max(b_times) \
            else NOT_RESOLVED
        mem_verdict = (SUPPORTED if ours["peak_mem_mb"] < theirs["peak_mem_mb"] else
                       CONTRADICTED if ours["peak_mem_mb"] > theirs["peak_mem_mb"] else NOT_RESOLVED)
        rows.append({"claim": "Ours costs less time than BPTT at larger T", "paper": "Fig. 4, §1",
                     "comparison": f"ours vs {other}, T={t_max}",
                     "measured": f"{ours['step_time_s']:.2f} s vs {theirs['step_time_s']:.2f} s per step "
                                 f"(ratio {ours['step_time_s'] / theirs['step_time_s']:.2f}; ours' steps "
                                 f"{min(a_times):.2f}-{max(a_times):.2f} s, {other}'s {min(b_times):.2f}-{max(b_times):.2f} s)",
                     "verdict": time_verdict})
        rows.append({"claim": "Ours costs less memory than BPTT at larger T", "paper": "Fig. 4, §1",
                     "comparison": f"ours vs {other}, T={t_max}",
                     "measured": f"{ours['peak_mem_mb']:.0f} MB vs {theirs['peak_mem_mb']:.0f} MB peak "
                                 f"(ratio {ours['peak_mem_mb'] / theirs['peak_mem_mb']:.2f})",
                     "verdict": mem_verdict})
    return rows
