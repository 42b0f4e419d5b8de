"""Error types shared by the whole package.

``InputError`` marks bad input from the user (an unknown name, a missing file, a value out of
range). The CLI turns it into one line on stderr and exit code 2; every other exception is a
failure while running (exit code 1).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message is one line that says what is wrong and how to fix it."""


class RunOffError(Exception):
    """A finished run's numbers fall outside their expected ranges (the CLI has printed which); exit 1."""
