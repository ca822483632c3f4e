"""The package's import structure in three numbers: import circles, upward imports and package imports
made inside functions. ``python benchmarks/import_graph.py [-v]`` (run from the repository root).

A circle is a strongly connected set of modules (imports at any level, since an import inside a function
still ties the two modules together). An import is upward when
it goes from a lower layer to a higher one (``LAYERS``: infrastructure, then data and ops, then models,
then the training engine, then the verbs); a function-level import of a heavy optional library is not
counted, only imports of ``fsfm_fast`` modules.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fsfm_fast"
# Top-level name (module or subpackage) -> layer; imports may only go to the same layer or down.
LAYERS = {
    "__init__": 0, "_ext": 0, "timm_registration": 0, "runtime": 0, "cli": 0, "signals": 0, "distributed": 0,
    "devices": 0, "formats": 0, "demo": 0,
    "ops": 1, "data": 1,
    "models": 2, "metrics": 2, "inference": 2,
    "engine": 3, "checkpoint": 3, "run_log": 3, "step_stats": 3, "schedules": 3, "finetune_engine": 3,
    "plots": 4, "pretrain": 4, "pretrain_args": 4, "finetune": 4, "finetune_fas": 4, "evaluate": 4, "export": 4,
    "predict": 4, "prepare": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(node: ast.ImportFrom | ast.Import, here: str, is_package: bool, modules: set[str]) -> list[str]:
    """The fsfm_fast modules an import statement reaches (``from pkg import module`` reaches the module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "fsfm_fast" and a.name in modules]
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "fsfm_fast":
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in modules else target)
    return [m for m in out if m in modules]


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__", 4)


def graph():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    top, inner = defaultdict(set), []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [t for t in resolve(node, name, is_package, modules) if t != name]
                if id(node) in nested:
                    inner += [(name, t, node.lineno) for t in targets]
                else:
                    top[name].update(targets)
    return modules, top, inner


def circles(modules, edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            # a package importing its own submodules (re-exports) is not a circle of the architecture
            if len(comp) > 1 and not _package_and_children(comp):
                out.append(sorted(comp))
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def _package_and_children(comp: list[str]) -> bool:
    shortest = min(comp, key=len)
    return all(m == shortest or m.startswith(shortest + ".") for m in comp)


def main() -> None:
    verbose = "-v" in sys.argv
    modules, top, inner = graph()
    every = defaultdict(set, {a: set(t) for a, t in top.items()})
    for a, b, _ in inner:
        every[a].add(b)
    found = circles(modules, every)
    upward = sorted({(a, b) for a, targets in every.items() for b in targets if layer(b) > layer(a)})
    statements = sorted({(a, line) for a, _, line in inner})
    print(f"modules {len(modules)}; import circles {len(found)}; upward imports {len(upward)}; "
          f"function-level package imports {len(statements)}")
    if verbose:
        for comp in found:
            print("circle:", " <-> ".join(comp))
        for a, b in upward:
            print(f"upward: {a} -> {b}")
        for a, b, line in sorted(set(inner)):
            print(f"in a function: {a}:{line} -> {b}")


if __name__ == "__main__":
    main()
