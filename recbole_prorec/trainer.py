"""RecBole's Trainer with a learning-rate schedule sized to the run's epoch budget.

RecBole 1.2.1 trains at a constant learning rate. The generative models' public recipes (TIGER, RPG,
ActionPiece) warm up linearly and then decay with a cosine to zero at the planned last step; with a budget of
tens of epochs instead of hundreds, the decay is what lets the last epochs settle instead of oscillating.
"""

import math

import torch
from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

LR_SCHEDULES = ("constant", "cosine")


def warmup_cosine(total_steps, warmup_steps):
    """Multiplier of the base learning rate at optimizer step `step`: linear warm-up, then cosine to 0."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class ScheduledTrainer(Trainer):
    """`Trainer` stepping a `lr_schedule` after every optimizer step (`cosine`: `warmup_ratio` of the steps of
    `epochs` epochs warm up, the rest decay to 0; `constant`: RecBole's behaviour).

    The schedule is planned for `epochs` epochs: early stopping may end the run sooner, at a higher learning
    rate. A resumed run continues the schedule from its start epoch.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.lr_schedule = config["lr_schedule"] or "constant"
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        self.warmup_ratio = config["warmup_ratio"] or 0.0
        self.scheduler = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.lr_schedule == "cosine" and self.scheduler is None:
            steps_per_epoch = len(train_data)
            total_steps = self.epochs * steps_per_epoch
            factor = warmup_cosine(total_steps, max(1, round(self.warmup_ratio * total_steps)))
            done = self.start_epoch * steps_per_epoch
            self.scheduler = LambdaLR(self.optimizer, lambda step: factor(step + done))
            self.optimizer.register_step_post_hook(lambda *_: self.scheduler.step())
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.epoch_idx = epoch_idx  # named by _check_nan
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    def _check_nan(self, loss):
        """RecBole's check, with the epoch and what to try: its own "Training loss is nan" says neither."""
        if not torch.isfinite(loss):
            raise ValueError(
                f"Training loss is {loss.item()} in epoch {self.epoch_idx} of {self.config['model']} (learning_rate "
                f"{self.config['learning_rate']}, bf16 {getattr(self.model, 'bf16', self.config['bf16'])}): lower "
                "learning_rate, turn bf16 off, "
                "or check the inputs (item-code artifact, item text embeddings); no checkpoint of this epoch was saved"
            )
