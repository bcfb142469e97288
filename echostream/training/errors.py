"""The training error: what the trainer, its data loading and its checkpoint readers raise."""


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""
