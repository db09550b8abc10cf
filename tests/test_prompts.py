"""Class prompts: templates and descriptions composed per MODEL.PROMPTS, descriptions following the
vocabulary (a dataset's own, MODEL.PROMPTS.DESCRIPTIONS, the template for the undescribed, an LLM)."""
import json
import logging

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog

from lmseg.data import ensure_datasets_registered
from lmseg.descriptions import DescriptionError, compose_prompt
from lmseg.engine import Trainer
from lmseg.modeling.prompts import PromptBuilder

from tests.helpers.llm_server import ChatServer, fake_entry
from tests.helpers.model_helpers import PromptRecorder, eval_batch, scores, tiny_cfg, tiny_model
from tests.helpers.synthetic_datasets import write_folder_dataset

TEMPLATE = "A photo of a {} in the scene"
# LMSeg's prompts (the tiny config keeps the template alone): the template and three descriptions
BOTH = ("MODEL.PROMPTS.TEXTS", "both")


def entry(word):
    return {"color": f"{word} in colour", "shape": f"{word} in outline", "texture": f"{word} to the touch"}


DESCRIBED = {"sofa, couch": entry("plush"), "cat": entry("furry"), "dog": entry("shaggy")}


@pytest.fixture
def described(tmp_path):
    path = tmp_path / "described.json"
    path.write_text(json.dumps(DESCRIBED))
    return str(path)


def test_prompts_compose_templates_and_descriptions(described):
    both = PromptBuilder([TEMPLATE], "both", ["color", "shape", "texture"], described)
    assert both.num_prompts == both.num_channels == 4
    assert both(["sofa, couch"]) == [[
        "A photo of a sofa in the scene",
        "a sofa, which is plush in colour",
        "a sofa, which is plush in outline",
        "a sofa, which is plush to the touch",
    ]]
    assert PromptBuilder([TEMPLATE], "template", descriptions=described)(["cat"]) == [["A photo of a cat in the scene"]]
    texture_only = PromptBuilder([TEMPLATE], "descriptions", ["texture"], described)
    assert texture_only.num_prompts == 1 and texture_only(["cat"]) == [["a cat, which is furry to the touch"]]
    assert PromptBuilder([TEMPLATE], combine="mean", descriptions=described).num_channels == 1
    with pytest.raises(ValueError, match="MODEL.PROMPTS.TEXTS='names'"):
        PromptBuilder([TEMPLATE], "names")
    with pytest.raises(ValueError, match="MODEL.PROMPTS.ATTRIBUTES"):
        PromptBuilder([TEMPLATE], "both", ["colour"])
    with pytest.raises(FileNotFoundError, match="MODEL.PROMPTS.DESCRIPTIONS='nowhere.json'"):
        PromptBuilder([TEMPLATE], descriptions="nowhere.json")


def test_undescribed_names_get_the_template_and_one_log_line(described, caplog):
    builder = PromptBuilder([TEMPLATE, "a {}."], "both", ["color", "shape", "texture"], described)
    with caplog.at_level(logging.INFO, logger="lmseg.modeling.prompts"):
        prompts = builder(["cat", "flux capacitor", "hoverboard"])
    assert prompts[0][2] == "a cat, which is furry in colour"
    # P stays 5 for every class; the description slots take the templates in turn
    assert prompts[1] == ["A photo of a flux capacitor in the scene", "a flux capacitor.",
                          "A photo of a flux capacitor in the scene", "a flux capacitor.",
                          "A photo of a flux capacitor in the scene"]
    lines = [r.getMessage() for r in caplog.records if "Descriptions for" in r.getMessage()]
    assert len(lines) == 1
    assert "1 of 3 classes ('cat')" in lines[0] and "template only for 2 ('flux capacitor', 'hoverboard')" in lines[0]


def test_a_folder_of_files_and_the_old_format(tmp_path):
    folder = tmp_path / "descriptions"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"cat": entry("furry")}))
    (folder / "b.json").write_text(json.dumps({"cat": entry("sleek"), "dog": entry("shaggy")}))
    builder = PromptBuilder([TEMPLATE], "descriptions", ["color"], str(folder))
    assert builder(["cat", "dog"]) == [["a cat, which is furry in colour"], ["a dog, which is shaggy in colour"]]
    (folder / "c.json").write_text(json.dumps({"cat": ["A cat, a small furry animal."]}))
    with pytest.raises(DescriptionError, match="old list format"):
        builder(["cat"])


def test_changing_one_description_changes_only_that_class_embedding():
    model = tiny_model(*BOTH, vocabulary=["cat"])
    names = list(DESCRIBED)
    model.set_vocabulary(names, DESCRIBED)
    before = model.text_embeddings().clone()  # (T, P, C)
    assert before.shape[:2] == (3, 4)
    changed = json.loads(json.dumps(DESCRIBED))
    changed["cat"]["shape"] = "long and slender with pointed ears"
    model.set_vocabulary(names, changed)
    after = model.text_embeddings()
    moved = (after - before).norm(dim=-1)  # (T, P)
    assert moved[1, 2] > 1e-3  # cat's shape prompt
    moved[1, 2] = 0
    assert moved.max() < 1e-5  # every other prompt of every class, cat's template included


