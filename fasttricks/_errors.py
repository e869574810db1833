"""One error line for every command line: how an exception becomes ``error: ...``.

Every CLI (train, tune, predict, diagnose, recipes, runs) prints bad input as one line and no
traceback; this module is the one place that line is made, so the commands cannot drift apart.
A ``KeyError``'s message is shown without the quotes ``str(KeyError)`` adds, white space is
folded to single spaces, and fastai's "Exception occured in ``<callback>``" prefix is dropped
(the cause is what matters).

Example:
    >>> error_line(KeyError("unknown recipe 'digit'"))
    "unknown recipe 'digit'"
"""

from __future__ import annotations

import re
import sys

__all__ = ["error_line", "print_error"]

# fastai prefixes an error raised inside a callback event with this
_FASTAI_PREFIX = re.compile(r"^Exception occured in `[^`]*` when calling event `[^`]*`:\s*")


def error_line(err: BaseException) -> str:
    """The one-line text of ``err`` (its type name when it has no message)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    return _FASTAI_PREFIX.sub("", " ".join(str(message).split())) or type(err).__name__


def print_error(err: BaseException, code: int = 2) -> int:
    """Print ``error: <error_line(err)>`` to stderr and return the exit status ``code``."""
    print(f"error: {error_line(err)}", file=sys.stderr)
    return code
