"""The descriptions of the names people type: synonyms, case, whitespace, plurals, qualifiers."""
import logging

import pytest

from lmseg.config import get_lmseg_cfg
from lmseg.descriptions.lookup import find_descriptions, normalise
from lmseg.modeling.prompts import build_prompt_builder

ENTRY = {"color": "c", "shape": "s", "texture": "t"}


@pytest.fixture(scope="module")
def vitb_builder():
    return build_prompt_builder(get_lmseg_cfg("configs/vitb.yaml"))


@pytest.mark.parametrize(
    "entry,distinct",
    [("cup", 4), ("cup, mug", 4), ("saucer, plate", 4), ("Sofa", 4), ("cats", 4), ("spaceship", 1)],
)
def test_vitb_prompts_for_typed_names(vitb_builder, entry, distinct):
    (prompts,) = vitb_builder([entry])
    assert vitb_builder.num_prompts == 4 and len(prompts) == 4
    assert len(set(prompts)) == distinct
    first = entry.split(",")[0].strip()
    assert all(first in p for p in prompts)


def test_prompt_names_the_first_synonym(vitb_builder):
    (prompts,) = vitb_builder(["mug, cup"])
    assert len(set(prompts)) == 4 and all(p.startswith(("a mug", "A photo of a mug")) for p in prompts)


def test_plurals_case_whitespace():
    assert normalise("  Buses ") == "bus" and normalise("berries") == "berry" and normalise("cats") == "cat"
    assert normalise("glass") == "glass" and normalise("bus") == "bus"
    table = {"bed ": ENTRY, "bus": ENTRY, "berry": ENTRY}
    assert set(find_descriptions(["Bed", "buses", "Berries", "spaceship"], [table])) == {"Bed", "buses", "Berries"}


def test_qualifier_matches_bare_name_only_when_unambiguous():
    one = {"bow (weapon)": ENTRY}
    assert "bow" in find_descriptions(["bow"], [one])
    two = {"bow (weapon)": ENTRY, "bow (decorative ribbons)": dict(ENTRY, color="red")}
    assert find_descriptions(["bow"], [two]) == {}
    assert find_descriptions(["bow (weapon)"], [two])["bow (weapon)"] == ENTRY


def test_earlier_table_wins():
    mine = {"cup": dict(ENTRY, color="mine")}
    assert find_descriptions(["Cups"], [mine, {"cup": ENTRY}])["Cups"]["color"] == "mine"


def test_one_log_line_per_vocabulary(vitb_builder, caplog):
    with caplog.at_level(logging.INFO, logger="lmseg.modeling.prompts"):
        vitb_builder(["cup, mug", "spaceship"])
    lines = [r.getMessage() for r in caplog.records if "Descriptions for" in r.getMessage()]
    assert len(lines) == 1
    assert "1 of 2" in lines[0] and "'spaceship'" in lines[0]
    assert "MODEL.PROMPTS.DESCRIPTIONS" in lines[0] and "MODEL.PROMPTS.LLM.ENABLED" in lines[0]


def test_a_name_held_as_it_is_wins_over_the_singular_of_another():
    eyeglasses = dict(ENTRY, shape="two lenses in a frame")
    table = {"glass (drink container)": ENTRY, "glass": ENTRY, "eyeglasses, spectacles, glasses": eyeglasses}
    found = find_descriptions(["glasses", "Glasses, spectacles", "glass", "cups, glass"], [table])
    assert found["glasses"] == eyeglasses and found["Glasses, spectacles"] == eyeglasses
    assert found["glass"] == ENTRY
    # synonyms in order, tables in order: a plural finds its singular in an earlier table or as an
    # earlier synonym before a later table or synonym holds it as written
    mine = dict(ENTRY, color="mine")
    assert find_descriptions(["cups"], [{"cup": mine}, {"cups": ENTRY}])["cups"] == mine
    assert find_descriptions(["cats, kitty"], [{"cat": mine, "kitty": ENTRY}])["cats, kitty"] == mine
