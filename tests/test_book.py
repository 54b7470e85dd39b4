"""The plan, papermill notebooks, the report and the Jupyter Book build (smoke profile)."""
import json
import re

import papermill as pm
import pytest

from hybridkd_lib import report
from hybridkd_lib.plan import NOTEBOOKS, plan
from hybridkd_lib.reproduce import reproduce
from hybridkd_lib.results import REPO_ROOT


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    first = reproduce("smoke", results_root=root, log=lambda *_: None)
    return root, first


def test_smoke_profile_executes_every_notebook(smoke):
    root, first = smoke
    assert first["failed"] == {}
    names = [r.name for r in plan("smoke")]
    assert sorted(first["ran"]) == sorted(names)
    used = set()
    for run in plan("smoke"):
        d = root / "smoke" / run.name
        executed = json.loads((d / f"{run.notebook}.ipynb").read_text())
        assert executed["metadata"]["papermill"]["parameters"]["out"] == str(d)
        assert (d / "result.json").is_file() and (d / ".run_key").is_file()
        assert (root / "_site" / "runs" / "smoke" / f"{run.name}.html").is_file()
        used.add(run.notebook)
    assert used == set(NOTEBOOKS)
    # a second call retrains nothing
    again = reproduce("smoke", results_root=root, log=lambda *_: None)
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(names)


def test_measured_cells_and_provenance(smoke, monkeypatch):
    root, _ = smoke
    monkeypatch.setenv("HYBRIDKD_RESULTS", str(root))
    monkeypatch.setenv("HYBRIDKD_BOOK_PROFILE", "smoke")
    a = report.table_a()
    measured = a[a["source"] == "measured (smoke)"]
    assert len(measured) == 2 and re.match(r"^\d+\.\d\d \([+-]\d+\.\d\d\)$", measured.iloc[0]["T=2"])
    assert (measured["T=8"] == "not run").all()  # smoke runs T=2 only
    assert (a[a["source"] == "reported"]["T=4"].str.startswith(("78.85", "81.53", "95.92", "96.84"))).all()
    b = report.table_b()
    assert len(b[b["source"] == "measured (smoke)"]) == 3
    path, cam = report.fig_a()
    assert path is not None and set(cam["similarity_to_ANN"]) == {"ANN", "SNN", "M_0", "M_1", "M_2"}
    recs = report.bench_records()
    assert {r["method"] for r in recs} >= {"forward_only", "bptt", "ratebp", "hybrid"}
    assert "commit" in report.provenance(report.result("teacher_r18"))


def test_missing_results_render_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDKD_RESULTS", str(tmp_path))
    a = report.table_a("quick")
    measured = a[a["source"].str.startswith("measured")]
    assert len(measured) == 2
    assert (measured[["T=2", "T=4", "T=6", "T=8"]] == "not run").all().all()
    b = report.table_b("quick")
    assert (b[b["source"].str.startswith("measured")]["top-1 (%)"] == "not run").all()
    monkeypatch.setenv("HYBRIDKD_BOOK_PROFILE", "quick")
    assert report.fig_a() == (None, None)
    assert all(" file " in r["source"] for r in report.bench_records())  # only the committed bench files
    assert (report.runs_index()["status"] == "not run").all()


def test_table_c_is_rendered_from_the_full_plan():
    c = report.table_c()
    assert len(c) == 8
    row = c[(c["Dataset"] == "ImageNet") & (c["Model"] == "SEW-ResNet-34")].iloc[0]
    assert row["Learning Rate"] == 0.2 and row["Weight Decay"] == 2e-5 and row["Epochs"] == 100
    dvs = c[c["Dataset"] == "CIFAR10-DVS"].iloc[0]
    assert dvs["Tea-Acc (%) reported"] == 83.60 and dvs["T"] == 10


def test_bad_parameter_fails_in_validation_cell(tmp_path):
    nb = REPO_ROOT / "notebooks" / "train_student.ipynb"
    out = tmp_path / "bad.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(nb), str(out), parameters={"method": "magic", "out": str(tmp_path / "run")},
                            kernel_name="hybridkd", progress_bar=False, cwd=str(REPO_ROOT))
    assert "unknown method 'magic'; valid: ann, bptt, bptt_kd, ratebp, kd, hybrid" in str(info.value)
    cells = json.loads(out.read_text())["cells"]
    tags = [c["metadata"].get("tags", []) for c in cells]
    injected = tags.index(["injected-parameters"])
    validation = next(i for i in range(injected + 1, len(cells)) if cells[i]["cell_type"] == "code")
    failed = [i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [validation]
    assert not (tmp_path / "run").exists()


def test_notebooks_are_committed_without_outputs():
    for nb in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), nb.name
        if nb.stem in NOTEBOOKS or nb.stem.startswith("tutorial"):
            assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1, nb.name


def test_reproduce_nproc_keeps_the_global_batch_and_says_what_changed():
    from hybridkd_lib.reproduce import with_nproc

    said = []
    runs = with_nproc(plan("full"), 4, log=said.append)
    imagenet = [r for r in runs if r.params.get("dataset") == "imagenet"]
    assert all(r.nproc == 4 and r.params["batch_size"] == 512 for r in imagenet)
    assert all(r.nproc == 1 for r in runs if r not in imagenet)
    assert len(said) == 3 and "8 -> 4 processes; global batch 512 kept, per-process batch 64 -> 128" in said[0]
    with pytest.raises(ValueError, match="global batch 512, which does not divide across 3 processes"):
        with_nproc(plan("full"), 3)
