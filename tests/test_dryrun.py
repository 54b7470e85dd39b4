"""The whole full profile on the CPU: every run of the plan through its papermill notebook, at the real
network sizes, on tiny data in the real formats, ImageNet as 2 torchrun processes; then the book."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from hybridkd_lib.book.dryrun import dry_run
from hybridkd_lib.book.plan import plan

REPORT = Path(os.environ.get("HYBRIDKD_TEST_REPORT", "/tmp/hybridkd_test_report"))
RESULTS_PAGES = ("table_a", "table_b", "table_c", "fig_a", "fig_4")
pytestmark = pytest.mark.timeout(3600)   # the first test sets up the whole dry run (about 9 CPU minutes on 2 cores)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """The dry run's report; its folder (2 GB at the real sizes) is removed after this module."""
    root = tmp_path_factory.mktemp("dryrun")
    yield dry_run("full", out=root, log=lambda *_: None)
    shutil.rmtree(root, ignore_errors=True)


def test_every_run_of_the_full_plan_executes(dry):
    assert dry["failed"] == {}
    names = [r.name for r in plan("full")]
    assert sorted(dry["ran"]) == sorted(names)
    root = Path(dry["root"]) / "results" / "full"
    rows = []
    for run in plan("full"):
        res = json.loads((root / run.name / "result.json").read_text())
        p = run.params
        rows.append({"run": run.name, "notebook": run.notebook, "dataset": p.get("dataset", "-"),
                     "student": p.get("student", "-") if run.notebook != "train_teacher" else "-",
                     "teacher": p.get("teacher", "-"), "method": p.get("method", "ann" if run.notebook ==
                                                                       "train_teacher" else run.notebook),
                     "processes": dry["processes"][run.name], "seconds": dry["seconds"][run.name]})
        if run.notebook.startswith("train"):
            assert res["device"] == "cpu" and res["world_size"] == dry["processes"][run.name]
            # a finished dry-run run keeps its model and results, not its resume checkpoints
            assert (root / run.name / "model.pt").is_file() and not (root / run.name / "checkpoints").exists()
            # as the RateBP reference trains: float32, the cosine schedule stepped once per epoch
            assert (res["precision"], res["lr_step"]) == ("fp32", "epoch"), run.name
    bench = json.loads((root / "efficiency" / "bench.json").read_text())["records"]
    assert bench and {r["precision"] for r in bench} == {"fp32"}
    # the multi-process runs of the plan ran as 2 torchrun processes through the same DDP code
    imagenet = [r for r in rows if r["dataset"] == "imagenet"]
    assert len(imagenet) == 3 and all(r["processes"] == 2 for r in imagenet)
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / "dryrun_runs.json").write_text(json.dumps({"runs": rows, "book_s": dry["seconds"].get("book")},
                                                        indent=1))


def test_the_book_builds_from_the_dry_run_with_every_results_cell_measured(dry):
    """The one book build of the test suite (jupyter-book, Sphinx): every page, full-profile results."""
    html = Path(dry["book"])
    pages = {f.relative_to(html).as_posix(): f.read_text() for f in list(html.glob("book/*.html"))
             + list(html.glob("notebooks/*.html"))}
    for name in ("book/table_a.html", "book/table_b.html", "book/table_c.html", "book/fig_a.html",
                 "book/fig_4.html", "book/runs.html", "book/full_scale.html", "book/datasets.html",
                 "book/open_choices.html",
                 "notebooks/tutorial_lif.html", "notebooks/tutorial_ratebp.html", "notebooks/tutorial_hybrid.html"):
        assert name in pages, name
    for name, text in pages.items():
        assert not re.search(r'class="output (error|traceback|stderr)', text), name
    assert "reported" in pages["book/table_a.html"]
    # the committed reference CPU run and the efficiency targets as ratios
    assert "CPU file bench_" in pages["book/fig_4.html"]
    assert "ratebp / bptt peak memory" in pages["book/fig_4.html"]
    for page in RESULTS_PAGES:
        text = (html / "book" / f"{page}.html").read_text()
        assert not re.search(r'class="output (error|traceback|stderr)', text), page
        assert "not run" not in text, page
        assert "measured (full)" in text or page in ("table_c", "fig_a", "fig_4"), page
    assert "<img" in (html / "book" / "fig_a.html").read_text()
    assert "<img" in (html / "book" / "fig_4.html").read_text()
    # math with no network: MathJax referenced from, and shipped in, the book itself
    tutorial = pages["notebooks/tutorial_ratebp.html"]
    assert 'src="../_static/mathjax/tex-chtml.js"' in tutorial and "cdn.jsdelivr.net" not in tutorial
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    # citations, the API reference it links to, launch buttons from the one repository setting
    assert "efficient ann-guided distillation" in (html / "book" / "references.html").read_text().lower()
    assert 'href="../book/api.html#hybridkd_lib.snn.ratebp.rate_forward"' in tutorial
    assert "colab.research.google.com/github/hybridkd/hybridkd-book/blob/main/notebooks/tutorial_ratebp.ipynb" \
        in tutorial
    for name in ("tutorial_lif", "tutorial_ratebp", "tutorial_hybrid"):   # answers folded, the set-up cell removed
        page = pages[f"notebooks/{name}.html"]
        assert "<summary><b>Solutions</b>" in page and "<summary><b>Check your understanding</b>" in page, name
        assert "REPOSITORY = " not in page and "compute time of this run" in page, name
    missing_refs = [w for w in dry["book_warnings"] if re.search(r"reference|citation|not found|undefined", w, re.I)]
    assert missing_refs == []
