"""`vpr-core train`: one trainer for the seeds' schemes (ranking, classification, pairs, adapters,
whitening), configured by `config/train/*.yaml`; reads data through vpr_core.datasets."""
from vpr_core.training.config import TrainConfig, load_train_config, parse_overrides  # noqa: F401
from vpr_core.training.trainer import TrainResult, Trainer, train  # noqa: F401
