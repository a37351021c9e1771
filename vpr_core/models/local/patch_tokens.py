"""`patch_tokens`: ViTGaL's local features. Every patch embedding of the transformer is a local
feature; an autoencoder reduces it to `dim` channels (ViTGaL: 384 -> 128) so the map stays small.
Only the encoder runs at inference; the decoder is kept so training and checkpoints round-trip.

Tokens come from the backbone's output through `backbone.to_map` (no second forward pass). For
XCiT / ViTGaL these are the patch tokens after the class-attention blocks and the final norm,
which is what ViTGaL feeds its autoencoder (see vpr_core/models/backbones/xcit.py).
Weight = token norm before reduction (the strongest patches are kept when the count is capped).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.local import LOCAL_HEADS, LocalOutput, grid_xy


class PatchTokenHead(nn.Module):
    def __init__(self, in_dim: int, dim: int = 128, seed: int = 0) -> None:
        super().__init__()
        if in_dim <= 0 or dim <= 0:
            raise ValueError(f"patch_tokens local head: in_dim and dim must be > 0, got {in_dim}, {dim}")
        self.in_dim, self.out_dim = int(in_dim), int(dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.encoder = nn.Linear(in_dim, dim)
            self.decoder = nn.Linear(dim, in_dim)

    def tokens(self, features: torch.Tensor, backbone: nn.Module, input_hw: Tuple[int, int]):
        fmap = backbone.to_map(features, input_hw)  # (B, C, h, w)
        if fmap.shape[1] != self.in_dim:
            raise ValueError(f"patch_tokens local head was built for {self.in_dim}-D tokens, "
                             f"the backbone gives {fmap.shape[1]}-D")
        b, c, h, w = fmap.shape
        return fmap.flatten(2).transpose(1, 2), (h, w)  # (B, h*w, C)

    def reduce(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens.to(self.encoder.weight.dtype))

    def autoencode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reconstruction of `tokens` through encoder and decoder (the training objective's output)."""
        return self.decoder(self.reduce(tokens))

    def forward(self, features: torch.Tensor, backbone: nn.Module, input_hw: Tuple[int, int]) -> LocalOutput:
        tokens, (h, w) = self.tokens(features, backbone, input_hw)
        weight = tokens.float().norm(dim=-1)
        desc = F.normalize(self.reduce(tokens).float(), dim=-1)
        xy = grid_xy(h, w, input_hw, device=desc.device).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return LocalOutput(desc, xy, weight)


@LOCAL_HEADS.register("patch_tokens")
def patch_tokens(in_dim: int, dim: int = 128, seed: int = 0) -> PatchTokenHead:
    """ViTGaL: patch embeddings as local features, reduced to `dim` by an autoencoder's encoder."""
    return PatchTokenHead(in_dim, dim, seed)
