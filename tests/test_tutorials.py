"""The tutorials as a class gets them: the set-up cell that makes Colab's launch button work, the Binder
environment, hidden solutions and answers, and the facts a lecturer needs (prerequisites, time)."""
import importlib.util
import json
import re
import subprocess
import sys

import pytest
import yaml

from hybridkd_lib.base.results import REPO_ROOT

TUTORIALS = ("tutorial_lif", "tutorial_ratebp", "tutorial_hybrid")


def _cells(name):
    return json.loads((REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]


def _repository():
    repo = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]
    return repo["url"], repo["branch"]


@pytest.mark.parametrize("name", TUTORIALS)
def test_the_first_cell_installs_the_project_only_where_it_is_missing(name, monkeypatch):
    first = _cells(name)[0]
    assert first["cell_type"] == "code" and "remove-cell" in first["metadata"].get("tags", [])
    source = "".join(first["source"])
    assert source == "".join(_cells(TUTORIALS[0])[0]["source"])   # one set-up cell, the same in every tutorial
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd))
    exec(compile(source, f"{name}[0]", "exec"), {})             # here the library is importable: nothing to do
    assert calls == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == "hybridkd_lib" else real(mod, *a))
    exec(compile(source, f"{name}[0]", "exec"), {})             # Colab: not installed
    url, branch = _repository()
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"git+{url}@{branch}"]]


def test_binder_installs_the_pinned_requirements_the_package_and_its_kernel():
    pins = lambda text: sorted(l.strip() for l in text.splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", l.strip()))
    assert pins((REPO_ROOT / "binder" / "requirements.txt").read_text()) == pins((REPO_ROOT / "requirements.txt").read_text())
    post = REPO_ROOT / "binder" / "postBuild"
    assert post.stat().st_mode & 0o111, "postBuild must be executable"
    text = post.read_text()
    assert "pip install --no-deps -e ." in text
    kernel = json.loads((REPO_ROOT / "notebooks" / "tutorial_lif.ipynb").read_text())["metadata"]["kernelspec"]["name"]
    assert f"ipykernel install --user --name {kernel}" in text
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["binderhub_url"] and config["launch_buttons"]["colab_url"]


def _details(text, summary):
    """The bodies of the <details> blocks whose summary contains ``summary``."""
    return [m.group(1) for m in re.finditer(r"<details>\s*<summary>(?:(?!</summary>).)*" + summary
                                             + r".*?</summary>(.*?)</details>", text, re.S)]


@pytest.mark.parametrize("name", TUTORIALS)
def test_solutions_and_answers_stay_hidden_and_a_lecturer_finds_the_facts(name):
    text = "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "markdown")
    assert "{admonition}" not in text            # MyST-only: shown open in Jupyter and Colab
    solutions = _details(text, "Solutions")
    assert len(solutions) == 1
    exercises = text.split("## Exercises", 1)[1].split("<details>", 1)[0]
    assert len(re.findall(r"^\d+\. ", exercises, re.M)) == len(re.findall(r"^\d+\. ", solutions[0], re.M)) >= 3
    questions = _details(text, "Check your understanding")
    assert len(questions) == 1 and 2 <= len(re.findall(r"^\d+\. ", questions[0], re.M)) <= 4
    # every question's answer is inside the hidden block, in italics after the question
    assert all("*" in q for q in re.split(r"^\d+\. ", questions[0], flags=re.M)[1:])
    intro = "".join(_cells(name)[1]["source"])
    for fact in ("**Prerequisites.**", "**Time in class:**", "**Compute:**"):
        assert fact in intro, (name, fact)
    assert re.search(r"\*\*Compute:\*\* about [0-9.]+ (s|min)", intro), "the measured compute time"
    assert "compute time of this run" in "".join(_cells(name)[-1]["source"])


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorials_use_only_the_public_api(name):
    code = "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "code")
    private = re.findall(r"\b(?:report|ratebp|speed|hybrid|learner|methods|trainer|lif|node)\._\w+|\.node\.\w+", code)
    assert private == []
    from hybridkd_lib.book import report  # noqa: F401  (the helpers the tutorials read exist and are public)
    for helper in re.findall(r"report\.(\w+)\(", code):
        assert hasattr(report, helper) and not helper.startswith("_")


def _minutes(name):
    intro = "".join(_cells(name)[1]["source"])
    match = re.search(r"\*\*Time in class:\*\* about (\d+) minutes", intro)
    assert match, (name, "states its time as '**Time in class:** about N minutes'")
    return int(match.group(1))


def test_the_stated_times_fit_a_two_hour_lab_with_the_plan_at_the_start():
    """Every tutorial states its minutes (training included); the plan in the first one lists them, a set-up,
    and a total of at most two hours."""
    plan = "".join(_cells(TUTORIALS[0])[1]["source"])
    rows = dict(re.findall(r"^\| ([^|]+?) \| (\d+) \|", plan, re.M))
    total = int(rows.pop("Total"))
    assert sum(int(m) for m in rows.values()) == total <= 120
    for number, name in enumerate(TUTORIALS, start=1):
        row = next(int(m) for part, m in rows.items() if part.startswith(f"Tutorial {number}:"))
        assert row == _minutes(name), name
    assert sum(_minutes(name) for name in TUTORIALS) <= total
    assert "Run live" in plan and "Demonstrate" in plan and "Homework" in plan


@pytest.mark.parametrize("name", TUTORIALS)
def test_every_exercise_has_a_folded_executable_solution(name):
    """One code cell per exercise, after the exercises, folded in the book (hide-input), in JupyterLab
    (source_hidden) and Colab (a form), and skipped where the book executes the notebook: tests/test_book.py
    runs them after the notebook."""
    cells = _cells(name)
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    exercises = text.split("## Exercises", 1)[1].split("<details>", 1)[0]
    solutions = [c for c in cells if "solution" in c["metadata"].get("tags", [])]
    assert len(solutions) == len(re.findall(r"^\d+\. ", exercises, re.M))
    first = next(i for i, c in enumerate(cells) if "## Exercises" in "".join(c["source"]))
    for number, cell in enumerate(solutions, start=1):
        assert cells.index(cell) > first and cell["cell_type"] == "code"
        assert {"hide-input", "skip-execution"} <= set(cell["metadata"]["tags"])
        assert cell["metadata"]["jupyter"]["source_hidden"] and cell["metadata"]["cellView"] == "form"
        source = "".join(cell["source"])
        assert source.startswith(f"#@title Solution {number}:"), source[:40]
        compile(source, f"{name} solution {number}", "exec")


def test_tutorial_2_computes_before_it_derives():
    """A three-step numeric example of r and e is the first code a student sees, before the derivation."""
    cells = _cells("tutorial_ratebp")
    shown = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
             and not {"remove-cell", "parameters", "hide-input"} & set(c["metadata"].get("tags", []))]
    derivation = next(i for i, c in enumerate(cells) if "BPTT computes the same sum" in "".join(c["source"]))
    assert shown[0] < derivation and "spike_equations" in "".join(cells[shown[0]]["source"])
    assert "BPTT computes the same sum" not in "".join(cells[1]["source"])


