"""The built wheel on its own: recipes ship inside it, and the command lines run from anywhere.

The wheel is built from this checkout without network access, installed into a fresh virtual
environment that sees the machine's torch and fastai (``--system-site-packages``), and run
from an unrelated directory with ``PYTHONPATH`` cleared, so nothing comes from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("digits", "longtail", "mnist1d", "multilabel")
# the digits recipe made to train in seconds
TINY = ["--set", "schedule.epochs=1", "--set", "model.channels=[4, 8]", "--set", "data.bs=256"]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a working directory, its env)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(MPLBACKEND="Agg", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # build from a clean copy: no stale build/ folder of the checkout ends up in the wheel,
    # and the checkout gets none written into it
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "runs", "__pycache__", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--wheel-dir", str(root / "dist"), str(source)], cwd=root, env=env)
    wheel = next((root / "dist").glob("fasttricks-*.whl"))
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")],
         cwd=root, env=env)
    python = root / "venv" / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
         cwd=root, env=env)
    work = root / "elsewhere"
    work.mkdir()
    return python, work, env, wheel


@pytest.mark.slow
def test_wheel_holds_every_recipe_and_its_space(installed):
    *_, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in RECIPES:
        assert f"fasttricks/recipes/builtin/{name}.yaml" in names
        assert f"fasttricks/recipes/builtin/{name}.space.yaml" in names


@pytest.mark.slow
def test_installed_package_is_used_not_the_checkout(installed):
    python, work, env, _ = installed
    out = _run([str(python), "-c", "import fasttricks; print(fasttricks.__file__)"], work, env)
    location = Path(out.stdout.strip()).resolve()
    assert REPO not in location.parents and "venv" in location.parts


@pytest.mark.slow
def test_recipes_list_shows_the_built_in_names_with_descriptions(installed):
    python, work, env, _ = installed
    out = _run([str(python), "-m", "fasttricks.recipes", "list"], work, env)
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert "8x8 handwritten digits" in lines[0]


@pytest.mark.slow
def test_train_and_tune_run_a_built_in_recipe_by_name_from_another_directory(installed):
    python, work, env, _ = installed
    out = _run([str(python), "-m", "fasttricks.train", "digits", *TINY, "--no-progress"],
               work, env)
    assert "digits (seed 0): test accuracy" in out.stdout
    assert (work / "runs" / "digits" / "model.pth").is_file()
    # a short tune of the packaged digits recipe (made tiny) over its packaged search space
    space = _run([str(python), "-m", "fasttricks.recipes", "path", "digits", "--space"],
                 work, env).stdout.strip()
    assert "venv" in Path(space).parts and Path(space).is_file()
    raw = yaml.safe_load(_run([str(python), "-m", "fasttricks.recipes", "show", "digits"],
                              work, env).stdout)
    raw.update(name="tiny", schedule={"epochs": 1})
    raw["model"]["channels"], raw["data"]["bs"] = [4, 8], 256
    (work / "tiny.yaml").write_text(yaml.safe_dump(raw))
    _run([str(python), "-m", "fasttricks.tune", "--recipe", "tiny.yaml", "--space", space,
          "--n-trials", "2", "--pruner", "none"], work, env)
    assert (work / "runs" / "tiny-none" / "best.yaml").is_file()
    # the tuner's default recipe is the packaged digits one, with its space beside it
    code = ("from fasttricks.tune._cli import build_parser, _resolve_recipe; "
            "from fasttricks.tune._space import default_space_path; "
            "p = _resolve_recipe(build_parser().parse_args([]).recipe); "
            "print(p); print(default_space_path(p).is_file())")
    recipe, has_space = _run([str(python), "-c", code], work, env).stdout.split()
    assert Path(recipe).name == "digits.yaml" and "venv" in Path(recipe).parts
    assert has_space == "True"
    out = _run([str(python), "-m", "fasttricks.predict", "runs/digits", "test", "--out",
                "sub.csv", "--no-progress"], work, env)
    assert (work / "sub.csv").read_text().startswith("id,label\n")
