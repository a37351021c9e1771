"""Checkpoint formats: every layout `load_weights(model, path, fmt)` reads, one file each, one registry.

`CHECKPOINT_FORMATS` (base.py) maps a config's `model.checkpoint_format` to a loader
`(object torch.load gave, model) -> MappedState`. The formats:
  vpr_ros / timm          native.py                 our own `VPRModel.state_dict()` (save_checkpoint, trainer)
  efficientnet_lite0_pth  efficientnet_lite0_pth.py lukemelas EfficientNet-Lite keys, matched by position
  dinov2_pretrain         dinov2_pretrain.py        facebookresearch/dinov2 pretrained ViTs
  selavpr                 selavpr.py                SelaVPR (DINOv2 + adapters + GeM + up-conv local head)
  xcit                    xcit.py                   facebookresearch/xcit ImageNet checkpoints
  vitgal                  vitgal.py                 ViTGaL (XCiT + multi-atrous + patch-token autoencoder)
  netvlad_pth_tar         netvlad_pth_tar.py        OpenIBL / ClusVPR (VGG16 + NetVLAD)
  timm_vit                timm_vit.py               timm-layout ViT / DeiT / CaiT / PiT
The seeds' layouts are declarative key maps (keymap.py: `KeyMap`, read seed -> ours to load and ours -> seed
to write test files); `KEYMAPS` lists those. A new format is a new file here, imported below.
"""
from vpr_core.models.formats.base import CHECKPOINT_FORMATS, CheckpointError, MappedState, unwrap_state_dict
from vpr_core.models.formats.keymap import KEYMAPS, Drop, KeyMap, Rename, Split, Template, keymap, register

from vpr_core.models.formats import (  # noqa: E402,F401,I001  (each file registers its format)
    dinov2_pretrain, efficientnet_lite0_pth, native, netvlad_pth_tar, selavpr, timm_vit, vitgal, xcit)

__all__ = ["CHECKPOINT_FORMATS", "CheckpointError", "Drop", "KEYMAPS", "KeyMap", "MappedState", "Rename", "Split",
           "Template", "keymap", "register", "unwrap_state_dict"]
