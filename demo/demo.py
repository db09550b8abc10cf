#!/usr/bin/env python
"""The command-line demo from a checkout: the same as ``python -m lmseg.demo`` (lmseg/demo/cli.py).

    python demo/demo.py --input photo.jpg --vocab "cat,sofa|couch,floor"
"""
import sys

from lmseg.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
