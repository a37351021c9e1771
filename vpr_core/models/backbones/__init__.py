"""Backbones by family, one file each; `BACKBONES.build(name=..., **options)` finds the builder."""
from vpr_core.registry import Registry

BACKBONES: Registry = Registry("backbone")

from vpr_core.models.backbones import timm_backbone  # noqa: E402,F401  (registers families)
