"""Error types shared by the whole package.

``InputError`` marks bad input from the user (an unknown name, a missing file, a value out of
range). The CLI turns it into one line on stderr and exit code 2; every other exception is a
failure while running (exit code 1).
"""

from __future__ import annotations

from contextvars import ContextVar


class InputError(ValueError):
    """Bad user input; the message is one line that says what is wrong and how to fix it."""


ALLOW_NONFINITE: ContextVar[bool] = ContextVar("allow_nonfinite", default=False)
"""Open checkpoints whose weights hold NaN or infinity (``poisonlab --allow-nonfinite``); off by
default (:mod:`poisonlab.models.finite`)."""


class RunOffError(Exception):
    """A finished run's numbers fall outside their expected ranges (the CLI has printed which); exit 1."""


def crash_log(err: BaseException) -> str:
    """Write ``err``'s traceback to a new file in the temporary folder; returns its path.

    The command line's last resort for an unexpected failure: one line on stderr names the error
    and this file, and the traceback waits there for a bug report.
    """
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="poisonlab-error-", suffix=".log")
    with open(fd, "w") as f:
        f.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
    return path


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__
