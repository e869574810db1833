"""The README's own forms, exactly as written: every command line parses with the command it
names, every flag it uses exists, every built-in recipe it names exists, and the first Python
example runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _commands() -> list[list[str]]:
    """Each ``python -m fasttricks.<cli> ...`` (or torchrun) line of the bash blocks, as argv;
    comments and continuation lines are joined first."""
    lines = []
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.split(r"\s#\s", line)[0].strip()
            if "-m fasttricks." in line:
                lines.append(shlex.split(line.split("&&")[-1]))
    return lines


def _parser(module: str):
    if module == "fasttricks.train":
        from fasttricks.train import _parser
    elif module == "fasttricks.tune":
        from fasttricks.tune._cli import build_parser as _parser
    elif module == "fasttricks.predict":
        from fasttricks.predict import _parser
    elif module == "fasttricks.diagnose":
        from fasttricks.diagnose._cli import _parser
    elif module == "fasttricks.recipes":
        from fasttricks.recipes.__main__ import _parser
    elif module == "fasttricks.runs":
        from fasttricks.results_table import _parser
    else:
        raise AssertionError(f"the README names an unknown command module {module!r}")
    return _parser()


def test_the_readme_has_the_two_first_commands():
    first = _blocks("bash")[0].strip().splitlines()
    assert first == ['pip install -e . && python -m fasttricks.tune',
                     'pip install -e ".[test]" && python -m pytest']
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.strip().splitlines()[-1] == first[1]  # CI runs exactly the README's test command


def test_every_readme_command_line_parses_with_the_command_it_names():
    commands = _commands()
    assert len(commands) >= 15  # the usage block is really read
    for argv in commands:
        module = argv[argv.index("-m") + 1]
        args = argv[argv.index("-m") + 2:]
        try:
            _parser(module).parse_args(args)
        except SystemExit as err:  # argparse's way to refuse
            raise AssertionError(f"README command does not parse: {shlex.join(argv)}") from err


def test_every_builtin_recipe_the_readme_names_exists():
    from fasttricks.recipes import list_recipes

    named = set()
    for argv in _commands():
        module = argv[argv.index("-m") + 1]
        if module == "fasttricks.train" and not argv[argv.index("-m") + 2].endswith(".yaml"):
            named.add(argv[argv.index("-m") + 2])
        if "--recipe" in argv:
            named.add(argv[argv.index("--recipe") + 1])
    assert {"digits", "mnist1d"} <= named
    assert named <= set(list_recipes())


@pytest.mark.slow
def test_the_first_python_example_runs_as_written(tmp_cwd, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    code = next(b for b in _blocks("python") if "load_recipe(\"digits\"" in b)
    code = code.replace('"schedule.epochs=8"', '"schedule.epochs=2"')  # the one change: speed
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_cwd / "diagnosis.png").stat().st_size > 0
    assert 0.5 < namespace["evaluate"](namespace["learn"])["accuracy"] <= 1.0
