"""``python -m prompt_gen --classes ade150 --out my_ade150.json``"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
