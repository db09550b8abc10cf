"""The shipped descriptions (lmseg/descriptions/data/<vocabulary>.json, also reached as
prompt_gen/descriptions/<vocabulary>.json): one per benchmark
vocabulary, every entry and attribute described, every prompt within CLIP's context, no two entries
of a vocabulary sharing a text; and each benchmark's metadata names its own file."""
import os
import re
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


def _lvis_entries():
    """The 1,203 LVIS v1 categories as vocabulary entries: the name, then its synonyms (underscores
    as spaces, case-insensitive repeats dropped), from detectron2's own LVIS metadata."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    entries = []
    for category in sorted(LVIS_CATEGORIES, key=lambda c: c["id"]):
        names, seen = [], set()
        for name in [category["name"], *category["synonyms"]]:
            name = name.replace("_", " ").strip()
            if name.lower() not in seen:
                seen.add(name.lower())
                names.append(name)
        entries.append(", ".join(names))
    return entries


def test_lvis_bank_describes_every_lvis_category():
    entries = _lvis_entries()
    assert len(entries) == 1203
    # the checks of every shipped file: token budget, the name not repeated, exact coverage, distinct texts
    data = load_descriptions(str(FOLDER / "lvis.json"), vocabulary=entries)
    assert list(data) == entries
    # no text names any synonym of its category, nor its bare name ("bat (animal)": "bat")
    from lmseg.descriptions.format import _mentions
    from lmseg.descriptions.lookup import synonyms

    named = [
        (entry, attribute)
        for entry, texts in data.items()
        for attribute, text in texts.items()
        for name in synonyms(entry)
        if _mentions(text, re.sub(r"\s*\([^)]*\)$", "", name))
    ]
    assert named == []


# Everyday names as people type them (synonyms with "|", capitals, plurals): objects, clothing,
# people, animals, vehicles, food, stuff and scenery.
EVERYDAY = (
    # objects at home
    "cup|mug", "Plates", "bowls", "spoon", "forks", "knife", "chopsticks", "Bottle", "wine glasses",
    "kettle", "teapot", "frying pan", "pot", "microwave", "oven", "Refrigerator|fridge", "toaster",
    "blender", "sink", "faucet|tap", "dishwasher", "table", "chairs", "sofa|couch", "armchair",
    "bed", "pillows", "blanket", "lamp", "Curtains", "rug|carpet", "bookshelf", "books", "clock",
    "mirror", "vase", "flowerpot", "candles", "television|TV", "remote control", "laptop",
    "keyboard", "computer mouse", "Monitor", "cell phone|mobile phone", "headphones", "camera",
    "backpack", "handbag", "suitcase", "umbrella", "glasses|spectacles", "watch", "scissors",
    "toothbrush", "towel", "toilet", "bathtub", "shower", "trash can|bin", "basket", "box",
    "door", "window", "stairs", "wall", "floor", "ceiling", "fan", "radiator", "shelf",
    "drawer", "cabinet", "desk", "pen", "pencil", "notebook", "paper", "calculator",
    "teddy bear", "toys", "balloon", "kite", "ball", "guitar", "piano", "drum",
    # clothing
    "shirt", "T-shirt", "jacket", "Coat", "dress", "jeans", "shoes", "boots", "sneakers", "hat",
    "cap", "scarf", "gloves", "socks", "tie", "belt",
    # people
    "person|people", "man", "woman", "child", "baby",
    # animals
    "cat|kitty", "Dogs", "horse", "cow", "sheep", "pig", "chicken", "duck", "goose", "bird",
    "pigeons", "parrot", "owl", "eagle", "fish", "shark", "dolphin", "whale", "turtle", "frog",
    "snake", "lizard", "butterfly", "bee", "spider", "ant", "rabbit|bunny", "mouse", "squirrel",
    "deer", "bear", "lion", "tiger", "elephant", "giraffe", "zebra", "monkey", "kangaroo",
    "penguin", "camel",
    # vehicles
    "car", "buses", "truck", "van", "taxi", "motorcycle|motorbike", "bicycle|bike", "scooter",
    "train", "tram", "airplane|aeroplane", "helicopter", "boat", "ship", "canoe", "tractor",
    "skateboard", "traffic light", "stop sign", "street sign", "fire hydrant", "parking meter",
    "bench",
    # food
    "apple", "bananas", "orange", "lemon", "grapes", "strawberries", "watermelon", "pineapple",
    "tomato", "potatoes", "carrots", "broccoli", "onion", "lettuce", "cucumber", "mushroom",
    "bread", "sandwich", "pizza", "hamburger|burger", "hot dog", "French fries", "cake",
    "cookies", "donut", "ice cream", "cheese", "eggs", "rice", "soup", "salad", "coffee", "tea",
    "milk", "juice", "beer", "wine", "sausage", "noodles",
    # stuff and scenery
    "sky", "clouds", "grass", "trees", "Flowers", "bushes", "leaves", "water", "sea|ocean",
    "river", "lake", "beach", "sand", "snow", "mountain", "hill", "rock", "road", "sidewalk",
    "building", "house", "bridge", "fence", "field", "dirt", "mud", "gravel", "pavement",
    "tent", "fountain", "streetlight", "pole", "roof", "background",
)


def test_most_everyday_names_get_real_descriptions_from_the_bank():
    from lmseg.api import parse_vocabulary
    from lmseg.descriptions import read_descriptions
    from lmseg.descriptions.lookup import find_descriptions

    names = parse_vocabulary(",".join(EVERYDAY))
    assert len(names) >= 150
    found = find_descriptions(names, [read_descriptions(str(FOLDER))])  # the whole bank, as the model searches it
    missing = [n for n in names if n not in found]
    assert len(found) / len(names) >= 0.95, f"{len(missing)} of {len(names)} everyday names undescribed: {missing}"
    # the right sense for names two categories share
    assert "lenses" in found["glasses, spectacles"]["shape"]
    assert "insect" in found["bee"]["shape"] and "marsupial" in found["kangaroo"]["shape"]
