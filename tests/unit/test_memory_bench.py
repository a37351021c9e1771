"""offline_eval.memory_bench runs its modes in their own processes and reports what the budget holds."""
from __future__ import annotations

from offline_eval.feature_cache import default_cache
from offline_eval.memory_bench import measure, rss_mb


def test_the_budget_holds_in_the_benchmark_and_spilled_features_are_read_back(corridor_root):
    on = measure(300, 1, 100, default_cache())
    assert [k for k, _, _ in on["rows"]] == [100, 200, 300]
    assert all(res <= 1.0 for _, _, res in on["rows"])  # MB of local features in memory
    assert on["spilled"] > 250 and on["reads"] > 0 and on["get_ms"] > 0
    assert 60_000 < on["bytes_per_keyframe"] < 80_000  # 300 x 112-D float16 + positions
    assert rss_mb() > 10
