"""The Fig. 4 benchmark: every method runs, records carry the required fields."""
import json
import subprocess
import sys


from hybridkd_lib.efficiency import BENCH_METHODS, bench


def test_bench_records_all_methods(tmp_path):
    out = bench(list(BENCH_METHODS), [1, 2], student_kw={"width": 4}, teacher_kw={"width": 4},
                batch_size=2, input_size=16, steps=1, warmup=1, log=lambda *_: None)
    recs = out["records"]
    assert [(r["method"], r["T"]) for r in recs] == [(m, T) for T in (1, 2) for m in BENCH_METHODS]
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
    assert p.returncode != 0 and "unknown bench method 'magic'; valid: forward_only" in p.stderr
