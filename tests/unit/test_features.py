"""vpr_core.models.features: the backbone-output contract every aggregator, local head and clustering reads
through. Both layouts (map, tokens with prefix), the same cells from each, and the refusals."""
from __future__ import annotations

import pytest
import torch

from vpr_core.config import ModelConfig
from vpr_core.models import build_model
from vpr_core.models.features import class_token, column_map, local_features, spatial_map

GEN = torch.Generator().manual_seed(3)
FMAP = torch.randn(2, 6, 3, 4, generator=GEN)  # (B, C, h, w)
PREFIX = torch.randn(2, 2, 6, generator=GEN)  # class + one register token
TOKENS = torch.cat([PREFIX, FMAP.flatten(2).transpose(1, 2)], dim=1)  # (B, 2 + 12, C), patches row-major


def test_map_and_tokens_give_the_same_cells():
    torch.testing.assert_close(local_features(FMAP), local_features(TOKENS, 2))
    assert local_features(FMAP).shape == (2, 12, 6)
    torch.testing.assert_close(spatial_map(TOKENS, 2, (3, 4)), FMAP)
    torch.testing.assert_close(column_map(TOKENS, 2).squeeze(-1), FMAP.flatten(2))
    assert column_map(FMAP) is FMAP and spatial_map(FMAP, 0, (9, 9)) is FMAP  # maps pass through as they are


def test_class_token_is_the_first_prefix_token():
    torch.testing.assert_close(class_token(TOKENS), PREFIX[:, 0])
    with pytest.raises(ValueError, match="class token first"):
        class_token(FMAP)


def test_a_square_grid_is_inferred_only_when_square():
    square = torch.randn(1, 1 + 16, 5, generator=GEN)
    assert spatial_map(square, 1).shape == (1, 5, 4, 4)
    with pytest.raises(ValueError, match="do not form a square grid"):
        spatial_map(TOKENS, 2, who="mixvpr")
    with pytest.raises(ValueError, match="12 patch tokens do not form a 4x4 grid"):
        spatial_map(TOKENS, 2, (4, 4))


@pytest.mark.parametrize("helper", [local_features, column_map, spatial_map])
def test_refusals_name_what_was_wrong(helper):
    with pytest.raises(ValueError, match=r"gem: expected a feature map .* got shape \(2, 6\)"):
        helper(torch.zeros(2, 6), 0, who="gem")
    with pytest.raises(ValueError, match="only its 2 prefix token"):  # PiT: class tokens, no patches
        helper(PREFIX, 2)


def test_backbone_to_map_is_spatial_map_on_its_grid_and_pit_gem_is_refused():
    cfg = ModelConfig(name="t", backbone={"name": "vit_tiny_patch16_224"}, aggregator={"name": "gem"}, checkpoint="")
    bb = build_model(cfg, load_checkpoint=False).backbone
    x = torch.randn(1, 3, 48, 80, generator=GEN)
    with torch.no_grad():
        feats = bb(x)
    torch.testing.assert_close(bb.to_map(feats, (48, 80)), spatial_map(feats, 1, (3, 5)))
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 \(48x64 input\): 15 patch tokens"):
        bb.to_map(feats, (48, 64))
    pit = build_model(ModelConfig(name="p", backbone={"name": "pit_ti_224"}, aggregator={"name": "gem"},
                                  checkpoint=""), load_checkpoint=False)
    with pytest.raises(ValueError, match="'cls' aggregator"):  # it gave NaN descriptors before
        pit(torch.randn(1, 3, 64, 64, generator=GEN))
