"""vpr_core.registry: name -> builder, with typo suggestions and option checking."""
from __future__ import annotations

import pytest

from vpr_core.datasets import LAYOUTS
from vpr_core.map_database import INDEX_TYPES
from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.backbones import BACKBONES
from vpr_core.models.weights import CHECKPOINT_FORMATS
from vpr_core.registry import Registry


@pytest.fixture
def widgets():
    reg = Registry("widget")

    @reg.register("square", "box")
    def square(size: int, colour: str = "red"):
        return ("square", size, colour)

    @reg.register()
    def circle(radius: float):
        return ("circle", radius)

    @reg.register("anything")
    def anything(**kwargs):
        return kwargs

    return reg


def test_register_and_build(widgets):
    assert list(widgets.names()) == ["anything", "box", "circle", "square"]
    assert widgets.build("square", size=3) == ("square", 3, "red")
    assert widgets.build("box", size=1, colour="blue") == ("square", 1, "blue")
    assert widgets.build("circle", radius=2.0) == ("circle", 2.0)  # registered under the function name
    assert widgets.get("square") is widgets.get("box")


def test_unknown_name_suggests_the_close_one(widgets):
    with pytest.raises(KeyError) as info:
        widgets.get("sqare")
    msg = str(info.value)
    assert "unknown widget 'sqare'" in msg
    assert "did you mean 'square'" in msg
    assert "Known: anything, box, circle, square" in msg


def test_unknown_name_without_close_match_lists_known(widgets):
    with pytest.raises(KeyError) as info:
        widgets.build("zzzzzzzz")
    assert "did you mean" not in str(info.value)
    assert "circle" in str(info.value)


def test_unknown_builder_option_is_a_value_error_naming_it(widgets):
    with pytest.raises(ValueError) as info:
        widgets.build("square", size=3, colur="blue")
    msg = str(info.value)
    assert "'colur'" in msg and "widget 'square'" in msg
    assert "'colour'" in msg and "'size'" in msg  # what it accepts


def test_builder_with_var_kwargs_accepts_any_option(widgets):
    assert widgets.build("anything", x=1, y=2) == {"x": 1, "y": 2}


def test_registering_a_name_twice_fails(widgets):
    with pytest.raises(ValueError, match="registered twice"):
        widgets.register("circle")(lambda radius: None)


def test_real_registries_hold_the_documented_components():
    assert {"gem", "cls"} <= set(AGGREGATORS.names())
    assert "timm" in BACKBONES.names()
    assert {"flat", "hnsw"} <= set(INDEX_TYPES.names())
    assert {"vpr_ros", "timm", "efficientnet_lite0_pth"} <= set(CHECKPOINT_FORMATS.names())
    assert {"csv_positives", "csv_pairs", "vprbench_npy"} <= set(LAYOUTS.names())


def test_real_registry_typos():
    with pytest.raises(KeyError, match="did you mean 'gem'"):
        AGGREGATORS.get("gme")
    with pytest.raises(KeyError, match="did you mean 'hnsw'"):
        INDEX_TYPES.get("hnws")
    with pytest.raises(ValueError, match="'pp'"):
        AGGREGATORS.build("gem", in_dim=8, pp=3.0)
    gem = AGGREGATORS.build("gem", in_dim=8, p=2.0)
    assert gem.out_dim == 8 and float(gem.p.detach()) == 2.0
