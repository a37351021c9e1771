"""Every seed's scheme trains end to end on real Nordland frames (issue #9): the shipped config/train/*.yaml,
pointed at a shrunken model of the seed's own family, aggregator and head (random weights written here
in the native format) and a few steps of data. For each: the loss on fixed batches falls, validation is
logged, 1 epoch + resume equals 2 epochs bit for bit, and the written model.yaml runs in PlaceRecognizer.
(SelaVPR's adapters scheme has its own file, test_training_adapters.py.)"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Tuple

import numpy as np
import pytest
import torch

from vpr_core import clustering
from vpr_core.config import load_config
from vpr_core.models import DescriptorExtractor, build_model
from vpr_core.models.weights import save_checkpoint
from vpr_core.training import Trainer, load_train_config
from vpr_core.training.checkpoint import is_trained
from vpr_core.training.features import load_images

from training_helpers import fixed_batch_loss  # tests/unit: shared with test_training.py

REPO = Path(__file__).resolve().parents[2]
TRAIN, VAL = "0:32", "90:110"  # 58 route frames apart: the trainer's 50-frame gap holds

# timm kwargs cut each transformer to one block and a narrow width; names and families stay the seed's
DEIT = {"name": "deit_small_patch16_224", "family": "vit", "depth": 1, "embed_dim": 48, "num_heads": 2}
PIT = {"name": "pit_s_224", "family": "pit", "depth": [1, 1, 1], "heads": [1, 1, 1], "base_dims": [16, 16, 16]}
CAIT = {"name": "cait_s24_224", "family": "vit", "depth": 1, "depth_token_only": 1, "embed_dim": 48, "num_heads": 2}
# layer scale 1: timm's DINOv2 scales every block by 1e-5, leaving a class token that hardly sees the image;
# zero_init_last off: timm zeroes each ResNet block's last BatchNorm, so layer3 would get no gradient at step 1
DINO = {"name": "vit_small_patch14_dinov2", "family": "dinov2", "depth": 1, "embed_dim": 48, "num_heads": 2,
        "img_size": 56, "init_values": 1.0}
VITGAL = {"name": "xcit_small_12_p16_224", "family": "vitgal", "depth": 1}  # width 384: the atrous module needs it
RESNET = {"name": "resnet50", "family": "resnet", "out_stage": 3, "layers": [1, 1, 1, 1], "zero_init_last": False}


@dataclass(frozen=True)
class Seed:
    """One seed x scheme: its training config, its model config, the shrinking model overrides, the
    input size (H, W) and training overrides (learning rate and what the tiny run must change)."""
    config: str
    model: str
    model_overrides: Dict[str, Any]
    hw: Tuple[int, int] = (32, 64)
    train: Dict[str, Any] = field(default_factory=dict)


VTVPR = {"deit": (DEIT, (32, 64)), "pit": (PIT, (64, 64)), "cait": (CAIT, (32, 64))}  # PiT: >= 64 px a side
# the shipped lr 1e-5 fine-tunes pretrained ViTs; 6 steps of a random one-block ViT need a larger one
CASES = {f"vtvpr_{family}-{scheme}": Seed(f"vtvpr_{scheme}", f"vtvpr_{family}", {"backbone": bb}, hw,
                                          {"optim.lr": 3e-3})
         for family, (bb, hw) in VTVPR.items() for scheme in ("classification", "ranking")}
CASES.update({
    "dinovpr-pairs": Seed("dinovpr_pairs", "dinovpr",
                          {"backbone": DINO, "head": {"name": "mlp", "hidden_dims": [32], "out_dim": 16}},
                          (28, 56), {"optim.lr": 1e-2}),
    # conv1-5 frozen here (the shipped config trains conv5): the backbone outputs are then cached once
    "clusvpr-ranking": Seed("clusvpr_ranking", "clusvpr",
                            {"aggregator": {"name": "netvlad", "clusters": 4, "attention": True}},
                            train={"optim.lr": 0.05, "trainable": ["aggregator"], "cluster_images": 32}),
    "vitgal-classification": Seed("vitgal_classification", "vitgal", {"backbone": VITGAL},
                                  train={"data.val_path": ""}),  # the shipped lr; validation on Nordland
    "mixvpr-ranking": Seed("mixvpr_ranking", "mixvpr",
                           {"backbone": RESNET, "aggregator": {"name": "mixvpr", "in_h": 2, "in_w": 4,
                                                               "out_channels": 32, "out_rows": 2, "mix_depth": 1}},
                           train={"data.val_path": ""}),  # the shipped SGD lr 0.05
})


def write_pairs(path: Path, nordland: Path, frames: range, far: int) -> Path:
    """A pair list of real frames: winter k with summer k is the same place (1), with summer k + far not (0)."""
    def img(season: str, k: int) -> Path:
        return nordland / season / f"images-{(k + 1) * 10:05d}.png"
    lines = ["path1,path2,label"]
    for k in frames:
        lines += [f"{img('winter', k)},{img('summer', k)},1", f"{img('winter', k)},{img('summer', k + far)},0"]
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_model_yaml(seed: Seed) -> Path:
    return REPO / "config" / f"{seed.model}.yaml"


def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """BatchNorm running statistics from real frames: a fresh model's 0/1 statistics collapse its eval-mode
    descriptors to almost one point (cosine > 0.98), unlike any pretrained backbone's."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:  # VGG16 has none (and a fresh NetVLAD refuses to run)
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(images)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def write_init_checkpoint(seed: Seed, folder: Path, nordland: Path) -> Path:
    """Random weights of the shrunken model in the native (vpr_ros) format, from a freshly built model
    (BatchNorm statistics from 16 real frames outside the train and validation segments)."""
    overrides = {f"model.{k}": v for k, v in seed.model_overrides.items()}
    overrides["model.preprocess.image_size"] = list(seed.hw)
    cfg = load_config(seed_model_yaml(seed), overrides).model
    torch.manual_seed(0)
    model = build_model(cfg, load_checkpoint=False)
    frames = [nordland / s / f"images-{(k + 1) * 10:05d}.png" for k in range(200, 208) for s in ("summer", "winter")]
    calibrate_batchnorm(model, DescriptorExtractor(cfg, model).preprocess(load_images(frames)))
    save_checkpoint(model, folder / "init.pth")
    return folder / "init.pth"


