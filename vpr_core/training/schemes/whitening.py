"""Learned whitening: PCA-whitening of the model's descriptors fitted on training images (no labels),
stored in the model's `whiten` head, so the map holds e.g. 256-D instead of 1280-D descriptors."""
from __future__ import annotations

from typing import Dict, List

from vpr_core.models.heads.whiten import WhitenHead
from vpr_core.training.data import training_table
from vpr_core.training.schemes import SCHEMES, Scheme, SchemeContext, SchemeError


@SCHEMES.register("whitening")
class WhiteningScheme(Scheme):
    needs_gradients = False

    def __init__(self, ctx: SchemeContext, max_images: int = 20000) -> None:
        super().__init__(ctx)
        if not isinstance(ctx.model.head, WhitenHead):
            raise SchemeError("whitening: the model needs a whiten head to hold the projection; add "
                              "model_overrides: {head: {name: whiten, out_dim: 256}}")
        self.table = training_table(self.cfg.data)
        self.max_images = int(max_images)

    def image_paths(self) -> List:
        return self.table.paths + super().image_paths()

    def fit(self) -> Dict[str, float]:
        """Descriptors before the head (the aggregator's, L2-normalised inside the head) -> PCA-whitening."""
        model = self.ctx.model
        head = model.head
        paths = self.table.paths[::max(1, -(-len(self.table.paths) // self.max_images))]
        model.head = None  # describe with the aggregator's output
        try:
            dim = model.dim
            model.dim = model.aggregator.out_dim
            desc = self.encoder.describe(paths, progress=self.cfg.progress, desc="whitening descriptors")
        finally:
            model.head, model.dim = head, dim
        kept = head.fit(desc)
        return {"images": float(len(paths)), "variance_kept": kept}
