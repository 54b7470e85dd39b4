"""The plan, papermill notebooks, the report and the Jupyter Book build (smoke profile)."""
import json
import re

import papermill as pm
import pytest

from hybridkd_lib.book import evidence, report
from hybridkd_lib.book.plan import NOTEBOOKS, plan
from hybridkd_lib.book.reproduce import TRAIN_NOTEBOOKS, reproduce
from hybridkd_lib.base.results import REPO_ROOT


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
        # executed in its staging folder, then moved into place once it finished
        params = executed["metadata"]["papermill"]["parameters"]
        params = params["config"] if run.notebook in TRAIN_NOTEBOOKS else params   # training: one TrainConfig dict
        assert params["out"] == str(root / "smoke" / ".staging" / run.name)
        assert (d / "result.json").is_file() and (d / ".run_key").is_file()
        if "out" in json.loads((d / "result.json").read_text()):
            assert json.loads((d / "result.json").read_text())["out"] == str(d)
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
    measured = a[a["source"] == "measured (quick)"]
    assert len(measured) == 2
    assert (measured[["T=2", "T=4", "T=6", "T=8"]] == "not run").all().all()
    b = report.table_b("quick")
    assert (b[b["source"] == "measured (quick)"]["top-1 (%)"] == "not run").all()
    monkeypatch.setenv("HYBRIDKD_BOOK_PROFILE", "quick")
    assert report.fig_a() == (None, None)
    assert all(" file " in r["source"] for r in report.bench_records())  # only the committed bench files
    assert (report.runs_index()["status"] == "not run").all()


def test_cpu_tables_read_each_cell_against_the_ablations_seed_spread(tmp_path, monkeypatch):
    """The seed spread the committed ablation measured sits beside every measured row of Tables A and B."""
    import statistics

    monkeypatch.setenv("HYBRIDKD_RESULTS", str(tmp_path))     # no ablation results here: the committed file
    records = json.loads(evidence.ABLATION_FILE.read_text())["records"]
    std = lambda variant: statistics.stdev(r["top1"] for r in records if r["variant"] == variant)
    a = report.table_a("quick")
    measured = a[a["source"] == "measured (quick)"].set_index("student")
    assert measured.loc["R18", "seed spread"].startswith(f"±{std('default'):.2f} (ablation 'default'")
    assert measured.loc["R19", "seed spread"].startswith(f"±{std('r19_T8_quick'):.2f} (ablation 'r19_T8_quick'")
    assert (a[a["source"] == "reported"]["seed spread"] == report.MISSING).all()
    b = report.table_b("quick")
    widest = max(std(v) for v in ("default", "no_hybrid_kd", "no_hybrid_ce", "hybrid_mean", "r19_T8_quick"))
    assert (b[b["source"] == "measured (quick)"]["seed spread"].str.startswith(f"±{widest:.2f} (largest")).all()
    assert report.seed_spreads().keys().isdisjoint({"r19_T8_reference_1/T"})   # another regime: not a yardstick
    assert report.scale_claims_note("full") == ""
    assert "accuracy claims of Tables A and B need the `full` profile" in report.scale_claims_note("quick")


def test_a_difference_smaller_than_the_seed_spread_is_marked_within_seed_noise():
    accs = {"T=2": 97.0, "T=4": 97.56, "T=8": 97.78}
    assert report.noise_labels(accs, 0.38) == {"T=2": "", "T=4": "within seed noise of T=8", "T=8": "best"}
    assert report.noise_marks(accs, 0.38) == "T=4 within seed noise of T=8 (best)"
    assert report.noise_marks(accs, 0.1) == "every difference from T=8 (best) exceeds the spread"
    assert report.noise_marks({"T=2": 97.0}, 0.38) == ""


