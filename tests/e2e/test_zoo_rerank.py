"""`vpr-benchmark --zoo` on the real corridor dataset: two-stage re-ranking with the embedded default
model (config/default_rerank.yaml) changes Recall@1, measured against its own global ranking in the
same run, and a broken config in the list costs only its own row."""
from __future__ import annotations

import json
from pathlib import Path

from offline_eval.benchmark import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_reranking_lifts_recall_of_the_default_model(corridor_root, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rerank:\n  methd: mnn\n")  # a typo must be reported, not silently defaulted
    rc = main([str(corridor_root), "--zoo", str(REPO_ROOT / "config" / "default_rerank.yaml"), str(bad),
               "--rerank-k", "20,100", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 1, "one config failed: the exit code must say so"
    assert "bad.yaml" in err and "methd" in err and "method" in err, err
    rows = json.loads((tmp_path / "out" / "zoo.json").read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["weights"] == "checkpoint" and row["dim"] == 1280
    assert row["ips_b1"] > 0 and row["ips_b16"] > 0
    before = row["recall"]["1"]
    after20, after100 = row["reranked"]["20"]["1"], row["reranked"]["100"]["1"]
    # measured on this dataset: 0.676 -> 0.865 (K = 20) -> 0.946 (K = 100)
    assert 0.6 < before < 0.75, f"global Recall@1 {before} is not the default model's"
    assert after20 >= before + 0.1 and after100 >= after20, (before, after20, after100)
    assert 0 < row["rerank_ms"]["20"] and 0 < row["rerank_ms"]["100"]
    assert "default_rerank" in out and "R@1 rr100" in out
