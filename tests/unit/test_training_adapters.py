"""The adapters scheme (SelaVPR) on a 2-block ViT-S DINOv2-adapter model at 56x56 and real Nordland frames:
only adapters, GeM and the local head change, the loss falls, the export runs in the node's pipeline."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch
import yaml

from vpr_core.config import ConfigError, ModelConfig, load_config
from vpr_core.models import build_model
from vpr_core.models.weights import save_checkpoint
from vpr_core.training import Trainer, load_train_config
from vpr_core.training.losses import local_triplet_loss, mutual_nn_similarity
from vpr_core.training.schemes import SchemeError
from vpr_core.training.schemes.adapters import is_adapter

REPO = Path(__file__).resolve().parents[2]
SELAVPR = REPO / "config" / "train" / "selavpr_adapters.yaml"
# layer scale 1 (SelaVPR builds DINOv2 with init_values=1): a fresh timm DINOv2 scales every block by 1e-5,
# which would leave the adapters almost without gradient
BACKBONE = {"name": "vit_small_patch14_dinov2", "family": "dinov2_adapter", "depth": 2, "init_values": 1.0}
LOCAL_HEAD = {"name": "upconv", "hidden": 32, "dim": 16}


def _model_yaml(folder: Path, local_head: Dict[str, Any]) -> Path:
    """A tiny SelaVPR-shaped model config and its native checkpoint, written from a freshly built model."""
    folder.mkdir(parents=True, exist_ok=True)
    section = {"name": "tiny_selavpr", "backbone": BACKBONE, "aggregator": {"name": "gem", "p": 3.0, "normalize": True},
               "local_head": local_head, "max_local_features": 64, "checkpoint": str(folder / "tiny.pth"),
               "checkpoint_format": "vpr_ros", "device": "cpu", "batch_size": 32}
    torch.manual_seed(0)
    save_checkpoint(build_model(ModelConfig(**section), load_checkpoint=False), folder / "tiny.pth")
    section["preprocess"] = {"image_size": [56, 56]}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"model": section}}}))
    return path


def _cfg(root: Path, nordland_root: Path, model: Path, **over: Any):
    """The shipped SelaVPR training config, pointed at the tiny model, 40 training and 30 validation frames."""
    base = {"name": "run", "model": str(model), "model_overrides.checkpoint": str(model.parent / "tiny.pth"),
            "model_overrides.checkpoint_format": "vpr_ros", "data.path": str(nordland_root), "data.train": "0:40",
            "data.val": "100:130", "data.pos_radius": 2, "data.neg_radius": 10, "scheme.hard_pool": 5,
            "scheme.refresh_every": 100, "optim.lr": 0.002, "epochs": 3, "batch_size": 8, "steps_per_epoch": 3,
            "recall_ks": [1, 5], "select_by": 1, "device": "cpu", "progress": False,
            "out_dir": str(root / "out"), "cache_dir": str(root / "cache")}
    return load_train_config(SELAVPR, {**base, **over})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, nordland_root):
    """One training run; the loss of fixed triplets (mined once at the start) before and after it."""
    root = tmp_path_factory.mktemp("adapters")
    trainer = Trainer(_cfg(root, nordland_root, _model_yaml(root / "model", LOCAL_HEAD)))
    scheme = trainer.scheme
    scheme.before_step(0)
    mined, batch = scheme.desc.copy(), scheme.usable[::2]

    def fixed_loss():
        scheme.desc = mined  # the same triplets
        with torch.no_grad():
            return scheme.loss(batch, 0)
    before_state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = fixed_loss()
    result = trainer.run()
    after = fixed_loss()
    return dict(trainer=trainer, result=result, before=before, after=after, state=before_state, root=root)


def test_loss_on_the_same_triplets_falls(trained):
    (l0, i0), (l1, i1) = trained["before"], trained["after"]
    assert l1.item() < 0.8 * l0.item()
    assert i1["global_loss"] < i0["global_loss"] and i1["local_loss"] < i0["local_loss"]
    assert i0["mnn_pos"] >= 1 and i0["mnn_neg"] >= 1


def test_only_adapters_aggregator_and_local_head_change(trained):
    before, after = trained["state"], trained["trainer"].model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {k for k in before if is_adapter(k) or k.startswith(("aggregator.", "local_head."))}
    assert changed == expected  # every trainable tensor moved (fc1 too: fc2 leaves zero after step 1)
    frozen = [k for k in before if k.startswith("backbone.") and not is_adapter(k)]
    assert len(frozen) > 20 and all(torch.equal(before[k], after[k]) for k in frozen)  # DINOv2 bit-identical


def test_validation_and_logs(trained):
    res = trained["result"]
    assert [r["epoch"] for r in res.history] == [0, 1, 2, 3]
    assert all(0.0 <= r["R@1"] <= r["R@5"] <= 1.0 for r in res.history)
    rows = list(csv.DictReader((res.run_dir / "log.csv").open()))
    assert len(rows) == 4 and float(rows[-1]["loss"]) > 0
    assert res.best_epoch >= 0 and (res.run_dir / "best.pt").is_file() and (res.run_dir / "last.pt").is_file()


def test_exported_model_runs_in_the_pipeline(trained, nordland_root):
    from vpr_core.images import load_image
    from vpr_core.pipeline import PlaceRecognizer

    res, trainer = trained["result"], trained["trainer"]
    exported = torch.load(res.run_dir / "model.pth", weights_only=True)
    assert sorted(exported["vpr_ros_covers"]) == ["aggregator.", "local_head."]
    assert any(is_adapter(k) for k in exported["state_dict"])
    assert not any(k.startswith("backbone.") and not is_adapter(k) for k in exported["state_dict"])
    cfg = load_config(res.model_config)
    rec = PlaceRecognizer(cfg)
    best = torch.load(res.run_dir / "best.pt", weights_only=False)["model"]
    own = rec.extractor.model.state_dict()
    assert all(torch.equal(own[k], best[k]) for k in own)  # the best epoch's weights, DINOv2 from the checkpoint
    image = load_image(nordland_root / "summer" / "images-01010.png")
    out = rec.process(image, stamp_ns=1, frame_id="cam")
    assert out.place_match is not None
    got = rec.extractor.extract([image])
    assert got.global_desc.shape == (1, trainer.model.dim) and np.isclose(np.linalg.norm(got.global_desc), 1, atol=1e-5)
    assert got.local[0].dim == LOCAL_HEAD["dim"] and len(got.local[0]) > 0


@pytest.mark.parametrize("entry", ["backbone", "backbone.model.blocks.1.*", "*attn*"])
def test_trainable_dinov2_weights_refused_before_compute(tmp_path, nordland_root, entry):
    model = _model_yaml(tmp_path / "model", LOCAL_HEAD)
    with pytest.raises(SchemeError, match=r"unfreeze .*backbone.*adapter"):
        Trainer(_cfg(tmp_path, nordland_root, model, trainable=[entry, "aggregator", "local_head"]))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # nothing computed or written


def test_model_without_local_head_or_batch_mining_refused(tmp_path, nordland_root):
    no_local = _model_yaml(tmp_path / "plain", {})
    with pytest.raises(ConfigError, match="'local_head' names no tensor"):  # the shipped trainable list
        Trainer(_cfg(tmp_path, nordland_root, no_local))
    with pytest.raises(SchemeError, match="no local head"):
        Trainer(_cfg(tmp_path, nordland_root, no_local, trainable=["backbone.*adapter*", "aggregator"]))
    with pytest.raises(SchemeError, match="mining: cache"):
        Trainer(_cfg(tmp_path, nordland_root, _model_yaml(tmp_path / "model", LOCAL_HEAD), **{"scheme.mining": "batch"}))
    with pytest.raises(ConfigError, match="local_wieght"):  # a typo in an option is named
        Trainer(_cfg(tmp_path, nordland_root, tmp_path / "model" / "tiny.yaml", **{"scheme.local_wieght": 2.0}))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_frozen_backbone_trains_heads_from_cached_features(tmp_path, nordland_root):
    """Without adapters in trainable, the backbone is frozen: its outputs are cached and the local loss
    still reaches the local head (global + local from cached features)."""
    model = _model_yaml(tmp_path / "model", LOCAL_HEAD)
    trainer = Trainer(_cfg(tmp_path, nordland_root, model, trainable=["aggregator", "local_head"], epochs=1,
                           steps_per_epoch=2, **{"data.val": ""}))
    assert trainer.encoder.cache is not None
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith(("aggregator.", "local_head."))}


# ---- the local loss itself ------------------------------------------------------------------------

def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mutual_nn_similarity_matches_a_loop_and_graded_only_through_matches():
    a, b = _unit(7, 4, seed=1).requires_grad_(True), _unit(9, 4, seed=2)
    s, count = mutual_nn_similarity(a, b)
    sim = (a @ b.T).detach()
    pairs = [(i, int(sim[i].argmax())) for i in range(7) if int(sim[:, int(sim[i].argmax())].argmax()) == i]
    assert int(count) == len(pairs) >= 1
    assert torch.isclose(s, torch.stack([sim[i, j] for i, j in pairs]).mean())
    s.backward()
    unmatched = [i for i in range(7) if i not in {p[0] for p in pairs}]
    assert torch.all(a.grad[unmatched] == 0) and a.grad[pairs[0][0]].abs().sum() > 0


def test_local_triplet_loss_is_zero_for_identical_positive():
    a = _unit(2, 5, 8, seed=3)
    negs = _unit(2, 3, 5, 8, seed=4)
    loss, count = local_triplet_loss(a, a.clone(), negs, margin=0.0)
    assert loss.item() == 0.0 and count.shape == (2, 4) and torch.all(count[:, 0] == 5)
    loss_m, _ = local_triplet_loss(a, a.clone(), negs, margin=2.0)  # cosines <= 1: margin 2 always violated
    assert loss_m.item() > 0


def test_adapter_glob_outside_backbone_prefix_disables_the_feature_cache(tmp_path, nordland_root):
    """'*adapter*' names parameters inside the backbone: cached backbone outputs would silently skip them."""
    model = _model_yaml(tmp_path / "model", LOCAL_HEAD)
    trainer = Trainer(_cfg(tmp_path, nordland_root, model, trainable=["*adapter*", "aggregator", "local_head"]))
    assert trainer.encoder.cache is None and not (tmp_path / "cache").exists()


def test_local_similarity_in_float32_under_autocast():
    a, b = _unit(2, 30, 8, seed=5), _unit(2, 40, 8, seed=6)
    ref, ref_n = mutual_nn_similarity(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, n = mutual_nn_similarity(a, b)
    assert got.dtype == torch.float32 and torch.equal(n, ref_n) and torch.allclose(got, ref)
