#!/usr/bin/env python
"""The web demo from a checkout: the same as ``python -m lmseg.demo.web`` (lmseg/demo/web.py).

    python demo/app.py --config-file configs/tiny.yaml --port 8080
"""
import sys

from lmseg.demo.web import main

if __name__ == "__main__":
    sys.exit(main())
