"""``python -m fasttricks.recipes``: the built-in recipes that ship with the package.

Usage::

    python -m fasttricks.recipes list            # names and one-line descriptions
    python -m fasttricks.recipes show digits     # the recipe's YAML, as shipped
    python -m fasttricks.recipes show digits --space      # its default search space
    python -m fasttricks.recipes path digits     # the file, e.g. to copy and edit it

Train or tune one by name (``python -m fasttricks.train digits``,
``python -m fasttricks.tune --recipe digits``) or give a path to your own YAML file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fasttricks._errors import print_error

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fasttricks.recipes",
                                description="List and show the built-in fasttricks recipes.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,show,path}")
    sub.add_parser("list", help="the built-in recipe names and their descriptions")
    show = sub.add_parser("show", help="print a built-in recipe's YAML")
    show.add_argument("name")
    show.add_argument("--space", action="store_true",
                      help="print its default search space instead")
    path = sub.add_parser("path", help="print the file of a built-in recipe")
    path.add_argument("name")
    path.add_argument("--space", action="store_true", help="the search space's file instead")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _file(name: str, space: bool):
    from fasttricks.recipes import builtin_recipe_path

    path = builtin_recipe_path(name)
    if space:
        path = path.with_name(f"{name}.space.yaml")
        if not path.is_file():
            raise FileNotFoundError(f"the built-in recipe {name!r} has no search space")
    return path


def _run(args: argparse.Namespace) -> int:
    from fasttricks.recipes import list_recipes, recipe_description

    if args.command == "list":
        names = list_recipes()
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f"{name:<{width}}  {recipe_description(name)}".rstrip())
        return 0
    path = _file(args.name, args.space)
    if args.command == "path":
        print(path)
    else:
        sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fasttricks.recipes``; returns the exit status (2: unknown
    recipe name, printed as one ``error: ...`` line)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        if args.debug:
            raise
        return print_error(err)


if __name__ == "__main__":
    sys.exit(main())
