"""Aggregators turn backbone features into one global descriptor; one file per method."""
from vpr_core.registry import Registry

AGGREGATORS: Registry = Registry("aggregator")

from vpr_core.models.aggregators import cls, gem, mixvpr, netvlad, spatial  # noqa: E402,F401  (registers methods)
