"""Command line: ``python -m hybridkd_lib {datasets,train,bench,export,reproduce}`` (``--version``).

Parsing and ``--help`` import no torch: each command imports what it runs. ``--plugin FILE_OR_MODULE``
(``train``, ``bench``, ``reproduce``; repeatable) and ``$HYBRIDKD_PLUGINS`` are imported when the command
starts, before anything is checked, never while the parser is built (``--help`` and ``datasets`` answer
whatever the variable holds). Every error is one line, ``error: ...`` (exit status 2): argparse's too, and
every number an option takes is finite and in its range (``_number``; a run's settings: ``config.RANGES``).
``train``, ``bench`` and ``reproduce`` go on to their results when the reader of their output goes away.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def cmd_datasets(args) -> int:
    from hybridkd_lib.data import catalog

    if args.download:
        from hybridkd_lib.data import datasets

        datasets.get_datasets(args.download, root=args.data_root, download=True)
    rows = catalog.dataset_table(args.data_root)
    print(f"{'name':<13} {'classes':>7}  {'input':<12} {'present':<8} looked in")
    for r in rows:
        print(f"{r['name']:<13} {r['classes']:>7}  {r['input']:<12} "
              f"{'yes' if r['present'] else 'MISSING':<8} {r['path']}")
    from hybridkd_lib.book.plan import CHECKPOINTS
    from hybridkd_lib.base.results import work_root

    print("\ncheckpoints the full profile reads (timm formats; see data/README.md):")
    for key, rel in CHECKPOINTS.items():
        path = work_root() / rel   # the checkout's data/checkpoints/ inside one, else the working folder's
        print(f"{key:<13} {'yes' if path.is_file() else 'MISSING':<8} {path}")
    return 0


def _json(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({exc})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _number(name: str, integer: bool = False, **allowed):
    """argparse ``type`` of a number option: a finite number (an integer where ``integer``) in the range
    ``allowed`` (``checks.number_problem``'s keywords), else the one-line error naming it and the range."""
    from hybridkd_lib.base.checks import number_problem

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = text
        problem = number_problem(name, value, integer=integer, **allowed)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    parse.__name__ = "integer" if integer else "number"   # argparse's word for it
    return parse


def _option_type(annotation, name: str = ""):
    """argparse ``type`` of a ``TrainConfig`` field from its annotation (``X | None`` parses as X); a number
    is checked against the field's range (``config.RANGES``: a float is finite and in range)."""
    import typing

    from hybridkd_lib.training.config import RANGES

    kinds = [k for k in (typing.get_args(annotation) or (annotation,)) if k is not type(None)]
    if kinds[0] in (int, float) and (kinds[0] is float or name in RANGES):
        return _number(name, **{"integer": kinds[0] is int, **RANGES.get(name, {})})
    return {dict: _json, int: int, str: str}[kinds[0]]


def add_train_options(parser) -> None:
    """One ``--option`` per ``TrainConfig`` field, with its type and help text from the field (its default
    shown in the help; ``progress`` as ``--no-progress``). An option not given parses as None, so a
    command line says exactly which settings it sets."""
    import typing
    from dataclasses import MISSING, fields

    from hybridkd_lib.training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name == "progress":
            parser.add_argument("--no-progress", action="store_true", help="no progress bars")
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        shown = "" if default is MISSING or f.name == "out" else f" (default: {json.dumps(default)})"
        kind = {"action": argparse.BooleanOptionalAction} if hints[f.name] is bool else \
            {"type": _option_type(hints[f.name], f.name)}   # a switch: --name / --no-name
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f.metadata.get("help", "") + shown, **kind)


