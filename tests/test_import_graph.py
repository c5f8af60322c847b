"""The package's import graph, read from the source with `ast` (every import, function-level
ones included): no cycle, and no import from a lower layer to a higher one. Layers, low to high:
config and utilities; data and evaluation; the model; what builds on the model (model zoo,
analysis, conversion); the user-facing pipelines (predict, engine); the training command; the
package root.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ms_rcnn"

# Each top-level unit of the package (a module or a subpackage) and its layer.
LAYERS = {
    "ms_rcnn.version": 0,
    "ms_rcnn.config": 0,
    "ms_rcnn.checkpoint": 0,
    "ms_rcnn.env": 0,
    "ms_rcnn.weights_config": 0,
    "ms_rcnn.data": 1,
    "ms_rcnn.evaluation": 1,
    "ms_rcnn.modeling": 2,
    "ms_rcnn.model_zoo": 3,
    "ms_rcnn.analysis": 3,
    "ms_rcnn.conversion": 3,
    "ms_rcnn.predict": 4,
    "ms_rcnn.engine": 4,
    "ms_rcnn.train_cli": 5,
    "ms_rcnn.demo": 5,
    "ms_rcnn": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def exists(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set:
    """The ms_rcnn modules `path` imports, resolved to modules (`from .x import name` counts as
    importing `x.name` when that is a module, else `x`)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ms_rcnn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ms_rcnn":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if exists(sub) else target)
    found.discard(name)
    return found


def import_graph() -> dict:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None (iterative depth-first search)."""
    state = {}
    for start in graph:
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = "open"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = "done"
                stack.pop()
                path.pop()
            elif state.get(child) == "open":
                return path[path.index(child) :] + [child]
            elif child not in state and child in graph:
                state[child] = "open"
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = []
    for module, imported in import_graph().items():
        for target in imported:
            low, high = LAYERS[unit_of(module)], LAYERS[unit_of(target)]
            if high > low:
                upward.append(f"{module} (layer {low}) imports {target} (layer {high})")
    assert not upward, "\n".join(upward)


def test_every_unit_has_a_layer_and_the_top_level_is_small():
    units = {unit_of(m) for m in import_graph()}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"
    modules = [p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 8, f"top level should hold packages and a few modules: {modules}"


def test_cycle_finder_finds_a_cycle_and_the_resolver_reads_relative_imports(tmp_path):
    # The checks above must be able to fail: a hand-made cycle, and relative imports resolved.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "ms_rcnn.modeling.pointrend" in imports_of(PACKAGE / "model_zoo" / "model_zoo.py")
    assert "ms_rcnn.config" in imports_of(PACKAGE / "modeling" / "pointrend.py")
    assert "ms_rcnn.data" in imports_of(PACKAGE / "engine.py")  # `from . import data`
