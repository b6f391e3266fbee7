"""``python -m cudastack``: the same as the ``cudastack`` command."""

from cudastack.host.cli.main import main

main()
