"""The built-in recipes: YAML files shipped inside the package, found by name.

The recipes live in ``fasttricks/recipes/builtin/`` as package data, each ``<name>.yaml`` with
its search space ``<name>.space.yaml`` beside it, so a plain ``pip install`` has them and
``python -m fasttricks.train digits`` works from any directory. :func:`resolve_recipe` is the
one rule that turns what a user typed into a file: an existing file wins, else a built-in name.

This module needs neither fastai nor torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from fasttricks._validate import closest

__all__ = ["BUILTIN_DIR", "builtin_recipe_path", "list_recipes", "recipe_description",
           "resolve_recipe"]

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
_SPACE_SUFFIX = ".space.yaml"


def list_recipes() -> list[str]:
    """The names of the built-in recipes, sorted (``["digits", "longtail", ...]``)."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in BUILTIN_DIR.glob("*.yaml")
                  if not p.name.endswith(_SPACE_SUFFIX))


def _unknown(name: str) -> FileNotFoundError:
    known = list_recipes()
    msg = (f"recipe {name!r} is neither a file nor a built-in recipe; built-in recipes: "
           f"{', '.join(known) or '(none)'}")
    match = closest(name, known)
    if match is not None:
        msg += f". Did you mean {match!r}?"
    return FileNotFoundError(msg)


def builtin_recipe_path(name: str) -> Path:
    """The YAML file of the built-in recipe ``name`` (its space is ``<name>.space.yaml``).

    Raises:
        FileNotFoundError: ``name`` is not a built-in recipe (lists them, with the closest).
    """
    if not isinstance(name, str) or name not in list_recipes():
        raise _unknown(str(name))
    return BUILTIN_DIR / f"{name}.yaml"


def resolve_recipe(source: str | os.PathLike[str]) -> Path:
    """The recipe file ``source`` names: an existing file as given, else a built-in recipe.

    ``"digits"`` and ``"digits.yaml"`` name the built-in digits recipe unless a file of that
    name exists in the working directory; ``"path/to/my.yaml"`` is a file. The built-in
    recipe's default search space lies beside the returned path.

    Raises:
        FileNotFoundError: no such file and no such built-in recipe; the message echoes the
            value and lists the built-in names.

    Example:
        >>> resolve_recipe("digits").name
        'digits.yaml'
    """
    path = Path(source)
    if path.is_file():
        return path
    text = os.fspath(source)
    name = text[: -len(".yaml")] if text.endswith(".yaml") else text
    if name in list_recipes():
        return BUILTIN_DIR / f"{name}.yaml"
    if path.suffix or os.sep in text or "/" in text:  # a path the user meant as a file
        known = ", ".join(list_recipes())
        msg = (f"recipe file {text!r} does not exist (built-in recipes, given by name: "
               f"{known})")
        stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.stem
        if stem in list_recipes():
            msg += f". Did you mean the built-in {stem!r}?"
        raise FileNotFoundError(msg)
    raise _unknown(text)


def recipe_description(name: str) -> str:
    """The one-line ``description`` of the built-in recipe ``name`` (empty if it has none)."""
    raw = yaml.safe_load(builtin_recipe_path(name).read_text(encoding="utf-8")) or {}
    return " ".join(str(raw.get("description") or "").split())
