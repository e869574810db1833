"""The package itself: version and a light import."""

from __future__ import annotations

import subprocess
import sys


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
