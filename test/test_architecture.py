"""The package's shape, checked: no import cycles between pam_ros modules, arrows pointing down only
(model < engine < messages/viz < ros, replay, bench < cli), and rclpy only under pam_ros/ros/.

Imports inside functions count too: a lazy import is still an arrow, and hiding a cycle in a function
is how the earlier cycles (cli_describe <-> cli_describe_objects, ...) came about.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pam_ros"

# the layer of each top-level part of pam_ros; a module may import its own layer's part or lower layers
LAYERS = {"errors": 0, "model": 1, "engine": 2, "messages": 3, "viz": 3, "ros": 4, "replay": 4, "bench": 4, "cli": 5}
GENERATED = {"msg", "srv", "action"}  # the rosidl-generated interface modules (built into the venv)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules=()) -> set[str]:
    """Every module this file imports, at any depth of its code. `from package import module` is an
    arrow to that module alone (the package's __init__ runs first for any import, an arrow to none)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            named = {f"{base}.{alias.name}" for alias in node.names}
            submodules = named & set(modules)
            found.update(submodules if submodules == named else {base} | submodules)
    return found


def all_modules() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in imports_of(path, modules) if target in modules and target != name}
    return graph


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles_between_modules():
    graph = all_modules()
    # a parent package importing its own submodules (cli/__init__ registering commands) is not a cycle
    # in the sense that matters; a submodule importing its package's __init__ back would be, and is kept.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail else target)
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_point_down_the_layers_only():
    wrong = []
    for module, targets in all_modules().items():
        own = part_of(module)
        if own not in LAYERS:
            continue
        for target in targets:
            other = part_of(target)
            if other not in LAYERS or other == own:
                continue
            upward = LAYERS[other] > LAYERS[own]
            sideways = LAYERS[other] == LAYERS[own]  # ros, replay and bench never import one another
            if upward or sideways:
                wrong.append(f"{module} imports {target} ({own} may not import {other})")
    assert not wrong, "\n".join(sorted(wrong))


def test_rclpy_is_imported_only_under_pam_ros_ros():
    outside = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if part_of(module) == "ros":
            continue
        if any(name == "rclpy" or name.startswith("rclpy.") for name in imports_of(path)):
            outside.append(module)
    assert not outside, f"rclpy imported outside pam_ros/ros/: {sorted(outside)}"


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with a cycle and an engine -> ros import is caught."""
    fake = tmp_path / "pam_ros"
    (fake / "engine").mkdir(parents=True)
    (fake / "ros").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("")
    (fake / "ros" / "__init__.py").write_text("")
    (fake / "engine" / "a.py").write_text("from pam_ros.engine import b\nfrom pam_ros.ros import node\n")
    (fake / "engine" / "b.py").write_text("def f():\n    from pam_ros.engine import a\n")
    (fake / "ros" / "node.py").write_text("import rclpy\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    graph = all_modules()
    assert graph["pam_ros.engine.a"] == {"pam_ros.engine.b", "pam_ros.ros.node"}
    assert "pam_ros.engine.a" in graph["pam_ros.engine.b"]
    for check in (test_no_import_cycles_between_modules, test_imports_point_down_the_layers_only):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a broken package")
