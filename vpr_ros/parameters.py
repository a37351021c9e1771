"""Config <-> ROS 2 parameters: every config leaf is a parameter named by its dotted path
(`detector.loop_threshold`), declared with vpr_core's default; unknown names are refused."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from vpr_core.config import (FREEFORM_PREFIXES, TRISTATE_KEYS, Config, ConfigError, config_from_dict, flatten,
                             unflatten)
from vpr_core.pipeline import RUNTIME_SETTINGS

# Free-form sections (FREEFORM_PREFIXES): options under them go to the component's builder, which checks them.
ROS_BUILTIN = {"use_sim_time", "start_type_description_service"}
# `ros2 param set` is applied for these (the detector reads them per frame; map.path moves the
# autosave target and the id floor file); every other config parameter is refused at run time.
RUNTIME_PARAMETERS = (*RUNTIME_SETTINGS, "map.path")


def _loose(key: str, default: Any) -> bool:
    """Parameters whose YAML type may differ from the default's: `5` for a float (vpr_core turns it
    into 5.0, so the file means the same to both), a boolean for an auto|true|false setting, any list
    for an empty-list default (ROS cannot type an empty array)."""
    return key in TRISTATE_KEYS or isinstance(default, float) or (isinstance(default, list) and not default)


def declare_config(node: Node, overrides: Mapping[str, Any]) -> Config:
    """Declare all parameters (the params file's values win over the defaults) and build the Config.

    `overrides`: name -> rclpy Parameter, as the node received them from --ros-args.
    """
    defaults = flatten(Config().to_dict())
    for prefix in FREEFORM_PREFIXES:  # a file that sets a free-form section replaces it whole
        if any(k.startswith(prefix) for k in overrides):
            defaults = {k: v for k, v in defaults.items() if not k.startswith(prefix)}
    names = set(defaults) | {k for k in overrides if k.startswith(FREEFORM_PREFIXES)}
    unknown = sorted(set(overrides) - names - ROS_BUILTIN)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; valid names are the dotted keys of "
                          f"config/default.yaml (e.g. detector.loop_threshold)")
    values = {k: node.declare_parameter(k, defaults[k] if k in defaults else overrides[k].value,
                                        ParameterDescriptor(dynamic_typing=_loose(k, defaults.get(k)))).value
              for k in sorted(names)}
    for k, v in values.items():  # an empty-list default is declared unset: it reads back as None
        if v is None and defaults.get(k) == []:
            values[k] = []
    return config_from_dict(unflatten(values))


def parameter_changes(cfg: Config, params: Iterable[Any]) -> Dict[str, Any]:
    """The config values a `ros2 param set` asks for, checked with the same rules as at start (types,
    ranges); raises ConfigError naming a parameter that cannot change at run time or a bad value.
    Names outside the config (ROS's own, another component's) are not ours to judge and are skipped."""
    current = flatten(cfg.to_dict())
    asked = {p.name: p.value for p in params if p.name in current}
    fixed = sorted(set(asked) - set(RUNTIME_PARAMETERS))
    if fixed:
        raise ConfigError(f"{', '.join(fixed)} cannot change while the node runs (restart it with a new params "
                          f"file); settable at run time: {', '.join(RUNTIME_PARAMETERS)}")
    if not asked:
        return {}
    checked = flatten(config_from_dict(unflatten({**current, **asked})).to_dict())
    return {k: checked[k] for k in asked}  # ints coerced to floats where the parameter is a float
