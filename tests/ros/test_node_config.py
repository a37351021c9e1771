"""Parameter files the node must refuse (or accept) at start-up."""
from __future__ import annotations

import pytest
import rclpy
import yaml
from rclpy.node import Node

from offline_eval.replay import write_params
from vpr_core.config import flatten, load_config


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
    assert ros_parameters(node_params(cfg, tmp_path / "p.yaml")) == flatten(cfg.to_dict())


def test_write_params_round_trips_through_ros(tmp_path):
    cfg = load_config()
    assert ros_parameters(write_params(cfg, tmp_path / "p.yaml")) == flatten(cfg.to_dict())
