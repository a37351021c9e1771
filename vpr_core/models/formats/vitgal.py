"""`vitgal`: ViTGaL's XCiT retrieval backbone + local autoencoder checkpoint -> vitgal backbone + cls
aggregator + patch_tokens local head, as one key map."""
from __future__ import annotations

from vpr_core.models.formats.keymap import BACKBONE_MODEL as BB
from vpr_core.models.formats.keymap import Drop, KeyMap, Rename, register
from vpr_core.models.formats.xcit import qkv_split

# ViTGaL (PXThanhLam/ViTGaL `model_checkpoint/xcit_retrievalv2_small_{12,24}_p16_reduction_ae/checkpoint.pth`),
# layout read from its published code: {'model': XCiTRetrievalLocalReductionAE.state_dict(), 'optimizer',
# 'lr_scheduler', 'epoch', 'args'}:
#   retrieval_back_bone.<XCiT names, pos_embeder, one CA block, local_atrous.*>   -> our vitgal backbone
#   whitening_layer (C -> 128, the local-descriptor reduction), ae_decoder_layer (128 -> C), cls_token,
#   cls_attn_blocks.0 (its attention over the decoded patches scores keypoints), norm -> our local head
#   head.* (training classifier; ViTGaL's own loader deletes it)                   -> dropped
VITGAL = register(KeyMap(
    name="vitgal",
    doc="ViTGaL XCiT + autoencoder checkpoint -> vitgal backbone (+ cls aggregator, no parameters) + local head "
        "(local_head.whitening_layer / ae_decoder_layer / cls_token / cls_attn_blocks.N with q,k,v / norm). "
        "Covers the whole model; the local head (or its attention scorer) is skipped when the model has none.",
    rules=(
        qkv_split("retrieval_back_bone.", BB),
        Rename("retrieval_back_bone.pos_embeder.{rest:path}", BB + "pos_embed.{rest}"),
        Rename("retrieval_back_bone.{rest:path}", BB + "{rest}"),
        qkv_split("", "local_head."),
        Rename("cls_attn_blocks.{rest:path}", "local_head.cls_attn_blocks.{rest}"),
        Rename("whitening_layer.{p}", "local_head.whitening_layer.{p}"),
        Rename("ae_decoder_layer.{p}", "local_head.ae_decoder_layer.{p}"),
        Rename("cls_token", "local_head.cls_token"),
        Rename("norm.{p}", "local_head.norm.{p}"),
    ),
    drops=(Drop("head.{p}", "autoencoder training classifier"),
           Drop("retrieval_back_bone.head.{p}", "ArcFace training classifier")),
    # no local head: all of it skipped; a patch_tokens head built with `attention: false`: the scorer skipped
    optional=("local_head.", "local_head.cls_token", "local_head.cls_attn_blocks.", "local_head.norm."),
    container=lambda state: {"model": state, "epoch": 0},
))
