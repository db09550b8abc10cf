"""Check descriptions files against the format (and a vocabulary):

    python -m prompt_gen.check prompt_gen/descriptions/ade150.json --vocabulary datasets/ade150.json

Prints each file's count of valid entries, or every problem found; exits 1 when a file fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from lmseg.descriptions import DescriptionError, load_descriptions


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prompt_gen.check", description="Check descriptions files.")
    parser.add_argument("files", nargs="+", help="descriptions JSON files")
    parser.add_argument("--vocabulary", help="the vocabulary JSON (a list of names) the file must cover exactly")
    args = parser.parse_args(argv)
    vocabulary = None
    if args.vocabulary:
        with open(args.vocabulary, encoding="utf-8") as f:
            vocabulary = json.load(f)
    status = 0
    for path in args.files:
        try:
            data = load_descriptions(path, vocabulary)
        except (OSError, DescriptionError) as e:
            print(e, file=sys.stderr)
            status = 1
        else:
            print(f"{path}: {len(data)} entries, all valid")
    return status


if __name__ == "__main__":
    sys.exit(main())