def _documented():
    """From book/api.md: documented ``module.name`` paths, and per automodule its members (None: all)."""
    text = (REPO_ROOT / "book" / "api.md").read_text()
    names, modules = set(), {}
    for kind, target, members in re.findall(r"\.\. (automodule|autofunction|autoclass):: (\S+)"
                                            r"((?:\n   :members:[^\n]*(?:\n {13}[^\n]*)*)?)", text):
        if kind != "automodule":
            names.add(target)
            continue
        listed = members.replace(":members:", "").replace("\n", " ").strip()
        modules[target] = {m.strip() for m in listed.split(",")} if listed else None
    return names, modules


def _is_documented(module, name, names, modules):
    if module == "hybridkd_lib":
        import hybridkd_lib
        return name in hybridkd_lib.API
    if f"{module}.{name}" in names or f"{module}.{name}" in modules:
        return True
    return module in modules and (modules[module] is None or name in modules[module])


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_cells_use_only_names_the_api_page_documents(name):
    import ast

    names, modules = _documented()
    aliases, used = {}, []
    for cell in _cells(name)[1:]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("hybridkd_lib"):
                for alias in node.names:
                    used.append((node.module, alias.name))
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("hybridkd_lib") for a in node.names)
        for node in ast.walk(tree):   # attributes of an imported library module: ratebp.rate_forward, lab.draw_hybrids
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and aliases[node.value.id] in modules:
                used.append((aliases[node.value.id], node.attr))
            if isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert node.attr not in ("mode", "node") and not private, (name, node.attr)
    undocumented = sorted(f"{m}.{n}" for m, n in used if not _is_documented(m, n, names, modules))
    assert undocumented == [], undocumented