def train_config_from_args(args):
    """The run's ``TrainConfig``: the ``--config`` file's settings (if given), then every option given on the
    command line over them; an unknown key or bad JSON in the file is an error naming the file."""
    from dataclasses import fields

    from hybridkd_lib.training.config import TrainConfig, check_settings, config_from_settings
    from hybridkd_lib.base.results import UnreadableFile, read_json_file

    names = [f.name for f in fields(TrainConfig)]
    given = {n: getattr(args, n) for n in names if n != "progress" and getattr(args, n) is not None}
    if args.no_progress:
        given["progress"] = False
    settings = {}
    if args.config:
        try:
            settings = read_json_file(args.config, "config file")
        except FileNotFoundError:
            raise ValueError(f"config file {args.config} does not exist") from None
        except UnreadableFile as exc:
            raise ValueError(str(exc)) from None
        check_settings(settings, f"config file {args.config}")
    settings.update(given)   # the command line wins over the file
    missing = [n for n in ("method", "out") if n not in settings]
    if missing:
        raise ValueError(f"train needs {' and '.join('--' + n for n in missing)} (on the command line or in --config)")
    return config_from_settings(settings)


def cmd_train(args) -> int:
    from hybridkd_lib.training.trainer import train

    cfg = train_config_from_args(args)
    args.out = cfg.out   # where the interrupt message says the run resumes
    train(cfg, overwrite=args.overwrite)
    return 0


def cmd_bench(args) -> int:
    from hybridkd_lib.tools.efficiency import bench
    from hybridkd_lib.method.methods import bench_methods

    out = bench(args.methods or list(bench_methods()), args.T, student=args.student, teacher=args.teacher, batch_size=args.batch_size,
                input_size=args.input_size, device=args.device, steps=args.steps, warmup=args.warmup,
                student_kw=args.student_kw, teacher_kw=args.teacher_kw, out=args.out, timeout_s=args.timeout,
                compile=args.compile, precision=args.precision)
    if args.out:
        print(f"wrote {args.out}")
    print(f"\n{'method':>12} {'T':>3} {'s/step':>8} {'peak MB':>8} {'img/s':>8} {'x floor':>8} {'compile s':>9}")
    for r in out["records"]:
        mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        print(f"{r['method']:>12} {r['T']:>3} {r['step_time_s']:>8.3f} {mem:>8} {r['images_per_s']:>8.1f} "
              f"{r['floor_ratio']:>8.2f} {r['compile_s']:>9.1f}")
    from hybridkd_lib.book.report import bench_claims

    claims = bench_claims(out["records"])
    if "claim" in claims:
        print("\n" + claims.drop(columns=["run"]).to_string(index=False))
    return 0


def cmd_export(args) -> int:
    from hybridkd_lib.tools import nirexport

    path, graph = nirexport.export_run(args.run, args.to, dt=args.dt, soft_reset=args.soft_reset)
    print(f"wrote {path}: {len(graph.nodes)} NIR nodes, {len(graph.edges)} edges, T={graph.metadata['T']}, "
          f"dt={graph.metadata['dt']} s; soft reset: {graph.metadata['soft_reset']}; approximations: "
          f"{graph.metadata['approximations']}")
    if args.check:
        print(nirexport.summary(nirexport.check_run(args.run, graph)))
    return 0


