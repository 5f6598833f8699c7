"""The shape of the code, checked from its own imports (docs/architecture.md): preprocessing -> model ->
orchestrator, one room per concern inside the orchestrator, imports pointing one way, no circle, no
`_private` name taken from another module, no sibling imported inside a function to dodge a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import REPO

ROOT = REPO
PACKAGES = ("preprocessing", "model", "orchestrator")
# Inside the orchestrator, each room may import only the rooms before it (and errors.py, at the bottom)
ROOMS = ["errors", "spec", "planning", "tracking", "reporting", "execution", "serving", "api", "pyfunc", "cli"]
LAYERS = ["preprocessing", "model", "orchestrator"]


def _modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


MODULES = dict(_modules())


def _imports(path: Path):
    """(imported module, names, in a function?) for every import of project code in `path`."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.split(".")[0] in PACKAGES:
                    names = [a.name for a in child.names]
                    subs = [f"{child.module}.{n}" for n in names if f"{child.module}.{n}" in MODULES]
                    out.append((child.module, [n for n in names if f"{child.module}.{n}" not in MODULES],
                                in_function))
                    out.extend((s, [], in_function) for s in subs)
            elif isinstance(child, ast.Import):
                out.extend((a.name, [], in_function) for a in child.names if a.name.split(".")[0] in PACKAGES)
            visit(child, inner)

    visit(tree, False)
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph():
    return {m: {i for i, _, _ in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_no_import_circle():
    graph = _graph()
    state: dict = {}
    cycles = []

    def dfs(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                dfs(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    # a package's __init__ importing its own submodules (orchestrator.cli -> cli.main) is not a circle
    cycles = [c for c in cycles if not all(x.startswith(c[0] + ".") or x == c[0] for x in c)]
    assert not cycles, f"import circles: {cycles}"


def test_layers_point_one_way():
    bad = []
    for m, p in MODULES.items():
        for i, _, _ in _imports(p):
            if LAYERS.index(i.split(".")[0]) > LAYERS.index(m.split(".")[0]):
                bad.append(f"{m} imports {i}")
    assert not bad, bad


def test_orchestrator_rooms_point_one_way():
    bad = []
    for m, p in MODULES.items():
        if not m.startswith("orchestrator.") or _room(m) not in ROOMS:
            continue
        for i, _, _ in _imports(p):
            if i.startswith("orchestrator.") and _room(i) in ROOMS and ROOMS.index(_room(i)) > ROOMS.index(_room(m)):
                bad.append(f"{m} ({_room(m)}) imports {i} ({_room(i)})")
    assert not bad, bad


def test_at_most_five_modules_at_the_orchestrators_top():
    top = [p.name for p in (ROOT / "orchestrator").glob("*.py")]
    assert len(top) <= 5, top


def test_no_private_name_crosses_modules():
    bad = [f"{m} imports {n} from {i}" for m, p in MODULES.items() for i, names, _ in _imports(p)
           for n in names if n.startswith("_")]
    assert not bad, bad


def test_no_sibling_imported_inside_a_function():
    """In-function imports stay only for what is heavy to import (torch, the model, mlflow, matplotlib):
    never an orchestrator module that is light, which would only be there to dodge a cycle."""
    heavy = {"orchestrator.execution.runner", "orchestrator.execution.search", "orchestrator.serving.packages",
             "orchestrator.serving.pyfunc", "orchestrator.reporting.figures", "orchestrator.api",
             "orchestrator.serving.predictor"}
    bad = [f"{m} imports {i} inside a function" for m, p in MODULES.items() if m.startswith("orchestrator")
           for i, _, inside in _imports(p) if inside and i.startswith("orchestrator") and i not in heavy]
    assert not bad, bad


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_architecture_doc_names_every_module(doc):
    text = (ROOT / doc).read_text()
    missing = [str(p.relative_to(ROOT)) for m, p in MODULES.items()
               if m.startswith("orchestrator") and p.name != "__init__.py" and str(p.relative_to(ROOT)) not in text]
    assert not missing, f"{doc} does not name {missing}"
    named = {w.strip("`") for w in text.split() if w.strip("`").startswith("orchestrator/")
             and w.strip("`").endswith(".py")}
    gone = sorted(n for n in named if not (ROOT / n).is_file())
    assert not gone, f"{doc} names modules that do not exist: {gone}"
