"""torchvision's FX feature extraction on visattn's image classifiers: runs where torchvision imports (the reference
environment of DEVELOPERS.md; torchvision is no dependency of visattn or of CI, so it is skipped there)."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.registry import get_model_class

feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")

IMAGE_CLASSIFIERS = ["maxvit_tiny", "davit_tiny", "mvitv2_tiny", "cloformer_xxs"]


@pytest.mark.parametrize("name", IMAGE_CLASSIFIERS)
def test_create_feature_extractor_traces_and_matches_eager(name: str) -> None:
    model = visattn.create_model(name, **get_model_class(name).test_overrides).eval()
    _, nodes = feature_extraction.get_graph_node_names(model)
    last = len(model.stages) - 1
    extractor = feature_extraction.create_feature_extractor(model, return_nodes={nodes[-1]: "logits"})
    x = torch.randn(2, 3, 67, 93)                                      # an odd size: the traced graph pads and crops
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)["logits"], model(x), atol=1e-5, rtol=1e-5)
    assert any(n.startswith(f"stages.{last}.") for n in nodes)
