"""The trainer end to end on a small real Nordland subset: every scheme lowers its loss on a fixed
batch, validation runs, a checkpoint resumes bit-exact, and the written config loads into the node's core."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vpr_core.config import ConfigError, load_config
from vpr_core.datasets import load_dataset
from vpr_core.metrics import rank_database, recall_at_k
from vpr_core.models.vpr_model import DescriptorExtractor
from vpr_core.training import Trainer, train
from vpr_core.training.config import train_config_from_dict
from vpr_core.training.schemes import SchemeError

from training_helpers import fixed_batch_loss  # tests/unit: shared with test_training_zoo.py

TRAIN, VAL = "0:48", "100:140"  # 52 route frames between them: no leakage between neighbours


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")  # shared: the backbone runs once per image per module


@pytest.fixture
def make_cfg(nordland_root, repo_root, cache_dir, tmp_path):
    def make(**changes):
        data = {"name": "t", "model": str(repo_root / "config/default.yaml"),
                "model_overrides": {"preprocess": {"image_size": [64, 96]},
                                    "head": {"name": "mlp", "hidden_dims": [128], "out_dim": 64}},
                "trainable": ["aggregator", "head"],
                "scheme": {"name": "ranking", "refresh_every": 1000, "negatives": 3, "hard_pool": 10},
                "data": {"path": str(nordland_root), "train": TRAIN, "val": VAL, "pos_radius": 2, "neg_radius": 6},
                "optim": {"lr": 0.003, "scheduler": "constant"},
                "epochs": 3, "batch_size": 8, "progress": False, "out_dir": str(tmp_path / "runs"),
                "cache_dir": str(cache_dir)}
        for key, value in changes.items():
            node = data
            *parents, leaf = key.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return train_config_from_dict(data)
    return make


def trained_state(trainer: Trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("scheme", [
    {"name": "ranking", "loss": "triplet", "mining": "cache", "refresh_every": 1000, "negatives": 3, "hard_pool": 10},
    {"name": "ranking", "loss": "multi_similarity", "mining": "batch"},
    {"name": "ranking", "loss": "triplet", "mining": "batch"},
    {"name": "classification", "margin": 0.2},
], ids=["triplet-cache", "ms-batch", "triplet-batch-hard", "classification"])
def test_scheme_lowers_its_loss_and_validates(make_cfg, scheme):
    trainer = Trainer(make_cfg(scheme=scheme, epochs=4, data__group=4))
    before = trained_state(trainer)
    loss0 = fixed_batch_loss(trainer)
    res = trainer.run()
    loss1 = fixed_batch_loss(trainer)
    assert loss1 < loss0, f"{scheme['name']}: loss on a fixed batch went {loss0:.4f} -> {loss1:.4f}"
    assert [r["epoch"] for r in res.history] == [0, 1, 2, 3, 4]
    assert all("R@1" in r and 0 <= r["R@1"] <= 1 for r in res.history)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.")), "frozen backbone changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    assert (res.run_dir / "log.csv").read_text().startswith("epoch,")


def test_resume_is_bit_exact_after_an_epoch_and_after_ctrl_c(make_cfg, monkeypatch):
    full = Trainer(make_cfg(name="full"))
    full.run()
    ref = trained_state(full)

    train(make_cfg(name="split", epochs=1))  # one epoch, then continue to three
    resumed = Trainer(make_cfg(name="split"), resume="auto")
    resumed.run()
    got = resumed.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)

    # Ctrl-C in the middle of epoch 2 leaves a checkpoint that continues to the same weights
    inter = Trainer(make_cfg(name="ctrlc"))
    real_loss = inter.scheme.loss

    def interrupt(batch, step):
        if step == 9:
            raise KeyboardInterrupt
        return real_loss(batch, step)
    monkeypatch.setattr(inter.scheme, "loss", interrupt)
    res = inter.run()
    assert res.interrupted and inter.epoch == 1 and inter.step_in_epoch == 9 - len(inter.scheme.batches(0))
    cont = Trainer(make_cfg(name="ctrlc"), resume="auto")
    cont.run()
    got = cont.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert [round(r.get("loss", 0), 6) for r in cont.history] == [round(r.get("loss", 0), 6) for r in full.history]


def test_written_config_reproduces_validation_recall_in_the_core(make_cfg, nordland_root):
    from vpr_core.pipeline import PlaceRecognizer

    res = train(make_cfg(name="export"))
    cfg = load_config(res.model_config)
    assert cfg.model.trained_checkpoint and cfg.model.head["out_dim"] == 64
    ex = DescriptorExtractor(cfg.model)
    val = load_dataset(nordland_root).segment(100, 140)
    from vpr_core.images import load_image
    db = ex([load_image(p) for p in val.database])
    q = ex([load_image(p) for p in val.queries])
    r1 = recall_at_k(rank_database(q, db, 5)[1], val.positives, (1,))[1]
    assert abs(r1 - res.best["R@1"]) <= 0.05  # live float32 features vs the float16 cache
    rec = PlaceRecognizer(cfg)
    out = rec.process(load_image(val.queries[0]), 1, "cam")
    assert out is not None and rec.extractor.dim == 64


def test_whitening_fits_a_compact_descriptor(make_cfg, nordland_root):
    res = train(make_cfg(name="white", scheme={"name": "whitening"}, trainable=["head"],
                         model_overrides={"preprocess": {"image_size": [64, 96]}, "head": {"name": "whiten", "out_dim": 32}}))
    cfg = load_config(res.model_config)
    ex = DescriptorExtractor(cfg.model)
    head = ex.model.head
    assert ex.dim == 32 and head.proj.shape == (32, 1280)
    assert not torch.equal(head.proj, torch.eye(32, 1280)), "the projection was not fitted"
    assert 0 < res.history[0]["variance_kept"] <= 1 and "R@1" in res.best


def test_pairs_scheme_writes_its_threshold(make_cfg, nordland_root, tmp_path):
    def pairs(path, frames):
        lines = ["path1,path2,label"]
        for k in frames:
            w = nordland_root / "winter" / f"images-{(k + 1) * 10:05d}.png"
            lines.append(f"{w},{nordland_root / 'summer' / f'images-{(k + 1) * 10:05d}.png'},1")
            lines.append(f"{w},{nordland_root / 'summer' / f'images-{(k + 31) * 10:05d}.png'},0")
        path.write_text("\n".join(lines) + "\n")
        return path
    cfg = make_cfg(name="pairs", scheme={"name": "pairs", "loss": "contrastive", "margin": 0.3},
                   data={"path": str(pairs(tmp_path / "train.csv", range(0, 48))), "val": "",
                         "val_path": str(pairs(tmp_path / "val.csv", range(100, 130)))})
    trainer = Trainer(cfg)
    loss0 = fixed_batch_loss(trainer)
    res = trainer.run()
    assert fixed_batch_loss(trainer) < loss0
    assert 0 <= res.best["pair_acc"] <= 1
    written = load_config(res.model_config)
    assert written.detector.loop_threshold == pytest.approx(res.best["threshold"], abs=1e-4)


def test_netvlad_centres_come_from_kmeans_never_random(make_cfg):
    cfg = make_cfg(name="vlad", epochs=1, trainable=["aggregator"], model_overrides={"preprocess": {"image_size": [64, 96]},
                                                           "aggregator": {"name": "netvlad", "clusters": 4}})
    trainer = Trainer(cfg)
    agg = trainer.model.aggregator
    assert bool(agg.initialised)
    c = torch.nn.functional.normalize(agg.centroids.detach(), dim=1)
    assert c.norm(dim=1).min() > 0.99 and torch.linalg.matrix_rank(c) == 4


@pytest.mark.parametrize("changes, message", [
    ({"epochz": 3}, "unknown config key 'epochz'"),
    ({"scheme": {"name": "ranking", "negativs": 3}}, "unknown option"),
    ({"scheme": {"name": "rankin"}}, "did you mean 'ranking'"),
    ({"scheme": {"name": "whitening"}}, "whiten head"),
    ({"trainable": ["local_head"]}, "names no tensor"),
    ({"data__val": "60:100"}, "gap of at least 50"),
    ({"data__train": "5000:6000"}, "holds no database image"),
    ({"data__neg_radius": 1.0}, "neg_radius"),
    ({"optim__optimizer": "adam"}, "optim.optimizer"),
    ({"cache_features": "true", "trainable": ["backbone"]}, "frozen backbone"),
])
def test_bad_configs_fail_before_any_compute(make_cfg, cache_dir, changes, message):
    before = sorted(p.name for p in cache_dir.rglob("*"))
    with pytest.raises((ConfigError, SchemeError, ValueError)) as err:
        Trainer(make_cfg(**changes))
    assert message in str(err.value)
    assert sorted(p.name for p in cache_dir.rglob("*")) == before


def test_cli_trains_and_reports_bad_overrides(make_cfg, tmp_path, capsys):
    import yaml

    from vpr_core.cli import main

    cfg = make_cfg(name="cli", epochs=1)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(cfg.to_dict())))
    assert main(["train", "--config", str(path), "batch_size=4"]) == 0
    assert "model config:" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "batchsize=4"]) == 2
    assert "unknown config key 'batchsize'" in capsys.readouterr().err


def _write_geo_split(real_frame, folder, frames):
    """Summer frames as the database, winter frames as queries; frame k lies at UTM east 10 k m."""
    for k in frames:
        real_frame(k, folder / "database" / f"@{500000 + 10 * k:.2f}@{4000000:.2f}@33@T@s{k}@.jpg", "summer")
        real_frame(k, folder / "queries" / f"@{500000 + 10 * k:.2f}@{4000000:.2f}@33@T@w{k}@.jpg", "winter")


def test_geo_layout_trains_with_metre_radii(make_cfg, tmp_path, real_frame):
    root = tmp_path / "geo_mini"
    _write_geo_split(real_frame, root / "images" / "train", range(0, 24))
    _write_geo_split(real_frame, root / "images" / "val", range(100, 116))
    trainer = Trainer(make_cfg(name="geo", epochs=1, data={"path": str(root), "train": "train", "val": "val",
                                                          "pos_radius": 10.0, "neg_radius": 25.0}))
    assert trainer.scheme.table.unit == "m"
    # positives within 10 m = the same and neighbouring frames; negatives start beyond 25 m
    a = trainer.scheme.table.anchors[5]
    near = trainer.scheme.table.distances(np.array([a]), trainer.scheme.positives[5])[0]
    assert len(near) == 3 and near.max() <= 10.0
    res = trainer.run()
    assert 0 <= res.best["R@1"] <= 1 and len(res.history) == 2


def test_gsv_cities_layout_trains_by_classification(make_cfg, tmp_path, real_frame):
    from vpr_core.datasets import gsv_image_name

    root = tmp_path / "gsv_mini"
    lines, k = [",place_id,year,month,northdeg,city_id,lat,lon,panoid"], 0
    for pid in range(6):
        for j in range(4):
            lat, lon, pano = 51.5 + pid / 1000, -0.125 + j / 10000, f"p{pid}x{j}"
            lines.append(f"{k},{pid},2019,{j + 1},{10 * j},London,{lat},{lon},{pano}")
            real_frame(8 * pid + j, root / "Images" / "London" / gsv_image_name("London", pid, 2019, j + 1, 10 * j, lat,
                                                                                lon, pano), "summer" if j % 2 else "winter")
            k += 1
    (root / "Dataframes").mkdir(parents=True)
    (root / "Dataframes" / "London.csv").write_text("\n".join(lines) + "\n")
    trainer = Trainer(make_cfg(name="gsv", epochs=3, scheme={"name": "classification", "margin": 0.2},
                               data={"path": str(root), "val": "", "min_per_place": 4}))
    assert trainer.scheme.classifier.num_classes == 6
    loss0 = fixed_batch_loss(trainer)
    res = trainer.run()
    assert fixed_batch_loss(trainer) < loss0 and res.model_config is not None
