"""The shipped descriptions (lmseg/descriptions/data/<vocabulary>.json, also reached as
prompt_gen/descriptions/<vocabulary>.json): one per benchmark
vocabulary, every entry and attribute described, every prompt within CLIP's context, no two entries
of a vocabulary sharing a text; and each benchmark's metadata names its own file."""
import os
import subprocess
import sys

import pytest
from detectron2.data import MetadataCatalog

from lmseg.data import benchmarks, load_vocabulary, register_all_benchmarks
from lmseg.descriptions import ATTRIBUTES, load_descriptions

from tests.helpers.model_helpers import REPO

VOCABULARIES = ["coco", "ade150", "pc59", "voc20", "voc20b", "pc459", "ade847"]
FOLDER = REPO / "lmseg" / "descriptions" / "data"


@pytest.mark.parametrize("vocabulary", VOCABULARIES)
def test_shipped_file_covers_its_vocabulary_within_the_token_budget(vocabulary):
    path = FOLDER / f"{vocabulary}.json"
    assert path.is_file(), (
        f"{path.relative_to(REPO)} is missing: every benchmark vocabulary ships its descriptions "
        f"(write them, or generate them with python -m prompt_gen --classes {vocabulary} --out {path.relative_to(REPO)})"
    )
    names = load_vocabulary(vocabulary)
    # validates keys, non-empty attributes, no class name repeated, the 77-token budget with CLIP's
    # tokenizer, exact coverage of the vocabulary and no text shared by two entries
    data = load_descriptions(str(path), vocabulary=names)
    assert len(data) == len(names) and all(set(entry) == set(ATTRIBUTES) for entry in data.values())


def test_the_contract_path_points_to_the_shipped_files():
    for vocabulary in VOCABULARIES:
        assert (REPO / "prompt_gen" / "descriptions" / f"{vocabulary}.json").resolve() == (FOLDER / f"{vocabulary}.json").resolve()


def test_every_benchmark_names_its_own_descriptions_file():
    register_all_benchmarks()
    for b in benchmarks():
        assert MetadataCatalog.get(b.name).descriptions == os.path.join(str(FOLDER), f"{b.vocabulary}.json")
        assert b.vocabulary in VOCABULARIES


@pytest.mark.slow
def test_check_command_accepts_a_shipped_file_and_lists_problems(tmp_path):
    """`python -m prompt_gen.check`, as prompt_gen/README.md shows it."""
    ok = subprocess.run(
        [sys.executable, "-m", "prompt_gen.check", "prompt_gen/descriptions/voc20.json", "--vocabulary", "voc20"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "prompt_gen/descriptions/voc20.json: 20 entries, all valid" in ok.stdout
    assert "Warning" not in ok.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"wall": {"color": "a white wall", "shape": "flat"}}')
    proc = subprocess.run([sys.executable, "-m", "prompt_gen.check", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "missing texture" in proc.stderr and "repeats the class name 'wall'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_everyday_bank_file_is_valid_and_the_demo_vocabulary_is_fully_described():
    from lmseg.demo.common import EXAMPLE_VOCABULARY
    from lmseg.descriptions import read_descriptions
    from lmseg.descriptions.lookup import find_descriptions

    data = load_descriptions(str(FOLDER / "everyday.json"))  # same checks: budget, name not repeated, distinct
    assert data and all(set(entry) == set(ATTRIBUTES) for entry in data.values())
    names = [entry.replace("|", ", ") for entry in EXAMPLE_VOCABULARY.split(",")]
    found = find_descriptions(names, [read_descriptions(str(FOLDER))])
    assert [n for n in names if n not in found] == []
