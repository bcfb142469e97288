"""Learning-rate schedule: fairseq's ``inverse_sqrt`` (StreamSpeech's), with linear warm-up.

``lr(step)`` for the update numbered ``step`` (1-based, as fairseq counts ``num_updates``)::

    step <  warmup: warmup_init_lr + step · (peak_lr − warmup_init_lr) / warmup
    step >= warmup: peak_lr · sqrt(warmup / step)

``warmup = 0`` starts at the peak: ``peak_lr / sqrt(max(step, 1))``.
"""

from __future__ import annotations

import math

import torch


def inverse_sqrt_lr(step: int, peak_lr: float, warmup_steps: int, warmup_init_lr: float) -> float:
    """Learning rate of update ``step`` (1-based; 0 = before the first update)."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_init_lr + step * (peak_lr - warmup_init_lr) / warmup_steps
    return peak_lr * math.sqrt(max(warmup_steps, 1) / max(step, 1))


class InverseSqrtSchedule:
    """Sets ``lr`` on every parameter group of ``optimizer`` for the coming update.

    Call :meth:`set_step` with the 1-based number of the update about to be applied. The state
    is the step only; :meth:`state_dict` also records the settings so a resume can say what
    changed.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        warmup_steps: int,
        warmup_init_lr: float = 1e-7,
    ):
        self.optimizer = optimizer
        self.peak_lr, self.warmup_steps, self.warmup_init_lr = peak_lr, warmup_steps, warmup_init_lr
        self.step_num = 0
        self.set_step(0)

    def lr_at(self, step: int) -> float:
        return inverse_sqrt_lr(step, self.peak_lr, self.warmup_steps, self.warmup_init_lr)

    def set_step(self, step: int) -> float:
        self.step_num = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    @property
    def lr(self) -> float:
        return self.lr_at(self.step_num)

    def state_dict(self) -> dict:
        return {
            "step": self.step_num,
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_init_lr": self.warmup_init_lr,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the step; the settings stay this run's (a changed schedule takes effect)."""
        self.set_step(int(state["step"]))
