"""Training: the config (flags, validation), the stages it builds, the loop that composes them,
the training state (save / restore / resume), the fast path, evaluation and logging.

    from dil_fast.train import Trainer, TrainConfig
    Trainer(TrainConfig(ckpt_save="runs/x", trainset="patches/"), model=my_net).run()
"""

from ..devices import resolve_device  # noqa: F401 - re-exported
from .config import TrainConfig
from .loop import ConfounderOrder, Trainer

__all__ = ["Trainer", "TrainConfig", "ConfounderOrder", "resolve_device"]
