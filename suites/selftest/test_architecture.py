"""The house rules, checked: layers import only downwards, the library imports no test
framework, every package says what it is, no module or function grows out of bounds."""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.selftest

HARNESS = Path(__file__).resolve().parents[2] / "harness"
#: Bottom to top (docs/architecture.md). The command line is an adapter on top.
LAYERS = ["core", "qemu", "cpr", "guest", "evidence", "scenario", "run", "tools", "cli"]
FRAMEWORKS = ("pytest", "allure", "avocado", "_pytest")
#: Size bounds the house keeps (lines); the largest are named in docs/architecture.md.
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
#: Longer on purpose: the sampler's hot loop keeps everything in locals (a call per read
#: would cost it most of its rate).
LONG_ON_PURPOSE = {"harness.evidence.sampler_child._sample"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) < 2:
        return ""
    return "cli" if parts[1] in ("cli", "__main__") else parts[1]


def modules():
    for path in sorted(HARNESS.rglob("*.py")):
        rel = path.relative_to(HARNESS.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[:-len(".__init__")]
        yield name, path, ast.parse(path.read_text(), str(path))


def imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _graph():
    """module -> the harness modules it imports (every import: module level, function
    local, TYPE_CHECKING; ``from pkg import sub`` counts as importing ``pkg.sub``)."""
    trees = {name: tree for name, _, tree in modules()}
    graph = {}
    for name, tree in trees.items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in trees}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(trees)
                deps |= subs or ({node.module} & set(trees))
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles():
    """No module imports one that imports it back, directly or around a loop, whatever
    the import hides behind (a function, TYPE_CHECKING): a cycle inside a package is
    two modules that should be one, or a piece that belongs below both."""
    graph = _graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_every_module_is_in_a_layer():
    for name, _, _ in modules():
        if name == "harness":
            continue
        assert layer_of(name) in LAYERS, f"{name} is in no layer"


def test_layers_import_only_downwards():
    bad = []
    for name, _, tree in modules():
        mine = layer_of(name)
        if not mine:
            continue
        for imported in imports(tree):
            theirs = layer_of(imported)
            if theirs and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{name} ({mine}) imports {imported} ({theirs})")
    assert not bad, "\n".join(bad)


def test_the_library_imports_no_test_framework():
    bad = [f"{name} imports {m}" for name, _, tree in modules() for m in imports(tree)
           if m.split(".")[0] in FRAMEWORKS]
    assert not bad, bad


def test_every_package_says_what_it_is():
    for init in HARNESS.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init} has no package docstring"


def test_no_module_or_function_grows_out_of_bounds():
    big_modules, big_functions = [], []
    for name, path, tree in modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            big_modules.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in LONG_ON_PURPOSE:
                    big_functions.append(f"{name}.{node.name}: {n} lines")
    assert not big_modules and not big_functions, big_modules + big_functions
