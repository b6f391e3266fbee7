"""The host's terminal: one console for results and progress, one for errors (stderr)."""

from __future__ import annotations

import sys

from rich.console import Console

# soft_wrap: long lines (paths, case ids, errors) stay whole so they can be copied and grepped.
# Piped into a file or CI log there is no terminal width: tables get room instead of 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)


def echo(line: str) -> None:
    """``line`` on the console as written: no markup, no highlighting."""
    console.print(line, highlight=False, markup=False)