def make_cfg(seed: Seed, root: Path, nordland: Path, name: str, epochs: int):
    """The shipped training config with the tiny model, a few real frames and a few steps."""
    over: Dict[str, Any] = {f"model_overrides.{k}": v for k, v in seed.model_overrides.items()}
    over.update({
        "name": name, "model": str(seed_model_yaml(seed)), "model_overrides.checkpoint": str(root / "init.pth"),
        "model_overrides.checkpoint_format": "vpr_ros", "model_overrides.device": "cpu",
        "model_overrides.batch_size": 64, "model_overrides.preprocess.image_size": list(seed.hw),
        "data.path": str(nordland), "data.train": TRAIN, "data.val": VAL, "data.pos_radius": 2,
        "data.neg_radius": 6, "data.group": 4, "data.min_per_place": 2, "data.tolerance": 2,
        "epochs": epochs, "batch_size": 8, "steps_per_epoch": 3, "optim.warmup_steps": 0, "recall_ks": [1, 5],
        "select_by": 1, "device": "cpu", "progress": False, "out_dir": str(root / "runs"),
        "cache_dir": str(root / "cache"), **seed.train})
    if seed.config == "dinovpr_pairs":
        over.update({"data.path": str(root / "train_pairs.csv"), "data.train": "", "data.val": "",
                     "data.val_path": str(root / "val_pairs.csv")})
    return load_train_config(REPO / "config" / "train" / f"{seed.config}.yaml", over)


