"""``python -m cudastack.worker``: the environment side's entry point, kept at this name for cells
and old runs' command lines (the code is in ``cudastack.environment.worker``)."""

import sys

from cudastack.environment.worker import main

if __name__ == "__main__":
    sys.exit(main())
