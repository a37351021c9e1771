"""`netvlad_pth_tar`: OpenIBL / ClusVPR NetVLAD checkpoints (`.pth.tar`) -> vgg backbone + netvlad aggregator,
as one key map."""
from __future__ import annotations

import torch

from vpr_core.models.formats.keymap import BACKBONE_MODEL as BB
from vpr_core.models.formats.keymap import KeyMap, Rename, module_prefixed, register

# OpenIBL (and ClusVPR, built on it) save {'state_dict': DataParallel(EmbedNet).state_dict(), 'epoch',
# 'best_recall5'}; EmbedNet = base_model (VGG16 `base` = torchvision features[:-2], conv5_3 before ReLU)
# + net_vlad (NetVLAD: centroids (K, C), conv.weight (K, C, 1, 1), no bias; ClusVPR's published layer adds
# linear1, GeM_pool.p and a vit_layer transformer). Every net_vlad tensor goes to `aggregator.` under its own
# name, which is our `netvlad` aggregator's name for centroids / conv.* / attention.* / reduction.*; tensors
# it does not have (ClusVPR's linear1, GeM_pool, vit_layer) are reported by name on load. Centres from a
# checkpoint count as initialised (`aggregator.initialised`).
NETVLAD_PTH_TAR = register(KeyMap(
    name="netvlad_pth_tar",
    doc="OpenIBL / ClusVPR NetVLAD checkpoint -> vgg backbone (features.0..28) + netvlad aggregator (same names "
        "under aggregator.). Covers the whole model.",
    rules=(
        Rename("base_model.base.{i:int}.{p}", BB + "features.{i}.{p}"),
        Rename("net_vlad.{rest:path}", "aggregator.{rest}"),
    ),
    aliases=(("base_model.features.{i:int}.{p}", "base_model.base.{i}.{p}"),),
    fill=(("aggregator.initialised", lambda: torch.tensor(True)),),
    container=module_prefixed("state_dict", epoch=0, best_recall5=0.0),
))
