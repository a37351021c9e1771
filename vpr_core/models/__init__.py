"""The model zoo: `build_model(cfg)` composes backbone + aggregator from a config."""
from vpr_core.models.vpr_model import DescriptorExtractor, VPRModel, build_model

__all__ = ["DescriptorExtractor", "VPRModel", "build_model"]
