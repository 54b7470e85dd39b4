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


def _library_imports(path) -> set[str]:
    """The library modules (first level under ``hybridkd_lib``) a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hybridkd_lib":
            parts = node.module.split(".")
            found.update(a.name for a in node.names) if len(parts) == 1 else found.add(parts[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("hybridkd_lib."))
    return found


def _documented_map() -> dict[str, set[str]]:
    import hybridkd_lib

    rows = {}
    for line in hybridkd_lib.__doc__.splitlines():
        m = re.match(r"\s{4}([a-z_, /]+?)\s+-> (.*)$", line)
        if m:
            deps = set() if m.group(2).startswith("(none)") else {d.strip() for d in m.group(2).split("(")[0].split(",")}
            for name in m.group(1).split(","):
                rows[name.strip().rstrip("/")] = deps
    return rows


def test_the_package_docstring_maps_every_module_to_its_imports():
    documented = _documented_map()
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")} | {"models"}
    assert set(documented) == modules, set(documented) ^ modules
    for name in modules - {"models"}:
        assert _library_imports(PACKAGE / f"{name}.py") == documented[name], name
    models = set().union(*(_library_imports(p) for p in (PACKAGE / "models").glob("*.py"))) - {"models"}
    assert models == documented["models"]


def test_no_library_module_imports_the_book_machinery():
    offenders = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                 if "book" not in p.relative_to(PACKAGE).parts and p.name != "cli.py" and "book" in _library_imports(p)]
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
