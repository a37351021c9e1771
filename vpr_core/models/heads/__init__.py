"""Heads after the aggregator: inference projections (DINOVPR's MLP) and training heads
(VisionTransformerVPR's classification head), one file per kind.

A head is built as `HEADS.build(name, in_dim=aggregator.out_dim, **options)`, has `.out_dim`, and its
forward output (L2-normalised by the model) is the global descriptor:
- `mlp`: a projection; the descriptor is the normalised MLP output (out_dim).
- `classifier`: training-only; forward is the identity (descriptor unchanged), `logits(desc)` scores places.
- ranking (triplet/margin) training uses the descriptor directly: `heads.ranking.triplet_margin_loss`.
"""
from vpr_core.registry import Registry

HEADS: Registry = Registry("head")

from vpr_core.models.heads import classifier, mlp, whiten  # noqa: E402,F401  (registers heads)
