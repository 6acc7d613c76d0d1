"""The package's shape, checked from its source: no import circles, engine below deploy, nothing importing the
command line, no family decided by a string outside the tasks, no function over 80 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pixelwise"
# The one deliberate circle: the model registry imports the model modules on first use (they register themselves
# with it), so `pixelwise.registry` is usable before any model module is imported.
ALLOWED = {("pixelwise.registry", "pixelwise.models")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an import statement names, anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this module
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from package import submodule`
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, with the packages whose __init__ that runs (not the module's own
    ancestors: they are imported before it)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            parts = imported.split(".")
            for i in range(2, len(parts) + 1):  # pixelwise.a.b runs pixelwise/a/__init__ and pixelwise/a/b
                target = ".".join(parts[:i])
                if target in modules and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = {t for t in targets if not any(name == a and (t == b or t.startswith(b + ".")) for a, b in ALLOWED)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    graph["pixelwise.engine.predictor"].add("pixelwise.inference")  # a low-level class reaching up to the loader
    assert any("pixelwise.inference" in c and "pixelwise.engine.predictor" in c for c in cycles(graph))


def test_layers():
    """engine/ never imports deploy/, inference or export; deploy/ never imports inference; nothing imports the
    command line."""
    graph = import_graph()
    above = {"pixelwise.engine": ("pixelwise.deploy", "pixelwise.inference", "pixelwise.export"),
             "pixelwise.deploy": ("pixelwise.inference", "pixelwise.export")}
    for module, targets in graph.items():
        for package, forbidden in above.items():
            if module.startswith(package):
                assert not {t for t in targets if t.startswith(forbidden)}, module
        assert "pixelwise.cli" not in targets or module == "pixelwise.__main__", module


def _family_comparisons(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
            if any(isinstance(v, ast.Constant) and v.value in ("semantic", "instance") for v in values):
                lines.append(node.lineno)
    return lines


def test_no_family_is_decided_by_a_string_outside_the_tasks():
    """`x == "instance"` belongs in pixelwise/engine/tasks/ (and the registries, which record a family's name)."""
    found = {}
    for name, path in _modules().items():
        if name.startswith("pixelwise.engine.tasks") or name in ("pixelwise.registry", "pixelwise.data.registry"):
            continue
        lines = _family_comparisons(ast.parse(path.read_text()))
        if lines:
            found[name] = lines
    assert found == {}
    assert _family_comparisons(ast.parse('if task.name == "instance": pass')) == [1]


@pytest.mark.parametrize("limit", [80])
def test_no_function_is_longer_than(limit):
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
