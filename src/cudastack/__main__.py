"""``python -m cudastack``: the same as the ``cudastack`` command."""

from .cli import main

main()
