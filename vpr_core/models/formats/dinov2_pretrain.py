"""`dinov2_pretrain`: facebookresearch/dinov2 `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` -> timm names.
Also the DINOv2 naming rules SelaVPR's key map reuses (its backbone is a DINOv2 with adapters)."""
from __future__ import annotations

from typing import Callable, Mapping, Tuple

import torch

from vpr_core.models.formats.keymap import BACKBONE_MODEL as BB
from vpr_core.models.formats.keymap import Drop, KeyMap, Rename, Rule, State, register


def swiglu(state: Mapping[str, torch.Tensor]) -> bool:
    """ViT-g/14 uses a fused SwiGLU MLP: its first layer is twice as wide as the second one's input."""
    for key, value in state.items():
        if key.endswith("blocks.0.mlp.fc1.weight"):
            fc2 = state.get(key[:-len("fc1.weight")] + "fc2.weight")
            return fc2 is not None and value.shape[0] == 2 * fc2.shape[1]
    return False


def dinov2_rules(seed: str, ours: str) -> Tuple[Rule, ...]:
    """DINOv2 reference names under `seed` -> timm VisionTransformer names under `ours`."""
    return (
        Rename(seed + "cls_token", ours + "cls_token"),
        Rename(seed + "register_tokens", ours + "reg_token"),
        Rename(seed + "pos_embed", ours + "pos_embed"),
        Rename(seed + "patch_embed.proj.{p}", ours + "patch_embed.proj.{p}"),
        # ViT-g: SwiGLUFFNFused(w12 = [gate; value] packed, w3) == timm GluMlp(fc1 packed the same way, fc2)
        Rename(seed + "blocks.{i:int}.mlp.w12.{p}", ours + "blocks.{i}.mlp.fc1.{p}", seed_when=swiglu),
        Rename(seed + "blocks.{i:int}.mlp.w3.{p}", ours + "blocks.{i}.mlp.fc2.{p}", seed_when=swiglu),
        # norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2, ls2.gamma: the same names in timm
        Rename(seed + "blocks.{i:int}.{rest:path}", ours + "blocks.{i}.{rest}"),
        Rename(seed + "norm.{p}", ours + "norm.{p}"),
    )


def dinov2_registers(seed: str) -> Tuple[Callable[[State], State], Callable[[State], State]]:
    """DINOv2-with-registers adds the class token's position embedding to it and keeps the patch grid
    in `pos_embed` (timm's `no_embed_class` layout); writing back puts a zero class position first."""
    cls, pos, reg = seed + "cls_token", seed + "pos_embed", seed + "register_tokens"

    def to_ours(state: State) -> State:
        if reg not in state or cls not in state or pos not in state:
            return state
        state = dict(state)
        state[cls] = state[cls] + state[pos][:, :1]
        state[pos] = state[pos][:, 1:]
        return state

    def to_seed(state: State) -> State:
        if reg not in state or pos not in state:
            return state
        state = dict(state)
        state[pos] = torch.cat([torch.zeros_like(state[pos][:, :1]), state[pos]], dim=1)
        return state
    return to_ours, to_seed


def mask_token(prefix: str, key: str) -> Callable[[Mapping[str, torch.Tensor]], State]:
    """DINOv2's iBOT mask token (1, C): training only."""
    def example(state: Mapping[str, torch.Tensor]) -> State:
        width = state[prefix + "cls_token"].shape[-1]
        return {key: torch.zeros(1, width)}
    return example


_pre, _post = dinov2_registers("")
DINOV2_PRETRAIN = register(KeyMap(
    name="dinov2_pretrain",
    doc="facebookresearch/dinov2 `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` (bare state dict) -> the timm "
        "`vit_*_patch14[_reg4]_dinov2` backbone of families dinov2 / dinov2_adapter (adapters keep their "
        "fresh values). Covers the backbone only.",
    rules=dinov2_rules("", BB),
    covers="backbone.",
    drops=(Drop("mask_token", "iBOT masked-image-modelling token, training only", mask_token(BB, "mask_token")),),
    # FSDP-chunked layout (block_chunks > 0) spells blocks as blocks.<chunk>.<index>
    aliases=(("blocks.{c:int}.{i:int}.{rest:path}", "blocks.{i}.{rest}"),),
    keep_model=(BB + "blocks.{i:int}.adapter{n:int}.{rest:path}",),
    pre_ours=_pre, post_seed=_post,
))
