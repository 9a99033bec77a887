"""Training: configuration, the SVI loop, checkpoints and run logs."""

from .checkpoint import BEST, LAST, find_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import Trainer, resolve_device

__all__ = ["BEST", "LAST", "TrainConfig", "Trainer", "find_checkpoint", "load_checkpoint",
           "resolve_device", "save_checkpoint"]
