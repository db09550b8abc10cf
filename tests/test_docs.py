"""The docs name only what exists: every relative link of the Markdown files and every repository
path named in them or in a docstring points to a file or folder of the checkout."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top-level folders whose files the docs name; a path in one of them must exist. datasets/ also
# names where benchmark data goes (datasets/ADEChallengeData2016/...), so there only the files the
# repository keeps (scripts and notes) are checked.
CODE_FOLDERS = ("lmseg", "prompt_gen", "tools", "demo", "tests", "configs", "docs", ".ci")
DATASETS_FILES = re.compile(r"datasets/[\w.-]+\.(py|md|txt)$")
TOP_FILES = ("README.md", "GETTING_STARTED.md", "MODEL_ZOO.md", "Makefile", "pyproject.toml", "CITATION.cff", "LICENSE")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./~-])((?:\.?[A-Za-z_]+/)+[\w.-]*[\w/])")


def tracked(pattern: str):
    out = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def markdown_files():
    return tracked("*.md")


def docstrings():
    """(file, docstring) of every module, class and function of the Python code."""
    for path in tracked("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    yield path, doc


def named_paths(text: str):
    """Repository paths a text names: words such as lmseg/api.py, configs/vitb.yaml, tools/."""
    for match in PATH.finditer(text):
        word = match.group(1).rstrip(".")
        if any(c in text[match.end():match.end() + 1] for c in "*{<$"):
            continue  # a pattern or a placeholder (configs/*.yaml, prompt_gen/descriptions/<vocabulary>.json)
        top = word.split("/")[0]
        if top in CODE_FOLDERS or DATASETS_FILES.match(word):
            yield word


def ignored(word: str) -> bool:
    """Whether git ignores the path: an output the code writes (tests/artifacts/, output/)."""
    return subprocess.run(["git", "check-ignore", "-q", word], cwd=REPO).returncode == 0


def missing_paths(text: str, base: Path):
    missing = []
    for word in named_paths(text):
        if not ((REPO / word).exists() or (base / word).exists() or ignored(word)):
            missing.append(word)
    return missing


def test_markdown_links_point_to_files_that_exist():
    broken = []
    for md in markdown_files():
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor
            path = target.split("#")[0]
            if not (md.parent / path).exists():
                broken.append(f"{md.relative_to(REPO)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_markdown_files_name_only_paths_that_exist():
    broken = []
    for md in markdown_files():
        for word in missing_paths(md.read_text(encoding="utf-8"), md.parent):
            broken.append(f"{md.relative_to(REPO)}: {word}")
    assert not broken, "paths named in the docs that do not exist:\n" + "\n".join(broken)


def test_docstrings_name_only_paths_that_exist():
    broken = []
    for path, doc in docstrings():
        for word in missing_paths(doc, path.parent):
            broken.append(f"{path.relative_to(REPO)}: {word}")
    assert not broken, "paths named in docstrings that do not exist:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("see `lmseg/api.py` and configs/vitb.yaml.", ["lmseg/api.py", "configs/vitb.yaml"]),
        ("files configs/*.yaml and prompt_gen/descriptions/<vocabulary>.json", []),
        ("datasets/prepare_voc.py makes datasets/VOCdevkit/VOC2012", ["datasets/prepare_voc.py"]),
        ("https://github.com/facebookresearch/detectron2 and ~/.cache/lmseg", []),
    ],
)
def test_the_path_finder_finds_repository_paths(text, expected):
    assert list(named_paths(text)) == expected


def test_a_missing_path_is_reported():
    assert missing_paths("read lmseg/nope.py and lmseg/api.py", REPO) == ["lmseg/nope.py"]
