"""Training: the trainer, checkpoints, logging, evaluation, distributed helpers."""
