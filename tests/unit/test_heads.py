"""vpr_core.models.heads: DINOVPR's MLP head, the classification training head, the ranking loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpr_core.config import load_config
from vpr_core.models import build_model
from vpr_core.models.heads import HEADS
from vpr_core.models.heads.ranking import triplet_margin_loss


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _model(head):
    torch.manual_seed(0)  # same backbone/aggregator initialisation for every head
    return build_model(load_config(overrides={"model.head": head}).model, load_checkpoint=False)


# ---- mlp --------------------------------------------------------------------------------------------

def test_mlp_head_changes_the_dimension():
    head = HEADS.build("mlp", in_dim=12, hidden_dims=[20, 16], out_dim=5)
    assert head.out_dim == 5
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 20), (20, 16), (16, 5)]
    assert head(torch.randn(3, 12)).shape == (3, 5)


def test_mlp_head_without_hidden_layers_is_one_linear_map():
    head = HEADS.build("mlp", in_dim=4, hidden_dims=[], out_dim=3)
    x = torch.randn(2, 4)
    lin = head.layers[0]
    torch.testing.assert_close(head(x), x @ lin.weight.T + lin.bias)
    assert len(head.layers) == 1


def test_mlp_head_activation_is_non_linear():
    head = HEADS.build("mlp", in_dim=4, hidden_dims=[8], out_dim=3, activation="relu")
    x = torch.randn(5, 4)
    assert not torch.allclose(head(2 * x) - head(torch.zeros(1, 4)), 2 * (head(x) - head(torch.zeros(1, 4))))


def test_mlp_head_options_are_checked():
    with pytest.raises(ValueError, match="activation"):
        HEADS.build("mlp", in_dim=4, activation="swish")
    with pytest.raises(ValueError, match="hidden_dims"):
        HEADS.build("mlp", in_dim=4, hidden_dims=16)
    with pytest.raises(ValueError, match=">= 1"):
        HEADS.build("mlp", in_dim=4, out_dim=0)


def test_model_with_mlp_head_gives_the_normalised_mlp_output(images):
    model = _model({"name": "mlp", "hidden_dims": [64], "out_dim": 32})
    assert model.dim == 32
    with torch.inference_mode():
        out = model(images)
        expected = F.normalize(model.head(model.aggregator(model.backbone(images))), dim=-1)
    assert out.shape == (2, 32)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


# ---- classifier -------------------------------------------------------------------------------------

def test_classifier_head_keeps_the_descriptor_and_gives_logits(images):
    plain = _model({})
    clf = _model({"name": "classifier", "num_classes": 7})
    assert clf.dim == plain.dim == 1280
    with torch.inference_mode():
        desc = clf(images)
        torch.testing.assert_close(desc, plain(images))  # the head does not touch the descriptor
        logits = clf.head.logits(desc)
    assert logits.shape == (2, 7)
    assert torch.all(logits.abs() <= 30.0 + 1e-4)  # scale * cosine
    expected = 30.0 * F.normalize(desc, dim=1) @ F.normalize(clf.head.weight, dim=1).T
    torch.testing.assert_close(logits, expected)
    assert "head.weight" in clf.state_dict() and clf.state_dict()["head.weight"].shape == (7, 1280)


def test_classifier_margin_lowers_only_the_true_class():
    head = HEADS.build("classifier", in_dim=8, num_classes=5, scale=10.0, margin=0.2)
    desc = torch.randn(3, 8)
    labels = torch.tensor([0, 4, 2])
    plain, marged = head.logits(desc), head.logits(desc, labels)
    diff = plain - marged
    expected = torch.zeros(3, 5)
    expected[torch.arange(3), labels] = 2.0  # scale * margin
    torch.testing.assert_close(diff, expected)


def test_classifier_is_trainable_with_cross_entropy():
    torch.manual_seed(0)
    head = HEADS.build("classifier", in_dim=8, num_classes=3)
    desc = F.normalize(torch.randn(30, 8), dim=1)
    labels = torch.arange(30) % 3
    desc = F.normalize(desc + 2.0 * F.one_hot(labels, 8).float(), dim=1)  # separable classes
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(head.logits(desc, labels), labels)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_linear_classifier_and_bad_options():
    head = HEADS.build("classifier", in_dim=4, num_classes=3, cosine=False)
    x = torch.randn(2, 4)
    torch.testing.assert_close(head.logits(x), x @ head.weight.T + head.bias)
    with pytest.raises(ValueError, match="num_classes"):
        HEADS.build("classifier", in_dim=4, num_classes=1)
    with pytest.raises(ValueError, match="margin needs cosine"):
        HEADS.build("classifier", in_dim=4, num_classes=3, cosine=False, margin=0.1)
    with pytest.raises(TypeError):
        HEADS.build("classifier", in_dim=4)  # num_classes is required


# ---- ranking ----------------------------------------------------------------------------------------

def test_triplet_margin_loss_values():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])  # |a - p| = sqrt 2
    near = torch.tensor([[[1.0, 0.1]], ])  # |a - n| = 0.1
    far = torch.tensor([[[-1.0, 0.0]]])  # |a - n| = 2
    assert float(triplet_margin_loss(a, p, near, margin=0.1)) == pytest.approx(2 ** 0.5 - 0.1 + 0.1, rel=1e-5)
    assert float(triplet_margin_loss(a, p, far, margin=0.1)) == 0.0
    both = torch.cat([near, far], dim=1)  # mean over both negatives
    assert float(triplet_margin_loss(a, p, both, margin=0.1)) == pytest.approx(2 ** 0.5 / 2, rel=1e-5)
    assert float(triplet_margin_loss(a, p, near[:, 0], margin=0.1)) == pytest.approx(2 ** 0.5, rel=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        triplet_margin_loss(a, p, torch.zeros(2, 1, 2))
