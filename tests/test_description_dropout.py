"""MODEL.PROMPTS.DESCRIPTION_DROPOUT and TEST_TEMPLATE_ONLY: training sees, and an ablation measures,
the template-only prompts that a name described nowhere gets."""
from __future__ import annotations

import pytest
import torch

from lmseg.config import get_lmseg_cfg
from tests.helpers.model_helpers import eval_batch, scores, tiny_model, train_batch

VOCAB = ["cat", "dog", "sofa", "window", "grass"]  # all described in the shipped bank
BOTH = ("MODEL.PROMPTS.TEXTS", "both")  # configs/tiny.yaml itself runs on the template alone


def _templated(text: torch.Tensor, n_templates: int) -> torch.Tensor:
    """What a class described nowhere gets: its templates in turn in every description slot."""
    slots = [i if i < n_templates else (i - n_templates) % n_templates for i in range(text.shape[1])]
    return text[:, slots]


def test_zero_dropout_trains_exactly_as_without_it_and_draws_no_random_numbers():
    model = tiny_model(*BOTH, "MODEL.PROMPTS.DESCRIPTION_DROPOUT", "0.0", vocabulary=VOCAB, eval=False)
    text = model.text_embeddings()
    state = torch.get_rng_state()
    assert model.drop_descriptions(text) is text
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_replaces_whole_classes_by_the_template_in_training_only():
    model = tiny_model(*BOTH, "MODEL.PROMPTS.DESCRIPTION_DROPOUT", "0.5", vocabulary=VOCAB, eval=False)
    n_templates = model.prompt_builder.num_templates
    with torch.no_grad():
        text = model.text_embeddings()
    assert text.shape[1] > n_templates and not torch.equal(text, _templated(text, n_templates))
    torch.manual_seed(0)
    dropped = [model.drop_descriptions(text) for _ in range(20)]
    templated = _templated(text, n_templates)
    per_class = torch.tensor([[torch.equal(d[c], templated[c]) for c in range(len(VOCAB))] for d in dropped])
    kept = torch.tensor([[torch.equal(d[c], text[c]) for c in range(len(VOCAB))] for d in dropped])
    assert torch.all(per_class ^ kept)  # each class is either whole or wholly templated
    assert 0.3 < per_class.float().mean() < 0.7
    model.eval()
    assert model.drop_descriptions(text) is text  # evaluation never drops


def test_training_step_with_dropout_runs_and_differs_from_without():
    losses = {}
    for p in ("0.0", "0.9"):
        model = tiny_model(*BOTH, "MODEL.PROMPTS.DESCRIPTION_DROPOUT", p, vocabulary=VOCAB, eval=False)
        torch.manual_seed(1)
        losses[p] = sum(model(train_batch(num_classes=len(VOCAB))).values()).item()
    assert torch.isfinite(torch.tensor(list(losses.values()))).all()
    assert losses["0.0"] != losses["0.9"]


def test_template_only_at_test_time_changes_evaluation_scores():
    base = tiny_model(*BOTH, vocabulary=VOCAB)
    ablated = tiny_model(*BOTH, "MODEL.PROMPTS.TEST_TEMPLATE_ONLY", "True", vocabulary=VOCAB)
    batch = eval_batch()
    with torch.no_grad():
        a, b = scores(base, batch)[0], scores(ablated, batch)[0]
    assert a.shape == b.shape and not torch.allclose(a, b)


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.PROMPTS.DESCRIPTION_DROPOUT", "1.0"], "give a probability in"),
        (["MODEL.PROMPTS.DESCRIPTION_DROPOUT", "0.1", "MODEL.PROMPTS.COMBINE", "mean"], 'COMBINE "channels"'),
    ],
)
def test_impossible_settings_are_refused(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(*BOTH, *opts, vocabulary=VOCAB)


def test_lmseg_configs_train_with_dropout_and_catseg_configs_without():
    assert get_lmseg_cfg("configs/vitb.yaml").MODEL.PROMPTS.DESCRIPTION_DROPOUT == 0.1
    assert get_lmseg_cfg("configs/vitl.yaml").MODEL.PROMPTS.DESCRIPTION_DROPOUT == 0.1
    assert get_lmseg_cfg("configs/catseg_vitb.yaml").MODEL.PROMPTS.DESCRIPTION_DROPOUT == 0.0
    assert get_lmseg_cfg("configs/ablations/template_only_at_test.yaml").MODEL.PROMPTS.TEST_TEMPLATE_ONLY
