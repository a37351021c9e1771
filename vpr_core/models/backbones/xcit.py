"""XCiT backbones from timm (`xcit_small_12_p16_224`, `xcit_small_24_p16_224` ...) and ViTGaL's variant.

XCiT = conv patch embedding (four stride-2 3x3 convs for p16) + Fourier position encoding + XCA blocks
(cross-covariance attention, local patch interaction, MLP) over the patch tokens, then a class token
prepended and refined by class-attention (CA) blocks, then a final LayerNorm over all tokens.

`forward` returns what timm's `forward_features` returns: tokens (B, 1 + h*w, C) = [cls, patches],
after the CA blocks and the final norm. The CA blocks update only the class token by attention; with
`tokens_norm` (all S/M/L models) the patch tokens pass through them token-wise (residual + LayerNorm),
so `feats[:, 1:]` are still one descriptor per patch. These post-CA, normed patch tokens are exactly what
ViTGaL feeds its local autoencoder (its `forward_features(x)[2]`).

The patch tokens *before* the class token is added (after the XCA blocks and, for ViTGaL, the
multi-atrous module; not normed) come from `forward_tokens(x).pre_cls_patches` or `patch_tokens(x)`.

Grid: each stride-2 conv (kernel 3, padding 1) maps n -> ceil(n / 2), so (h, w) = (ceil(H/16), ceil(W/16))
for p16: 224 -> 14, 322 -> 21. Any input size works (the position encoding is computed per grid).

`vitgal` family = XCiT as ViTGaL trains it (Song et al., "Patch Embedding as Local Features", 2022):
one CA block instead of two, a multi-atrous convolution module between the XCA blocks and the class
token, and (as in ViTGaL's published forward) the last CA block applied twice.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence, Tuple

import torch
from timm.layers import Mlp
from torch import nn

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.timm_backbone import TimmBackbone, timm_module


class MultiAtrous(nn.Module):
    """ViTGaL's multi-atrous module on the patch-token map: dilated 3x3 convs (C -> C//6 each) + a global
    branch (avg pool, 1x1 conv to the remaining channels, GELU, broadcast), concatenated, GELU, BatchNorm,
    depthwise 3x3 conv, added with a layer scale; then a LayerNorm + MLP residual with its own scale."""

    def __init__(self, dim: int, rates: Sequence[int] = (1, 3, 6, 9, 12), eta: float = 1.0, mlp_ratio: float = 4.0):
        super().__init__()
        branch = dim // 6
        if branch < 1 or dim - len(rates) * branch < 1:
            raise ValueError(f"multi-atrous module: width {dim} too small for {len(rates)} dilated branches")
        self.dilated_convs = nn.ModuleList(nn.Conv2d(dim, branch, 3, dilation=r, padding=r) for r in rates)
        self.gap_branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim - len(rates) * branch, 1),
                                        nn.GELU())
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(dim)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gamma = nn.Parameter(eta * torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        fmap = x.transpose(1, 2).reshape(b, c, h, w)
        parts = [conv(fmap) for conv in self.dilated_convs] + [self.gap_branch(fmap).expand(-1, -1, h, w)]
        local = self.depthwise(self.norm(self.act(torch.cat(parts, dim=1))))
        x = x + self.gamma * local.reshape(b, c, n).transpose(1, 2)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class XCiTTokens(NamedTuple):
    tokens: torch.Tensor  # (B, 1 + h*w, C): [cls, patches] after the CA blocks and the final norm (= forward)
    pre_cls_patches: torch.Tensor  # (B, h*w, C): patch tokens before the class token joins (not normed)
    grid: Tuple[int, int]  # (h, w)


class XCiTBackbone(TimmBackbone):
    def __init__(self, name: str, multi_atrous: bool = False, atrous_rates: Sequence[int] = (1, 3, 6, 9, 12),
                 repeat_last_cls_block: bool = False, **timm_kwargs: Any) -> None:
        if timm_module(name) not in ("xcit", ""):
            raise ValueError(f"backbone families 'xcit' / 'vitgal' take timm XCiT models (xcit_*), got '{name}'")
        super().__init__(name, **timm_kwargs)
        m = self.model
        if m.cls_attn_blocks is None or m.cls_token is None:
            raise ValueError(f"{name}: XCiT without class-attention blocks is not supported")
        if multi_atrous:  # inside the timm model, so checkpoints name it backbone.model.local_atrous.*
            eta = float(m.blocks[0].gamma1.detach().flatten()[0])  # the model's layer-scale init (1.0 or 1e-5)
            m.add_module("local_atrous", MultiAtrous(self.num_features, tuple(atrous_rates), eta=eta))
        self.multi_atrous = multi_atrous
        self.repeat_last_cls_block = repeat_last_cls_block

    def grid_hw(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        convs = int(round(math.log2(self.stride)))  # stride-2 convs in the patch embedding

        def side(n: int) -> int:
            for _ in range(convs):
                n = (n - 1) // 2 + 1
            return n
        return side(int(input_hw[0])), side(int(input_hw[1]))

    def forward_tokens(self, x: torch.Tensor) -> XCiTTokens:
        m = self.model
        b = x.shape[0]
        x, (h, w) = m.patch_embed(x)
        if m.pos_embed is not None:
            x = x + m.pos_embed(b, h, w).reshape(b, -1, x.shape[1]).transpose(1, 2)
        x = m.pos_drop(x)
        for blk in m.blocks:
            x = blk(x, h, w)
        if self.multi_atrous:
            x = m.local_atrous(x, h, w)
        patches = x
        x = torch.cat((m.cls_token.expand(b, -1, -1), x), dim=1)
        for blk in m.cls_attn_blocks:
            x = blk(x)
        if self.repeat_last_cls_block:
            x = m.cls_attn_blocks[-1](x)
        return XCiTTokens(m.norm(x), patches, (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x).tokens

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h*w, C) patch tokens before the class token joins (a separate forward pass)."""
        return self.forward_tokens(x).pre_cls_patches


@BACKBONES.register("xcit")
def xcit_backbone(name: str, multi_atrous: bool = False, atrous_rates: Sequence[int] = (1, 3, 6, 9, 12),
                  repeat_last_cls_block: bool = False, **timm_kwargs: Any) -> XCiTBackbone:
    """Plain timm XCiT (two CA blocks); the ViTGaL options can be set one by one."""
    return XCiTBackbone(name, multi_atrous=multi_atrous, atrous_rates=atrous_rates,
                        repeat_last_cls_block=repeat_last_cls_block, **timm_kwargs)


@BACKBONES.register("vitgal")
def vitgal_backbone(name: str, cls_attn_layers: int = 1, atrous_rates: Sequence[int] = (1, 3, 6, 9, 12),
                    **timm_kwargs: Any) -> XCiTBackbone:
    """ViTGaL's retrieval backbone (`xcit_retrievalv2_small_{12,24}_p16`): XCiT with one CA block,
    the multi-atrous module, and the last CA block applied twice."""
    return XCiTBackbone(name, multi_atrous=True, atrous_rates=atrous_rates, repeat_last_cls_block=True,
                        cls_attn_layers=cls_attn_layers, **timm_kwargs)
