"""Check descriptions files against the format (and a vocabulary):

    python -m prompt_gen.check prompt_gen/descriptions/ade150.json --vocabulary ade150

Prints each file's count of valid entries, or every problem found; exits 1 when a file fails.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lmseg.descriptions import DescriptionError, load_descriptions
from lmseg.descriptions.generator import GeneratorError, read_classes


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prompt_gen.check", description="Check descriptions files.")
    parser.add_argument("files", nargs="+", help="descriptions JSON files")
    parser.add_argument(
        "--vocabulary",
        help="the vocabulary the file must cover exactly: a benchmark name (ade150, coco, ...), a JSON list "
        "of names, or a text file with one name a line",
    )
    args = parser.parse_args(argv)
    vocabulary = None
    if args.vocabulary:
        try:
            vocabulary = read_classes(args.vocabulary)
        except GeneratorError as e:
            print(str(e).replace("--classes", "--vocabulary", 1), file=sys.stderr)
            return 2
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