def test_mean_combination_is_one_normalised_channel():
    model = tiny_model(*BOTH, "MODEL.PROMPTS.COMBINE", "mean", vocabulary=["cat"])
    model.set_vocabulary(list(DESCRIBED), DESCRIBED)
    text = model.text_embeddings()
    assert text.shape[:2] == (3, 1)
    flat = model.clip.encode_text([p for prompts in model.vocab.prompts for p in prompts]).view(3, 4, -1)
    torch.testing.assert_close(text[:, 0], torch.nn.functional.normalize(flat.mean(1), dim=-1))
    assert scores(model, eval_batch())[0].shape[0] == 3


def test_user_vocabulary_with_unknown_names_runs_on_the_template(described, caplog):
    model = tiny_model(*BOTH, "MODEL.PROMPTS.DESCRIPTIONS", described, vocabulary=["cat"])
    with caplog.at_level(logging.INFO, logger="lmseg.modeling.prompts"):
        model.set_vocabulary(["cat", "flux capacitor"])
    assert model.vocab.prompts[0][1] == "a cat, which is furry in colour"
    assert model.vocab.prompts[1] == ["A photo of a flux capacitor in the scene"] * 4
    assert any("template only for 1 ('flux capacitor')" in r.getMessage() for r in caplog.records)
    out = scores(model, eval_batch(out_hw=(30, 40)))[0]
    assert out.shape == (2, 30, 40) and torch.isfinite(out).all()


def test_evaluation_gives_each_dataset_its_own_descriptions(tmp_path):
    classes = ["cat", "dog"]
    labels = [np.array([[0, 1], [1, 0]], np.uint8).repeat(16, 0).repeat(16, 1)]
    names = []
    for key, word in (("a", "striped"), ("b", "spotted")):
        folder = tmp_path / key
        write_folder_dataset(str(folder), classes, labels)
        (tmp_path / f"{key}.json").write_text(json.dumps({c: entry(f"{word} {key}") for c in classes}))
        name = f"sem_seg_folder:{folder}"
        ensure_datasets_registered([name])
        MetadataCatalog.get(name).set(descriptions=str(tmp_path / f"{key}.json"))
        names.append(name)
    cfg = tiny_cfg(*BOTH, "INPUT.MIN_SIZE_TEST", "32")
    cfg.DATASETS.TEST = tuple(names)
    model = tiny_model(*BOTH, vocabulary=["sofa, couch"])
    training = [list(p) for p in model.vocab.prompts]
    recorders = [PromptRecorder(model), PromptRecorder(model)]
    Trainer.test(cfg, model, recorders)
    for recorder, key, word in zip(recorders, "ab", ("striped", "spotted")):
        assert recorder.seen, "the evaluator saw no image"
        for prompts in recorder.seen:
            assert prompts[1] == [TEMPLATE.format("dog")] + [
                compose_prompt("dog", entry(f"{word} {key}")[a]) for a in ("color", "shape", "texture")
            ]
    assert model.vocab.prompts == training and model.vocabulary == ("sofa, couch",)


def test_llm_describes_undescribed_names_once_and_caches_them(described, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-llm")
    cache = tmp_path / "cache" / "descriptions.json"
    with ChatServer() as server:
        opts = [*BOTH, "MODEL.PROMPTS.DESCRIPTIONS", described, "MODEL.PROMPTS.LLM.ENABLED", "True",
                "MODEL.PROMPTS.LLM.BASE_URL", server.base_url, "MODEL.PROMPTS.LLM.MODEL", "test-model",
                "MODEL.PROMPTS.LLM.CACHE", str(cache)]
        model = tiny_model(*opts, vocabulary=["cat", "flux capacitor"])
        assert server.asked() == ["flux capacitor"]  # cat is described in the file
        assert [request.get("temperature") for _, request, _ in server.requests] == [0]  # repeatable answers
        assert model.vocab.prompts[1][1] == compose_prompt("flux capacitor", fake_entry("flux capacitor")["color"])
        assert json.loads(cache.read_text()) == {"flux capacitor": fake_entry("flux capacitor")}
        tiny_model(*opts, vocabulary=["flux capacitor", "dog"])
        assert server.asked() == ["flux capacitor"]  # from the cache: nothing asked again


def test_processes_wait_for_the_llm_longer_than_a_process_groups_default(monkeypatch):
    """The other processes wait for the main one's LLM answers on a group of their own, whose
    timeout outlasts detectron2's 30 minutes: a large vocabulary on a slow server takes longer."""
    import torch.distributed as dist
    from detectron2.engine.launch import DEFAULT_TIMEOUT

    from lmseg.modeling import prompts

    made = []
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: made.append(kwargs) or object())
    monkeypatch.setattr(prompts, "_LLM_GROUPS", {})
    group = prompts._llm_group()
    assert prompts._llm_group() is group and len(made) == 1  # made once per process group
    assert made[0]["backend"] == "gloo" and made[0]["timeout"] >= 24 * DEFAULT_TIMEOUT
