"""The Fig. 4 benchmark: every method runs, records carry the required fields."""
import json
import subprocess
import sys


from hybridkd_lib.efficiency import bench
from hybridkd_lib.methods import BENCH_METHODS


def test_bench_records_all_methods(tmp_path):
    out = bench(list(BENCH_METHODS), [1], student_kw={"width": 4}, teacher_kw={"width": 4},
                batch_size=2, input_size=16, steps=1, warmup=1, log=lambda *_: None)
    recs = out["records"]  # (T=2, every method, at full width: the efficiency run of the dry run)
    assert [(r["method"], r["T"]) for r in recs] == [(m, 1) for m in BENCH_METHODS]
    for r in recs:
        for key in ("method", "T", "step_time_s", "peak_mem_mb", "images_per_s", "device", "batch_size",
                    "git_commit"):
            assert key in r
        assert r["step_time_s"] > 0 and r["peak_mem_mb"] > 100 and r["device"].startswith("cpu")
    assert "platform" in out["machine"]


def test_bench_cli_writes_json_and_rejects_unknown_method(tmp_path):
    f = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "bench", "--T", "1", "--methods", "ratebp",
                        "--student-kw", '{"width": 4}', "--batch-size", "2", "--input-size", "16",
                        "--steps", "1", "--out", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(f.read_text())["records"][0]["method"] == "ratebp"
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "bench", "--methods", "magic"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "unknown bench method(s) ['magic']; valid: forward_only" in p.stderr


def _rec(method, T, t, mem):
    return {"method": method, "T": T, "step_time_s": t, "peak_mem_mb": mem, "device": "cpu (x, 2 threads)",
            "batch_size": 32, "input_size": 32, "student": "spiking_resnet18", "teacher": "cifar_resnet18",
            "student_kw": {}, "source": "measured (test)"}


def test_bench_claims_compute_every_target_ratio():
    from hybridkd_lib.book import report

    recs = [_rec("forward_only", 8, 2.0, 1400), _rec("bptt", 1, 1.0, 1300), _rec("bptt", 8, 8.0, 4000),
            _rec("bptt_kd", 8, 8.0, 4000), _rec("hybrid", 8, 3.6, 1200), _rec("ratebp", 2, 1.2, 1100),
            _rec("ratebp", 8, 3.3, 1210)]
    claims = report.bench_claims(recs).set_index("claim")
    assert len(claims) == 5 and (claims["T"] == 8).all()
    assert claims.loc["hybrid / bptt_kd peak memory, largest T", "ratio"] == 0.3
    assert claims.loc["hybrid / bptt_kd step time, largest T", "ratio"] == 0.45
    assert claims.loc["ratebp / bptt peak memory, largest T", "ratio"] == 0.302
    floor = claims.filter(like="floor", axis=0).iloc[0]
    assert floor["ratio"] == 1.1 and floor["met"] == "yes"          # 3.3 / (2.0 + 1.0)
    assert claims.loc["ratebp peak memory, largest T / T=2", "ratio"] == 1.1
    # another setting (a width-16 student) gets its ratios but no verdict
    small = report.bench_claims([dict(r, student_kw={"width": 16}) for r in recs])
    assert (small["met"] == "n/a (other setting)").all() and len(small) == 5
    # a run without bptt_kd simply has no hybrid rows
    partial = report.bench_claims([r for r in recs if r["method"] != "bptt_kd"])
    assert not partial["claim"].str.startswith("hybrid").any()


def test_bench_in_one_process_gives_the_same_records():
    """The GPU path of ``bench`` (all configurations in one process) on the CPU."""
    out = bench(["ratebp", "hybrid"], [2], student_kw={"width": 4}, teacher_kw={"width": 4}, batch_size=2,
                input_size=16, steps=1, warmup=0, log=lambda *_: None, fresh_process=False)
    assert [(r["method"], r["T"]) for r in out["records"]] == [("ratebp", 2), ("hybrid", 2)]
    assert all(r["step_time_s"] > 0 for r in out["records"])


def test_plan_setups_cover_every_network_of_the_full_plan_and_two_steps_run_at_full_size():
    from hybridkd_lib.book.plan import plan_setups
    from hybridkd_lib.efficiency import two_step_check
    from hybridkd_lib.book.plan import plan

    setups = plan_setups("full")
    runs = [r.params for r in plan("full") if r.notebook.startswith("train")]
    assert {s["student"] for s in setups if s["method"] != "ann"} == {p["student"] for p in runs if "student" in p}
    assert {s["teacher"] for s in setups} == {p["teacher"] for p in runs}
    assert {s["dataset"] for s in setups} == {"cifar10", "cifar100", "imagenet", "cifar10dvs"}
    dvs = next(s for s in setups if s["dataset"] == "cifar10dvs" and s["method"] == "hybrid")
    rec = two_step_check(dict(dvs, T=2), "cpu", batch_size=2)
    assert rec["input"] == [2, 2, 2, 48, 48] and rec["finite"] and len(rec["step_times_s"]) == 2
