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
    """From book/api.md: documented ``module.name`` paths (an autoclass's listed members as ``module.Class.member``),
    and per automodule its members (None: all, ``:members:`` alone; an empty set: no ``:members:``)."""
    text = (REPO_ROOT / "book" / "api.md").read_text()
    names, modules = set(), {}
    for kind, target, members in re.findall(r"\.\. (automodule|autofunction|autoclass):: (\S+)"
                                            r"((?:\n   :members:[^\n]*(?:\n {13}[^\n]*)*)?)", text):
        listed = members.replace(":members:", "").replace("\n", " ").strip()
        listed = {m.strip() for m in listed.split(",")} if listed else (None if members else set())
        if kind == "automodule":
            modules[target] = listed
            continue
        names.add(target)
        names.update(f"{target}.{m}" for m in listed or ())
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


# ------------------------------------------------------------------------------ attributes of library objects
# what a library attribute holds, where no annotation says it: (class, attribute) -> class
ATTRIBUTE_TYPES = {("hybridkd_lib.training.learner.Learner", "distiller"): "hybridkd_lib.method.hybrid.HybridDistiller",
                   ("hybridkd_lib.training.learner.Learner", "loss_cfg"): "hybridkd_lib.method.losses.LossConfig",
                   ("hybridkd_lib.training.learner.Learner", "spec"): "hybridkd_lib.method.methods.Method"}


def _resolve(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _path(obj) -> str | None:
    return f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) and obj.__module__.startswith("hybridkd_lib") else None


def _returns(func) -> str | None:
    """The library class a library function or class returns (a class: itself; a function: its annotation)."""
    import typing

    if isinstance(func, type):
        return _path(func)
    try:
        return _path(typing.get_type_hints(func).get("return"))
    except NameError:   # another annotation names a TYPE_CHECKING import: read the return's alone
        returned = getattr(func, "__annotations__", {}).get("return")
        return _path(getattr(sys.modules[func.__module__], returned, None) if isinstance(returned, str) else returned)
    except TypeError:   # not a function
        return None


def _type_of(node, aliases: dict, variables: dict) -> str | None:
    """The library class of an expression in a tutorial cell, where the cell says it: a variable assigned from
    one, a library class called, a library function's annotated return, a known attribute, ``.train()``."""
    import ast

    if isinstance(node, ast.Name):
        return variables.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _type_of(node.value, aliases, variables)
        return ATTRIBUTE_TYPES.get((owner, node.attr)) if owner else None
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in aliases:
            return _returns(_resolve(aliases[f.id]))
        if isinstance(f, ast.Attribute) and f.attr in ("train", "eval"):
            return _type_of(f.value, aliases, variables)
        owner = _type_of(f.value, aliases, variables) if isinstance(f, ast.Attribute) else None
        return _returns(getattr(_resolve(owner), f.attr, None)) if owner else None
    return None


def _attribute_documented(cls_path: str, attr: str, names: set) -> bool:
    """``Class.attr`` is on the API page (an autoclass member), in the class docstring's ``Attributes:``
    section, a dataclass field of a documented class, or torch's ``nn.Module`` API."""
    import dataclasses
    import inspect

    from torch import nn

    if f"{cls_path}.{attr}" in names or hasattr(nn.Module, attr):
        return True
    cls = _resolve(cls_path)
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:\n", 1)[1] if "Attributes:\n" in doc else ""
    if re.search(rf"^    {re.escape(attr)}( \([^)]*\))?:", section, re.M):
        return True
    module = cls_path.rsplit(".", 1)[0]
    _, modules = _documented()
    class_documented = cls_path in names or (module in modules and (modules[module] is None
                                                                     or cls.__name__ in modules[module]))
    return class_documented and dataclasses.is_dataclass(cls) and attr in {f.name for f in dataclasses.fields(cls)}


def _attribute_uses(name: str) -> list[tuple[str, str]]:
    """``(library class, attribute)`` for every ``x.attr`` in the tutorial's code cells where ``x``'s class is
    known (``_type_of``), the variables' classes followed from cell to cell."""
    import ast

    aliases, variables, uses = {}, {}, []
    for cell in _cells(name)[1:]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("hybridkd_lib"):
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                             and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                    for t, v in pairs:
                        if isinstance(t, ast.Name) and _type_of(v, aliases, variables):
                            variables[t.id] = _type_of(v, aliases, variables)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = _type_of(node.value, aliases, variables)
                if owner:
                    uses.append((owner, node.attr))
    return uses


@pytest.mark.parametrize("name", TUTORIALS)
def test_attributes_of_library_objects_are_documented(name):
    """``learner.loss_cfg``, ``d.pairs``, ``method.outputs``, ``cfg.decay``: an attribute a tutorial reads from a
    library object is on the API page, in its class's ``Attributes:``, or a field of a documented dataclass."""
    names, _ = _documented()
    uses = set(_attribute_uses(name))
    undocumented = sorted(f"{cls}.{attr}" for cls, attr in uses if not _attribute_documented(cls, attr, names))
    assert undocumented == [], undocumented


def test_the_attribute_check_sees_the_names_the_tutorials_use():
    seen = {f"{cls.rsplit('.', 1)[1]}.{attr}" for name in TUTORIALS for cls, attr in _attribute_uses(name)}
    assert {"Learner.loss_cfg", "Learner.distiller", "HybridDistiller.pairs", "HybridDistiller.num_hybrids",
            "HybridDistiller.aligns", "Method.outputs", "Method.loss", "NeuronConfig.decay",
            "StepOutputs.logits"} <= seen, seen
    names, _ = _documented()
    assert not _attribute_documented("hybridkd_lib.training.learner.Learner", "no_such_attribute", names)


@pytest.mark.parametrize("name", TUTORIALS)
def test_the_api_links_of_the_tutorials_resolve(name):
    """Every ``{py:func}``, ``{py:class}``, ``{py:meth}``, ``{py:mod}`` role of a tutorial names an object the
    API page documents (a class's method: listed in its autoclass's ``:members:``)."""
    names, modules = _documented()
    text = "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "markdown")
    targets = {t.lstrip("~") for t in re.findall(r"\{py:(?:func|class|meth|mod|attr)\}`([^`]+)`", text)}
    assert targets
    unresolved = sorted(t for t in targets if t not in names and t not in modules
                        and not _is_documented(*t.rsplit(".", 1), names, modules))
    assert unresolved == [], unresolved


def test_the_memory_sensitivity_rescales_what_spikingjelly_computes():
    """``lab.memory_sensitivity`` rescales one estimate's bytes; spikingjelly at that cost per byte agrees."""
    import torch

    from hybridkd_lib.book import lab
    from hybridkd_lib.models import create_model
    from hybridkd_lib.snn.spikecosts import memory_aware_energy

    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    models = {"student": create_model("spiking_resnet18", num_classes=10, T=2, in_chans=1, width=4),
              "teacher": create_model("cifar_resnet18", num_classes=10, in_chans=1, width=4)}
    est = {name: {"spikingjelly": memory_aware_energy(m, x)} for name, m in models.items()}
    table = lab.memory_sensitivity(est, {"dear": 24.96})
    direct = {name: memory_aware_energy(m, x, pj_per_byte=24.96)["total_uj"] for name, m in models.items()}
    assert table.iloc[0]["SNN student (µJ)"] == pytest.approx(direct["student"], rel=1e-6)
    assert table.iloc[0]["student / teacher"] == pytest.approx(direct["student"] / direct["teacher"], rel=1e-6)
    assert list(lab.memory_costs().values())[0] < 12.5 < list(lab.memory_costs().values())[2]
