"""The import graph of pipeline/ and stages/, read with `ast` (nothing is imported): the library never imports
the commands, and no two files import each other, directly or round a longer circle. Imports inside functions
count (a lazy import is still a dependency); `if TYPE_CHECKING:` blocks do not."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")


def _module_file(name: str) -> Path | None:
    """pipeline.chain.plan -> pipeline/chain/plan.py (or a package's __init__.py); None outside the repo."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[Path]:
    """The repo files `path` imports (a `from pkg import sub` names the submodule's file when there is one)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for child in node.body for n in ast.walk(child)}
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[Path] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([mod] if mod else []))
            names = [f"{mod}.{a.name}" if _module_file(f"{mod}.{a.name}") else mod for a in node.names]
        else:
            continue
        out |= {f for f in map(_module_file, names) if f is not None and f != path}
    return out


def _graph() -> dict[Path, set[Path]]:
    return {p: _imports(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on: set[Path] = set()
    found: list[list[Path]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_library_never_imports_the_commands():
    bad = [f"{p.relative_to(ROOT)} -> {q.relative_to(ROOT)}" for p, deps in _graph().items()
           if p.parts[len(ROOT.parts)] == "pipeline" for q in deps if q.parts[len(ROOT.parts)] == "stages"]
    assert not bad, "pipeline/ imports stages/: " + "; ".join(bad)


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + " | ".join(" <-> ".join(str(p.relative_to(ROOT)) for p in c)
                                                        for c in cycles)


def test_the_checker_sees_a_circle_and_a_lazy_import(tmp_path):
    """The walker itself: a lazy import inside a function is an edge, and a two-file circle is found."""
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert _cycles({a: {b}, b: {a}, c: {a}}) == [[a, b]]
    assert _cycles({a: {b}, b: {c}, c: set()}) == []
    edges = _imports(ROOT / "stages" / "chain.py")
    assert ROOT / "pipeline" / "chain" / "run.py" in edges
