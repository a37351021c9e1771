"""Config.validate(): every numeric parameter is range-checked (and every choice checked) when the Config
is built, so a bad value stops the node at start with a ConfigError naming the parameter."""
from __future__ import annotations

from pathlib import Path

import pytest

from vpr_core.config import (CONFIG_RULES, FREEFORM_PREFIXES, Config, ConfigError, config_from_dict, flatten,
                             load_config, set_dotted)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.yaml"))

# (parameter, bad value): each must be refused with a ConfigError that names the parameter
BAD = [
    ("node.queue_size", 0), ("node.queue_size", -3),
    ("node.max_image_pixels", -1),
    ("node.qos", "best_effort"), ("node.qos", ""),
    ("node.loss_gap_factor", 0.5), ("node.loss_gap_factor", -1.0),
    ("node.loss_window", 1),
    ("node.image_topics", []), ("node.image_topics", [""]),
    ("detector.top_k", 0), ("detector.top_k", -5),
    ("detector.exclude_recent_count", -1),
    ("detector.exclude_recent_s", -0.5),
    ("detector.loop_threshold", 1.5), ("detector.loop_threshold", -0.1),
    ("detector.temporal_consistency", 0),
    ("detector.consistency_window", -1),
    ("detector.keyframe_min_interval_s", -1.0),
    ("detector.keyframe_max_similarity", 1.01),
    ("model.max_local_features", 0), ("model.max_local_features", 10**6),
    ("model.batch_size", 0),
    ("model.precision", "fp64"), ("model.precision", "FP16"),
    ("model.device", "gpu"), ("model.device", "cuda:x"), ("model.device", "cuda:-1"), ("model.device", "cuda:"),
    ("model.preprocess.image_size", [0, 320]), ("model.preprocess.image_size", [240]),
    ("model.preprocess.image_size", [240, 320, 3]), ("model.preprocess.image_size", [100000, 100000]),
    ("model.preprocess.image_size", [8192, 8192]),  # each side fine, total pixels absurd
    ("model.preprocess.mean", [0.5, 0.5]), ("model.preprocess.std", [0.5, 0.0, 0.5]),
    ("model.preprocess.interpolation", "nearest"),
    ("map.index", "ivf"),
    ("map.use_gpu", "maybe"),
    ("map.autosave_period_s", -1.0),
    ("map.max_file_mb", 0),
    ("map.id_reserve", 0),
    ("map.ivf_nprobe", 0), ("map.ivf_probe_share", 1.5), ("map.ivf_train_at", 77), ("map.ivf_regrow", 1.0), ("map.ivf_regrow", 0.5),
    ("rerank.method", "ransac"),
    ("rerank.top_k", 0),
    ("rerank.min_inliers", -1),
    ("rerank.match_threshold", 2.0),
    ("rerank.ratio", 0.0), ("rerank.ratio", 1.5),
    ("rerank.px_threshold", 0.0),
    ("rerank.confidence", 1.0), ("rerank.confidence", 0.0),
    ("rerank.max_iters", 0),
    ("rerank.model", "affine"),
    ("detector.sequence_length", 0), ("detector.sequence_velocities", []), ("detector.min_margin", -0.1),
    ("camera.K", [500.0, 500.0, 320.0]), ("camera.width", -1), ("pose.min_inliers", 4), ("pose.confidence", 1.0),
    ("node.sync_wait_s", -0.01), ("node.odom_buffer", 0),
]

GOOD = [
    ("model.device", "cuda:1"), ("model.device", "cuda"), ("model.device", "cpu"),
    ("model.precision", "bf16"), ("node.qos", "reliable"), ("node.max_image_pixels", 0),
    ("node.loss_gap_factor", 0.0), ("detector.loop_threshold", 1.0), ("detector.exclude_recent_count", 0),
    ("map.autosave_period_s", 0.0), ("map.index", "hnsw"), ("rerank.method", "degensac"),
    ("model.preprocess.image_size", [1024, 1024]),
    ("map.index", "ivf_flat"), ("map.index", "ivf_fp16"), ("map.ivf_nprobe", 128), ("map.ivf_train_at", 78),
    ("map.ivf_regrow", 1.5),
]


def _with(key, value):
    data = {}
    set_dotted(data, key, value)
    return data


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_bad_value_is_refused_naming_the_parameter_and_the_rule(key, value):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with(key, value))
    msg = str(info.value)
    assert f"parameter '{key}'" in msg and "invalid" in msg, msg
    assert repr(value) in msg, f"the message must show the value given: {msg}"


@pytest.mark.parametrize("key, value", GOOD, ids=[f"{k}={v!r}" for k, v in GOOD])
def test_good_value_is_accepted(key, value):
    cfg = config_from_dict(_with(key, value))
    assert flatten(cfg.to_dict())[key] == value


def test_every_numeric_and_choice_parameter_has_a_rule():
    """A new number in the config without a range rule fails here (rules never go stale either)."""
    leaves = {k: v for k, v in flatten(Config().to_dict()).items() if not k.startswith(FREEFORM_PREFIXES)}
    numeric = {k for k, v in leaves.items() if isinstance(v, (int, float, list)) and not isinstance(v, bool)}
    assert numeric <= set(CONFIG_RULES), f"numeric parameters without a range rule: {sorted(numeric - set(CONFIG_RULES))}"
    assert set(CONFIG_RULES) <= set(leaves), f"rules for parameters that do not exist: {set(CONFIG_RULES) - set(leaves)}"
    for key in ("model.device", "model.precision", "node.qos", "map.index", "rerank.method", "rerank.model"):
        assert key in CONFIG_RULES


def test_defaults_and_every_config_file_pass():
    Config().validate()
    for path in CONFIGS:
        load_config(path).validate()


def test_validate_checks_a_config_changed_after_it_was_built():
    cfg = load_config()
    cfg.node.queue_size = 0
    with pytest.raises(ConfigError, match=r"parameter 'node\.queue_size'"):
        cfg.validate()


def test_choice_rules_follow_the_registries():
    from vpr_core.map_index import INDEX_TYPES
    from vpr_core.rerank import RERANKERS
    for name in INDEX_TYPES.names():
        config_from_dict(_with("map.index", name))
    for name in list(RERANKERS.names()) + ["none"]:
        config_from_dict(_with("rerank.method", name))
    from vpr_core.config import INTERPOLATIONS
    from vpr_core.models.preprocess import _INTERP
    from vpr_core.rerank.degensac import MODELS
    assert set(INTERPOLATIONS) == set(_INTERP)
    assert CONFIG_RULES["rerank.model"].expect == "one of " + ", ".join(MODELS)
