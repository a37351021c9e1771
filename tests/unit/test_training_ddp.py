"""Multi-process training (torchrun, gloo on CPU): two ranks each take half of every batch and end with
the weights a single process reaches on the whole batches (DDP-averaged head gradients, and averaged
gradients of the scheme's own classifier); only rank 0 validates and writes logs, checkpoints and the export."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vpr_core.config import load_config
from vpr_core.models import build_model
from vpr_core.models.weights import save_checkpoint
from vpr_core.training import train
from vpr_core.training.config import train_config_from_dict
from vpr_core.training.distributed import Distributed

REPO = Path(__file__).resolve().parents[2]
# DINOVPR's family at one narrow block: frozen backbone (outputs cached), MLP head trained
TINY = {"backbone": {"name": "vit_small_patch14_dinov2", "family": "dinov2", "depth": 1, "embed_dim": 48,
                     "num_heads": 2, "img_size": 56, "init_values": 1.0},
        "head": {"name": "mlp", "hidden_dims": [32], "out_dim": 16}, "preprocess.image_size": [28, 56]}


def _config(tmp: Path, nordland: Path) -> dict:
    """Classification (a training-only classifier beside the DDP-wrapped head) on 32 route frames, 2 epochs
    of 3 steps; SGD, so that the two runs' tiny summation-order differences stay tiny."""
    torch.manual_seed(0)
    model_cfg = load_config(REPO / "config" / "dinovpr.yaml", {f"model.{k}": v for k, v in TINY.items()})
    save_checkpoint(build_model(model_cfg.model, load_checkpoint=False), tmp / "init.pth")
    return {"model": str(REPO / "config" / "dinovpr.yaml"),
            "model_overrides": {**TINY, "checkpoint": str(tmp / "init.pth"), "checkpoint_format": "vpr_ros"},
            "trainable": ["head"], "scheme": {"name": "classification", "margin": 0.2},
            "data": {"path": str(nordland), "train": "0:32", "val": "90:110", "group": 4},
            "optim": {"optimizer": "sgd", "lr": 0.01, "scheduler": "cosine"}, "epochs": 2, "batch_size": 8,
            "steps_per_epoch": 3, "device": "cpu", "progress": False, "recall_ks": [1, 5],
            "out_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, nordland_root):
    """The same config trained by one process and by `torchrun --nproc_per_node=2`."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = _config(tmp, nordland_root)
    single = train(train_config_from_dict({**cfg, "name": "single"}))
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump({**cfg, "name": "ddp"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "vpr_core.cli", "train", "--config", str(path)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    return single, tmp / "runs" / "ddp", proc


def test_two_ranks_finish_and_only_rank_0_writes(runs):
    _, run_dir, proc = runs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("model config:") == 1, "only rank 0 reports"
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and all(r["R@1"] for r in rows)
    names = {p.name for p in run_dir.iterdir()}
    written = {"best.pt", "last.pt", "log.csv", "model.pth", "model.yaml", "result.json"}
    assert written <= names <= written | {"tb"}
    if "tb" in names:
        assert len(list((run_dir / "tb").iterdir())) == 1, "one TensorBoard writer (rank 0)"


def test_ranks_average_gradients_to_the_single_process_result(runs):
    single, run_dir, proc = runs
    assert proc.returncode == 0
    ref = torch.load(single.run_dir / "last.pt", weights_only=False)
    got = torch.load(run_dir / "last.pt", weights_only=False)
    heads = [k for k in ref["model"] if k.startswith("head.")]
    assert heads and all(torch.allclose(ref["model"][k], got["model"][k], atol=1e-5) for k in heads)
    start = torch.load(run_dir.parent.parent / "init.pth", weights_only=True)["state_dict"]
    assert any(not torch.allclose(got["model"][k], start[k]) for k in heads), "the head did not train"
    cls_ref, cls_got = ref["modules"]["classifier"], got["modules"]["classifier"]
    assert all(torch.allclose(cls_ref[k], cls_got[k], atol=1e-5) for k in cls_ref), \
        "the classifier (outside DDP) must see both ranks' gradients"
    # the logged loss is the mean over ranks: the whole batch's, as the single process logs it
    assert np.allclose([r["loss"] for r in ref["history"][1:]], [r["loss"] for r in got["history"][1:]], atol=1e-5)


def test_exported_model_loads_into_place_recognizer(runs, nordland_root):
    from vpr_core.images import load_image
    from vpr_core.pipeline import PlaceRecognizer

    _, run_dir, proc = runs
    assert proc.returncode == 0
    rec = PlaceRecognizer(load_config(run_dir / "model.yaml"))
    assert rec.process(load_image(nordland_root / "summer" / "images-01010.png"), 1, "cam") is not None


@pytest.mark.parametrize("n", [7, 8, 3])
def test_shards_are_equal_and_disjoint(n):
    """Every rank takes the same number of items (DDP averages per rank); a remainder is left out."""
    batch = np.arange(n)
    shards = [Distributed(rank=r, world=2).shard(batch) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == n // 2
    assert not set(shards[0]) & set(shards[1])
