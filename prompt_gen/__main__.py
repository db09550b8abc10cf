"""``python -m prompt_gen --classes datasets/ade150.json --out prompt_gen/descriptions/ade150.json``"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
