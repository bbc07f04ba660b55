"""The package's import graph, read from the source with ``ast`` (nothing is imported): no stage module
imports another, no cycles between packages (function-level imports included), each module imports
only from its layer or below (docs/architecture.md), and imports sit at module top except for the
optional heavy dependencies (issue 19, rules 1 and 5)."""

import ast
import os
from typing import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "moe_jax")

STAGE_MODULES = {f"moe_jax.pipeline.{n}" for n in ("convert", "collect", "eval", "analyze", "steer", "report")}
# layers, bottom up (docs/architecture.md): a module imports only from its layer or below
LAYERS = {
    1: ("moe_jax.models", "moe_jax.io", "moe_jax.errors", "moe_jax.distributed", "moe_jax.accelerators"),
    2: ("moe_jax.artifacts",),
    3: ("moe_jax.convert", "moe_jax.data", "moe_jax.routing", "moe_jax.eval", "moe_jax.analysis",
        "moe_jax.steering", "moe_jax.report", "moe_jax.sharding", "moe_jax.plan", "moe_jax.xla_memory"),
    4: ("moe_jax.pipeline",),
    5: ("moe_jax.launch", "moe_jax.compare", "moe_jax.api", "moe_jax.convert.__main__", "moe_jax"),
}
# optional heavy dependencies: the only imports allowed inside a function (fsspec where it pulls gcsfs, and
# google.auth, gcsfs's credentials: installed with the gcs extra only)
HEAVY = ("torch", "lm_eval", "tokamax", "gcsfs", "papermill", "fsspec", "google.auth")
MAX_FUNCTION_LEVEL = 10  # such places in all of moe_jax/


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


MODULES = {_module_name(os.path.join(d, f)): os.path.join(d, f)
           for d, _, files in os.walk(PACKAGE) for f in files if f.endswith(".py")}


def _resolve(name: str) -> str:
    """The moe_jax module an import names (``a.b.c`` where ``c`` may be a name inside ``a.b``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _function_level(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a function (any depth)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def imports(module: str) -> Iterator[tuple[str, int, bool]]:
    """``(imported name, line, inside a function)`` of every import statement of ``module``; names of
    moe_jax resolved to a module (``from moe_jax.x import y``: ``moe_jax.x.y`` if a module, else ``moe_jax.x``)."""
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    inside = _function_level(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield (_resolve(alias.name) if alias.name.startswith("moe_jax") else alias.name,
                       node.lineno, id(node) in inside)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] == "moe_jax":
                for alias in node.names:
                    yield _resolve(f"{node.module}.{alias.name}"), node.lineno, id(node) in inside
            elif node.module != "__future__":
                yield node.module, node.lineno, id(node) in inside


def heavy(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HEAVY)


def moe_jax_imports(module: str) -> set[str]:
    """The moe_jax modules ``module`` imports. The root package (``from moe_jax import __version__``) is
    left out: every module imports it anyway, as the parent of its own package, so it imports nothing
    at its top (``test_the_root_package_imports_nothing_at_its_top``)."""
    return {name for name, _, _ in imports(module) if name.split(".")[0] == "moe_jax" and name not in (module, "moe_jax")}


def layer(module: str) -> int:
    """The layer of the longest prefix of ``module`` in ``LAYERS``."""
    best = max((p for ps in LAYERS.values() for p in ps if module == p or module.startswith(p + ".")), key=len)
    return next(n for n, ps in LAYERS.items() if best in ps)


def package(module: str) -> str:
    """``moe_jax.x`` of ``moe_jax.x.y...`` (a top-level module is its own package; the root is ``moe_jax``)."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reads_the_package():
    assert STAGE_MODULES <= set(MODULES)
    assert "moe_jax.pipeline.registry" in MODULES and "moe_jax.artifacts.stage_outputs" in MODULES
    assert "moe_jax.pipeline.loading" in moe_jax_imports("moe_jax.pipeline.collect")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("moe_jax.pipeline.steer") == 4 and layer("moe_jax.convert.__main__") == 5 and layer("moe_jax") == 5


def test_the_root_package_imports_nothing_at_its_top():
    assert not [name for name, _, fn in imports("moe_jax") if not fn]


def test_no_stage_module_imports_another():
    """Stages share code through non-stage modules (pipeline.loading, pipeline.evaluation,
    artifacts.stage_outputs); only the registry, above them, reaches them (through importlib)."""
    found = [f"{m} imports {n}" for m in sorted(STAGE_MODULES) for n in sorted(moe_jax_imports(m))
             if n in STAGE_MODULES]
    assert not found, "\n".join(found)
    importers = sorted(m for m in MODULES if m not in STAGE_MODULES and moe_jax_imports(m) & STAGE_MODULES)
    assert not importers, f"modules that import a stage module: {importers}"


def test_no_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        graph.setdefault(package(m), set()).update(package(n) for n in moe_jax_imports(m) if package(n) != package(m))
    found = cycles(graph)
    # a cycle needs an edge that does not go down the layers: those are named, with the imports behind them
    detail = [f"{a} -> {b}: " + ", ".join(sorted(f"{m} imports {n}" for m in MODULES if package(m) == a
                                                for n in moe_jax_imports(m) if package(n) == b))
              for comp in found for a in comp for b in comp if b in graph[a] and layer(b) >= layer(a)]
    assert not found, f"package cycles {found}, through:\n" + "\n".join(detail)


def test_each_module_imports_only_from_its_layer_or_below():
    found = [f"{m} (layer {layer(m)}) imports {n} (layer {layer(n)})" for m in sorted(MODULES)
             for n in sorted(moe_jax_imports(m)) if layer(n) > layer(m)]
    assert not found, "\n".join(found)


def test_imports_at_module_top():
    """Inside a function: no moe_jax module, and only optional heavy dependencies, in at most
    MAX_FUNCTION_LEVEL places (issue 19, rule 5)."""
    inside = [(m, name, line) for m in sorted(MODULES) for name, line, fn in imports(m) if fn]
    ours = [f"{MODULES[m]}:{line} imports {name}" for m, name, line in inside if name.split(".")[0] == "moe_jax"]
    light = [f"{MODULES[m]}:{line} imports {name}" for m, name, line in inside
             if not heavy(name) and name.split(".")[0] != "moe_jax"]
    places = sorted({(m, line) for m, _, line in inside})
    assert not ours, "function-level imports of moe_jax modules:\n" + "\n".join(ours)
    assert not light, "function-level imports of light dependencies (import them at the top):\n" + "\n".join(light)
    assert len(places) <= MAX_FUNCTION_LEVEL, f"{len(places)} function-level imports: {places}"


@pytest.mark.parametrize("module", sorted(STAGE_MODULES))
def test_stage_modules_import_nothing_inside_functions_but_heavy_deps(module):
    inside = [f"{MODULES[module]}:{line} imports {name}" for name, line, fn in imports(module)
              if fn and not heavy(name)]
    assert not inside, "\n".join(inside)
