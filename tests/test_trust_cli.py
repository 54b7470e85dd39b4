"""The command line as a new user meets it (#38, items 2, 5 and 6): every number it takes is finite and in
range, plug-ins that cannot be loaded (or that take a built-in's name) are one line naming them whatever
``$HYBRIDKD_PLUGINS`` holds, a ``train`` whose reader goes away still writes its result, ``bench --compile``
says when it falls back, ``--version``, a dangling ``--out`` link and a damaged CIFAR file are named."""
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hybridkd_lib
from hybridkd_lib.base.results import REPO_ROOT

TINY = ["--student-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}', "--T", "2", "--batch-size", "32",
        "--max-steps-per-epoch", "2", "--no-progress"]


def _cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, env={**os.environ, **(env or {})}, timeout=600)


def _one_line(proc, *fragments: str) -> str:
    """Exit status 2 and exactly one line on stderr, ``error: ...`` holding every fragment, no traceback."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- 2. numbers: finite, in range
@pytest.mark.parametrize("option, value, message", [
    ("--clip-grad-norm", "nan", "clip_grad_norm=nan not allowed; clip_grad_norm must be > 0 (a finite number)"),
    ("--clip-grad-norm", "inf", "clip_grad_norm=inf not allowed; clip_grad_norm must be > 0 (a finite number)"),
    ("--lr", "nan", "lr=nan not allowed; lr must be > 0 (a finite number)"),
    ("--lr", "1e999", "lr=inf not allowed; lr must be > 0 (a finite number)"),
    ("--weight-decay", "-inf", "weight_decay=-inf not allowed; weight_decay must be >= 0 (a finite number)"),
    ("--momentum", "1.5", "momentum=1.5 not allowed; momentum must be >= 0 and < 1 (a finite number)"),
    ("--batch-size", "many", "batch_size='many' not allowed; batch_size must be > 0 (an integer)"),
])
def test_train_numbers_are_finite_and_in_range(tmp_path, option, value, message):
    out = tmp_path / "run"
    _one_line(_cli("train", "--method", "ratebp", "--out", str(out), *TINY, f"{option}={value}"), message)
    assert not out.exists()


@pytest.mark.parametrize("settings, message", [
    ({"clip_grad_norm": math.nan}, "clip_grad_norm=nan not allowed; clip_grad_norm must be > 0 (a finite number)"),
    ({"momentum": math.inf}, "momentum=inf not allowed; momentum must be >= 0 and < 1 (a finite number)"),
    ({"loss": {"kd": math.inf}}, "loss.kd=inf not allowed in loss={'kd': inf}: numbers must be finite"),
    ({"neuron": {"tau": math.nan}}, "neuron.tau=nan not allowed in neuron={'tau': nan}: numbers must be finite"),
])
def test_a_config_file_gets_the_same_checks(tmp_path, settings, message):
    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"method": "ratebp", "out": str(out), **settings}))   # NaN, Infinity: JSON's words
    _one_line(_cli("train", "--config", str(config), *TINY), message)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["export", "--run", "R", "--to", "g.nir", "--dt", "nan"], "dt=nan not allowed; dt must be > 0 (a finite number)"),
    (["export", "--run", "R", "--to", "g.nir", "--dt", "inf"], "dt=inf not allowed; dt must be > 0"),
    (["export", "--run", "R", "--to", "g.nir", "--dt", "0"], "dt=0.0 not allowed; dt must be > 0"),
    (["bench", "--timeout", "nan"], "timeout=nan not allowed; timeout must be > 0 (a finite number)"),
    (["reproduce", "--time", "inf"], "time=inf not allowed; time must be > 0 (a finite number)"),
    (["reproduce", "--nproc", "0"], "nproc=0 not allowed; nproc must be >= 1 (an integer)"),
    (["reproduce", "--gpus-per-node", "0"], "gpus_per_node=0 not allowed; gpus_per_node must be >= 1"),
])
def test_every_other_number_is_finite_and_in_range(tmp_path, args, message):
    _one_line(_cli(*args, cwd=tmp_path), message, f"{args[0]} --help")
    assert not (tmp_path / "g.nir").exists()


def test_no_option_takes_an_unchecked_float():
    """Every number option of every command parses through the checked type (never a bare ``float``), and
    every float setting of a run has a range."""
    import typing
    from dataclasses import fields

    from hybridkd_lib.cli import build_parser
    from hybridkd_lib.training.config import RANGES, TrainConfig

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    bare = [(name, a.dest) for name, sub in commands.items() for a in sub._actions if a.type is float]
    assert bare == []
    hints = typing.get_type_hints(TrainConfig)
    floats = [f.name for f in fields(TrainConfig) if float in (typing.get_args(hints[f.name]) or (hints[f.name],))]
    assert floats and set(floats) <= set(RANGES)


# ----------------------------------------------------------------------------- 5. plug-ins
PLUGINS = {
    "syntax.py": ("def register(:\n", "plugin '{p}' failed on import: SyntaxError: "),
    "raises.py": ("raise RuntimeError('no GPU here\\nsecond line')\n",
                  "plugin '{p}' failed on import: RuntimeError: no GPU here"),
    "exits.py": ("import sys\nsys.exit(3)\n", "plugin '{p}' exited on import (sys.exit(3))"),
    "floor.py": ("from hybridkd_lib.method.methods import Method, register_method\n"
                 "register_method(Method('conv_floor', trains='student', propagation='rate', title='mine'))\n",
                 "plugin '{p}' failed on import: ValueError: method 'conv_floor' cannot be registered: it is the name "
                 "of bench's variant of 'ratebp'"),
    "takes.py": ("from hybridkd_lib.method import methods\n"
                 "methods.METHODS['ratebp'] = methods.Method('ratebp', trains='student', propagation='bptt')\n",
                 "plugin '{p}' registers a method under the built-in method 'ratebp'"),
    "notes.txt": ("not python\n", "plugin '{p}' is not a Python file; expected a .py file or an importable module"),
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
@pytest.mark.parametrize("relative", [True, False])
def test_a_plugin_that_cannot_be_loaded_is_one_line_naming_it(tmp_path, name, relative):
    source, message = PLUGINS[name]
    (tmp_path / name).write_text(source)
    spec = name if relative else str(tmp_path / name)
    out = tmp_path / "run"
    p = _cli("train", "--plugin", spec, "--method", "ratebp", "--out", str(out), *TINY, cwd=tmp_path)
    line = _one_line(p, message.format(p=spec))
    assert "\n" not in line and not out.exists()


def test_a_missing_plugin_file_is_named(tmp_path):
    _one_line(_cli("train", "--plugin", "nowhere.py", "--method", "ratebp", "--out", "run", cwd=tmp_path),
              "plugin 'nowhere.py': no such file")
    _one_line(_cli("bench", "--plugin", str(tmp_path / "gone.py"), cwd=tmp_path),
              f"plugin {str(tmp_path / 'gone.py')!r}: no such file")


def test_bench_never_times_a_plugin_method_as_its_variant(tmp_path):
    (tmp_path / "floor.py").write_text(PLUGINS["floor.py"][0])
    p = _cli("bench", "--plugin", "floor.py", "--methods", "conv_floor", "--T", "2", "--out", "b.json", cwd=tmp_path)
    _one_line(p, "plugin 'floor.py' failed on import: ValueError: method 'conv_floor' cannot be registered")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("stale", ["/no/such/plugin.py", "notes.txt", "syntax.py"])
def test_help_and_datasets_answer_whatever_the_plugin_variable_holds(tmp_path, stale):
    for name in ("notes.txt", "syntax.py"):
        (tmp_path / name).write_text(PLUGINS[name][0])
    env = {"HYBRIDKD_PLUGINS": stale}
    for args in (["--help"], ["train", "--help"], ["bench", "--help"], ["reproduce", "--help"]):
        p = _cli(*args, cwd=tmp_path, env=env)
        assert p.returncode == 0 and "usage:" in p.stdout and p.stderr == "", (args, p.stderr[-2000:])
    p = _cli("datasets", cwd=tmp_path, env=env)
    assert p.returncode == 0 and "digits" in p.stdout, p.stderr[-2000:]
    warning = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(warning) == 1 and warning[0].startswith(f"warning: plugin {stale!r} (listed in $HYBRIDKD_PLUGINS)")
    # a command that would use it: one line naming it and where it was listed
    p = _cli("train", "--method", "ratebp", "--out", "run", *TINY, cwd=tmp_path, env=env)
    _one_line(p, f"plugin {stale!r} (listed in $HYBRIDKD_PLUGINS)")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 6. streams, versions, paths, data
def test_a_train_whose_reader_goes_away_still_writes_its_result(tmp_path):
    """``train ... | head -1``: the first line is read, the rest goes nowhere, the run finishes."""
    out = tmp_path / "run"
    command = " ".join([sys.executable, "-m", "hybridkd_lib", "train", "--method", "ratebp", "--epochs", "3",
                        "--out", str(out), *(f"'{a}'" for a in TINY)])
    p = subprocess.run(["bash", "-c", f"{command} | head -1; exit ${{PIPESTATUS[0]}}"], capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=600)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stdout.startswith("epoch 1/3: loss") and p.stdout.count("\n") == 1, p.stdout
    assert (out / "model.pt").is_file()
    assert json.loads((out / "result.json").read_text())["epochs"] == 3
    again = _cli("train", "--method", "ratebp", "--epochs", "3", "--out", str(out), *TINY)
    assert again.returncode == 0 and "already finished with these settings" in again.stdout, again.stderr


def test_bench_compile_without_a_compiler_says_it_fell_back(tmp_path):
    """No working C++ compiler (``$CXX`` names none; a fresh inductor cache, so nothing compiled before is
    reused): the console says the compiled spike pass fell back, and why, once."""
    out = tmp_path / "bench.json"
    env = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    p = _cli("bench", "--methods", "ratebp", "--T", "2", "--batch-size", "2", "--input-size", "8", "--steps", "1",
             "--warmup", "0", "--student-kw", '{"width": 4}', "--compile", "--out", str(out), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    said = [l for l in p.stdout.splitlines() if "compiled spike pass unavailable on cpu (" in l]
    assert len(said) == 1 and said[0].endswith("the fused loop runs"), p.stdout
    assert json.loads(out.read_text())["records"][0]["spike_loop"] == "fused"


def test_version():
    p = _cli("--version")
    assert p.returncode == 0 and p.stdout == f"hybridkd_lib {hybridkd_lib.__version__}\n", p.stderr


@pytest.mark.parametrize("below", ["", "run"])
def test_out_on_a_dangling_symlink_is_named(tmp_path, below):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    out = link / below if below else link
    p = _cli("train", "--method", "ratebp", "--out", str(out), *TINY)
    _one_line(p, f"out={str(out)!r} cannot be created: {str(link)!r} is a symbolic link to "
                 f"{str(tmp_path / 'nowhere')!r}, which does not exist")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def _tiny_cifar(root: Path) -> Path:
    from hybridkd_lib.book import tinydata

    tinydata.write_cifar(root, "cifar10", n_images=8)
    return root / "cifar-10-batches-py"


def test_a_cifar_file_that_is_not_the_release_is_named_on_the_command_line(tmp_path):
    folder = _tiny_cifar(tmp_path / "data")
    p = _cli("train", "--method", "ratebp", "--dataset", "cifar10", "--data-root", str(tmp_path / "data"),
             "--out", str(tmp_path / "run"), *TINY[:2], "--T", "2", "--batch-size", "4", "--no-progress")
    _one_line(p, f"cifar10: {folder / 'data_batch_1'} is corrupted or not the official release's file",
              "--download cifar10")
    assert "download=True" not in p.stderr


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_the_corrupt_cifar_file_itself_is_named(tmp_path, monkeypatch, damage):
    """The release's md5 sums made those of the tiny files: only the damaged one differs, and it is named."""
    from torchvision import datasets as tv

    from hybridkd_lib.data import datasets

    folder = _tiny_cifar(tmp_path)
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    monkeypatch.setattr(tv.CIFAR10, "train_list", [[n, md5[n]] for n, _ in tv.CIFAR10.train_list])
    monkeypatch.setattr(tv.CIFAR10, "test_list", [[n, md5[n]] for n, _ in tv.CIFAR10.test_list])
    monkeypatch.setattr(tv.CIFAR10, "meta", {**tv.CIFAR10.meta, "md5": md5["batches.meta"]})
    assert len(datasets.get_datasets("cifar10", root=tmp_path)[0]) == 40   # every file the "release's"
    bad = folder / "data_batch_3"
    if damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(bad.read_bytes()[:100])
    said = "is missing" if damage == "missing" else "is corrupted or not the official release's file (100 bytes"
    with pytest.raises(ValueError, match=re.escape(f"cifar10: {bad} {said}")):
        datasets.get_datasets("cifar10", root=tmp_path)


