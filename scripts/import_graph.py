"""The repository's import graph, read from the source (no module is imported), and the
contract it must keep:

- layers: kernels < l2a < train < eval < bench < study. A module may import its own
  layer or one below, never one above. launch/, hydra_plugins/, scripts/ and tests may
  import anything, and so may a package's `__main__` (an entry point: it wires the layers
  together, e.g. `python -m train` hands the trainer an evaluator from eval). Library
  code imports no entry point: no `__main__`, nothing of launch/, scripts/ or tests.
- no cycle between packages: every package directory (sub-packages count as their own,
  so train.data and train are two nodes) is a node, an import from a module of one into
  a module of another an edge, and that graph must be acyclic. A package's `__init__`
  re-exporting its own sub-packages is its public face, not an edge (Python runs it
  before any of its sub-modules anyway).
- no cycle between the modules of one package.

Every `import` statement counts, including the lazy ones inside functions: a lazy import
only postpones a cycle to the first call, it does not remove it.

    python scripts/import_graph.py          # prints violations and cycles; exit 1 if any
    python scripts/import_graph.py --edges  # also prints the package graph
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. Each may import itself and what is left of it.
LAYERS = ("kernels", "l2a", "train", "eval", "bench", "study")
# Top-level names that may import anything (and that no layer may import).
FREE = ("launch", "hydra_plugins", "scripts", "tests")
FIRST_PARTY = LAYERS + FREE
SKIP_DIRS = {".venv", "outputs", "multirun", ".git", "__pycache__", "build"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (the deepest prefix that is a module)
    path: str  # importing file, relative to the root
    line: int


def _is_test(parts: tuple[str, ...]) -> bool:
    return "tests" in parts or parts[-1].startswith("test_") or parts[-1] == "conftest"


def _is_entry_point(module: str) -> bool:
    return module.split(".")[-1] == "__main__"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every first-party Python file."""
    found: dict[str, Path] = {}
    for top in FIRST_PARTY:
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            if SKIP_DIRS & set(rel.parts):
                continue
            parts = rel.with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _package_of(module: str, modules: dict[str, Path]) -> str:
    """The package a module belongs to: itself for an __init__, else its parent."""
    if modules[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0] or module


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest prefix of `name` that is a first-party module (None: not ours)."""
    parts = name.split(".")
    if parts[0] not in FIRST_PARTY:
        return None
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path], root: Path = ROOT) -> list[Import]:
    path = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(module, modules)
    rel = str(path.relative_to(root))
    out: list[Import] = []

    def add(name: str, line: int) -> None:
        target = _resolve(name, modules)
        imp = Import(module, target, rel, line)
        if target is not None and target != module and imp not in out:
            out.append(imp)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one.
            for alias in node.names:
                full = f"{stem}.{alias.name}"
                add(full if full in modules else stem, node.lineno)
    return out


def all_imports(root: Path = ROOT) -> tuple[dict[str, Path], list[Import]]:
    modules = module_files(root)
    edges = [imp for module in modules for imp in imports_of(module, modules, root)]
    return modules, edges


def layer_violations(modules: dict[str, Path], edges: list[Import]) -> list[str]:
    problems = []
    for imp in edges:
        src_top = imp.source.split(".")[0]
        dst_top = imp.target.split(".")[0]
        if _is_entry_point(imp.target) and not _is_test(tuple(imp.source.split("."))):
            problems.append(
                f"{imp.path}:{imp.line}: {imp.source} imports {imp.target} "
                f"(an entry point; what both need belongs in a library module)"
            )
            continue
        if src_top in FREE or _is_test(tuple(imp.source.split("."))) or _is_entry_point(imp.source):
            continue
        if dst_top in FREE:
            problems.append(
                f"{imp.path}:{imp.line}: {imp.source} imports {imp.target} "
                f"({dst_top}/ is an entry point or harness; no library code imports it)"
            )
        elif LAYERS.index(dst_top) > LAYERS.index(src_top):
            problems.append(
                f"{imp.path}:{imp.line}: {imp.source} imports {imp.target} "
                f"({src_top} is below {dst_top}: {' < '.join(LAYERS)})"
            )
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _library_edges(edges: list[Import]) -> list[Import]:
    """Edges whose importer is library code. Tests and entry points are left out of the
    cycles: nothing imports them (layer_violations checks that), so no cycle runs through."""
    return [imp for imp in edges
            if not _is_test(tuple(imp.source.split("."))) and not _is_entry_point(imp.source)]


def package_graph(modules: dict[str, Path], edges: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in _library_edges(edges):
        src = _package_of(imp.source, modules)
        dst = _package_of(imp.target, modules)
        if src == imp.source and dst.startswith(src + "."):
            continue  # an __init__ re-exporting its own sub-package
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    return graph


def module_graphs(modules: dict[str, Path], edges: list[Import]) -> dict[str, set[str]]:
    """Module -> modules it imports, both in the same package."""
    graph: dict[str, set[str]] = {}
    for imp in _library_edges(edges):
        if _package_of(imp.source, modules) == _package_of(imp.target, modules):
            graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def _edge_lines(edges: list[Import], members: list[str], key) -> list[str]:
    inside = set(members)
    return [
        f"    {imp.path}:{imp.line}: {imp.source} -> {imp.target}"
        for imp in _library_edges(edges)
        if key(imp.source) in inside and key(imp.target) in inside
        and key(imp.source) != key(imp.target)
        and not (key(imp.source) == imp.source and key(imp.target).startswith(imp.source + "."))
    ]


def report(root: Path = ROOT) -> list[str]:
    """Every broken rule, one entry each (an empty list: the contract holds)."""
    modules, edges = all_imports(root)
    problems = layer_violations(modules, edges)
    pkg = lambda m: _package_of(m, modules)  # noqa: E731
    for component in cycles(package_graph(modules, edges)):
        lines = _edge_lines(edges, component, pkg)
        problems.append("package cycle: " + " <-> ".join(component) + "\n" + "\n".join(lines))
    for component in cycles(module_graphs(modules, edges)):
        lines = _edge_lines(edges, component, lambda m: m)
        problems.append("module cycle: " + " <-> ".join(component) + "\n" + "\n".join(lines))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", action="store_true", help="print the package graph too")
    args = parser.parse_args(argv)
    if args.edges:
        modules, edges = all_imports()
        for src, dsts in sorted(package_graph(modules, edges).items()):
            print(f"{src} -> {', '.join(sorted(dsts))}")
        print()
    problems = report()
    for problem in problems:
        print(problem)
    if problems:
        print(f"\n{len(problems)} broken import rule(s); layers: {' < '.join(LAYERS)}")
        return 1
    print(f"import contract holds: {' < '.join(LAYERS)}, no package or module cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
