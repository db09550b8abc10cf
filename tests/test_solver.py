"""Parameter groups of the optimizer: which parameters are decayed."""
import pytest
from torch import nn

from lmseg.modeling.fusion import FeatureFusion
from lmseg.solver import build_optimizer

from tests.helpers.model_helpers import tiny_cfg


@pytest.mark.parametrize("per_channel", [False, True])
def test_fusion_weight_has_no_weight_decay(per_channel):
    cfg = tiny_cfg("SOLVER.WEIGHT_DECAY", "0.3", "SOLVER.WEIGHT_DECAY_NORM", "0.0")
    model = nn.Module()
    model.fusion = FeatureFusion("weighted", clip_dim=8, sam_dim=4, per_channel=per_channel)
    opt = build_optimizer(cfg, model)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    # decay would pull w = sigmoid(weight_logit) towards 0.5 regardless of the data
    assert group_of[id(model.fusion.weight_logit)]["weight_decay"] == 0.0
    # the projection of SAM's features is a map's weight: decayed
    assert group_of[id(model.fusion.sam_proj.weight)]["weight_decay"] == 0.3
