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
