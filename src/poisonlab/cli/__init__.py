"""The ``poisonlab`` command line: thin wrappers over the library.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 failure while running.
"""

from __future__ import annotations

from poisonlab.cli.main import cli, main

__all__ = ["cli", "main"]
