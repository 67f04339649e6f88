"""The house rules, read off the source with ast (DESIGN.md's layout):

- arrows point down: models <- pipeline <- workflows, and no import circle among modules;
- the demo (demo/) is never imported by production, but for the command line's dispatcher;
- no production file over 400 lines;
- imports of the project's own modules sit at the top of a module (an import inside a function
  hides a circle); inside functions only heavy optional packages are imported, where loading them
  for every use of the module would cost seconds or pull in a service.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("models", "pipeline", "workflows")
OURS = PRODUCTION + ("demo", "bench", "tests")
LAYER = {"models": 0, "pipeline": 1, "workflows": 2}
DISPATCHER = "workflows.cli"  # names the demo's commands
MAX_LINES = 400
# imported inside functions on purpose: each costs seconds at import or pulls in a runtime
HEAVY = {"ray", "dagster", "dagster_ray", "matplotlib", "transformers", "img2dataset", "selenium", "pycocoevalcap", "moto",
         "torchvision", "boto3", "s3fs", "kubernetes_validate"}
# our own modules that may be imported inside a function, and why: each loads the model stack
# (timm, transformers), which a process that only checks or reports a run should not pay for
LAZY = {
    "models.captioner": "the captioner's model stack, loaded in the captioning actors only",
    "models.filter": "the filter's model stack, loaded in the scoring actors only",
    "pipeline.preflight": "reads checkpoints with timm and transformers, only when paths are checked",
}


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = {name: path for p in OURS if (ROOT / p).is_dir() for name, path in _modules(p).items()}


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (a module, or the package holding an imported name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported name, inside a function, line) for each import in `module`."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.extend((f"{child.module}.{a.name}", in_function, child.lineno) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def _edges(modules) -> dict[str, set[str]]:
    graph = {}
    for m in modules:
        graph[m] = {t for name, _, _ in _imports(m) if (t := _resolve(name)) and t != m}
    return graph


PROD = [m for m in MODULES if m.split(".")[0] in PRODUCTION]


def test_no_import_circle_among_the_production_modules():
    graph = _edges(PROD)
    state, stack, cycles = {}, [], []

    def walk(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t not in graph:
                continue
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                walk(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_arrows_point_down_and_production_never_imports_the_demo():
    wrong = []
    for m in PROD:
        for name, _, line in _imports(m):
            target = _resolve(name)
            if target is None:
                continue
            top = target.split(".")[0]
            if top == "demo" and m != DISPATCHER:
                wrong.append(f"{m}:{line} imports the demo ({target})")
            elif top in ("bench", "tests"):
                wrong.append(f"{m}:{line} imports {target}")
            elif top in LAYER and LAYER[top] > LAYER[m.split(".")[0]]:
                wrong.append(f"{m}:{line} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_no_production_file_is_over_400_lines():
    long = {m: n for m in PROD if (n := len(MODULES[m].read_text().splitlines())) > MAX_LINES}
    assert not long, f"production files over {MAX_LINES} lines (cut them by job): {long}"


def test_only_heavy_optional_packages_are_imported_inside_functions():
    wrong = []
    for m in PROD:
        for name, in_function, line in _imports(m):
            if in_function and name.split(".")[0] not in HEAVY and not any(
                    name == lazy or name.startswith(lazy + ".") for lazy in LAZY):
                wrong.append(f"{m}:{line} imports {name} inside a function")
    assert not wrong, ("import these at the top of the module (or add a heavy optional package to HEAVY, or "
                       "a module of ours that loads one to LAZY, with the reason):\n" + "\n".join(wrong))


@pytest.mark.parametrize("module", ["demo.bootstrap", "demo.config", "demo.truth"])
def test_the_demo_builds_on_production(module):
    assert any(_resolve(n).split(".")[0] in PRODUCTION for n, _, _ in _imports(module) if _resolve(n))
