"""The exit-code contract, and the one base class of the errors a user can fix (exit 2)."""

# Every command, and the worker, exits with one of these (the README states the contract).
EXIT_OK = 0  # everything asked for ran ok (skips allowed, unless --fail-on-skip)
EXIT_FAILED = 1  # something failed: a case, a cell, a build
EXIT_BAD_INPUT = 2  # bad input: a one-line error, nothing written
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


def shown(text: str) -> str:
    """``text``, a user's input, as an error quotes it: as typed when it is printable, else as a
    Python literal with escapes, so that the error stays one line (no newline, no tab)."""
    return text if text and text.isprintable() else repr(text)


class CudastackError(Exception):
    """Bad input, or a state of the user's files that cudastack cannot use.

    ``cudastack``'s ``main`` catches this class, and only this one, for the one-line
    ``error: ...`` and exit code 2 (nothing half-written): every other exception is a bug and
    keeps its traceback. Each part of cudastack has its own subclass, so code that can recover
    from one kind (a missing lock, a malformed record) catches just that kind."""


class UserError(CudastackError):
    """Bad input found on the host side: an option, an argument or a file the user named."""