def test_the_kernel_config_the_makefile_writes_drops_only_the_tcp_notice(tmp_path):
    """``make setup`` writes the venv's ipykernel configuration; its filter drops ipykernel's "running over TCP
    without encryption" notice (printed once per notebook by ``make book``) and nothing else; a kernel started
    with it prints no such notice."""
    import logging

    from traitlets.config import Config

    target = tmp_path / "profile_default" / "ipython_kernel_config.py"
    subprocess.run(["make", "-s", "-o", ".venv/.installed", f"KERNEL_CONFIG={target}", str(target)],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
    c = Config()
    exec(compile(target.read_text(), str(target), "exec"), {"c": c})
    spec = c.IPKernelApp.logging_config
    keep = spec["filters"]["tcp_notice"]["()"]()
    record = lambda msg: logging.LogRecord("IPKernelApp", logging.WARNING, __file__, 1, msg, None, None)   # noqa: E731
    assert not keep.filter(record("Kernel is running over TCP without encryption. All communication ..."))
    assert keep.filter(record("Parent appears to have exited, shutting down."))
    assert spec["handlers"]["console"]["filters"] == ["tcp_notice"]
    nb = tmp_path / "nb.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "id": "a", "metadata": {}, "execution_count": None,
                                         "outputs": [], "source": ["print(1 + 1)"]}],
                              "metadata": {"kernelspec": {"name": "hybridkd", "display_name": "hybridkd",
                                                          "language": "python"},
                                           "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    p = subprocess.run([sys.executable, "-m", "papermill", "-k", "hybridkd", "--no-progress-bar", str(nb),
                        str(tmp_path / "out.ipynb")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "IPYTHONDIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "without encryption" not in p.stderr, p.stderr[-3000:]
