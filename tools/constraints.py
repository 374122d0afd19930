"""``make constraints``: pin every installed package at the version the test suite passed with.

Writes ``constraints.txt`` (``name==version`` per line, as ``pip freeze`` prints them) from the
environment this interpreter runs in, which ``make setup`` then installs with
``pip install -c constraints.txt``. Left out: the course's own package (installed editable),
pip, setuptools and wheel (as ``pip freeze`` leaves them out), and torch together with the
packages that only torch needs: ``TORCH_SPEC`` decides torch, and Colab or a GPU box keeps its
own build, whose own pins (sympy, say) must not meet ours. Run it after ``make test`` passed.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = "gpt2-course-helpers"  # pyproject.toml's project.name
UNPINNED = {"pip", "setuptools", "wheel", "torch"}


def canonical(name: str) -> str:
    """A package name as the index compares them (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_graph(distributions=None) -> dict[str, set[str]]:
    """``{package: the installed packages it requires}``, extras left out (an extra is optional)."""
    dists = {canonical(d.metadata["Name"]): d for d in (distributions or metadata.distributions())}
    graph = {}
    for name, dist in dists.items():
        needs = set()
        for requirement in dist.requires or []:
            if re.search(r"\bextra\s*==", requirement):
                continue
            needs.add(canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)))
        graph[name] = needs & dists.keys()
    return graph


def only_needed_by(root: str, graph: dict[str, set[str]]) -> set[str]:
    """The packages ``root`` needs, directly or not, that no other installed package needs."""
    needed, todo = set(), [root]
    while todo:
        for dependency in graph.get(todo.pop(), ()):
            if dependency not in needed and dependency != root:
                needed.add(dependency)
                todo.append(dependency)
    changed = True
    while changed:  # drop what something outside root's own tree needs, until nothing changes
        outside = {name for name in graph if name not in needed and name != root}
        shared = {dep for name in outside for dep in graph[name]} & needed
        needed -= shared
        changed = bool(shared)
    return needed


def constraints_text(distributions=None) -> str:
    """The content of ``constraints.txt`` for the given (default: installed) distributions."""
    distributions = list(distributions or metadata.distributions())
    graph = requirement_graph(distributions)
    torch_only = only_needed_by("torch", graph)
    left_out = UNPINNED | torch_only | {PROJECT}
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in distributions if canonical(d.metadata["Name"]) not in left_out},
                  key=str.lower)
    python = ".".join(platform.python_version_tuple()[:2])
    return "\n".join([
        f"# The exact versions `make test` passed with (Python {python}, {platform.system()}); written by `make constraints`.",
        f"# Left out: {PROJECT} itself, {', '.join(sorted(UNPINNED | torch_only))} (TORCH_SPEC decides torch).",
        *pins,
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.constraints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "constraints.txt", metavar="FILE",
                        help="where to write them (default: constraints.txt at the repository root)")
    args = parser.parse_args(argv)
    text = constraints_text()
    args.out.write_text(text, encoding="utf-8")
    print(f"pinned {sum(not line.startswith('#') for line in text.splitlines())} packages in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
