"""offline_eval.realtime: the forward table measures real runtimes and reports a missing one clearly."""
from __future__ import annotations

import sys

from offline_eval.realtime import NodeRow, forward_rows, print_node, with_runtime
from vpr_core.config import load_config


def test_forward_rows_time_eager_torch_and_name_a_missing_runtime(corridor_images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a machine without the wheel
    cfg = load_config(overrides={"model.device": "cpu"})
    rows = forward_rows(cfg, ["torch", "openvino"], corridor_images[:2], rounds=2, cache=tmp_path, repeats=2)
    torch_row, missing = rows
    assert torch_row.runtime == "torch" and not torch_row.error
    assert 0 < torch_row.b1_ms < 10_000 and torch_row.b16_img_s > 0
    assert "pip install openvino" in missing.error and missing.b1_ms != missing.b1_ms  # NaN: not measured


def test_with_runtime_copies_and_node_table_reports_the_forward_share(tmp_path, capsys):
    base = load_config()
    cfg = with_runtime(base, "onnxruntime", tmp_path, {"rerank.top_k": 20})
    assert cfg.model.runtime == "onnxruntime" and cfg.model.runtime_cache == str(tmp_path) and cfg.rerank.top_k == 20
    assert base.model.runtime == "auto"  # the base config is untouched
    row = NodeRow("default, torch", 10.0, sent=222, answered=220, dropped=2, e2e_median_ms=40.0, e2e_p95_ms=90.0,
                  stages={"decode": 1.0, "preprocess": 2.0, "forward": 34.0, "search": 0.5, "decision": 1.5})
    assert row.forward_share == 0.85
    print_node([row, NodeRow("re-rank K=20", 30.0, error="the node exited")])
    out = capsys.readouterr().out
    assert "| default, torch | 10 Hz | 40.0 | 90.0 | 2 of 222 | 1.0 | 2.0 | 34.0 | 0.5 | - | 1.5 | 85% |" in out
    assert "failed: the node exited" in out
