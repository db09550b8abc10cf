"""``python -m lmseg.demo``: the command-line demo (see :mod:`lmseg.demo.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
