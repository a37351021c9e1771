"""vpr-benchmark's zoo mode: every option works or is refused with a reason, before any work is done."""
from __future__ import annotations

import json
import os

import pytest

from offline_eval.benchmark import main, resolve_config


def test_zoo_config_paths_resolve_from_any_folder(tmp_path, monkeypatch, repo_root):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("config/default.yaml") == repo_root / "config" / "default.yaml"
    assert resolve_config("config/nope.yaml") is None
    local = tmp_path / "mine.yaml"
    local.write_text("detector:\n  top_k: 3\n")
    assert resolve_config("mine.yaml").resolve() == local


def test_a_missing_zoo_config_fails_before_any_work(tmp_path, monkeypatch, corridor_root, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main([str(corridor_root), "--zoo", "config/default.yaml", "config/nope.yaml", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "config/nope.yaml" in err and "not found" in err
    assert not (tmp_path / "o").exists(), "nothing is written when a config is missing"
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("extra, why", [(["--config", "config/default.yaml"], "--config has no effect"),
                                        (["--paths", "direct,replay"], "direct path only")])
def test_options_that_mean_nothing_in_zoo_mode_are_refused(corridor_root, tmp_path, capsys, extra, why):
    with pytest.raises(SystemExit) as exc:
        main([str(corridor_root), "--zoo", "config/default.yaml", *extra, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and why in capsys.readouterr().err


def test_zoo_table_shows_re_ranked_r5_and_the_raw_pixel_baseline_with_its_time(corridor_root):
    """Everything zoo.json holds is in the printed table too: re-ranked R@5 per K and the raw-pixel
    baseline of the same run, whose time is measured (it used to read 0.0 s)."""
    from offline_eval.baselines import run_raw_pixels
    from offline_eval.report import zoo_table
    from offline_eval.zoo import ZooRow
    from vpr_core.datasets import load_dataset
    base = run_raw_pixels(load_dataset(corridor_root))
    assert base.seconds > 0 and 0 < base.recall[1] < 1
    row = ZooRow("config/default_rerank.yaml", "m", "checkpoint", 1280, 30.0, 60.0, {1: 0.676, 5: 0.838},
                 {20: {1: 0.9, 5: 0.95}}, {20: 12.5})
    table = zoo_table([row], "zoo", base)
    assert "R@5 rr20" in table and "0.900     0.950    12.5" in table
    last = table.splitlines()[-1]
    assert last.startswith("raw pixels 32x24") and f"{base.recall[5]:.3f}" in last and "s for the whole dataset" in last


def test_benchmark_config_is_a_copy_and_the_caller_config_is_untouched():
    """Mapping vs localising is the recognizer's mode (set_mode), and the benchmark's retrieval settings live
    in a copy: the config a caller passes (the zoo reuses one for every K) comes back as it went in."""
    from offline_eval.protocol import benchmark_config
    from vpr_core.config import load_config
    cfg = load_config()
    before = cfg.to_dict()
    bench = benchmark_config(cfg, top_k=7)
    assert bench is not cfg and bench.detector.top_k == 7 and bench.detector.exclude_recent_s == 0.0
    assert cfg.to_dict() == before


def test_recall_table_reports_the_pr_summary_of_each_path(tmp_path):
    import json

    import numpy as np

    from offline_eval.protocol import PathResult
    from offline_eval.report import recall_table, save_json
    ranked = np.array([[0, 1], [5, 1], [2, 9], [3, 1]])
    scores = np.array([[.9, .1], [.8, .1], [.7, .1], [.6, .1]])
    positives = [np.array([0]), np.array([1]), np.array([2]), np.array([3])]
    res = PathResult.scored("direct", np.pad(ranked, ((0, 0), (0, 8)), constant_values=-1),
                            np.pad(scores, ((0, 0), (0, 8))), positives, seconds=1.0)
    assert res.recall[1] == 0.75 and res.pr.recall_at_100 == 0.25
    line = recall_table([res]).splitlines()[-1]
    # a ranking 10 deep has no Recall@20: "-", not a number it cannot know
    assert line.split()[:7] == ["direct", "0.750", "1.000", "1.000", "-", "nanx", f"{res.pr.auc:.3f}"] and "0.250" in line
    saved = json.loads(save_json([res], tmp_path / "r.json").read_text())
    assert saved["results"][0]["pr"]["recall_at_100"] == 0.25


def test_descriptors_computed_elsewhere_are_scored_like_the_direct_path(corridor_root, tmp_path, capsys,
                                                                         default_extractor):
    """`vpr-core extract` rows of the corridor queries and database, scored by `--descriptors`, give the
    direct path's Recall@1; malformed files are refused before any other work, naming the problem."""
    import numpy as np

    from offline_eval.benchmark import main
    from vpr_core.datasets import load_dataset
    from vpr_core.images import load_image
    ds = load_dataset(corridor_root)
    q = default_extractor([load_image(p) for p in ds.queries])
    db = default_extractor([load_image(p) for p in ds.database])
    np.save(tmp_path / "q.npy", q * 3.0)  # any scale: rows are normalised
    np.save(tmp_path / "db.npy", db)
    assert main([str(corridor_root), "--paths", "raw", "--descriptors", str(tmp_path / "q.npy"),
                 str(tmp_path / "db.npy"), "--out", str(tmp_path / "out")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("descriptors q"))
    assert line.split()[2] == "0.676"  # corridor R@1 of the default model, as on the direct path
    # several files side by side (--compare): one row each, in one table and one plot
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "q.npy", q[:, ::-1].copy())  # another "model": the same descriptors, permuted
    np.save(tmp_path / "other" / "db.npy", db[:, ::-1].copy())
    assert main([str(corridor_root), "--paths", "raw", "--descriptors", str(tmp_path / "q.npy"), str(tmp_path / "db.npy"),
                 "--descriptors", str(tmp_path / "other" / "q.npy"), str(tmp_path / "other" / "db.npy"),
                 "--out", str(tmp_path / "both")]) == 0
    rows = [ln.split()[:3] for ln in capsys.readouterr().out.splitlines() if ln.startswith("descriptors")]
    assert rows == [["descriptors", "q", "0.676"], ["descriptors", "other/q", "0.676"]]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    recall = {r["path"]: r["recall"] for r in results}["descriptors q"]
    assert list(recall) == ["1", "5", "10", "20"] and recall["10"] <= recall["20"] <= 1.0
    each = {r["path"]: r["queries"] for r in results}["descriptors q"]  # per query, beside the aggregate
    assert len(each) == 111 and np.mean([q["first_true_rank"] == 1 for q in each]) == pytest.approx(recall["1"])
    assert np.mean([q["first_true_rank"] is not None and q["first_true_rank"] <= 5 for q in each]) == \
        pytest.approx(recall["5"])
    for figure in ("recall.png", "pr.png", "matches.png"):  # the figures VPR papers show
        data = (tmp_path / "out" / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, figure
    bad = db.copy()
    bad[3, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "short.npy", db[:-1])
    for name, words in (("bad.npy", "NaN or inf in row 3"), ("short.npy", "one row per database image")):
        assert main([str(corridor_root), "--paths", "direct", "--descriptors", str(tmp_path / "q.npy"),
                     str(tmp_path / name), "--out", str(tmp_path / "out2")]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(corridor_root), "--stride", "2", "--descriptors", str(tmp_path / "q.npy"), str(tmp_path / "db.npy")])


def test_a_pair_list_is_scored_with_roc_auc_and_accuracy(corridor_root, tmp_path, capsys):
    """Corridor queries paired with their true database image (label 1) and with the image half the route
    away (label 0): the default model separates them (ROC AUC 0.87 here); dataset-only options are refused."""
    import json

    from offline_eval.benchmark import main
    from vpr_core.datasets import load_dataset
    ds = load_dataset(corridor_root)
    n = len(ds.database)
    lines = ["path1,path2,label"]
    for i in range(0, len(ds.queries), 3):
        lines.append(f"{ds.queries[i]},{ds.database[int(ds.positives[i][0])]},1")
        lines.append(f"{ds.queries[i]},{ds.database[(int(ds.positives[i][0]) + n // 2) % n]},0")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(lines) + "\n")
    assert main([str(pairs), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert result["pair_list"] == str(pairs) and result["pairs"] == 74
    assert result["auc"] > 0.8 and result["accuracy"] > 0.7, result  # chance: 0.5 and 0.5
    assert "ROC AUC" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(pairs), "--stride", "2"])
    assert "pair list" in capsys.readouterr().err


def test_zoo_mode_measures_each_config_and_plots_their_recall_curves_together(corridor_root, tmp_path, capsys):
    """A real zoo run: speed, Recall@1/5 and the Recall@1..20 curve per config, one table, zoo.json and one plot."""
    out = tmp_path / "zoo"
    assert main([str(corridor_root), "--zoo", "config/default.yaml", "--out", str(out)]) == 0
    rows = json.loads((out / "zoo.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["recall"]["1"] == pytest.approx(0.676, abs=1e-3)
    curve = rows[0]["curve"]
    assert list(curve) == [str(k) for k in range(1, 21)] and curve["1"] == rows[0]["recall"]["1"]
    assert all(a <= b for a, b in zip(list(curve.values()), list(curve.values())[1:]))  # Recall@N never falls
    assert (out / "zoo_recall.png").read_bytes()[:4] == b"\x89PNG"
    assert "model zoo on corridor" in capsys.readouterr().out


def test_efficient_ram_spills_local_features_and_scores_the_same(corridor_root, tmp_path, capsys, repo_root):
    """--efficient-ram with a re-ranking config: local features beyond the budget wait on disk, the same
    Recall@N comes out; refused in zoo mode."""
    rerank = str(repo_root / "config" / "default_rerank.yaml")
    args = [str(corridor_root), "--config", rerank, "--paths", "direct"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--efficient-ram", "--set", "map.max_local_mb=1", "--out", str(tmp_path / "b")]) == 0
    plain, lean = ({r["path"]: r for r in json.loads((tmp_path / d / "results.json").read_text())["results"]}["direct"]
                   for d in ("a", "b"))
    assert lean["recall"] == plain["recall"] and lean["recall_global"] == plain["recall_global"]
    with pytest.raises(SystemExit):
        main([str(corridor_root), "--zoo", "config/default.yaml", "--efficient-ram"])


def test_extracted_descriptors_can_live_in_a_memory_mapped_file(corridor_root, tmp_path, default_extractor):
    import numpy as np

    from offline_eval.protocol import extract_dataset
    from vpr_core.datasets import load_dataset
    ds = load_dataset(corridor_root).head(20)
    held = extract_dataset(default_extractor, ds, progress=False)
    mapped = extract_dataset(default_extractor, ds, progress=False, memmap=tmp_path)
    assert isinstance(mapped.database.global_desc, np.memmap)
    assert np.allclose(mapped.database.global_desc, held.database.global_desc, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "queries_global.npy"), mapped.queries.global_desc)
    assert np.array_equal(mapped.database.contrast, held.database.contrast)
