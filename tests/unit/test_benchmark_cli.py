"""vpr-benchmark's zoo mode: every option works or is refused with a reason, before any work is done."""
from __future__ import annotations

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
