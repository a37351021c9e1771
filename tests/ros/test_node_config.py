"""Parameter files the node must refuse (or accept) at start-up."""
from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.node import Node

from offline_eval.replay import write_params
from vpr_core.config import flatten, load_config
from vpr_ros.parameters import declare_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.yaml"))


def params_with(node_params, path, section: str, key: str, value):
    """A node parameters file: config/default.yaml plus one extra `section.key: value` entry."""
    node_params(load_config(), path)
    data = yaml.safe_load(path.read_text())
    data["/**"]["ros__parameters"].setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("section,key", [("detector", "loop_threshhold"), ("map", "auto_save")])
def test_unknown_parameter_is_fatal_and_named(start_node, node_params, tmp_path, section, key):
    params = params_with(node_params, tmp_path / "typo.yaml", section, key, 0.5 if key == "loop_threshhold" else True)
    run = start_node(tmp_path, "typo", params_file=params, wait=False)
    rc = run.wait_exit(60.0)
    assert rc is not None, f"the node kept running with an unknown parameter:\n{run.log_tail()}"
    assert rc != 0, f"the node exited 0 with an unknown parameter:\n{run.log_tail()}"
    assert f"{section}.{key}" in run.log_text(), f"the error does not name the key:\n{run.log_tail()}"
    assert "unknown parameter" in run.log_text()


def test_integer_for_float_parameter_is_accepted(start_node, node_params, tmp_path):
    params = params_with(node_params, tmp_path / "int.yaml", "detector", "exclude_recent_s", 5)
    assert load_config(params).detector.exclude_recent_s == 5.0  # vpr_core reads the same file fine
    run = start_node(tmp_path, "int_for_float", params_file=params)  # fails the test if the node exits
    assert run.alive()
    assert run.stop() == 0


def ros_parameters(params_file) -> dict:
    """The parameters rcl reads from a params file: what the node receives as overrides."""
    ctx = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(params_file)], context=ctx)
    try:
        node = Node("params_probe", context=ctx)
        try:
            return {k: (list(p.value) if isinstance(p.value, (list, tuple)) or hasattr(p.value, "tolist")
                        else p.value) for k, p in node._parameter_overrides.items()}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_node_params_file_round_trips_through_ros(node_params, tmp_path):
    """The harness's params file is read by rcl as exactly the config."""
    cfg = load_config(overrides={"detector.loop_threshold": 0.7, "map.path": str(tmp_path / "m.vprmap")})
    assert ros_parameters(node_params(cfg, tmp_path / "p.yaml")) == _as_written(cfg)


def test_write_params_round_trips_through_ros(tmp_path):
    cfg = load_config()
    assert ros_parameters(write_params(cfg, tmp_path / "p.yaml")) == _as_written(cfg)


def _as_written(cfg) -> dict:
    """The config's parameters as a params file can hold them: empty lists (camera.K) left out."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if v != []}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_files_declare_the_same_config_through_ros(path):
    """Each config/ file as the node's --params-file: rcl reads it, the node declares every parameter
    (model sections, local head, rerank.*) and gets exactly the config vpr_core loads from the file."""
    ctx = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=ctx)
    try:
        node = Node("params_probe", context=ctx)
        try:
            cfg = declare_config(node, node._parameter_overrides)
            declared = {name for name in node._parameters if "." in name}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    assert cfg == load_config(path)
    assert {"rerank.method", "rerank.top_k", "rerank.min_inliers", "rerank.px_threshold"} <= declared


@pytest.mark.parametrize("section,key,value", [("node", "queue_size", 0), ("detector", "exclude_recent_count", -1),
                                               ("model", "precision", "fp64"), ("node", "qos", "fast")])
def test_out_of_range_parameter_stops_the_node_naming_it(start_node, node_params, tmp_path, section, key, value):
    params = params_with(node_params, tmp_path / "range.yaml", section, key, value)
    run = start_node(tmp_path, "range", params_file=params, wait=False)
    rc = run.wait_exit(60.0)
    assert rc is not None and rc != 0, f"the node ran with {section}.{key} = {value!r}:\n{run.log_tail()}"
    assert f"parameter '{section}.{key}' = {value!r} is invalid" in run.log_text(), run.log_tail()