def tensors(trainer: Trainer) -> Dict[str, torch.Tensor]:
    """Every tensor a run ends with: model, training-only modules (a classifier) and optimiser state."""
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    for name, module in trainer.scheme.modules().items():
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    for i, state in trainer.optimizer.state_dict()["state"].items():
        out.update({f"optim.{i}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def stop_after_first_epoch(trainer: Trainer, keep: Path) -> None:
    """Run until the epoch-1 checkpoint is written, keep a copy of it and stop there (the run is planned
    for 2 epochs, so its learning-rate schedule is the 2-epoch run's)."""
    save = trainer._save

    def save_and_stop(name: str) -> None:
        save(name)
        if name == "last.pt" and trainer.epoch == 1 and not keep.exists():
            shutil.copyfile(trainer.run_dir / "last.pt", keep)
            raise KeyboardInterrupt
    trainer._save = save_and_stop  # type: ignore[method-assign]
    assert trainer.run().interrupted and keep.is_file()


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def run(request, tmp_path_factory, nordland_root) -> SimpleNamespace:
    """A 2-epoch run (loss on fixed batches before and after it), and the same run stopped after its
    first epoch and resumed from that epoch's checkpoint."""
    seed = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    write_init_checkpoint(seed, root, nordland_root)
    write_pairs(root / "train_pairs.csv", nordland_root, range(0, 32), far=40)
    write_pairs(root / "val_pairs.csv", nordland_root, range(90, 110), far=30)
    kmeans: list = []
    with pytest.MonkeyPatch.context() as mp:  # record what the trainer's k-means returns
        real_kmeans = clustering.spherical_kmeans
        mp.setattr(clustering, "spherical_kmeans", lambda *a, **k: kmeans.append(real_kmeans(*a, **k)) or kmeans[-1])
        full = Trainer(make_cfg(seed, root, nordland_root, "full", epochs=2))
        kmeans_full = list(kmeans)
        agg = full.model.aggregator
        centres = agg.centroids.detach().clone() if hasattr(agg, "centroids") else None
        loss0 = fixed_batch_loss(full)
        result = full.run()
        loss1 = fixed_batch_loss(full)
        stop_after_first_epoch(Trainer(make_cfg(seed, root, nordland_root, "split", epochs=2)), root / "epoch1.pt")
        resumed = Trainer(make_cfg(seed, root, nordland_root, "split", epochs=2), resume=str(root / "epoch1.pt"))
        resumed.run()
    init = torch.load(root / "init.pth", weights_only=True)
    return SimpleNamespace(seed=seed, full=full, result=result, loss0=loss0, loss1=loss1, resumed=resumed,
                           kmeans=kmeans_full, centres=centres, init=init.get("state_dict", init))


def test_loss_on_fixed_batches_falls(run):
    assert np.isfinite(run.loss0) and run.loss1 < run.loss0, f"loss {run.loss0:.4f} -> {run.loss1:.4f}"


def test_validation_is_logged_every_epoch(run):
    rows = list(csv.DictReader((run.result.run_dir / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    key = "pair_acc" if run.seed.config == "dinovpr_pairs" else "R@1"
    assert all(0.0 <= float(r[key]) <= 1.0 for r in rows)
    assert all(np.isfinite(float(r["loss"])) for r in rows[1:])
    assert run.result.best_epoch >= 0 and key in run.result.best


def test_only_trainable_tensors_change(run):
    """Frozen parts (DINOv2 under DINOVPR's head, ClusVPR's VGG16, MixVPR's stem/layer1-2 with their
    BatchNorm statistics, ViTGaL's local head) keep the checkpoint's values; every trained part moves."""
    trainable = run.full.cfg.trainable
    after = run.full.model.state_dict()
    frozen = [k for k in after if not is_trained(k, trainable)]
    assert all(torch.equal(after[k].cpu(), run.init[k]) for k in frozen)
    moved = {k.split(".")[0] for k in after if is_trained(k, trainable) and not torch.equal(after[k].cpu(), run.init[k])}
    assert moved == {p.split(".")[0] for p in trainable}


def test_one_epoch_plus_resume_equals_two_epochs_bit_for_bit(run):
    ref, got = tensors(run.full), tensors(run.resumed)
    assert ref.keys() == got.keys() and any(k.startswith("optim.") for k in ref)
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"resumed run differs in {differ[:5]}"
    assert [r.get("loss") for r in run.full.history] == [r.get("loss") for r in run.resumed.history]


def test_written_config_runs_in_place_recognizer(run, nordland_root):
    from vpr_core.images import load_image
    from vpr_core.pipeline import PlaceRecognizer

    cfg = load_config(run.result.model_config)
    seed_cfg = load_config(seed_model_yaml(run.seed)).model
    for part in ("backbone", "aggregator", "head", "local_head"):  # the seed's family, aggregator and heads
        assert getattr(cfg.model, part).get("name") == getattr(seed_cfg, part).get("name"), part
    assert cfg.model.backbone.get("family") == seed_cfg.backbone.get("family")
    rec = PlaceRecognizer(cfg)
    best = torch.load(run.result.run_dir / "best.pt", weights_only=False)["model"]
    own = rec.extractor.model.state_dict()
    assert own.keys() == best.keys() and all(torch.equal(own[k], best[k]) for k in own)
    out = rec.process(load_image(nordland_root / "summer" / "images-01010.png"), stamp_ns=1, frame_id="cam")
    assert out is not None
    desc = rec.extractor.extract([load_image(nordland_root / "winter" / "images-01010.png")]).global_desc
    assert desc.shape == (1, run.full.model.dim) and np.isclose(np.linalg.norm(desc), 1.0, atol=1e-5)


@pytest.mark.parametrize("run", ["clusvpr-ranking"], indirect=True)  # the one aggregator with centres
def test_netvlad_centres_come_from_kmeans_of_training_features(run):
    assert len(run.kmeans) == 1, "cluster_init ran k-means once, before training"
    assert not bool(run.init["aggregator.initialised"]), "the written checkpoint holds fresh, unusable centres"
    kmeans = torch.as_tensor(np.asarray(run.kmeans[0]), dtype=torch.float32)
    assert run.centres.shape == kmeans.shape == run.init["aggregator.centroids"].shape
    torch.testing.assert_close(run.centres, kmeans)  # the aggregator started from the k-means centres
    assert not torch.allclose(run.centres, run.init["aggregator.centroids"])
    assert bool(run.full.model.aggregator.initialised)