def test_a_run_still_moving_is_marked_not_converged():
    """Final-epoch accuracy in the cell; "not converged" when it moved > 1 point over the last 3 epochs."""
    hist = lambda *accs: [{"epoch": i + 1, "top1": a} for i, a in enumerate(accs)]
    settled = {"top1": 97.0, "history": hist(50.0, 96.4, 97.3, 97.0)}
    moving = {"top1": 89.1, "history": hist(10.0, 86.0, 88.9, 89.1)}
    assert report.converged(settled) and report.last_epochs_spread(settled) == pytest.approx(0.9)
    assert not report.converged(moving)
    assert report._measured(settled, 98.0) == "97.00 (-1.00)"
    assert report._measured(moving, 98.0) == "89.10 (-8.90) not converged"
    assert report._measured(None) == report.NOT_RUN


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
        pm.execute_notebook(str(nb), str(out), parameters={"config": {"method": "magic", "out": str(tmp_path / "run")}},
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


# each tutorial through papermill with small settings a student might choose (the book executes the defaults),
# every exercise's solution cell run after the notebook (the book skips them); tutorial_hybrid also with the
# ResNet-19 <- ResNet-34 pair its exercise 4 invites
_TINY_TRAINING = {"teacher_epochs": 1, "student_epochs": 1, "max_steps_per_epoch": 2}
TUTORIAL_RUNS = {
    "tutorial_lif": ("tutorial_lif", {"taus": [2, 4], "T": 12, "train_steps": 20, "n_neurons": 5, "alphas": [0.5, 50.0]},
                     ["theta/tau (T -> inf)", "held-out accuracy", "predicted within T=8", "surrogate, alpha 50.0",
                      "within 200 steps: x=0.24 silent, x=0.26 fired", "spikes in 30 steps: 20",
                      "surrogate, alpha 4.0", "x=1.01 fired"]),
    "tutorial_ratebp": ("tutorial_ratebp", {"Ts": [1, 2], "depths": [1, 2], "seeds": [0, 1], "cost_batch": 4, "tau": 2,
                                            "gap_students": ["sew_resnet34"]},
                        ["time-varying", "spike pass (s)", "max gap, stage outputs", "MB per step", "max-pool of two",
                         "library's spike pass: r = 0.6667", "noise std 2.0", "layer 2 (last)", "RateBP is",
                         "BPTT at T=32"]),
    "tutorial_hybrid": ("tutorial_hybrid", {"width": 4, "teacher_width": 8, "T": 2, **_TINY_TRAINING},
                        ["by hand", "changed by one step", "8 -> 16", "ratio L / step: [2.0]",
                         "the last stage and the head get none: True", "ours (hybrid), seed 2",
                         "no_hybrid_kd vs default", "the rest from the ablation plan", "spikingjelly, compute + memory",
                         "student / teacher on the same", "why the compute columns differ", "1 MB SRAM (12.5 pJ/byte)",
                         "unstable; pass dt=0.0001", "dt = 0.0001 s", "test top-1 on", "refused, sew_resnet34",
                         "twin the graph describes: same prediction 100.0 %", "8 -> 8", "M_2 terms only",
                         "kd term = kappa^2 KL", "2 hybrids"]),
    "tutorial_hybrid_r19_r34": ("tutorial_hybrid", {"student": "spiking_resnet19", "teacher": "cifar_resnet34", "width": 4,
                                                    "teacher_width": 8, "T": 2, "energy_images": 64, **_TINY_TRAINING},
                                ["stage 4", "4 -> 8", "gradient reaches SNN stages 1..2: True",
                                 "the last stage and the head get none: True", "Vanilla KD, seed 1",
                                 "student / teacher on the same 64 test images",
                                 "M_1 terms only"]),
}


@pytest.mark.parametrize("name", sorted(TUTORIAL_RUNS))
def test_tutorials_run_through_papermill(name, tmp_path):
    notebook, params, expected = TUTORIAL_RUNS[name]
    if notebook == "tutorial_hybrid":
        params = dict(params, runs_dir=str(tmp_path / "runs"))
    source = json.loads((REPO_ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    for cell in source["cells"]:   # the solutions (skipped where the book executes it) run after the notebook
        tags = cell["metadata"].get("tags", [])
        if "solution" in tags:
            cell["metadata"]["tags"] = [t for t in tags if t != "skip-execution"]
    (tmp_path / "with_solutions.ipynb").write_text(json.dumps(source))
    out = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(tmp_path / "with_solutions.ipynb"), str(out), parameters=params,
                        kernel_name="hybridkd", cwd=str(REPO_ROOT), progress_bar=False)
    cells = json.loads(out.read_text())["cells"]
    solved = [c for c in cells if "solution" in c["metadata"].get("tags", [])]
    assert len(solved) >= 3 and all(c["outputs"] and c["execution_count"] for c in solved)
    text = "".join("".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
                   for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    images = sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    assert images >= 2 and all(e in text for e in expected), (images, [e for e in expected if e not in text])
    assert "Error" not in text
    stderr = [o.get("text") for c in cells if c["cell_type"] == "code" for o in c["outputs"] if o.get("name") == "stderr"]
    assert not stderr, stderr   # the book shows no warnings to students


def _parameters(notebook: str) -> set[str]:
    import ast

    cells = json.loads((REPO_ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    return {t.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_every_train_config_field_is_a_cli_option_and_a_notebook_parameter():
    """One configuration source: a new TrainConfig field that the CLI or a training notebook lacks fails here."""
    from dataclasses import fields

    from hybridkd_lib.cli import build_parser
    from hybridkd_lib.training.config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest for a in train._actions}
    every = [f for f in fields(TrainConfig)]
    assert {f.name for f in every if f.name != "progress"} <= options and "no_progress" in options
    assert all(f.metadata.get("help") for f in every)
    # the training notebooks take every field through one ``config`` dict (TrainConfig's defaults the only ones):
    # no field is a parameter of its own, so no notebook literal can shadow a default
    launch_settings = {"config", "nproc", "nnodes", "rdzv_endpoint"}
    assert _parameters("train_student") == launch_settings and _parameters("train_teacher") == launch_settings
    from hybridkd_lib.training.config import config_from_settings

    assert config_from_settings({"method": "ratebp"}) == TrainConfig(method="ratebp")
    with pytest.raises(ValueError, match=r"config: unknown setting\(s\) \['epoch'\]; valid: method, dataset"):
        config_from_settings({"method": "ratebp", "epoch": 3}, "config")


def test_reproduce_nproc_keeps_the_global_batch_and_says_what_changed():
    from hybridkd_lib.book.reproduce import with_nproc

    said = []
    runs = with_nproc(plan("full"), 4, log=said.append)
    imagenet = [r for r in runs if r.params.get("dataset") == "imagenet"]
    assert all(r.nproc == 4 and r.params["batch_size"] == 512 for r in imagenet)
    assert all(r.nproc == 1 for r in runs if r not in imagenet)
    assert len(said) == 3 and "8 -> 4 processes; global batch 512 kept, per-process batch 64 -> 128" in said[0]
    with pytest.raises(ValueError, match="global batch 512, which does not divide across 3 processes"):
        with_nproc(plan("full"), 3)


def _changed(runs, name, **params):
    import dataclasses
    return [dataclasses.replace(r, params=dict(r.params, **params)) if r.name == name else r for r in runs]


def test_the_cache_follows_dependencies_and_keeps_old_results_until_replaced(smoke, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "results"
    shutil.copytree(smoke[0], root)
    quiet = lambda *_: None
    states = lambda rep: {name: (state, why) for name, state, why in rep["plan"]}
    assert all(s == "up to date" for s, _ in states(reproduce("smoke", results_root=root, dry_plan=True,
                                                                 log=quiet)).values())
    # a teacher's settings change: it, its students and the Grad-CAM of a student are stale
    runs = _changed(plan("smoke"), "teacher_r18", lr=0.02)
    st = states(reproduce("smoke", results_root=root, runs=runs, dry_plan=True, log=quiet))
    assert st["teacher_r18"] == ("settings changed", "its parameters, notebook or the library's code")
    assert st["hybrid_r18_r18_T2"] == ("dependency changed", "teacher_r18")
    assert st["cam"] == ("dependency changed", "hybrid_r18_r18_T2")
    assert st["teacher_r34"][0] == st["hybrid_r19_r34_T2"][0] == "up to date"
    # its replacement fails: the old results stay where they were, the dependents wait
    before = (root / "smoke" / "teacher_r18" / "result.json").read_bytes()
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    rep = reproduce("smoke", results_root=root, runs=runs, only=["teacher_r18", "hybrid_r18_r18_T2"], log=quiet)
    assert rep["failed"]["teacher_r18"] == "boom"
    assert rep["failed"]["hybrid_r18_r18_T2"].startswith("needs teacher_r18, which is not up to date")
    assert (root / "smoke" / "teacher_r18" / "result.json").read_bytes() == before
    assert (root / "smoke" / "hybrid_r18_r18_T2" / "model.pt").is_file()
    monkeypatch.undo()
    # a run whose model.pt is gone is not done; rerunning it leaves its dependents alone
    (root / "smoke" / "teacher_r34" / "model.pt").unlink()
    st = states(reproduce("smoke", results_root=root, dry_plan=True, log=quiet))
    assert st["teacher_r34"] == ("files missing", "model.pt") and st["hybrid_r19_r34_T2"][0] == "up to date"
    student = (root / "smoke" / "hybrid_r19_r34_T2" / "result.json").stat().st_mtime_ns
    rep = reproduce("smoke", results_root=root, log=quiet)
    assert rep["ran"] == ["teacher_r34"] and rep["failed"] == {}
    assert (root / "smoke" / "teacher_r34" / "model.pt").is_file()
    assert (root / "smoke" / "hybrid_r19_r34_T2" / "result.json").stat().st_mtime_ns == student


def test_reproduce_dry_plan_cli_lists_every_run(smoke):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "reproduce", "--profile", "smoke", "--dry-plan",
                        "--results", str(smoke[0])], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(plan("smoke")) and all("up to date" in line for line in lines)


def test_make_publish_commits_the_built_book_to_gh_pages(tmp_path):
    import subprocess

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO_ROOT / ".venv")  # the set-up of this checkout
    html = clone / "_build" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text("<html>the book</html>")
    p = subprocess.run(["make", "-C", str(clone), "publish"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not pushed: make publish PUSH=1 pushes" in p.stdout
    shown = subprocess.run(["git", "-C", str(clone), "show", "gh-pages:index.html"], capture_output=True, text=True)
    assert shown.stdout == "<html>the book</html>"
    files = subprocess.run(["git", "-C", str(clone), "ls-tree", "--name-only", "gh-pages"], capture_output=True,
                           text=True).stdout.split()
    assert sorted(files) == [".nojekyll", "index.html"]


def _prose(text: str) -> str:
    """A page's text outside its code blocks (code cells, shell examples)."""
    out, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code:
            out.append(line)
    return "\n".join(out)


RETYPED = {"epochs": r"\b\d+(?:-\d+)? (?:student |teacher )?epochs", "precise-BN batches": r"\d+ fixed training batches",
           "digits split": r"[\d,]+ train / [\d,]+ test", "width": r"\bwidths? ?-?\d+", "batches": r"\d+ batches per epoch",
           "runs": r"\b\d+ runs of"}


def test_pages_format_their_scale_facts_from_the_plan():
    """No page's prose (outside code) writes a scale fact as a literal number: each is glued from
    ``report.page_facts`` or shown by a note formatted from the plan, and those values are the plan's."""
    from hybridkd_lib.data import datasets
    from hybridkd_lib.book.plan import ABLATION_EPOCHS, ABLATION_SEEDS, SCALE

    found = [(page.name, m.group(0)) for page in sorted((REPO_ROOT / "book").glob("*.md"))
             for pattern in RETYPED.values() for m in re.finditer(pattern, _prose(page.read_text()))]
    assert found == [], found
    train, test = datasets.digits_datasets(image_size=SCALE["quick"]["data_kw"]["image_size"])
    q = SCALE["quick"]
    note = report.profile_note("quick")
    for fact in (f"{len(train):,} train / {len(test):,} test", f"ResNet widths {q['width']} instead of 64/128",
                 f"teachers {q['teacher_epochs']} epochs, students {q['student_epochs']} instead of 300",
                 f"from {q['precise_bn']} fixed training batches"):
        assert fact in note, (fact, note)
    assert f"students train {q['student_epochs']} epochs instead of 300" in report.cpu_reading_note("quick")
    assert report.ablation_note().startswith(f"{len(ABLATION_SEEDS)} seeds each, {ABLATION_EPOCHS} student epochs "
                                             f"(the quick profile trains {q['student_epochs']}")
    choices = report.open_choices().to_string()
    assert f"recomputed from {q['precise_bn']} fixed" in choices and f"digits' {len(train) // 64} batches" in choices
    facts = report.page_facts()
    full = plan("full")
    assert facts["full_runs"] == len(full) and facts["quick_width"] == q["width"]
    assert (facts["full_min_epochs"], facts["full_max_epochs"]) == (min(r.params["epochs"] for r in full if "epochs" in r.params),
                                                                    max(r.params["epochs"] for r in full if "epochs" in r.params))


def test_the_run_key_covers_the_method_not_the_book(tmp_path, monkeypatch):
    """Editing the report code or a page leaves every run's key as it was; editing the loss or the learner
    changes every training run's key (and so its dependents')."""
    import shutil

    from hybridkd_lib.book import reproduce as rp

    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "hybridkd_lib", copy / "hybridkd_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "notebooks", copy / "notebooks")
    shutil.copytree(REPO_ROOT / "book", copy / "book", ignore=shutil.ignore_patterns("_build", "data"))
    monkeypatch.setattr(rp, "REPO_ROOT", copy)
    monkeypatch.setattr(rp, "PACKAGE", copy / "hybridkd_lib")
    monkeypatch.setattr(rp, "BOOK_MACHINERY", copy / "hybridkd_lib" / "book")
    runs = plan("quick")
    keys = lambda: {name: k["key"] for name, k in rp.run_keys(runs, "quick").items()}
    before = keys()

    def edit(rel):
        with open(copy / rel, "a") as f:
            f.write("\n# an edit\n")

    for rel in ("hybridkd_lib/book/report.py", "hybridkd_lib/book/plan.py", "book/table_a.md", "book/intro.md"):
        edit(rel)
        assert keys() == before, rel
    for rel in ("hybridkd_lib/method/losses.py", "hybridkd_lib/training/learner.py"):
        edit(rel)
        now = keys()
        assert all(now[r.name] != before[r.name] for r in runs), rel
        before = now