def cmd_reproduce(args) -> int:
    from hybridkd_lib.book.reproduce import reproduce

    if args.status or args.launcher != "local":
        from hybridkd_lib.book import cluster

        if args.status:
            rows = cluster.job_states(args.profile, args.results)
            cluster.print_states(rows)
            return 1 if any(r["state"] == "failed" for r in rows) else 0
        options = cluster.SlurmOptions(partition=args.partition, account=args.account,
                                       gpus_per_node=args.gpus_per_node, time_h=args.time, qos=args.qos,
                                       constraint=args.constraint)
        cluster.submit(args.profile, args.launcher, options, only=args.only or None, results_root=args.results,
                       nproc=args.nproc)
        return 0
    if args.dry_run:
        from hybridkd_lib.book.dryrun import dry_run

        report = dry_run(args.profile, out=args.out, only=args.only or None)
    else:
        report = reproduce(args.profile, only=args.only or None, results_root=args.results, nproc=args.nproc,
                           dry_plan=args.dry_plan)
    if report["failed"]:
        print("failed runs:", file=sys.stderr)
        for name, reason in report["failed"].items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _add_plugin_option(parser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a .py file or module that registers methods or models (hybridkd_lib.method.methods."
                             "register_method, hybridkd_lib.models.register_model); repeatable")


def _sci(x: float) -> str:
    """A number as it is written in help texts: ``1e-4``, not ``0.0001``."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _add_datasets_command(sub) -> None:
    """``datasets``: list the datasets (and download one)."""
    from hybridkd_lib.data import catalog

    d = sub.add_parser("datasets", help="list datasets, where they are expected and whether present")
    d.add_argument("--data-root", default=None, help="data folder (default: $HYBRIDKD_DATA or ./data)")
    d.add_argument("--download", default=None, metavar="NAME",
                   help="download NAME first (needs internet; only " + ", ".join(
                       n for n, i in catalog.DATASETS.items() if i.downloadable) + " can be downloaded)")
    d.set_defaults(func=cmd_datasets)


def _add_train_command(sub) -> None:
    """``train``: one ``--option`` per ``TrainConfig`` field, over an optional ``--config`` file."""
    t = sub.add_parser("train", help="train one run (teacher, baseline or ours); resumes if interrupted")
    t.add_argument("--config", default=None, metavar="FILE",
                   help="a JSON file of TrainConfig fields; options given on the command line override it")
    add_train_options(t)
    _add_plugin_option(t)
    t.add_argument("--overwrite", action="store_true",
                   help="start over in --out even if it holds a run with other settings (its files are removed)")
    t.set_defaults(func=cmd_train)


def _add_bench_command(sub) -> None:
    """``bench``: its defaults are ``efficiency.bench``'s (``tools.defaults``, which imports no torch)."""
    from hybridkd_lib.method.methods import BENCH_METHODS   # the registry's facts import no torch
    from hybridkd_lib.tools import defaults as bd

    b = sub.add_parser("bench", help="time and peak memory per training step vs T (Fig. 4), synthetic data")
    b.add_argument("--student", default=bd.BENCH_STUDENT)
    b.add_argument("--teacher", default=bd.BENCH_TEACHER)
    b.add_argument("--T", type=int, nargs="+", default=list(bd.BENCH_TS))
    b.add_argument("--methods", nargs="+", default=None,
                   help=" | ".join(BENCH_METHODS) + " | a plug-in's student method (default: all of them)")
    b.add_argument("--batch-size", type=int, default=bd.BENCH_BATCH_SIZE)
    b.add_argument("--input-size", type=int, default=bd.BENCH_INPUT_SIZE)
    b.add_argument("--device", default=bd.BENCH_DEVICE)
    b.add_argument("--steps", type=int, default=bd.BENCH_STEPS, help="timed steps after --warmup (peak memory is read after them), then as many again, each after one timing of the conv floor; the medians are reported")
    b.add_argument("--warmup", type=int, default=bd.BENCH_WARMUP)
    b.add_argument("--student-kw", type=_json, default={})
    b.add_argument("--teacher-kw", type=_json, default={})
    b.add_argument("--out", default=None, help="JSON file for the records")
    b.add_argument("--timeout", type=_number("timeout", low=0, low_open=True), default=bd.CHILD_TIMEOUT_S,
                   metavar="SECONDS",
                   help="stop a configuration's process still running after this long (an error naming it)")
    b.add_argument("--compile", action="store_true",
                   help="run the spike pass as compiled kernels (torch.compile; its build time is reported apart)")
    b.add_argument("--precision", default=bd.BENCH_PRECISION,
                   help="fp32 | bf16 | fp16: a CUDA step's compute precision (recorded; the CPU computes in fp32)")
    _add_plugin_option(b)
    b.set_defaults(func=cmd_bench)


def _add_export_command(sub) -> None:
    """``export``: its defaults are ``nirexport.export_run``'s (``tools.defaults``, which imports no torch)."""
    from hybridkd_lib.tools.defaults import DEFAULT_DT, SOFT_RESET, SOFT_RESETS

    e = sub.add_parser("export", help="export a trained student to a NIR graph file (nir.write, HDF5)")
    e.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished student run (result.json, model.pt)")
    e.add_argument("--to", required=True, metavar="FILE", help="the .nir file to write")
    e.add_argument("--dt", type=_number("dt", low=0, low_open=True), default=DEFAULT_DT,
                   help=f"seconds per timestep of the continuous-time LIF (default {_sci(DEFAULT_DT)}: what snnTorch's "
                        f"import assumes)")
    e.add_argument("--soft-reset", choices=SOFT_RESETS, default=SOFT_RESET,
                   help=f"a soft reset (subtract the threshold), which NIR's LIF cannot express: refuse the student, "
                        f"write it exactly (NIR's LI, Threshold and a recurrent Scale; snnTorch and spikingjelly "
                        f"cannot read it) or approximate it by NIR's reset to 0 (default {SOFT_RESET})")
    e.add_argument("--check", action="store_true",
                   help="then run the graph beside the student on the run's test set (snnTorch; nirtorch for an "
                        "exact soft reset) and print dt, both top-1s and the agreement")
    e.set_defaults(func=cmd_export)


def _add_reproduce_command(sub) -> None:
    """``reproduce``: run the plan of a profile (or list it, or dry-run it on the CPU)."""
    from hybridkd_lib.book.plan import PROFILES

    r = sub.add_parser("reproduce", help="execute the plan's runs through papermill (cached, dependency order)")
    r.add_argument("--profile", default="quick", help=" | ".join(PROFILES))
    r.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these runs of the plan")
    r.add_argument("--results", default=None, help="results folder (default: $HYBRIDKD_RESULTS or ./results)")
    r.add_argument("--nproc", type=_number("nproc", integer=True, low=1), default=None,
                   help="processes (GPUs) per multi-process run instead of the plan's (global batch kept)")
    r.add_argument("--dry-run", action="store_true",
                   help="write tiny datasets and checkpoints in the real formats, then execute every distinct run "
                        "of the profile on the CPU (2 steps each) and build the book from them")
    r.add_argument("--out", default=None, help="with --dry-run: its folder (default: a new temporary folder)")
    r.add_argument("--dry-plan", "--list", dest="dry_plan", action="store_true",
                   help="print every run and whether it would run, and why (new, settings changed, dependency "
                        "changed, files missing, files damaged); run nothing")
    _add_launcher_options(r)
    _add_plugin_option(r)
    r.set_defaults(func=cmd_reproduce)


def _add_launcher_options(r) -> None:
    """``reproduce``'s options of where its runs execute: here, or as jobs (submitit, Slurm)."""
    r.add_argument("--launcher", default="local", choices=("local", "local-jobs", "slurm"),
                   help="local: run here, one run after another (default); slurm: submit every run that is not up "
                        "to date as a Slurm job through submitit (dependencies: afterok) and return; local-jobs: "
                        "the same with submitit's local executor (job processes on this machine)")
    r.add_argument("--status", action="store_true",
                   help="print each run's job state (queued, running, finished, failed, up to date) from jobs.json")
    r.add_argument("--partition", default=None, help="Slurm partition")
    r.add_argument("--account", default=None, help="Slurm account")
    r.add_argument("--qos", default=None, help="Slurm QOS")
    r.add_argument("--constraint", default=None, help="Slurm node constraint (e.g. a GPU type)")
    r.add_argument("--gpus-per-node", type=_number("gpus_per_node", integer=True, low=1), default=8,
                   help="GPUs a node has (no run may ask for more)")
    r.add_argument("--time", type=_number("time", low=0, low_open=True), default=None, metavar="HOURS",
                   help="wall time of every job (default: each run's from the plan)")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the command line's usual one line (``error: ...``, exit status 2), pointing
    at ``--help`` instead of printing the usage."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job (``datasets``, ``train``, ``bench``, ``export``, ``reproduce``)."""
    import hybridkd_lib

    p = _Parser(prog="python -m hybridkd_lib",
                description="HybridKD: hybrid block-wise ANN-guided distillation of SNNs")
    p.add_argument("--version", action="version", version=f"hybridkd_lib {hybridkd_lib.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add_command in (_add_datasets_command, _add_train_command, _add_bench_command, _add_export_command,
                        _add_reproduce_command):
        add_command(sub)
    return p


def _stop_as_interrupt(signum, frame):
    raise KeyboardInterrupt   # SIGTERM (kill, a scheduler, torchrun) stops a command as Ctrl-C does


def _to_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _streams_to_devnull() -> None:
    """A closed stdout/stderr (``>&-``) or a reader that went away (``| head``) must not turn a run into a
    traceback: what would be printed there goes to /dev/null instead."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None or stream.closed:
            setattr(sys, name, open(os.devnull, "w"))
        else:
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass
            _to_devnull(fd)


class _ReaderMayGo:
    """``sys.stdout`` or ``sys.stderr`` of a command that writes a result: when its reader has gone
    (``train ... | head -1``), the file descriptor is sent to /dev/null at the first write that finds it gone,
    and the command goes on to its result (its messages go nowhere)."""

    def __init__(self, stream, fd: int):
        self._stream, self._fd = stream, fd

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _to_devnull(self._fd)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            _to_devnull(self._fd)
            try:
                self._stream.flush()   # what was buffered goes to /dev/null now
            except (BrokenPipeError, ValueError):
                pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _keep_going_without_a_reader() -> None:
    """``train``, ``bench`` and ``reproduce`` finish and write their results when the reader of their output
    goes away: writes to a closed pipe are EPIPE errors, not SIGPIPE (as Python sets it), and the streams go to
    /dev/null at the first one. The streams stay wrapped to the process's end, whose last flush they guard too."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if not isinstance(sys.stdout, _ReaderMayGo):
        sys.stdout, sys.stderr = _ReaderMayGo(sys.stdout, 1), _ReaderMayGo(sys.stderr, 2)


def _load_plugins(args) -> None:
    """The plug-ins of ``--plugin`` then ``$HYBRIDKD_PLUGINS``, one by one: one that cannot be loaded, or that
    takes a name of a built-in method or of a bench variant, is an error naming it."""
    from hybridkd_lib.base import plugins
    from hybridkd_lib.method import methods

    given = [(spec, "") for spec in getattr(args, "plugin", None) or []]
    for spec, origin in given + [(spec, f" (listed in ${plugins.ENV})") for spec in plugins.listed()]:
        before = dict(methods.METHODS)
        plugins.load(spec, origin)
        changed = [n for n in methods.BUILT_IN if methods.METHODS.get(n) is not before[n]]
        taken = [n for n in methods.METHODS if n in methods.BENCH_VARIANTS]
        if changed or taken:
            name = (changed or taken)[0]
            what = (f"the built-in method {name!r}" if changed else
                    f"the name {name!r} of bench's variant of {methods.BENCH_VARIANTS[name]!r}")
            raise ValueError(f"plugin {spec!r}{origin} registers a method under {what}; give its method a name "
                             f"of its own (taken: {', '.join(methods.BUILT_IN + tuple(methods.BENCH_VARIANTS))})")


def _run(args) -> int:
    """The command, after its plug-ins; ``datasets`` answers whatever ``$HYBRIDKD_PLUGINS`` holds (a plug-in
    that cannot be loaded is said, and the listing goes on without the plug-ins)."""
    from hybridkd_lib.base import plugins

    if args.command == "datasets":
        try:
            plugins.load_from_environment()
        except ValueError as exc:
            print(f"warning: {exc}; listed without the plug-ins", file=sys.stderr)
            with plugins.deferred():
                return args.func(args)
        return args.func(args)
    _load_plugins(args)
    if args.command in ("train", "bench", "reproduce"):
        _keep_going_without_a_reader()
    return args.func(args)


def main(argv=None) -> int:
    from hybridkd_lib.base import plugins

    if sys.stdout is None or sys.stderr is None:   # started with a closed stdout or stderr
        _streams_to_devnull()
    with plugins.deferred():   # the parser and --help never load plug-ins: the command does, inside the handling
        args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_as_interrupt)
    try:
        return _run(args)
    except BrokenPipeError:   # the reader of stdout went away (| head): nothing more to say
        _streams_to_devnull()
        return 141
    except KeyboardInterrupt:
        where = getattr(args, "out", None)
        how = (f"run the same command again to resume {where} from its last checkpoint" if args.command == "train"
               else "run the same command again: finished runs are kept")
        print(f"\ninterrupted: {how}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
