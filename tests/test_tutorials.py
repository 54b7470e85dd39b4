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
