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


def test_the_descriptor_budget_holds_for_an_ivf_rabitq_map_without_local_features(corridor_root):
    on = measure(5000, 0, 2500, default_cache(), index="ivf_rabitq", descriptor_mb=3, local=False)
    chunk_mb = 4096 * 1280 * 2 / 2**20  # the chunk being filled stays in memory whatever the budget
    assert all(held <= 3.0 + chunk_mb for _, _, held in on["rows"])  # MB of exact descriptors in memory
    assert on["rows"][-1][2] < 2 * chunk_mb  # 5000 keyframes fill 2 chunks: the first is on disk
    assert on["descriptors_spilled"] == 4096 and on["desc_ms"] > 0 and on["spilled"] == 0
