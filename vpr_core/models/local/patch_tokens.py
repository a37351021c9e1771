"""`patch_tokens`: ViTGaL's local features (Song et al., "Patch Embedding as Local Features", 2022).

Every patch embedding of the transformer is a local feature. ViTGaL's `XCiTRetrievalLocalReductionAE`,
trained on top of the frozen retrieval backbone, does two things with them:
- reduction: an autoencoder, `whitening_layer` (Linear C -> 128) and `ae_decoder_layer` (Linear 128 -> C);
  the 128-D encoder output, L2-normalised, is the stored local descriptor;
- scoring: a class token (`cls_token`) and class-attention blocks (`cls_attn_blocks`, one in ViTGaL,
  8 heads, layer scale, `tokens_norm`) over the *decoded* patch tokens, then `norm`; the head is
  trained to classify the landmark from that class token, so the last block's attention of the class
  token over the patches marks the patches that identify the place. ViTGaL keeps the patches with the
  highest attention as keypoints (per head divided by its maximum, then averaged over heads).
Here that head-averaged attention is `LocalOutput.weight`, so `model.max_local_features` keeps the
strongest patches. (ViTGaL also thresholds it, runs several scales and applies NMS; one scale and a
top-k cap here.) Parameter names follow ViTGaL's checkpoint, see vpr_core/models/formats/vitgal.py;
the blocks are timm's XCiT `ClassAttentionBlock` (separate q, k, v; the key map splits ViTGaL's fused qkv).

With `attention: false` the head is the autoencoder only (no class token, blocks or norm; a ViTGaL
checkpoint's scorer tensors are then skipped) and the weight is the token norm before reduction.

Tokens come from the backbone's output through `backbone.to_map` (no second forward pass). For
XCiT / ViTGaL these are the patch tokens after the class-attention blocks and the final norm, which
is what ViTGaL feeds its autoencoder (`forward_features(x)[2]`, see vpr_core/models/backbones/xcit.py).
Positions are patch centres.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.models.xcit import ClassAttentionBlock
from torch import nn

from vpr_core.models.features import local_features
from vpr_core.models.local import LOCAL_HEADS, LocalOutput, grid_xy


class PatchTokenHead(nn.Module):
    def __init__(self, in_dim: int, dim: int = 128, attention: bool = True, num_heads: int = 8,
                 cls_attn_layers: int = 1, mlp_ratio: float = 4.0, eta: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if in_dim <= 0 or dim <= 0:
            raise ValueError(f"patch_tokens local head: in_dim and dim must be > 0, got {in_dim}, {dim}")
        if attention and (num_heads <= 0 or in_dim % num_heads or cls_attn_layers < 1):
            raise ValueError(f"patch_tokens local head: the attention scorer needs num_heads > 0 dividing in_dim and "
                             f"cls_attn_layers >= 1; got in_dim={in_dim}, num_heads={num_heads}, "
                             f"cls_attn_layers={cls_attn_layers} (or set attention: false)")
        self.in_dim, self.out_dim, self.use_attention = int(in_dim), int(dim), bool(attention)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.whitening_layer = nn.Linear(in_dim, dim)  # the encoder: local descriptors
            self.ae_decoder_layer = nn.Linear(dim, in_dim)  # the decoder: what the scorer attends to
            self.cls_token: Optional[nn.Parameter] = None
            self.cls_attn_blocks: Optional[nn.ModuleList] = None
            self.norm: Optional[nn.Module] = None
            if self.use_attention:
                self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, in_dim), std=0.02))
                norm = partial(nn.LayerNorm, eps=1e-6)
                self.cls_attn_blocks = nn.ModuleList(
                    ClassAttentionBlock(in_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm,
                                        eta=eta, tokens_norm=True) for _ in range(cls_attn_layers))
                self.norm = norm(in_dim)

    def tokens(self, features: torch.Tensor, backbone: nn.Module, input_hw: Tuple[int, int]):
        fmap = backbone.to_map(features, input_hw)  # (B, C, h, w)
        if fmap.shape[1] != self.in_dim:
            raise ValueError(f"patch_tokens local head was built for {self.in_dim}-D tokens, "
                             f"the backbone gives {fmap.shape[1]}-D")
        b, c, h, w = fmap.shape
        return local_features(fmap), (h, w)  # (B, h*w, C)

    def reduce(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) patch tokens -> (B, N, dim) local descriptors (not normalised)."""
        return self.whitening_layer(tokens.to(self.whitening_layer.weight.dtype))

    def autoencode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reconstruction of `tokens` through encoder and decoder (the training objective's output)."""
        return self.ae_decoder_layer(self.reduce(tokens))

    def class_tokens(self, decoded: torch.Tensor) -> torch.Tensor:
        """The class token after the blocks and `norm` (what ViTGaL's training classifier reads), (B, C)."""
        x = self._blocks(decoded, drop_last=False)
        return self.norm(x[:, 0])

    def class_attention(self, decoded: torch.Tensor) -> torch.Tensor:
        """(B, heads, N): the last block's softmax attention of the class token over the decoded patches."""
        x = self._blocks(decoded, drop_last=True)
        blk = self.cls_attn_blocks[-1]
        attn = blk.attn  # timm ClassAttn: its own q / k projections, head split and scale
        x = blk.norm1(x)
        b, n, c = x.shape
        heads = attn.num_heads
        q = attn.q(x[:, :1]).reshape(b, 1, heads, c // heads).transpose(1, 2)  # (B, H, 1, d)
        k = attn.k(x).reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, H, 1+N, d)
        scores = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # over class token + patches
        return scores[:, :, 0, 1:]

    def _blocks(self, decoded: torch.Tensor, drop_last: bool) -> torch.Tensor:
        """[class token, decoded patches] through the blocks (all, or all but the last)."""
        if self.cls_attn_blocks is None:
            raise RuntimeError("patch_tokens local head was built with attention: false (no class-attention scorer)")
        x = torch.cat([self.cls_token.expand(decoded.shape[0], -1, -1).to(decoded.dtype), decoded], dim=1)
        for blk in self.cls_attn_blocks[:len(self.cls_attn_blocks) - int(drop_last)]:
            x = blk(x)
        return x

    @staticmethod
    def keypoint_scores(attn: torch.Tensor) -> torch.Tensor:
        """(B, heads, N) attention -> (B, N) ViTGaL keypoint score: each head divided by its maximum, then the
        mean over heads (ViTGaL's further scaling to mean 1 does not change the order)."""
        return (attn / attn.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(attn.dtype).tiny)).mean(dim=1)

    def forward(self, features: torch.Tensor, backbone: nn.Module, input_hw: Tuple[int, int]) -> LocalOutput:
        tokens, (h, w) = self.tokens(features, backbone, input_hw)
        reduced = self.reduce(tokens)
        if self.use_attention:
            weight = self.keypoint_scores(self.class_attention(self.ae_decoder_layer(reduced)).float())
        else:
            weight = tokens.float().norm(dim=-1)
        desc = F.normalize(reduced.float(), dim=-1)
        xy = grid_xy(h, w, input_hw, device=desc.device).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return LocalOutput(desc, xy, weight)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, dim={self.out_dim}, attention={self.use_attention}"


@LOCAL_HEADS.register("patch_tokens")
def patch_tokens(in_dim: int, dim: int = 128, attention: bool = True, num_heads: int = 8, cls_attn_layers: int = 1,
                 mlp_ratio: float = 4.0, eta: float = 1.0, seed: int = 0) -> PatchTokenHead:
    """ViTGaL: patch embeddings reduced to `dim` by an autoencoder's encoder, weighted by the class attention
    of its scorer over the decoded patches (`attention: false`: autoencoder only, weight = token norm)."""
    return PatchTokenHead(in_dim, dim, attention, num_heads, cls_attn_layers, mlp_ratio, eta, seed)
