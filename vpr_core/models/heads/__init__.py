"""Heads after the aggregator: inference projections (DINOVPR's MLP) and training heads
(VisionTransformerVPR's classification head), one file per kind."""
from vpr_core.registry import Registry

HEADS: Registry = Registry("head")
