"""The one base class of the errors a user can fix: the CLI prints its message and exits 2."""


class CudastackError(Exception):
    """Bad input, or a state of the user's files that cudastack cannot use.

    ``cudastack``'s ``main`` catches this class, and only this one, for the one-line
    ``error: ...`` and exit code 2 (nothing half-written): every other exception is a bug and
    keeps its traceback. Each part of cudastack has its own subclass, so code that can recover
    from one kind (a missing lock, a malformed record) catches just that kind."""


class UserError(CudastackError):
    """Bad input found on the host side: an option, an argument or a file the user named."""
