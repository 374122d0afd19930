"""``python -m bench [name ...]``: run the benchmarks under bench/ and print one table of ratios."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

import bench


def discover(names: list[str]) -> list[str]:
    modules = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    return [m for m in modules if not names or any(n in m for n in names)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    modules = discover([])
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=f"{bench.__doc__}\nbenchmarks: {', '.join(modules)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="run only the benchmarks whose module name contains NAME (e.g. training); default: all")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if not discover([n])]
    if unknown:
        parser.error(f"no benchmark module matches {', '.join(unknown)}; choose from {', '.join(modules)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for module_name in discover(args.names):
        start = time.perf_counter()
        print(f"running {module_name} ...", flush=True)
        module = importlib.import_module(f"bench.{module_name}")
        rows += module.run()
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    if not rows:
        print("no benchmark produced a row (each said why above)")
        return 0
    header = ("benchmark", "baseline", "candidate", "ratio", "target")
    table = [
        (r.name, f"{r.baseline_label}: {r.baseline:,.4g} {r.unit}", f"{r.candidate_label}: {r.candidate:,.4g} {r.unit}",
         f"{r.ratio:.3f}", r.target)
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
