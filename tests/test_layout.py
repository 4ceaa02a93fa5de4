"""The package structure stays as built: layers point one way, no cycles, no private imports, short modules.

Every import is read, function-level ones included (they are how edgetl keeps TensorFlow out of start-up, and
they can form cycles as well as top-level ones).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgetl"

# The pipeline, bottom to top: a module may import its own package and the layers below it, never beside
# or above. Packages on one layer (data and model; train and runtime) do not import each other.
LAYERS = {
    "edgetl": 0, "core": 0,
    "data": 1, "model": 1,
    "card": 2,  # the model card: rendered from a manifest, written by rundir and export
    "rundir": 3,
    "train": 4, "runtime": 4,
    "export": 5,
    "optimize": 6, "search": 6,  # search uses train, runtime and export; optimize and search are siblings
    "evaluate": 7,
    "cli": 8,
    "__main__": 9,
}
MAX_LINES = 520  # "about 500": a module longer than this does more than one job


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgetl"


def _resolve(name: str) -> str:
    """The module an imported dotted name refers to (a module, or the package that defines the name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(target module, names taken, line) for every edgetl import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edgetl":
                    out.append((_resolve(alias.name), [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            src = node.module or ""
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                src = ".".join(anchor + ([src] if src else []))
            if src.split(".")[0] != "edgetl":
                continue
            for alias in node.names:
                full = f"{src}.{alias.name}"
                if full in MODULES:  # `from edgetl.export import metadata`: the module itself
                    out.append((full, [], node.lineno))
                else:
                    out.append((_resolve(src), [alias.name], node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in MODULES} <= set(LAYERS), sorted({_package(m) for m in MODULES} - set(LAYERS))


def _upward(graph: dict[str, list[tuple[str, list[str], int]]]) -> list[str]:
    """Imports that go beside or above the importing module's layer."""
    wrong = []
    for module, imports in graph.items():
        mine = _package(module)
        for target, _, line in imports:
            theirs = _package(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module}:{line} ({mine}) imports {target} ({theirs})")
    return wrong


def test_dependencies_point_down_the_pipeline() -> None:
    wrong = _upward(GRAPH)
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_layering_check_reports_upward_and_sideways_imports() -> None:
    fake = {"edgetl.core.errors": [("edgetl.cli.kit", ["print_table"], 3)],
            "edgetl.data.scan": [("edgetl.model.backbones", [], 5), ("edgetl.core.errors", [], 6)],
            "edgetl.export.job": [("edgetl.export.plan", [], 7), ("edgetl.runtime", ["open_model"], 8)]}
    assert _upward(fake) == ["edgetl.core.errors:3 (core) imports edgetl.cli.kit (cli)",
                             "edgetl.data.scan:5 (data) imports edgetl.model.backbones (model)"]


def test_nothing_below_the_cli_imports_it() -> None:
    users = [m for m, imports in GRAPH.items() if _package(m) not in ("cli", "__main__")
             and any(_package(t) == "cli" for t, _, _ in imports)]
    assert not users


def test_no_import_cycles() -> None:
    edges = {m: sorted({t for t, _, _ in imports if t != m}) for m, imports in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, []):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    private = [f"{MODULES[m].relative_to(ROOT)}:{line} takes {n} from {t}"
               for m, imports in GRAPH.items() for t, names, line in imports for n in names
               if n.startswith("_") and not n.startswith("__") and t != m]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines: split it by job"
