"""The package as others install and read it: declared dependencies, the module map, the book's machinery
apart, no method facts branched on outside the registry, and a command line that answers without torch."""
import ast
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from hybridkd_lib.base.results import REPO_ROOT

PACKAGE = REPO_ROOT / "hybridkd_lib"


def _module_name(path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported_modules(path) -> set[str]:
    """The library modules a file imports, anywhere in it (a function's lazy import too), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hybridkd_lib":
            for a in node.names:   # ``from pkg import module`` names a module; ``from module import name`` not
                sub = f"{node.module}.{a.name}"
                found.add(sub if _is_module(sub) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hybridkd_lib."))
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _room(dotted: str) -> str:
    """The sub-package (``snn``, ``method``, ...) or top-level module (``cli``) a module lies in."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _floors() -> dict[str, int]:
    """The floors the package docstring draws: ``floor N  name, name  what``."""
    import hybridkd_lib

    floors = {}
    for line in hybridkd_lib.__doc__.splitlines():
        m = re.match(r"\s+floor (\d+)\s+([a-z_, /]+?)\s{2,}", line)
        if m:
            floors.update({name.strip().rstrip("/"): int(m.group(1)) for name in m.group(2).split(",")})
    return floors


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imported_modules(p) - {_module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_every_import_runs_down_the_floors_the_package_docstring_draws():
    floors = _floors()
    rooms = {_room(m) for m in _graph()} - {"__init__"}
    assert rooms == set(floors), rooms ^ set(floors)
    upward = [f"{m} -> {d}" for m, deps in _graph().items() if _room(m) != "__init__"
              for d in deps if _room(d) != _room(m) and floors[_room(d)] >= floors[_room(m)]]
    assert upward == [], upward


def test_no_import_circle_between_modules():
    graph, state, circles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                circles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == [], circles


def test_the_top_level_api_names_resolve_and_load_lazily():
    import hybridkd_lib

    for name in hybridkd_lib.API:
        assert getattr(hybridkd_lib, name).__name__ == name
    out = subprocess.run([sys.executable, "-c", "import sys, hybridkd_lib; "
                          "print('torch' in sys.modules, hybridkd_lib.TrainConfig.__name__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "TrainConfig"]


def test_no_library_module_imports_the_book_machinery():
    offenders = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                 if "book" not in p.relative_to(PACKAGE).parts and p.name != "cli.py"
                 and any(_room(m) == "book" for m in _imported_modules(p))]
    assert offenders == []


def test_only_the_registry_branches_on_a_methods_facts():
    """Outside ``methods.py`` nothing decides what a step does from a method's facts."""
    pattern = re.compile(r"propagation\s*[=!]=|\.hybrids\b|\.teacher and|\.trains\s*[=!]=|"
                         r"\b(spec|method|get_method\([^)]*\))\.(aligns|features|teacher|propagation)\b")
    hits = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in PACKAGE.rglob("*.py") if p.name != "methods.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line.split("#")[0])]
    assert hits == [], hits


def test_pyproject_declares_the_runtime_dependencies_and_every_pin_fits_its_range():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    core = {r.name.lower() for r in declared[:len(project["dependencies"])]}
    assert {"torch", "torchvision", "spikingjelly", "timm", "scikit-learn", "tqdm", "grad-cam", "matplotlib"} <= core
    from importlib.metadata import version

    for r in declared:   # the pinned version, or (a dependency of a pin, e.g. numpy) the one installed
        tested = pins.get(r.name.lower()) or version(r.name)
        assert r.specifier.contains(tested, prereleases=True), (r, tested)


def _imports_torch(*args) -> tuple[bool, str]:
    code = ("import sys, runpy; sys.argv = ['hybridkd_lib', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('hybridkd_lib', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT)
    return p.stderr.endswith("TORCH") and not p.stderr.endswith("NO-TORCH"), p.stdout


def test_help_and_datasets_answer_without_importing_torch():
    for args in (["--help"], ["train", "--help"], ["bench", "--help"], ["reproduce", "--help"], ["datasets"]):
        torch_loaded, out = _imports_torch(*args)
        assert not torch_loaded, args
        assert out.strip(), args
    assert "--clip-grad-norm" in _imports_torch("train", "--help")[1]
    assert "--plugin" in _imports_torch("bench", "--help")[1]


def test_no_function_in_the_package_is_over_50_lines():
    """A function a maintainer reads in one screen: ``def`` to its last line, docstring included."""
    long = [f"{p.relative_to(PACKAGE)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1})"
            for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 50]
    assert long == [], long
