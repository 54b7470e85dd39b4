"""Command line: ``python -m hybridkd_lib {datasets,...}``."""
from __future__ import annotations

import argparse
import sys


def cmd_datasets(args) -> int:
    from hybridkd_lib import data

    if args.download:
        data.get_datasets(args.download, root=args.data_root, download=True)
    rows = data.dataset_table(args.data_root)
    print(f"{'name':<11} {'classes':>7}  {'input':<12} {'present':<8} expected path")
    for r in rows:
        print(f"{r['name']:<11} {r['classes']:>7}  {r['input']:<12} "
              f"{'yes' if r['present'] else 'MISSING':<8} {r['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hybridkd_lib",
                                description="HybridKD: hybrid block-wise ANN-guided distillation of SNNs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list datasets, where they are expected and whether present")
    d.add_argument("--data-root", default=None, help="data folder (default: $HYBRIDKD_DATA or ./data)")
    d.add_argument("--download", default=None, metavar="NAME",
                   help="download NAME first (only cifar10, cifar100, cifar10dvs can be downloaded)")
    d.set_defaults(func=cmd_datasets)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
