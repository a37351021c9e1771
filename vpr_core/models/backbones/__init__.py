"""Backbones by family, one file each; `BACKBONES.build(family, name=..., **options)` finds the builder.

Families: timm (default: routes to the family below that fits the timm architecture, else a plain
wrapper), vit (DeiT / ViT / CaiT), dinov2, dinov2_adapter (SelaVPR), pit, xcit, vitgal, vgg, resnet.
"""
from vpr_core.registry import Registry

BACKBONES: Registry = Registry("backbone")

from vpr_core.models.backbones import (  # noqa: E402,F401  (registers families)
    dinov2_adapter, pit, resnet, timm_backbone, vgg, vit, xcit)
