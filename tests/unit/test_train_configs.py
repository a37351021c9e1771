"""Every shipped training config (config/train/*.yaml) parses strictly, names a registered scheme with
options its signature accepts, and fits its model config: trainable entries name tensors of the model.

Their weights and datasets are local files this machine does not have, so nothing trains here; the model
is built with random weights and its depth cut (layer names are kept) to stay fast on 2 cores."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from vpr_core.config import load_config
from vpr_core.models import build_model
from vpr_core.training import load_train_config
from vpr_core.training.checkpoint import is_trained
from vpr_core.training.schemes import SCHEMES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config" / "train").glob("*.yaml"))
SEED_SCHEMES = {"vtvpr_classification.yaml", "vtvpr_ranking.yaml", "dinovpr_pairs.yaml", "clusvpr_ranking.yaml",
                "vitgal_classification.yaml", "mixvpr_ranking.yaml", "selavpr_adapters.yaml"}
# depth cuts by backbone family: every layer name a trainable entry can use still exists
SHALLOW = {"vit": {"depth": 1}, "dinov2": {"depth": 1}, "dinov2_adapter": {"depth": 1}, "vitgal": {"depth": 1},
           "pit": {"depth": [1, 1, 1]}, "resnet": {"layers": [1, 1, 1, 1]}}


def scheme_options(cls: type) -> set:
    """Keyword options of a scheme's constructor, following `**kwargs` into its base classes (adapters
    passes the ranking options on)."""
    out: set = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        out |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self", "ctx"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def test_every_seed_scheme_has_a_config():
    assert SEED_SCHEMES <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_its_scheme_accepts_the_options(path):
    cfg = load_train_config(path)
    name = cfg.scheme["name"]
    assert name in SCHEMES.names()
    unknown = [k for k in cfg.scheme if k != "name" and k not in scheme_options(SCHEMES.get(name))]
    assert not unknown, f"{path.name}: scheme '{name}' has no option(s) {unknown}"
    assert cfg.name == path.stem, "the run name names the config"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_trainable_entries_name_tensors_of_the_model(path):
    cfg = load_train_config(path)
    overrides = {f"model.{k}": v for k, v in cfg.model_overrides.items()}
    model_cfg = load_config(REPO / cfg.model, overrides).model  # strict: unknown model keys raise
    backbone = dict(model_cfg.backbone)
    backbone.update(SHALLOW.get(backbone.get("family", ""), {}))
    model_cfg.backbone = backbone
    names = list(build_model(model_cfg, load_checkpoint=False).state_dict())
    for entry in cfg.trainable:
        assert any(is_trained(n, [entry]) for n in names), f"{path.name}: trainable '{entry}' names no tensor"


def test_scheme_options_follow_kwargs_and_catch_typos():
    adapters, ranking = scheme_options(SCHEMES.get("adapters")), scheme_options(SCHEMES.get("ranking"))
    assert {"local_weight", "negatives", "refresh_every", "mining"} <= adapters and ranking < adapters
    assert "negativs" not in adapters and "ctx" not in ranking
