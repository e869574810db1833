"""The package itself: a light import, imports that run one way, one registry class."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_is_light_and_does_not_pull_optuna_or_timm():
    code = (
        "import sys, fasttricks; "
        "heavy = [m for m in ('optuna', 'timm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_an_attribute_error():
    import fasttricks

    try:
        fasttricks.not_a_module  # noqa: B018
    except AttributeError as err:
        assert "not_a_module" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _imported_names(module: str) -> set[str]:
    """Every module ``module``'s source imports, anywhere in the file (also inside functions)."""
    import ast
    import importlib.util

    tree = ast.parse(open(importlib.util.find_spec(module).origin, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_imports_run_one_way_data_below_losses_save_best_below_ema_libraries_below_clis():
    assert "fasttricks.callbacks.ema" not in _imported_names("fasttricks.callbacks.save_best")
    assert "fasttricks.callbacks.save_best" in _imported_names("fasttricks.callbacks.ema")
    code = ("import sys; import fasttricks.data; print(' '.join(sorted(sys.modules))); "
            "import fasttricks.runs, fasttricks.diagnose; "
            "from fasttricks.recipes import run_recipe, build_learner; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data, libraries = (set(line.split()) for line in out.stdout.splitlines())
    assert "fasttricks.data.sampling" in data
    assert "fasttricks.losses" not in data  # class weights live with the label helpers
    assert "fasttricks.recipes._run" in libraries
    assert "fasttricks.train" not in libraries and "fasttricks.tune._cli" not in libraries


def test_recipe_schema_and_metrics_import_without_fastai():
    mods = _modules_after("import fasttricks.recipes, fasttricks.metrics")
    assert not {m for m in mods if m.split(".")[0] in ("fastai", "torch")}


def test_every_registry_is_the_shared_registry_class():
    from fasttricks.callbacks import CALLBACKS
    from fasttricks.datasets import DATASETS
    from fasttricks.losses import LOSSES
    from fasttricks.metrics import METRICS
    from fasttricks.models import MODELS
    from fasttricks.registry import Registry

    for registry, name in ((CALLBACKS, "ema"), (DATASETS, "digits"), (LOSSES, "focal"),
                           (METRICS, "error_rate"), (MODELS, "cnn2d")):
        assert isinstance(registry, Registry) and name in registry
        with pytest.raises(TypeError):
            registry.view[name] = None  # read-only view


def _walk_imports(tree):
    """Every node of ``tree`` except those under ``if __name__ == "__main__":`` (a script's entry
    point never runs on import, so it cannot close an import cycle)."""
    import ast

    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            is_main_guard = (isinstance(child, ast.If) and isinstance(child.test, ast.Compare)
                             and isinstance(child.test.left, ast.Name)
                             and child.test.left.id == "__name__")
            if not is_main_guard:
                stack.append(child)


def _module_graph() -> dict[str, set[str]]:
    """Static import graph of the package: module -> the fasttricks modules its source imports.

    An import of a module's own parent package (``fasttricks.tune`` from ``fasttricks.tune._cli``)
    is left out: a package's ``__init__`` only re-exports its submodules; so are imports under a
    ``__main__`` guard.
    """
    import ast
    from pathlib import Path

    import fasttricks

    root = Path(fasttricks.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in _walk_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in files else base)
        graph[name] = {t for t in targets
                       if t in files and t != name and not name.startswith(t + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_module_graph_has_no_import_cycles():
    graph = _module_graph()
    assert "fasttricks.recipes._build" in graph["fasttricks.recipes._run"]  # the graph is real
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_library_modules_never_import_a_command_line_module():
    graph = _module_graph()
    clis = {m for m in graph if m in ("fasttricks.train", "fasttricks.tune._cli")
            or m.endswith("__main__")}
    offenders = {m: graph[m] & clis for m in graph if m not in clis and graph[m] & clis}
    assert not offenders
